"""The search-latency data set: N clustered unit vectors stored as Flickr30k images of
clip-vit-base-patch32 by COPY, the HNSW index built after the load, reused by later runs."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import _harness
from bench._search.common import DIM, MODEL_ID, WARM_UP_QUERIES, mb

NOISE = 0.35  # as tests/search/test_search.py::clustered
# As many as Flickr30k's images have: every hit's captions are part of the API's answer.
CAPTIONS_PER_IMAGE = 5
LOAD_CHUNK = 50_000
DATASET_MARKER = "bench-search-dataset.json"


def print_header(args: argparse.Namespace, data_dir: Path) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT version(), current_setting('shared_buffers')")
        version, shared_buffers = cursor.fetchone()
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        (pgvector_version,) = cursor.fetchone()
    print(
        f"{version.split(' on ')[0]}, pgvector {pgvector_version}, shared_buffers="
        f"{shared_buffers}; numpy {np.__version__}; cpus={os.cpu_count()} "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')} "
        f"loadavg_1min={os.getloadavg()[0]:.2f}; data in {data_dir}",
        flush=True,
    )


@dataclass
class Dataset:
    size: int
    clusters: int
    matrix: np.ndarray  # (size, DIM) float32, unit rows, row i is image id i + 1
    queries: np.ndarray  # (queries, DIM) float32, unit rows, same distribution
    notes: list[str] = field(default_factory=list)


def data_chunks(size: int, *, clusters: int, seed: int) -> Iterator[np.ndarray]:
    """The data set's vectors: clustered like real image embeddings, row i is image id i + 1."""
    return _harness.clustered_unit_vectors(
        size, clusters=clusters, seed=seed, noise=NOISE, stream=1, chunk=LOAD_CHUNK
    )


def query_vectors(count: int, *, clusters: int, seed: int) -> np.ndarray:
    # Same centres as the data, fresh noise: a query lands near the images it describes.
    return next(
        _harness.clustered_unit_vectors(
            count, clusters=clusters, seed=seed, noise=NOISE, stream=2, chunk=count
        )
    )


def dataset_ensure(size: int, args: argparse.Namespace, data_dir: Path) -> Dataset:
    clusters = max(1, round(size / args.points_per_cluster))
    total_queries = args.queries + WARM_UP_QUERIES
    print(f"\n=== N={size:,}: {clusters} clusters, {args.queries} queries ===", flush=True)
    marker = data_dir / DATASET_MARKER
    wanted = {
        "size": size,
        "clusters": clusters,
        "seed": args.seed,
        "noise": NOISE,
        "captions_per_image": CAPTIONS_PER_IMAGE,
    }
    started = time.perf_counter()
    matrix = np.empty((size, DIM), dtype=np.float32)
    reuse = not args.reload and marker.exists() and json.loads(marker.read_text()) == wanted
    reuse = reuse and _stored_count() == size and _index_exists()
    notes: list[str] = []
    if reuse:
        offset = 0
        for rows in data_chunks(size, clusters=clusters, seed=args.seed):
            matrix[offset : offset + len(rows)] = rows
            offset += len(rows)
        notes.append("rows and HNSW index reused from an earlier run (--reload rebuilds)")
        print(f"  reusing the {size:,} stored rows; vectors regenerated in memory", flush=True)
    else:
        marker.unlink(missing_ok=True)
        notes += dataset_load(size, clusters=clusters, seed=args.seed, matrix=matrix)
        marker.write_text(json.dumps(wanted))
    notes.append(table_sizes())
    queries = query_vectors(total_queries, clusters=clusters, seed=args.seed)
    print(f"  data ready in {time.perf_counter() - started:.0f} s", flush=True)
    for note in notes:
        print(f"  {note}", flush=True)
    return Dataset(size=size, clusters=clusters, matrix=matrix, queries=queries, notes=notes)


def _stored_count() -> int:
    from workers.models import ImageEmbedding

    return ImageEmbedding.objects.filter(model_id=MODEL_ID).count()


def _index_exists() -> bool:
    from django.db import connection

    from workers.indexes import hnsw_index_name

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [hnsw_index_name(MODEL_ID)])
        return cursor.fetchone() is not None


def dataset_load(size: int, *, clusters: int, seed: int, matrix: np.ndarray) -> list[str]:
    """Replace every image with ``size`` data-set images and their embeddings, by COPY, then
    build the model's HNSW index on the full table (much faster than growing it row by row)."""
    from django.db import connection

    from gallery.models import Caption, Image
    from workers.indexes import (
        HNSW_EF_CONSTRUCTION,
        HNSW_M,
        hnsw_build_memory,
        hnsw_build_memory_cap,
        hnsw_index_name,
    )
    from workers.models import ImageEmbedding

    images = Image._meta.db_table
    embeddings = ImageEmbedding._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f'DROP INDEX IF EXISTS "{hnsw_index_name(MODEL_ID)}"')

    def kept(chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        # Each chunk stored is also kept in memory, for the in-memory methods and recall.
        offset = 0
        for rows in chunks:
            matrix[offset : offset + len(rows)] = rows
            offset += len(rows)
            yield rows
            print(f"  copied {offset:,}/{size:,}", end="\r", flush=True)
        print()

    started = time.perf_counter()
    _harness.fake_images_replace(size)  # row i is image id i + 1
    _harness.fake_captions_create(range(1, size + 1), per_image=CAPTIONS_PER_IMAGE)
    images_seconds = time.perf_counter() - started
    _harness.fake_embeddings_copy(
        model_id=MODEL_ID, chunks=kept(data_chunks(size, clusters=clusters, seed=seed))
    )
    copy_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM (ANALYZE) {images}")
        cursor.execute(f"VACUUM (ANALYZE) {Caption._meta.db_table}")
        cursor.execute(f"VACUUM (ANALYZE) {embeddings}")
    vacuum_seconds = time.perf_counter() - started

    build_seconds = product_index_build()
    with connection.cursor() as cursor:
        memory = hnsw_build_memory(rows=size, dim=512, cap=hnsw_build_memory_cap(cursor))
    return [
        f"COPY {size:,} images + embeddings: {copy_seconds:.0f} s "
        f"(images and {CAPTIONS_PER_IMAGE} captions each {images_seconds:.0f} s); "
        f"VACUUM ANALYZE {vacuum_seconds:.0f} s",
        f"HNSW build (m={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}, maintenance_work_mem="
        f"{memory / 2**20:,.0f}MB "
        "(workers.indexes.hnsw_build_memory), "
        f"max_parallel_maintenance_workers=1): {build_seconds:.1f} s",
    ]


def product_index_build() -> float:
    """Build the bench model's HNSW index as the product does (``embedding_indexes_ensure``, which
    sizes its own maintenance_work_mem to the graph) on 2 cores; the build's seconds."""
    from django.db import connection

    from workers.indexes import embedding_indexes_ensure

    with connection.cursor() as cursor:
        cursor.execute("SET max_parallel_maintenance_workers = 1")  # leader + 1 = 2 cores
        started = time.perf_counter()
        embedding_indexes_ensure(model_ids=[MODEL_ID])
        seconds = time.perf_counter() - started
        cursor.execute("RESET max_parallel_maintenance_workers")
        # Flush the build's writes now rather than in a checkpoint during the timed queries.
        cursor.execute("CHECKPOINT")
    return seconds


def table_sizes() -> str:
    from django.db import connection

    from gallery.models import Image
    from workers.indexes import hnsw_index_name
    from workers.models import ImageEmbedding

    table = ImageEmbedding._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            # Summed over the partitions (one per model): a partitioned table's own
            # relation is empty and has no TOAST.
            "SELECT sum(pg_relation_size(c.oid)), "
            "coalesce(sum(pg_total_relation_size(nullif(c.reltoastrelid, 0))), 0), "
            "sum(pg_indexes_size(c.oid)), pg_relation_size(%s::regclass), "
            "sum(pg_total_relation_size(c.oid)), pg_total_relation_size(%s::regclass) "
            "FROM pg_partition_tree(%s::regclass) t JOIN pg_class c ON c.oid = t.relid "
            "WHERE t.isleaf",
            [f'"{hnsw_index_name(MODEL_ID)}"', Image._meta.db_table, table],
        )
        heap, toast, indexes, hnsw, total, images = cursor.fetchone()
    return (
        f"sizes: embeddings heap {mb(heap)} + TOAST {mb(toast)} (vectors stored out of line) "
        f"+ indexes {mb(indexes)} (HNSW {mb(hnsw)}) = {mb(total)}; images table {mb(images)}"
    )
