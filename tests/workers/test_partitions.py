"""The embedding table is partitioned by model (docs/partition-by-model.md): a partition per
registered model and no default, so an unknown model's embedding is refused; each model's rows
live in its own partition, with its own HNSW index that a search's plan uses; deleting a
model's embeddings empties its partition only; a model without a partition gets one."""

from __future__ import annotations

import re

import numpy as np
import pytest
from django.db import IntegrityError, connection, transaction

from encoders.registry import MODELS
from gallery.models import Image
from search.ranking import embeddings_nearest
from search.ranking_sql import (
    BinaryVector,
    _lists_statement,
    binding_cursor,
    ranking_execute,
    scope_sql,
)
from tests.factories import ImageFactory
from workers.index_scans import hnsw_scan_transaction
from workers.indexes import hnsw_index_name
from workers.models import EmbeddingModel, ImageEmbedding
from workers.partitions import (
    TABLE,
    partition_exists,
    partition_name,
    partition_truncate,
    partitions_ensure,
)
from workers.services import (
    embedding_model_delete,
    embedding_model_disable,
    embedding_model_enable,
    embedding_models_sync_from_settings,
    embeddings_store,
)

pytestmark = pytest.mark.django_db
CLIP, ALIGN = "clip-vit-base-patch32", "align-base"


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def partitions() -> dict[str, str]:
    """Each partition of the embedding table and its bound, as PostgreSQL prints it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [TABLE],
        )
        return dict(cursor.fetchall())


def rows_in(model_id: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{partition_name(model_id)}"')
        return int(cursor.fetchone()[0])


def test_the_table_is_partitioned_by_model_one_partition_per_registered_model() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT partstrat, partdefid FROM pg_partitioned_table WHERE partrelid = %s::regclass",
            [TABLE],
        )
        strategy, default = cursor.fetchone()
        cursor.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype IN ('p', 'u') ORDER BY contype",
            [TABLE],
        )
        keys = [row[0] for row in cursor.fetchall()]
    assert strategy == "l"  # LIST
    assert default == 0  # no DEFAULT partition
    assert partitions() == {
        partition_name(model_id): f"FOR VALUES IN ('{model_id}')" for model_id in MODELS
    }
    # A partitioned table's unique keys hold the partition key.
    assert keys == ["PRIMARY KEY (id, model_id)", "UNIQUE (image_id, model_id)"]


def test_partition_names_are_identifiers_made_from_the_model_id() -> None:
    assert partition_name(CLIP) == "search_imageembedding_clip_vit_base_patch32"
    long = partition_name("x" * 64)
    assert len(long) == 63 and long != partition_name("x" * 63 + "y")
    assert re.fullmatch(r"[a-z0-9_]+", partition_name('odd "Model".v2'))


def test_an_embedding_of_a_model_without_a_partition_is_refused() -> None:
    image = ImageFactory()
    with pytest.raises(IntegrityError, match="no partition"), transaction.atomic():
        ImageEmbedding.objects.create(image=image, model_id="not-registered", vector=[1.0] * 8)
    assert not ImageEmbedding.objects.filter(model_id="not-registered").exists()


def test_each_models_rows_live_in_its_own_partition() -> None:
    ids = [image.pk for image in ImageFactory.create_batch(3)]
    embeddings_store(model_id=CLIP, image_ids=ids, vectors=unit_rows(3, 512))
    embeddings_store(model_id=ALIGN, image_ids=ids[:2], vectors=unit_rows(2, 640))
    assert (rows_in(CLIP), rows_in(ALIGN)) == (3, 2)
    # One id sequence for every partition: ids stay unique across them.
    assert len(set(ImageEmbedding.objects.values_list("id", flat=True))) == 5


def test_a_search_plan_reads_only_the_models_partition_and_its_hnsw_index() -> None:
    ids = [image.pk for image in ImageFactory.create_batch(4)]
    embeddings_store(model_id=CLIP, image_ids=ids, vectors=unit_rows(4, 512))
    embeddings_store(model_id=ALIGN, image_ids=ids, vectors=unit_rows(4, 640, seed=1))
    others = [partition_name(m) for m in MODELS if m != CLIP]
    query = unit_rows(1, 512, seed=2)[0]
    with hnsw_scan_transaction() as alias, binding_cursor(alias) as cursor:
        # On 4 rows a sort is cheaper; with sorting priced out only the index gives the order.
        cursor.execute("SET LOCAL enable_sort = off")
        plan = "\n".join(
            row[0]
            for row in ranking_execute(
                cursor, model_id=CLIP, dim=512, vector=query,
                scope=scope_sql(Image.objects.all(), alias=alias), exact=False,
                candidates=40, limit=20, offset=0, hits=True, explain=True,
            )
        )  # fmt: skip
        orm_plan = embeddings_nearest(model_id=CLIP, vector=query).using(alias).explain()
    for text in (plan, orm_plan):
        assert f"Index Scan using {hnsw_index_name(CLIP)} on {partition_name(CLIP)}" in text
        # Pruned to CLIP's partition, the outer lookup too: no other model's table is read.
        assert not [name for name in others if name in text], text


def test_deleting_a_model_empties_its_partition_only(django_capture_on_commit_callbacks) -> None:
    ids = [image.pk for image in ImageFactory.create_batch(3)]
    with django_capture_on_commit_callbacks():
        embedding_model_enable(model_id=ALIGN)
    embeddings_store(model_id=CLIP, image_ids=ids, vectors=unit_rows(3, 512))
    embeddings_store(model_id=ALIGN, image_ids=ids, vectors=unit_rows(3, 640))
    assert embedding_model_delete(model_id=ALIGN) == 3
    assert (rows_in(CLIP), rows_in(ALIGN)) == (3, 0)
    # Still registered: its partition and its index stay, for when it is enabled again.
    with connection.cursor() as cursor:
        assert partition_exists(cursor, ALIGN)
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [hnsw_index_name(ALIGN)])
        assert cursor.fetchone()[0]
    assert not EmbeddingModel.objects.filter(model_id=ALIGN).exists()


def test_disabling_a_model_with_its_embeddings_empties_its_partition_only(
    django_capture_on_commit_callbacks,
) -> None:
    ids = [image.pk for image in ImageFactory.create_batch(2)]
    with django_capture_on_commit_callbacks():
        embedding_model_enable(model_id=ALIGN)
    embeddings_store(model_id=CLIP, image_ids=ids, vectors=unit_rows(2, 512))
    embeddings_store(model_id=ALIGN, image_ids=ids, vectors=unit_rows(2, 640))
    assert embedding_model_disable(model_id=ALIGN, delete_embeddings=True) == 2
    assert (rows_in(CLIP), rows_in(ALIGN)) == (2, 0)


def test_emptying_a_partition_is_undone_with_its_transaction() -> None:
    ids = [image.pk for image in ImageFactory.create_batch(2)]
    embeddings_store(model_id=ALIGN, image_ids=ids, vectors=unit_rows(2, 640))
    with pytest.raises(RuntimeError), transaction.atomic():
        assert partition_truncate(model_id=ALIGN) == 2
        raise RuntimeError
    assert rows_in(ALIGN) == 2


def test_a_registered_model_without_a_partition_gets_one(settings) -> None:
    """A model registered after the table was partitioned (its partition missing) gets it
    from the post-migrate sync, or when staff enable it."""
    with connection.cursor() as cursor:
        cursor.execute(f'DROP TABLE "{partition_name(ALIGN)}"')
        assert not partition_exists(cursor, ALIGN)
    settings.EMBEDDING_MODELS = [CLIP, ALIGN]
    embedding_models_sync_from_settings()
    assert partitions()[partition_name(ALIGN)] == f"FOR VALUES IN ('{ALIGN}')"
    with connection.cursor() as cursor:
        cursor.execute(f'DROP TABLE "{partition_name(ALIGN)}"')
    partitions_ensure(model_ids=[CLIP])  # only the ones asked for
    assert partition_name(ALIGN) not in partitions()
    embedding_model_enable(model_id=ALIGN)
    assert partition_name(ALIGN) in partitions()


def test_a_fused_search_plan_reads_each_models_partition_by_its_index() -> None:
    """The fused search's one statement (a branch per model, ``search.ranking_sql``) takes each
    model's list from its own partition's HNSW index."""
    ids = [image.pk for image in ImageFactory.create_batch(4)]
    embeddings_store(model_id=CLIP, image_ids=ids, vectors=unit_rows(4, 512))
    embeddings_store(model_id=ALIGN, image_ids=ids, vectors=unit_rows(4, 640, seed=1))
    with hnsw_scan_transaction() as alias, binding_cursor(alias) as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
        scope, scope_params = scope_sql(Image.objects.all(), alias=alias)
        statement = _lists_statement(dims=(512, 640), exact=(False, False), scope=scope)
        params = {
            "depth": 20,
            "model_0": CLIP,
            "vector_0": BinaryVector(unit_rows(1, 512, seed=2)[0]),
            "model_1": ALIGN,
            "vector_1": BinaryVector(unit_rows(1, 640, seed=3)[0]),
            **{f"scope_{index}": value for index, value in enumerate(scope_params)},
        }
        cursor.execute("EXPLAIN " + statement, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    for model_id in (CLIP, ALIGN):
        scan = f"Index Scan using {hnsw_index_name(model_id)} on {partition_name(model_id)}"
        assert scan in plan, plan
    others = [partition_name(m) for m in MODELS if m not in (CLIP, ALIGN)]
    assert not [name for name in others if name in plan], plan
