"""The embedding schema: vector extension, per-model partitions and HNSW indexes, dimension and
uniqueness."""

from __future__ import annotations

import re

import numpy as np
import pytest
from django.db import IntegrityError, connection, transaction
from django.db.utils import DataError

from encoders.registry import MODELS
from gallery.models import Image
from search.ranking import embeddings_nearest
from tests.factories import ImageFactory
from workers.indexes import (
    embedding_indexes_ensure,
    hnsw_build_memory,
    hnsw_build_memory_cap,
    hnsw_index_name,
)
from workers.models import EmbeddingJob, ImageEmbedding
from workers.partitions import partition_name
from workers.services import EmbeddingDimensionError, EmbeddingVectorsError, embeddings_store

pytestmark = pytest.mark.django_db


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_vector_extension_is_installed() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        (version,) = cursor.fetchone()
    # Iterative index scans (needed for filtered search) arrived in pgvector 0.8.
    assert tuple(int(p) for p in version.split(".")[:2]) >= (0, 8)


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_each_model_has_an_hnsw_index_on_its_partition(model_id: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, indexdef FROM pg_indexes WHERE indexname = %s",
            [hnsw_index_name(model_id)],
        )
        (table, definition) = cursor.fetchone()
    assert table == partition_name(model_id)
    assert "USING hnsw" in definition
    # Half-precision copies of the model's vectors, with the opclass of cosine distance.
    assert f"::halfvec({MODELS[model_id].dim})) halfvec_cosine_ops)" in definition
    # Every row of the partition is the model's: no partial index.
    assert "WHERE" not in definition
    assert "m='32'" in definition and "ef_construction='128'" in definition


def hnsw_indexes() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE indexname LIKE 'search_emb_hnsw%%'"
        )
        return dict(cursor.fetchall())


@pytest.mark.parametrize(
    "old, graph",
    [
        # vector m=16 (named without a tag), then vector m=32 (tagged "_m32")
        ("search_emb_hnsw_clip_vit_base_patch32", ""),
        ("search_emb_hnsw_clip_vit_base_patch32_m32", "WITH (m = 32, ef_construction = 128)"),
    ],
)
def test_an_index_of_older_storage_or_graph_is_replaced_on_migrate(old: str, graph: str) -> None:
    """A site upgraded from an earlier vector index ends with only the halfvec one for that
    model (built by the next migrate's ``embedding_indexes_ensure``); another model's index is
    untouched, and ensuring again keeps the new one."""
    clip, other = "clip-vit-base-patch32", "align-base"
    with connection.cursor() as cursor:
        cursor.execute(f'DROP INDEX "{hnsw_index_name(clip)}"')
        cursor.execute(
            f'CREATE INDEX "{old}" ON "{partition_name(clip)}" USING hnsw '
            f"((vector::vector(512)) vector_cosine_ops) {graph}"
        )
    embedding_indexes_ensure(model_ids=[clip])
    embedding_indexes_ensure(model_ids=[clip])
    clip_indexes = {
        name: definition
        for name, definition in hnsw_indexes().items()
        if name.startswith("search_emb_hnsw_clip_vit_base_patch32")
    }
    assert list(clip_indexes) == [hnsw_index_name(clip)]
    assert "halfvec_cosine_ops" in clip_indexes[hnsw_index_name(clip)]
    assert hnsw_index_name(other) in hnsw_indexes()


def test_build_memory_holds_the_graph_within_the_database_servers_share() -> None:
    cap = 16 * 2**30
    small = hnsw_build_memory(rows=1_000, dim=512, cap=cap)
    million = hnsw_build_memory(rows=1_000_000, dim=512, cap=cap)
    assert small == 64 * 2**20  # the floor
    # 2 bytes a dimension (halfvec), 2*m neighbours of 16 bytes, bookkeeping, 25 % upper layers
    assert million == int(1_000_000 * (1024 + 1024 + 128) * 1.25)
    assert million > 2**30  # more than the old fixed 1GB, which a 1M graph overflowed
    assert hnsw_build_memory(rows=1_000_000, dim=512, cap=2**30) == 2**30


def test_build_memory_cap_is_the_database_servers_not_this_hosts(settings) -> None:
    """Without HNSW_BUILD_MEMORY, the cap is what the server itself says (the larger of its
    maintenance_work_mem and shared_buffers), whatever memory the host running migrate has;
    HNSW_BUILD_MEMORY, in PostgreSQL's units, overrides it."""
    settings.HNSW_BUILD_MEMORY = ""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL maintenance_work_mem = '96MB'")
        cursor.execute("SELECT pg_size_bytes(current_setting('shared_buffers'))")
        shared_buffers = cursor.fetchone()[0]
        assert hnsw_build_memory_cap(cursor) == max(96 * 2**20, shared_buffers)
        cursor.execute("SET LOCAL maintenance_work_mem = '40GB'")
        assert hnsw_build_memory_cap(cursor) == 40 * 2**30
        settings.HNSW_BUILD_MEMORY = "3GB"
        assert hnsw_build_memory_cap(cursor) == 3 * 2**30


def plan_of(queryset: object) -> str:
    plan = queryset.explain()  # type: ignore[attr-defined]
    # Keep failure messages readable: drop the hundreds of query-vector floats.
    return re.sub(r"'\[[^\]]*\]'", "'[...]'", plan)


def assert_reranked_from_index(plan: str, model_id: str) -> None:
    """The plan takes candidates from the model's halfvec index, ordered by the halfvec
    distance, in an InitPlan (run once), and sorts them by the exact distance of the full
    vectors."""
    dim = MODELS[model_id].dim
    scan = f"Index Scan using {hnsw_index_name(model_id)}"
    assert scan in plan, plan
    assert f"Order By: ((vector)::halfvec({dim}) <=> '[...]'::halfvec)" in plan, plan
    rerank = re.search(r"Sort Key: \(\((\w+\.)?vector <=> '\[\.\.\.\]'::vector\)\)", plan)
    assert rerank is not None, plan
    # The candidate query is printed as the InitPlan, above the rerank that reads its ids.
    assert 0 <= plan.find("InitPlan") < plan.index(scan) < rerank.start(), plan


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_top_k_query_of_each_model_can_use_its_index(model_id: str) -> None:
    dim = MODELS[model_id].dim
    images = ImageFactory.create_batch(3, dataset=True)
    # Rows of every other model share the table: the plan must pick this model's index.
    for other in MODELS:
        embeddings_store(
            model_id=other,
            image_ids=[i.pk for i in images],
            vectors=unit_rows(3, MODELS[other].dim),
        )
    query = embeddings_nearest(model_id=model_id, vector=unit_rows(1, dim, seed=1)[0], k=10)
    with connection.cursor() as cursor:
        # On 3 rows scanning and sorting is cheaper; with sorting priced out, the planner can
        # only give this order from the HNSW index, and only if the query's expression and
        # predicate match the index exactly.
        cursor.execute("SET LOCAL enable_sort = off")
    assert_reranked_from_index(plan_of(query), model_id)


@pytest.mark.slow  # an HNSW index over thousands of vectors
def test_planner_chooses_the_index_on_its_own_at_realistic_size(fresh_embedding_files) -> None:
    model_id = "clip-vit-base-patch32"
    images = ImageFactory.build_batch(3000, dataset=True, file="x.jpg")
    Image.objects.bulk_create(images)
    embeddings_store(
        model_id=model_id, image_ids=[i.pk for i in images], vectors=unit_rows(3000, 512)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE search_imageembedding")
    plan = plan_of(embeddings_nearest(model_id=model_id, vector=unit_rows(1, 512, 5)[0], k=10))
    assert_reranked_from_index(plan, model_id)


def test_exact_nearest_returns_the_closest_vectors_in_order() -> None:
    model_id = "clip-vit-base-patch32"
    images = ImageFactory.create_batch(20, dataset=True)
    vectors = unit_rows(20, 512, seed=3)
    embeddings_store(model_id=model_id, image_ids=[i.pk for i in images], vectors=vectors)
    query = vectors[7] + 0.01 * unit_rows(1, 512, seed=4)[0]
    found = embeddings_nearest(model_id=model_id, vector=query, k=5, exact=True)
    assert "hnsw" not in plan_of(found)
    got = [e.image_id for e in found]
    expected = np.argsort(-(vectors @ (query / np.linalg.norm(query))))[:5]
    assert got == [images[i].pk for i in expected]


def test_wrong_dimension_is_rejected_with_a_clear_error() -> None:
    image = ImageFactory(dataset=True)
    with pytest.raises(EmbeddingDimensionError, match="512-dimensional.*got 640"):
        embeddings_store(
            model_id="clip-vit-base-patch32", image_ids=[image.pk], vectors=unit_rows(1, 640)
        )
    assert not ImageEmbedding.objects.exists()


def test_database_itself_rejects_a_wrong_dimension_for_the_model() -> None:
    image = ImageFactory(dataset=True)
    # Bypassing the service: the index's vector(512) cast still refuses a 640-d row.
    with pytest.raises(DataError, match="expected 512 dimensions"), transaction.atomic():
        ImageEmbedding.objects.create(
            image=image, model_id="clip-vit-base-patch32", vector=unit_rows(1, 640)[0]
        )


def test_duplicate_embedding_for_image_and_model_is_rejected() -> None:
    image = ImageFactory(dataset=True)
    vector = unit_rows(1, 512)[0]
    ImageEmbedding.objects.create(image=image, model_id="clip-vit-base-patch32", vector=vector)
    with pytest.raises(IntegrityError), transaction.atomic():
        ImageEmbedding.objects.create(image=image, model_id="clip-vit-base-patch32", vector=vector)
    # The same image may have one embedding per model.
    ImageEmbedding.objects.create(image=image, model_id="align-base", vector=unit_rows(1, 640)[0])


def test_storing_twice_keeps_one_embedding_and_marks_the_job_done() -> None:
    images = ImageFactory.create_batch(3, dataset=True)
    ids = [i.pk for i in images]
    first = embeddings_store(
        model_id="clip-vit-base-patch32", image_ids=ids, vectors=unit_rows(3, 512)
    )
    again = embeddings_store(
        model_id="clip-vit-base-patch32", image_ids=ids, vectors=unit_rows(3, 512, seed=9)
    )
    assert (first, again) == (3, 0)
    assert ImageEmbedding.objects.filter(model_id="clip-vit-base-patch32").count() == 3
    assert set(EmbeddingJob.objects.values_list("status", flat=True)) == {"done"}


def test_stored_vectors_are_l2_normalised() -> None:
    image = ImageFactory(dataset=True)
    embeddings_store(
        model_id="clip-vit-base-patch32", image_ids=[image.pk], vectors=3.0 * unit_rows(1, 512)
    )
    stored = np.asarray(ImageEmbedding.objects.get().vector)
    assert abs(np.linalg.norm(stored) - 1.0) < 1e-5


def test_non_finite_vectors_are_rejected() -> None:
    image = ImageFactory(dataset=True)
    bad = unit_rows(1, 512)
    bad[0, 3] = np.nan
    with pytest.raises(EmbeddingVectorsError, match="NaN"):
        embeddings_store(model_id="clip-vit-base-patch32", image_ids=[image.pk], vectors=bad)
