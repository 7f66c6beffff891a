"""A database made by the layout before the embedding index moved from search/ to workers/
(search 0006, gallery 0005) migrates with its embedding models, embeddings and jobs intact:
the move changed Django's state only, so the rows, the tables and the HNSW index stay, and
the content types (with the permissions granted on them) follow the models to workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from django.conf import settings

CLIP = "clip-vit-base-patch32"

# Run in a fresh database by manage.py shell: the previous layout's schema, made with Django's
# MigrationExecutor, and rows written through that layout's (historical) models, with the HNSW
# index its post-migrate hook built (written out: today's is on a partition, workers 0005).
PREVIOUS_LAYOUT = f"""
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

targets = [
    ("contenttypes", "0002_remove_content_type_name"),
    ("auth", "0012_alter_user_first_name_max_length"),
    ("gallery", "0005_image_file_size"),
    ("search", "0006_query_image_cache"),
]
executor = MigrationExecutor(connection)
executor.migrate(targets)
old = MigrationExecutor(connection).loader.project_state(targets).apps
assert "workers" not in {{m._meta.app_label for m in old.get_models()}}
image = old.get_model("gallery", "Image").objects.create(
    source="flickr30k", visibility="public", file="images/ab/abc.jpg", sha256="ab" * 32,
    original_filename="1000092795.jpg", width=500, height=333,
)
old.get_model("search", "EmbeddingModel").objects.create(
    model_id="{CLIP}", enabled=True, is_default=True, unavailable_reason="weights missing"
)
old.get_model("search", "ImageEmbedding").objects.create(
    image_id=image.pk, model_id="{CLIP}", vector=[0.0] * 511 + [1.0]
)
old.get_model("search", "EmbeddingJob").objects.create(
    image_id=image.pk, model_id="{CLIP}", status="failed", error="corrupt", attempts=3
)
content_type = old.get_model("contenttypes", "ContentType").objects.create(
    app_label="search", model="embeddingjob"
)
old.get_model("auth", "Permission").objects.create(
    content_type=content_type, codename="change_embeddingjob", name="Can change embedding job"
)
# The partial index that layout's post-migrate hook built on the one table.
with connection.cursor() as cursor:
    cursor.execute(
        'CREATE INDEX "search_emb_hnsw_clip_vit_base_patch32_hv32" ON search_imageembedding '
        "USING hnsw ((vector::halfvec(512)) halfvec_cosine_ops) WITH (m = 32, "
        "ef_construction = 128) WHERE model_id = %s", ["{CLIP}"]
    )
"""

# After a plain `manage.py migrate`: the rows as the workers models read them.
READ_BACK = f"""
import json
from django.contrib.auth.models import Permission
from django.db import connection
from workers.indexes import hnsw_index_name
from workers.models import EmbeddingJob, EmbeddingModel, ImageEmbedding

model = EmbeddingModel.objects.get(model_id="{CLIP}")
embedding = ImageEmbedding.objects.select_related("image").get(model_id="{CLIP}")
job = EmbeddingJob.objects.get(model_id="{CLIP}")
with connection.cursor() as cursor:
    name = hnsw_index_name("{CLIP}")
    cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [name])
    index = cursor.fetchone()
    cursor.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'workers%%'")
    workers_tables = [row[0] for row in cursor.fetchall()]
permission = Permission.objects.get(codename="change_embeddingjob")
print(json.dumps({{
    "model": [model.enabled, model.is_default, model.unavailable_reason],
    "embedding": [
        embedding.image.original_filename, len(embedding.vector), float(embedding.vector[-1])
    ],
    "job": [job.image_id == embedding.image_id, job.status, job.error, job.attempts],
    "index": index[0] if index else None,
    "workers_tables": workers_tables,
    "permission": permission.content_type.app_label,
    "tables": [m._meta.db_table for m in (EmbeddingModel, ImageEmbedding, EmbeddingJob)],
}}))
"""


def manage(database: str, *args: str) -> str:
    db = settings.DATABASES["default"]
    url = f"postgresql://{db['USER']}@/{database}?host={db['HOST']}&port={db['PORT'] or 5432}"
    env = dict(os.environ, DATABASE_URL=url, DJANGO_SETTINGS_MODULE="config.settings.dev")
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_a_database_of_the_previous_layout_keeps_its_index_rows(empty_database: str) -> None:
    manage(empty_database, "shell", "-c", PREVIOUS_LAYOUT)
    manage(empty_database, "migrate", "--noinput")
    found = json.loads(manage(empty_database, "shell", "-c", READ_BACK).strip().splitlines()[-1])

    assert found["model"] == [True, True, "weights missing"]
    assert found["embedding"] == ["1000092795.jpg", 512, 1.0]
    assert found["job"] == [True, "failed", "corrupt", 3]
    assert found["index"] is not None and "hnsw" in found["index"]
    assert "search_imageembedding" in found["index"]
    # Nothing was renamed or copied: the tables are the ones search's migrations made.
    assert found["tables"] == [
        "search_embeddingmodel",
        "search_imageembedding",
        "search_embeddingjob",
    ]
    # No copy of them under workers_: its one table is the workers' heartbeats (0002), new.
    assert found["workers_tables"] == ["workers_worker"]
    # A permission granted on the model before the move is the same row, now workers'.
    assert found["permission"] == "workers"
