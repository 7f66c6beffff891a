"""Reads for search: nearest images to a query vector on a model's HNSW index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db.models import QuerySet
from django.db.models.functions import Cast
from pgvector.django import CosineDistance, VectorField

from encoders import UnknownModelError
from encoders.registry import model_spec
from gallery.models import Image
from gallery.selectors import collections_visible_to, images_visible_to
from search.models import EmbeddingJob, EmbeddingModel, ImageEmbedding


def embeddings_ranked(
    *, model_id: str, vector: Sequence[float], exact: bool = False
) -> QuerySet[ImageEmbedding]:
    """Embeddings of ``model_id`` ordered by cosine distance to ``vector`` (unsliced).

    The ORDER BY expression repeats the partial index's ``vector::vector(dim)`` cast and the
    WHERE repeats its predicate, which is what lets PostgreSQL answer from the HNSW index.
    ``exact`` orders by the un-cast column instead, which no index serves: a full scan that
    returns the true order (for evaluation, and for filters too selective for the index).
    Each row carries ``distance`` (cosine distance, 0 = identical).
    """
    dim = model_spec(model_id).dim
    typed = "vector" if exact else Cast("vector", VectorField(dimensions=dim))
    return (
        ImageEmbedding.objects.filter(model_id=model_id)
        .annotate(distance=CosineDistance(typed, list(vector)))
        .order_by("distance")
    )


def embeddings_nearest(
    *, model_id: str, vector: Sequence[float], k: int = 20, exact: bool = False
) -> QuerySet[ImageEmbedding]:
    """The ``k`` embeddings of ``model_id`` closest to ``vector`` (see ``embeddings_ranked``)."""
    return embeddings_ranked(model_id=model_id, vector=vector, exact=exact)[:k]


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


# --- Search -------------------------------------------------------------------------------

MAX_K = 100
MAX_OFFSET = 1000
MAX_QUERY_CHARS = 1000
# A filter matching at most this many embeddings is answered exactly (filter first, then sort
# the few rows), which is both faster and complete; above it, the HNSW index with iterative
# scans. pgvector's iterative scan gives up after hnsw.max_scan_tuples (20,000 by default), so
# a filter much more selective than k / 20,000 of the rows could otherwise come back short.
EXACT_SEARCH_MAX_ROWS = 20_000


class SearchError(ValueError):
    """A search that cannot run, with a message for the user and the HTTP status to use."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SearchFilters:
    source: str | None = None  # "dataset" | "mine" | None (everything visible)
    collection_id: int | None = None
    uploaded_after: datetime | None = None
    uploaded_before: datetime | None = None

    @property
    def active(self) -> bool:
        return any(
            value is not None
            for value in (
                self.source,
                self.collection_id,
                self.uploaded_after,
                self.uploaded_before,
            )
        )


@dataclass(frozen=True)
class SearchHit:
    image: Image
    score: float  # cosine similarity, 1 = identical direction


@dataclass(frozen=True)
class SearchPage:
    model_id: str
    hits: list[SearchHit]
    k: int
    offset: int
    exact: bool

    @property
    def next_offset(self) -> int | None:
        more = len(self.hits) == self.k and self.offset + self.k < MAX_OFFSET
        return self.offset + self.k if more else None


def search_models_available() -> list[str]:
    """Enabled models that have at least one embedding, default first."""
    default = embedding_model_default()
    enabled = embedding_models_enabled()
    with_rows = [m for m in enabled if ImageEmbedding.objects.filter(model_id=m).exists()]
    return sorted(with_rows, key=lambda m: (m != default, m))


def search_model_resolve(model_id: str | None) -> str:
    """The model a search should use: the requested one if usable, else the default."""
    if not model_id:
        model_id = embedding_model_default()
        if model_id is None:
            raise SearchError("no search model is configured; ask an admin to enable one", 503)
    try:
        model_spec(model_id)
    except UnknownModelError as exc:
        raise SearchError(str(exc)) from exc
    if model_id not in embedding_models_enabled():
        raise SearchError(f"model {model_id!r} is not enabled on this site")
    if not ImageEmbedding.objects.filter(model_id=model_id).exists():
        raise SearchError(f"model {model_id!r} has no embeddings yet; try again later", 409)
    return model_id


def search_validate_text(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        raise SearchError("the query is empty; type what you are looking for")
    if len(text) > MAX_QUERY_CHARS:
        raise SearchError(f"the query is {len(text)} characters; the limit is {MAX_QUERY_CHARS}")
    return text


def search_validate_page(k: int, offset: int) -> None:
    if not 1 <= k <= MAX_K:
        raise SearchError(f"k must be between 1 and {MAX_K}")
    if not 0 <= offset <= MAX_OFFSET:
        raise SearchError(f"offset must be between 0 and {MAX_OFFSET}")


def _filtered_images(
    *, user: AbstractBaseUser | AnonymousUser, filters: SearchFilters
) -> QuerySet[Image]:
    images = images_visible_to(user=user)
    if filters.source == "dataset":
        images = images.filter(source=Image.Source.FLICKR30K)
    elif filters.source == "mine":
        if not user.is_authenticated:
            raise SearchError("sign in to search your uploads", 401)
        images = images.filter(owner_id=user.pk)
    elif filters.source is not None:
        raise SearchError("source must be 'dataset' or 'mine'")
    if filters.collection_id is not None:
        collection = collections_visible_to(user=user).filter(pk=filters.collection_id).first()
        if collection is None:
            raise SearchError("no such collection", 404)
        images = images.filter(collection_items__collection=collection)
    if filters.uploaded_after is not None:
        images = images.filter(created_at__gte=filters.uploaded_after)
    if filters.uploaded_before is not None:
        images = images.filter(created_at__lt=filters.uploaded_before)
    return images


def images_search_by_vector(
    *,
    user: AbstractBaseUser | AnonymousUser,
    model_id: str,
    vector: Sequence[float],
    k: int = 20,
    offset: int = 0,
    filters: SearchFilters | None = None,
    exclude_image_id: int | None = None,
    min_score: float | None = None,
) -> SearchPage:
    """Images visible to ``user`` nearest to ``vector``, best first.

    Unfiltered (beyond visibility) searches go through the model's HNSW index; pgvector's
    iterative scan keeps scanning past rows the WHERE drops, so a page is full whenever enough
    visible images exist. Filters matching few rows are answered exactly instead.
    """
    search_validate_page(k, offset)
    ranked, exact = images_search_queryset(
        user=user, model_id=model_id, vector=vector, filters=filters,
        exclude_image_id=exclude_image_id,
    )  # fmt: skip
    rows = list(ranked[offset : offset + k])
    hits = [SearchHit(image=row.image, score=1.0 - float(row.distance)) for row in rows]
    if min_score is not None:
        hits = [hit for hit in hits if hit.score >= min_score]
    return SearchPage(model_id=model_id, hits=hits, k=k, offset=offset, exact=exact)


def images_search_queryset(
    *,
    user: AbstractBaseUser | AnonymousUser,
    model_id: str,
    vector: Sequence[float],
    filters: SearchFilters | None = None,
    exclude_image_id: int | None = None,
) -> tuple[QuerySet[ImageEmbedding], bool]:
    """The ranked, visibility-scoped query behind a search, and whether it is exact."""
    filters = filters or SearchFilters()
    images = _filtered_images(user=user, filters=filters)
    if exclude_image_id is not None:
        images = images.exclude(pk=exclude_image_id)
    candidates = ImageEmbedding.objects.filter(model_id=model_id, image__in=images)
    exact = filters.active and _at_most(candidates, EXACT_SEARCH_MAX_ROWS)
    ranked = (
        embeddings_ranked(model_id=model_id, vector=vector, exact=exact)
        .filter(image__in=images)
        .select_related("image")
        .prefetch_related("image__captions")
        .defer("vector")
    )
    return ranked, exact


def _at_most(queryset: QuerySet, limit: int) -> bool:
    # Counting stops at limit + 1 rows, so a broad filter costs no full count.
    return queryset.values("pk")[: limit + 1].count() <= limit


def image_embedding_stored(*, image_id: int, model_id: str) -> list[float] | None:
    row = ImageEmbedding.objects.filter(image_id=image_id, model_id=model_id).first()
    return None if row is None else list(row.vector)
