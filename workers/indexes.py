"""The per-model HNSW indexes on the one embedding table (see ``workers.models``): their names,
creating the missing ones from the registry, and dropping one for a bulk load."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from django.db import connections
from django.db.backends.utils import CursorWrapper

from encoders.registry import MODELS, model_spec
from workers.models import ImageEmbedding

# Each model's index holds its vectors as halfvec (2-byte floats): half the size of a vector
# index (1.6 GB instead of 2.6 GB at 1M 512-d rows, 156 MB instead of 260 MB at 100k), so
# twice as much of it stays in memory, and about as accurate at the same ef_search (recall@10
# at ef_search 40: 0.953 vs 0.949 at 1M blobs; 0.987 vs 0.993 at 100k, where ef_search 100
# gives 0.993); search ranks the index's nearest candidates again on the full vectors
# (``search.ranking.embeddings_ranked``), so scores keep full precision. Graph parameters:
# pgvector's defaults (m=16, ef_construction=64) reach recall@10 0.80 at 1M clustered vectors
# with ef_search 40; m=32 / ef_construction=128 reach 0.95 at the same query cost, for about
# twice the build time (bench/README.md, ann_recall.py).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 128
HNSW_OPCLASS = "halfvec_cosine_ops"
# Part of every index name, so that changing the storage or the parameters builds new indexes
# on the next migrate (and drops the old ones) instead of leaving existing sites on the old
# graphs: "hv32" is halfvec with m=32; earlier sites have "m32" (vector, m=32) or no tag
# (vector, m=16).
_GRAPH_TAG = f"hv{HNSW_M}"
_NAME_PREFIX = "search_emb_hnsw_"

# maintenance_work_mem for a build: the whole graph should fit (a build that spills is several
# times slower: 174 s instead of 32 s at 100k vectors), within a share of this machine's memory.
HNSW_BUILD_MEMORY_MIN = 64 * 2**20
HNSW_BUILD_MEMORY_SHARE = 0.5


def hnsw_index_name(model_id: str) -> str:
    return f"{_NAME_PREFIX}{model_id.replace('-', '_').replace('.', '_')}_{_GRAPH_TAG}"


def hnsw_build_memory(*, rows: int, dim: int) -> int:
    """Bytes of maintenance_work_mem that hold the graph of ``rows`` halfvecs of ``dim``
    dimensions: each element keeps its vector (2 bytes a dimension) and up to 2*m neighbours
    at layer 0, each a 16-byte candidate (pointer, distance, flag), plus upper layers and
    bookkeeping (~25 % more), capped at a share of the physical memory. Counting 8 bytes a
    neighbour (1.94 GiB for 1M 512-d rows) made a 1M build spill to pgvector's slow on-disk
    phase after ~900k rows."""
    graph = int(rows * (dim * 2 + 2 * HNSW_M * 16 + 128) * 1.25)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every platform names these
        physical = 4 * 2**30
    return max(HNSW_BUILD_MEMORY_MIN, min(graph, int(physical * HNSW_BUILD_MEMORY_SHARE)))


def embedding_indexes_ensure(
    *, using: str = "default", model_ids: Iterable[str] | None = None, concurrently: bool = False
) -> None:
    """Create the partial HNSW index of each registered model that lacks one, then drop the
    model's indexes built with other storage or graph parameters (searches used them meanwhile).

    ``concurrently`` builds without blocking reads and writes of the table (other models keep
    being searched and embedded); it cannot run inside a transaction.
    """
    table = ImageEmbedding._meta.db_table
    mode = "CONCURRENTLY " if concurrently else ""
    with connections[using].cursor() as cursor:
        for model_id in model_ids or MODELS:
            spec = model_spec(model_id)
            name = hnsw_index_name(model_id)
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
            if not cursor.fetchone()[0]:
                cursor.execute(f'SELECT count(*) FROM "{table}" WHERE model_id = %s', [model_id])
                memory = hnsw_build_memory(rows=cursor.fetchone()[0], dim=spec.dim)
                cursor.execute(
                    "SELECT set_config('maintenance_work_mem', %s, false)", [f"{memory // 1024}kB"]
                )
                cursor.execute(
                    f'CREATE INDEX {mode}IF NOT EXISTS "{name}" ON "{table}" '
                    f"USING hnsw ((vector::halfvec({spec.dim})) {HNSW_OPCLASS}) "
                    f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) "
                    f"WHERE model_id = %s",
                    [model_id],
                )
                cursor.execute("RESET maintenance_work_mem")
            for old in _older_indexes(cursor, table=table, model_id=model_id, keep=name):
                cursor.execute(f'DROP INDEX {mode}IF EXISTS "{old}"')


def _older_indexes(cursor: CursorWrapper, *, table: str, model_id: str, keep: str) -> list[str]:
    """This model's HNSW indexes under the names of earlier storage or graph parameters: no tag
    (vector, m=16), "_m<m>" (vector) or "_hv<m>" (halfvec); never ``keep``."""
    base = _NAME_PREFIX + model_id.replace("-", "_").replace(".", "_")
    cursor.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexname <> %s "
        "AND indexname ~ %s",
        [table, keep, "^" + re.escape(base) + "(_(m|hv)[0-9]+)?$"],
    )
    return [row[0] for row in cursor.fetchall()]


def embedding_index_drop(*, model_id: str, using: str = "default") -> None:
    """Drop a model's HNSW index without blocking the table (for a bulk load, then rebuild)."""
    with connections[using].cursor() as cursor:
        cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{hnsw_index_name(model_id)}"')
