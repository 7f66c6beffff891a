"""Reads for search: nearest images to a query vector on a model's HNSW index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from django.db.models import QuerySet
from django.db.models.functions import Cast
from pgvector.django import CosineDistance, VectorField

from gallery.models import Image
from search.models import EmbeddingJob, EmbeddingModel, ImageEmbedding
from workers.encoders.registry import model_spec


def embeddings_nearest(
    *, model_id: str, vector: Sequence[float], k: int = 20, exact: bool = False
) -> QuerySet[ImageEmbedding]:
    """The ``k`` embeddings of ``model_id`` closest to ``vector`` by cosine distance.

    The ORDER BY expression repeats the partial index's ``vector::vector(dim)`` cast and the
    WHERE repeats its predicate, which is what lets PostgreSQL answer from the HNSW index.
    ``exact`` orders by the un-cast column instead, which no index serves: a full scan that
    returns the true top k (for evaluation, and for filters too selective for the index).
    Each row carries ``distance`` (cosine distance, 0 = identical).
    """
    dim = model_spec(model_id).dim
    typed = "vector" if exact else Cast("vector", VectorField(dimensions=dim))
    return (
        ImageEmbedding.objects.filter(model_id=model_id)
        .annotate(distance=CosineDistance(typed, list(vector)))
        .order_by("distance")[:k]
    )


@dataclass(frozen=True)
class EmbeddingProgress:
    model_id: str
    total: int
    done: int
    failed: int
    # Images still to embed: no embedding and not failed (queued, blocked or not yet seen).
    pending: int

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "percent": round(self.percent, 1)}


def embedding_progress(*, model_id: str) -> EmbeddingProgress:
    total = Image.objects.count()
    done = ImageEmbedding.objects.filter(model_id=model_id).count()
    failed = EmbeddingJob.objects.filter(
        model_id=model_id, status=EmbeddingJob.Status.FAILED
    ).count()
    return EmbeddingProgress(model_id, total, done, failed, max(total - done - failed, 0))


def embedding_models_enabled() -> list[str]:
    return list(EmbeddingModel.objects.filter(enabled=True).values_list("model_id", flat=True))


def embedding_model_default() -> str | None:
    return EmbeddingModel.objects.filter(is_default=True).values_list("model_id", flat=True).first()


def embedding_jobs_failed(*, model_id: str, limit: int = 20) -> list[tuple[int, str]]:
    return list(
        EmbeddingJob.objects.filter(model_id=model_id, status=EmbeddingJob.Status.FAILED)
        .order_by("-updated_at")
        .values_list("image_id", "error")[:limit]
    )
