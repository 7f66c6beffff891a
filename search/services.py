"""Writes for embeddings: storing vectors and keeping one HNSW index per registered model."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from django.db import connections, transaction

from search.models import EmbeddingJob, ImageEmbedding
from workers.encoders.registry import MODELS, model_spec


class EmbeddingDimensionError(ValueError):
    """A vector's length does not match the dimension of the model it is stored for."""


def hnsw_index_name(model_id: str) -> str:
    return "search_emb_hnsw_" + model_id.replace("-", "_").replace(".", "_")


def embedding_indexes_ensure(
    *, using: str = "default", model_ids: Iterable[str] | None = None
) -> None:
    """Create the partial HNSW index of each registered model that lacks one."""
    table = ImageEmbedding._meta.db_table
    with connections[using].cursor() as cursor:
        for model_id in model_ids or MODELS:
            spec = model_spec(model_id)
            cursor.execute(
                f'CREATE INDEX IF NOT EXISTS "{hnsw_index_name(model_id)}" ON "{table}" '
                f"USING hnsw ((vector::vector({spec.dim})) vector_cosine_ops) "
                f"WHERE model_id = %s",
                [model_id],
            )


def _normalised_rows(model_id: str, vectors: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    dim = model_spec(model_id).dim
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        got = matrix.shape[1] if matrix.ndim == 2 else matrix.shape
        raise EmbeddingDimensionError(
            f"model {model_id!r} stores {dim}-dimensional vectors; got {got}"
        )
    if not np.isfinite(matrix).all():
        raise EmbeddingDimensionError(f"vectors for model {model_id!r} contain NaN or infinity")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms == 0).any():
        raise EmbeddingDimensionError(f"vectors for model {model_id!r} include an all-zero row")
    return matrix / norms


def embeddings_store(
    *, model_id: str, image_ids: Sequence[int], vectors: Sequence[Sequence[float]] | np.ndarray
) -> int:
    """Store one L2-normalised vector per image for ``model_id``, in one bulk statement.

    Images that already have an embedding for the model keep it (safe to run twice). Their
    jobs are marked done. Returns how many embeddings were newly stored.
    """
    if len(image_ids) != len(vectors):
        raise ValueError(f"{len(image_ids)} image ids but {len(vectors)} vectors")
    if not image_ids:
        return 0
    matrix = _normalised_rows(model_id, vectors)
    rows = [
        ImageEmbedding(image_id=image_id, model_id=model_id, vector=vector)
        for image_id, vector in zip(image_ids, matrix, strict=True)
    ]
    with transaction.atomic():
        before = ImageEmbedding.objects.filter(model_id=model_id, image_id__in=image_ids).count()
        ImageEmbedding.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
        after = ImageEmbedding.objects.filter(model_id=model_id, image_id__in=image_ids).count()
        jobs = [
            EmbeddingJob(image_id=image_id, model_id=model_id, status=EmbeddingJob.Status.DONE)
            for image_id in image_ids
        ]
        EmbeddingJob.objects.bulk_create(
            jobs,
            update_conflicts=True,
            unique_fields=["image", "model_id"],
            update_fields=["status", "error", "updated_at"],
        )
    return after - before
