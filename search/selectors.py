"""Reads for search: nearest images to a query vector on a model's HNSW index."""

from __future__ import annotations

from collections.abc import Sequence

from django.db.models import QuerySet
from django.db.models.functions import Cast
from pgvector.django import CosineDistance, VectorField

from search.models import ImageEmbedding
from workers.encoders.registry import model_spec


def embeddings_nearest(
    *, model_id: str, vector: Sequence[float], k: int = 20
) -> QuerySet[ImageEmbedding]:
    """The ``k`` embeddings of ``model_id`` closest to ``vector`` by cosine distance.

    The ORDER BY expression repeats the partial index's ``vector::vector(dim)`` cast and the
    WHERE repeats its predicate, which is what lets PostgreSQL answer from the HNSW index.
    Each row carries ``distance`` (cosine distance, 0 = identical).
    """
    dim = model_spec(model_id).dim
    typed = Cast("vector", VectorField(dimensions=dim))
    return (
        ImageEmbedding.objects.filter(model_id=model_id)
        .annotate(distance=CosineDistance(typed, list(vector)))
        .order_by("distance")[:k]
    )
