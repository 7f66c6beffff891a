"""The per-model HNSW indexes on the one embedding table (see ``search.models``): their names,
creating the missing ones from the registry, and dropping one for a bulk load."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connections

from encoders.registry import MODELS, model_spec
from search.models import ImageEmbedding

HNSW_BUILD_MEMORY = "1GB"


def hnsw_index_name(model_id: str) -> str:
    return "search_emb_hnsw_" + model_id.replace("-", "_").replace(".", "_")


def embedding_indexes_ensure(
    *, using: str = "default", model_ids: Iterable[str] | None = None, concurrently: bool = False
) -> None:
    """Create the partial HNSW index of each registered model that lacks one.

    ``concurrently`` builds without blocking reads and writes of the table (other models keep
    being searched and embedded); it cannot run inside a transaction.
    """
    table = ImageEmbedding._meta.db_table
    mode = "CONCURRENTLY " if concurrently else ""
    with connections[using].cursor() as cursor:
        # HNSW builds many times faster when the whole graph fits in maintenance_work_mem
        # (PostgreSQL's 64 MB default holds ~20k 512-d vectors); it is a cap, not a reservation.
        cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)", [HNSW_BUILD_MEMORY])
        for model_id in model_ids or MODELS:
            spec = model_spec(model_id)
            cursor.execute(
                f'CREATE INDEX {mode}IF NOT EXISTS "{hnsw_index_name(model_id)}" ON "{table}" '
                f"USING hnsw ((vector::vector({spec.dim})) vector_cosine_ops) "
                f"WHERE model_id = %s",
                [model_id],
            )
        cursor.execute("RESET maintenance_work_mem")


def embedding_index_drop(*, model_id: str, using: str = "default") -> None:
    """Drop a model's HNSW index without blocking the table (for a bulk load, then rebuild)."""
    with connections[using].cursor() as cursor:
        cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{hnsw_index_name(model_id)}"')
