"""A database of the flat embedding table (workers 0004) migrates to a partition per model
(workers 0005): in place while it is small, every row kept with its id, each model's rows in
its own partition with its HNSW index, the id sequence carried on; above
EMBEDDING_PARTITION_IN_PLACE_MAX_ROWS migrate refuses and names the online command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import psycopg
from django.conf import settings

CLIP, ALIGN, RETIRED = "clip-vit-base-patch32", "align-base", "retired-model"

# Run in a fresh database by manage.py shell: the schema up to workers 0004, made with Django's
# MigrationExecutor, and embeddings of two registered models and one no longer registered,
# with the partial HNSW index that layout's post-migrate hook built for CLIP.
FLAT_LAYOUT = f"""
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

targets = [("workers", "0004_embedding_model_completeness")]
MigrationExecutor(connection).migrate(targets)
old = MigrationExecutor(connection).loader.project_state(targets).apps
Image = old.get_model("gallery", "Image")
images = [
    Image.objects.create(
        source="flickr30k", visibility="public", file=f"images/{{n}}.jpg",
        sha256=f"{{n:064x}}", original_filename=f"{{n}}.jpg", width=500, height=333,
    ).pk
    for n in range(6)
]
Embedding = old.get_model("workers", "ImageEmbedding")
for n, image_id in enumerate(images):
    Embedding.objects.create(image_id=image_id, model_id="{CLIP}", vector=[0.0] * 511 + [n])
for image_id in images[:2]:
    Embedding.objects.create(image_id=image_id, model_id="{ALIGN}", vector=[1.0] * 640)
Embedding.objects.create(image_id=images[0], model_id="{RETIRED}", vector=[1.0] * 8)
with connection.cursor() as cursor:
    cursor.execute(
        'CREATE INDEX "search_emb_hnsw_clip_vit_base_patch32_hv32" ON search_imageembedding '
        "USING hnsw ((vector::halfvec(512)) halfvec_cosine_ops) WITH (m = 32, "
        "ef_construction = 128) WHERE model_id = %s", ["{CLIP}"]
    )
    cursor.execute("SELECT max(id) FROM search_imageembedding")
    print("MAX", cursor.fetchone()[0])
"""

READ_BACK = f"""
import json
from django.db import connection
from gallery.models import Image
from workers.indexes import hnsw_index_name
from workers.models import ImageEmbedding
from workers.partitions import partition_name

with connection.cursor() as cursor:
    cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'search_imageembedding'")
    kind = cursor.fetchone()[0]
    cursor.execute(
        "SELECT tablename, indexdef FROM pg_indexes WHERE indexname = %s",
        [hnsw_index_name("{CLIP}")],
    )
    index = cursor.fetchone()
    counts = {{}}
    for model in ("{CLIP}", "{ALIGN}", "{RETIRED}"):
        cursor.execute(f'SELECT count(*) FROM "{{partition_name(model)}}"')
        counts[model] = cursor.fetchone()[0]
rows = list(ImageEmbedding.objects.order_by("id").values_list("id", "model_id", "vector"))
image = Image.objects.order_by("id").last()
new = ImageEmbedding.objects.create(image=image, model_id="{ALIGN}", vector=[0.5] * 640)
image.delete()  # takes its embeddings along, from their partitions
print(json.dumps({{
    "kind": kind,
    "index": list(index) if index else None,
    "counts": counts,
    "ids": [row[0] for row in rows],
    "clip_last": [float(v[-1]) for i, m, v in rows if m == "{CLIP}"],
    "new_id": new.pk,
    "left": ImageEmbedding.objects.filter(image_id=image.pk).count(),
}}))
"""


def manage(database: str, *args: str, env: dict[str, str] | None = None):
    db = settings.DATABASES["default"]
    url = f"postgresql://{db['USER']}@/{database}?host={db['HOST']}&port={db['PORT'] or 5432}"
    environ = dict(os.environ, DATABASE_URL=url, DJANGO_SETTINGS_MODULE="config.settings.dev")
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR, env={**environ, **(env or {})}, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_a_flat_table_is_partitioned_in_place_with_its_rows(empty_database: str) -> None:
    before = ok(manage(empty_database, "shell", "-c", FLAT_LAYOUT))
    highest = int(before.split("MAX")[-1].split()[0])
    ok(manage(empty_database, "migrate", "--noinput"))
    found = json.loads(ok(manage(empty_database, "shell", "-c", READ_BACK)).splitlines()[-1])

    assert found["kind"] == "p"
    # Every row kept, with its id, in its model's partition; the unregistered model's rows
    # got one of their own rather than being lost.
    assert found["counts"] == {CLIP: 6, ALIGN: 2, RETIRED: 1}
    assert found["ids"] == list(range(highest - 8, highest + 1))
    assert found["clip_last"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    # CLIP's index, on its partition now, without the partial index's WHERE.
    table, definition = found["index"]
    assert table == "search_imageembedding_clip_vit_base_patch32"
    assert "USING hnsw" in definition and "WHERE" not in definition
    # The id sequence goes on from the flat table's.
    assert found["new_id"] == highest + 1
    assert found["left"] == 0


def test_a_flat_table_above_the_limit_is_left_for_the_online_command(
    empty_database: str,
) -> None:
    ok(manage(empty_database, "shell", "-c", FLAT_LAYOUT))
    result = manage(
        empty_database, "migrate", "--noinput", env={"EMBEDDING_PARTITION_IN_PLACE_MAX_ROWS": "8"}
    )
    assert result.returncode != 0
    assert "manage.py embedding_table_partition" in result.stderr
    assert "EMBEDDING_PARTITION_IN_PLACE_MAX_ROWS=8" in result.stderr
    # Nothing changed: the flat table and its rows are as they were, workers still at 0004.
    check = (
        "from django.db import connection\n"
        "c = connection.cursor()\n"
        "c.execute(\"SELECT relkind FROM pg_class WHERE relname = 'search_imageembedding'\")\n"
        "print(c.fetchone()[0])\n"
        "c.execute('SELECT count(*) FROM search_imageembedding')\n"
        "print(c.fetchone()[0])\n"
        "c.execute(\"SELECT max(name) FROM django_migrations WHERE app = 'workers'\")\n"
        "print(c.fetchone()[0])\n"
    )
    kind, rows, last = ok(manage(empty_database, "shell", "-c", check)).split()[-3:]
    assert (kind, rows, last) == ("r", "9", "0004_embedding_model_completeness")


def writer(database: str, stop: threading.Event, done: list[tuple[str, int]]) -> None:
    """Embeddings written to the table by name, over and over (an ALIGN embedding of images
    3..6 stored, then deleted), as uploads and model deletes would while the table moves;
    ``done`` records each committed write. A write the swap's lock refuses is tried again."""
    db = settings.DATABASES["default"]
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname=database,
        autocommit=True,
    ) as conn:  # fmt: skip
        conn.execute("SET lock_timeout = '20s'")
        images = [row[0] for row in conn.execute("SELECT id FROM gallery_image ORDER BY id")][2:]
        n = 0
        while not stop.is_set():
            image_id = images[n % len(images)]
            try:
                with conn.transaction():
                    row = conn.execute(
                        "DELETE FROM search_imageembedding WHERE model_id = %s AND image_id = %s "
                        "RETURNING id", [ALIGN, image_id],
                    ).fetchone()  # fmt: skip
                    if row is None:
                        conn.execute(
                            "INSERT INTO search_imageembedding "
                            "(model_id, image_id, vector, created_at) VALUES (%s, %s, %s, now())",
                            [ALIGN, image_id, "[" + ",".join(["0.25"] * 640) + "]"],
                        )
                done.append(("delete" if row else "insert", image_id))
            except psycopg.errors.UndefinedTable:
                continue  # resolved the flat table's name just as it went: again, on the new
            n += 1
            time.sleep(0.005)


ALIGN_ROWS = f"""
import json
from django.db import connection
from workers.indexes import hnsw_index_name
with connection.cursor() as cursor:
    cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'search_imageembedding'")
    kind = cursor.fetchone()[0]
    cursor.execute(
        "SELECT image_id FROM search_imageembedding WHERE model_id = %s ORDER BY image_id",
        ["{ALIGN}"],
    )
    align = [row[0] for row in cursor.fetchall()]
    cursor.execute("SELECT count(*) FROM search_imageembedding WHERE model_id = %s", ["{CLIP}"])
    clip = cursor.fetchone()[0]
    cursor.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'search_imageembedding'::regclass "
        "AND contype IN ('p', 'u', 'f') ORDER BY conname"
    )
    constraints = [row[0] for row in cursor.fetchall()]
    cursor.execute(
        "SELECT tablename FROM pg_indexes WHERE indexname = %s", [hnsw_index_name("{CLIP}")]
    )
    index = cursor.fetchone()
    cursor.execute("SELECT to_regclass('search_imageembedding_partitioned')")
    leftover = cursor.fetchone()[0]
    cursor.execute("SELECT id FROM gallery_image ORDER BY id")
    images = [row[0] for row in cursor.fetchall()]
print(json.dumps({{
    "kind": kind, "align": align, "clip": clip, "constraints": constraints,
    "index": index[0] if index else None, "leftover": leftover, "images": images,
}}))
"""


def test_the_online_command_moves_a_flat_table_while_embeddings_are_written(
    empty_database: str,
) -> None:
    ok(manage(empty_database, "shell", "-c", FLAT_LAYOUT))
    stop, done = threading.Event(), []
    thread = threading.Thread(target=writer, args=(empty_database, stop, done))
    thread.start()
    try:
        while len(done) < 5:
            time.sleep(0.01)
        moved = manage(
            empty_database, "embedding_table_partition", "--batch", "2", "--pause", "0.3"
        )
        during = len(done)
    finally:
        stop.set()
        thread.join()
    out = ok(moved)
    # Batch after batch (the flat rows, and what the writer had stored before the trigger).
    assert len(re.findall(r"^copied \d+ rows", out, re.M)) >= 5, out
    assert "is partitioned by model" in out
    ok(manage(empty_database, "migrate", "--noinput"))  # 0005 finds the work done
    found = json.loads(ok(manage(empty_database, "shell", "-c", ALIGN_ROWS)).splitlines()[-1])

    # Writes went on while the rows were copied (1.2 s of pauses between batches).
    assert during > 10, done
    # The table ends with exactly what was written: the flat rows, and each ALIGN embedding
    # as the writer last left it (stored after an odd number of its writes, gone after even).
    images = found["images"]
    expected = set(images[:2])
    for image_id in images[2:]:
        if sum(1 for _, i in done if i == image_id) % 2:
            expected.add(image_id)
    assert found["kind"] == "p"
    assert set(found["align"]) == expected
    assert found["clip"] == 6
    assert found["index"] == "search_imageembedding_clip_vit_base_patch32"
    assert found["leftover"] is None
    assert "search_imageembedding_pkey" in found["constraints"]
    assert "embedding_unique_per_model" in found["constraints"]
    assert len(found["constraints"]) == 3  # and the foreign key to the images, under its name
