"""Reads for search: nearest images to a query vector on a model's HNSW index."""

from __future__ import annotations

import functools
import itertools
import logging
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict, Unpack

import numpy as np
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.postgres.expressions import ArraySubquery
from django.core.files.uploadedfile import UploadedFile
from django.db import connection
from django.db.models import F, OuterRef, QuerySet, Value, Window
from django.db.models.functions import Cast, RowNumber
from pgvector.django import CosineDistance, HalfVectorField
from PIL.Image import Image as PILImage

from encoders import EncoderError, UnknownModelError, WeightsUnavailableError
from encoders.registry import model_spec
from gallery.decoding import image_query_decode
from gallery.models import Caption, Image
from gallery.selectors import collections_visible_to, image_get_visible, images_visible_to
from kernel.errors import (
    Conflict,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    TooManyRequests,
    Unavailable,
)
from search import encoding
from search.fusion import FUSE, RRF_K
from search.models import EvaluationRun
from workers.models import EmbeddingJob, EmbeddingModel, ImageEmbedding
from workers.selectors import (
    embedding_model_unavailable,
    embedding_progress,
    image_embedding_stored,
)

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

# A query vector: plain numbers, or the 1-D array the encoders return.
QueryVector: TypeAlias = Sequence[float] | np.ndarray


class EmbeddingDistance(TypedDict):
    distance: float  # cosine distance to the query vector, 0 = identical


# What embeddings_ranked returns: embeddings that carry their ``distance``.
RankedEmbeddings: TypeAlias = "QuerySet[WithAnnotations[ImageEmbedding, EmbeddingDistance]]"


class CaptionTexts(TypedDict):
    caption_texts: list[str]  # the image's caption texts, in order


class _HitRow(EmbeddingDistance, CaptionTexts):
    pass


# What a search ranks: embeddings with their distance, their image and its caption texts.
RankedHits: TypeAlias = "QuerySet[WithAnnotations[ImageEmbedding, _HitRow]]"


class _SearchScope(TypedDict):
    """Which images a search may return, beyond its model and vector."""

    user: User | AnonymousUser
    filters: SearchFilters | None
    exclude_image_id: int | None


class _SearchQuery(_SearchScope):
    model_id: str
    vector: QueryVector


logger = logging.getLogger(__name__)


# How many candidates an approximate ranking takes from a model's halfvec HNSW index before
# ranking them exactly on the full vectors (at least the rows a page needs). The index's
# half-precision distances misorder near-ties, and the scores must be full-precision cosines.
# Recall is set by hnsw.ef_search, not by this depth: 50, 100 and 200 candidates gave the same
# recall@10 at 100k (both generators), and 21 to 100 the same at 31,783 (0.988), while each
# candidate costs a read of its full vector: a page of 20 took 5.9 ms with 40, 7.4 ms with 100
# (bench/README.md). 40 is pgvector's default ef_search, what one pass of the index holds.
RERANK_CANDIDATES = 40


def embeddings_ranked(
    *,
    model_id: str,
    vector: QueryVector,
    exact: bool = False,
    images: QuerySet[Image] | None = None,
    depth: int = 0,
) -> RankedEmbeddings:
    """Embeddings of ``model_id`` (of ``images`` only, if given) ordered by cosine distance to
    ``vector``. Each row carries ``distance``: the cosine distance of its full-precision vector
    (0 = identical), on either path.

    Approximate (the default): the nearest max(RERANK_CANDIDATES, ``depth``) by the model's
    halfvec HNSW index, ranked again exactly on the full vectors (pgvector's re-rank pattern).
    The candidate query repeats the partial index's ``vector::halfvec(dim)`` cast and its WHERE,
    which is what lets PostgreSQL answer it from the index, and it holds the ``images`` filter
    itself, so that an iterative index scan skips rows outside them before its LIMIT. At most
    that many rows come back: ``depth`` is how many the caller reads (offset + page).

    ``exact`` orders every row by the full vectors instead, which no index serves: a full scan
    that returns the true order (for evaluation, and for filters too selective for the index).
    """
    embeddings = ImageEmbedding.objects.filter(model_id=model_id)
    if images is not None:
        embeddings = embeddings.filter(image__in=images)
    # One literal serves both distances: PostgreSQL reads it as a halfvec beside the halfvec
    # cast and as a vector beside the column (what pgvector's own Value(to_text()) relies on),
    # and writing out 512 floats is the costliest part of building the statement.
    query = Value(_vector_text(vector))
    if not exact:
        half = Cast("vector", HalfVectorField(dimensions=model_spec(model_id).dim))
        nearest = embeddings.order_by(CosineDistance(half, query))
        candidates = nearest.values("pk")[: max(RERANK_CANDIDATES, depth)]
        embeddings = ImageEmbedding.objects.filter(pk__in=candidates)
    return embeddings.annotate(distance=CosineDistance("vector", query)).order_by("distance")


def _vector_text(vector: QueryVector) -> str:
    """pgvector's text form of a query vector, '[x,y,...]'."""
    values = np.asarray(vector, dtype=np.float64).ravel().tolist()
    return "[" + ",".join(map(repr, values)) + "]"


def embeddings_nearest(
    *, model_id: str, vector: QueryVector, k: int = 20, exact: bool = False
) -> RankedEmbeddings:
    """The ``k`` embeddings of ``model_id`` closest to ``vector`` (see ``embeddings_ranked``)."""
    return embeddings_ranked(model_id=model_id, vector=vector, exact=exact, depth=k)[:k]


def evaluation_runs_latest(
    *, model_ids: Sequence[str], per_model: int = 3
) -> dict[str, list[EvaluationRun]]:
    """The ``per_model`` newest single-model evaluation runs of each of ``model_ids``, newest
    first, in one query (a window numbering each model's runs); models without runs are absent.
    """
    numbered = EvaluationRun.objects.filter(fusion="", models__in=list(model_ids)).annotate(
        newness=Window(
            RowNumber(),
            partition_by=[F("models")],
            order_by=[F("created_at").desc(), F("id").desc()],
        )
    )
    runs: dict[str, list[EvaluationRun]] = {}
    for run in numbered.filter(newness__lte=per_model).order_by("models", "newness"):
        runs.setdefault(run.models, []).append(run)
    return runs


# --- Search -------------------------------------------------------------------------------

MAX_K = 100
MAX_OFFSET = 1000
MAX_QUERY_CHARS = 1000
# A filter matching at most this many embeddings is answered exactly (filter first, then sort
# the few rows), which is both faster and complete; above it, the HNSW index with iterative
# scans. pgvector's iterative scan gives up after hnsw.max_scan_tuples (20,000 by default), so
# a filter much more selective than k / 20,000 of the rows could otherwise come back short.
EXACT_SEARCH_MAX_ROWS = 20_000
# Decoding and embedding a query image takes memory and CPU in the web process; a few at once
# per process, and a request that cannot get a slot soon is told to come back (429).
IMAGE_QUERY_CONCURRENCY = 2
IMAGE_QUERY_WAIT_SECONDS = 10.0
_image_query_slots = threading.BoundedSemaphore(IMAGE_QUERY_CONCURRENCY)
# sort="date": the relevant results, newest first. "Relevant" is a score of at least
# DATE_SORT_CUTOFF of the query's best hit (best - 20% of |best|), the same scale the result
# bars show, so "newest" lists the cards whose bar is at least 80% full (before rounding). Not
# an absolute cosine: cosine levels differ by model and by kind of query (CLIP text->image
# matches score about 0.3, image->image about 0.9), and no one absolute value suits both. A
# fixed fraction rather than a setting, so a shared link lists the same images on every site
# and the API and the pages agree. 0.8 is a starting point, not a measured optimum. The
# relevant set is drawn from the best DATE_SORT_CANDIDATES by relevance (one index scan of that
# depth), so date order never reaches a weak match deep in the ranking. A fused search's
# scores are fused ranks (1 = first for every model), so there the cut-off keeps about the top
# 16 the models agree on (2/(60+r) >= 0.8 * 2/61).
SEARCH_SORTS = ("relevance", "date")
DATE_SORT_CUTOFF = 0.8
DATE_SORT_CANDIDATES = 500


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
    captions: tuple[str, ...]  # the image's caption texts, in order


def _caption_texts(image: str) -> ArraySubquery:
    """The caption texts of the image ``image`` refers to, in order, as one array column: a
    page of hits then costs one query, not a second one plus the ORM's prefetch work per hit
    (about a fifth of a cached query's time in the API)."""
    captions = Caption.objects.filter(image_id=OuterRef(image)).order_by("position", "pk")
    return ArraySubquery(captions.values("text"))


def _images_with_captions(
    image_ids: Sequence[int],
) -> dict[int, WithAnnotations[Image, CaptionTexts]]:
    """``Image.objects.in_bulk`` whose images carry ``caption_texts`` (see ``_caption_texts``)."""
    return Image.objects.annotate(caption_texts=_caption_texts("pk")).in_bulk(image_ids)


@dataclass(frozen=True)
class SearchCoverage:
    """How many of the images a viewer can see the model has embedded (during a backfill)."""

    indexed: int
    total: int


@dataclass(frozen=True)
class SearchPage:
    model_id: str
    hits: list[SearchHit]
    k: int
    offset: int
    exact: bool
    # Whether a further match exists after this page (one row more than k was fetched).
    has_more: bool = False
    # None when the model has no embedding work pending: every image is searched.
    coverage: SearchCoverage | None = None
    # A fused search ("A+B"): the fusion its scores come from (SEARCH_FUSION); "" otherwise.
    fusion: str = ""
    # "relevance" (best first) or "date" (newest first among hits scoring at least ``cutoff``,
    # which is relative to ``best``, the query's best score; see DATE_SORT_CUTOFF).
    sort: str = "relevance"
    best: float | None = None
    cutoff: float | None = None

    @property
    def next_offset(self) -> int | None:
        following = self.offset + self.k
        return following if self.has_more and following <= MAX_OFFSET else None


@dataclass(frozen=True)
class _EnabledModel:
    model_id: str
    is_default: bool
    unavailable_reason: str
    has_embeddings: bool
    has_pending: bool  # embedding jobs waiting: a search then reports its coverage


def _models_enabled_state() -> dict[str, _EnabledModel]:
    """Every enabled model with what a search asks of it, in one query: whether it is the
    default (the default is always enabled), why workers cannot load it, whether it has
    embeddings and whether it has embedding work pending. Read fresh on each call, so a model
    staff enable or disable is seen at once.

    The statement is written out because every search runs it: built by the ORM it cost
    0.53 ms of CPU per call, against 0.07 ms for the database to answer (31,783 images).
    """
    models = EmbeddingModel._meta.db_table
    embeddings = ImageEmbedding._meta.db_table
    jobs = EmbeddingJob._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT m.model_id, m.is_default, m.unavailable_reason,
                   EXISTS (SELECT 1 FROM "{embeddings}" e WHERE e.model_id = m.model_id),
                   EXISTS (SELECT 1 FROM "{jobs}" j
                           WHERE j.model_id = m.model_id AND j.status = %s)
            FROM "{models}" m
            WHERE m.enabled
            """,
            [EmbeddingJob.Status.PENDING],
        )
        rows = cursor.fetchall()
    return {row[0]: _EnabledModel(*row) for row in rows}


def _default_of(models: dict[str, _EnabledModel]) -> str | None:
    return next((m for m in sorted(models) if models[m].is_default), None)


def search_models_available() -> list[str]:
    """Enabled models that have at least one embedding, default first."""
    models = _models_enabled_state()
    default = _default_of(models)
    with_rows = [m for m, state in models.items() if state.has_embeddings]
    return sorted(with_rows, key=lambda m: (m != default, m))


def model_unavailable_message(model_id: str) -> str:
    """What search and uploads tell users when a model's weights cannot be loaded."""
    return (
        f"The model {model_id} is not available on this server: its weights could not be "
        f'loaded. An admin can set EMBEDDING_MODEL_SOURCES="{model_id}=/path/to/weights" '
        "(a folder written by save_pretrained) or give the server access to the Hugging Face "
        "hub, then restart the site."
    )


def search_model_resolve(model_id: str | None) -> str:
    """The model a search should use: the requested one if usable, else the default."""
    return _model_resolve(model_id, _models_enabled_state())


def _model_resolve(model_id: str | None, models: dict[str, _EnabledModel]) -> str:
    # Every check below reads the one snapshot of ``models`` (one query per search).
    if not model_id:
        model_id = _default_of(models)
        if model_id is None:
            raise Unavailable("no search model is configured; ask an admin to enable one")
    if len(_model_choice_split(model_id)) > 1:
        raise InvalidInput(
            f"{model_id!r} is a fused search of several models, which this search does not "
            "offer; choose one model"
        )
    try:
        model_spec(model_id)
    except UnknownModelError as exc:
        raise InvalidInput(str(exc)) from exc
    state = models.get(model_id)
    if state is None:
        raise InvalidInput(f"model {model_id!r} is not enabled on this site")
    if not state.has_embeddings:
        # Waiting helps a backfill that is running, never one whose weights are missing.
        if state.unavailable_reason:
            raise Unavailable(model_unavailable_message(model_id))
        if not Image.objects.exists():
            # A new site: "try again later" would never come true.
            raise Conflict(
                "There are no images to search yet: upload some, or import the Flickr30k set "
                "(./run manage import_flickr30k --help)."
            )
        raise Conflict(
            f"The model {model_id} is still indexing this site's images; the first results "
            "appear as soon as its first batch is stored (the admin's Embedding models page "
            "shows the progress)."
        )
    return model_id


def search_validate_text(text: str | None) -> str:
    """The query as searched: in Unicode NFC (as captions are stored, so composed and
    decomposed forms of one query are one query and one cached vector), stripped and checked.
    The page and the API both take their query text through here."""
    text = unicodedata.normalize("NFC", text or "").strip()
    if not text:
        raise InvalidInput("the query is empty; type what you are looking for")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInput(f"the query is {len(text)} characters; the limit is {MAX_QUERY_CHARS}")
    if "\x00" in text:
        raise InvalidInput("the query contains a NUL character")
    return text


def search_validate_sort(sort: str | None) -> str:
    sort = sort or "relevance"
    if sort not in SEARCH_SORTS:
        raise InvalidInput(f"sort must be one of {', '.join(SEARCH_SORTS)}")
    return sort


def search_validate_page(k: int, offset: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be between 1 and {MAX_K}")
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"offset must be between 0 and {MAX_OFFSET}")


def _query_vector(model_id: str, embed: Callable[[], np.ndarray]) -> np.ndarray:
    """Run the query encoder; a model it cannot load is a plain 'unavailable', not a 500."""
    try:
        return embed()
    except WeightsUnavailableError as exc:
        logger.warning("search with %s refused: %s", model_id, exc)
        raise Unavailable(model_unavailable_message(model_id)) from exc
    except EncoderError as exc:
        logger.error("search with %s refused: %s", model_id, exc)
        raise Unavailable(f"The model {model_id} cannot run on this server: {exc}") from exc


def images_search_by_text(
    *,
    user: User | AnonymousUser,
    text: str | None,
    model_id: str | None = None,
    k: int = 20,
    offset: int = 0,
    filters: SearchFilters | None = None,
    min_score: float | None = None,
    sort: str = "relevance",
) -> SearchPage:
    """Images visible to ``user`` that best match a natural-language ``text``.

    ``model_id`` None means the default model. Raises an ``ApplicationError`` for input that
    cannot be searched (``InvalidInput``), a model without embeddings (``Conflict``) or a model
    whose weights cannot be loaded (``Unavailable``).
    """
    text = search_validate_text(text)
    search_validate_page(k, offset)
    models = _models_enabled_state()
    model_ids = _models_resolve(model_id, models)
    if len(model_ids) > 1:
        vectors = [
            _query_vector(m, functools.partial(encoding.text_embedding, model_id=m, text=text))
            for m in model_ids
        ]
        return images_search_fused(
            user=user, model_ids=model_ids, vectors=vectors, k=k, offset=offset, filters=filters,
            min_score=min_score, sort=sort,
        )  # fmt: skip
    model_id = model_ids[0]
    vector = _query_vector(model_id, lambda: encoding.text_embedding(model_id=model_id, text=text))
    return images_search_by_vector(
        user=user, model_id=model_id, vector=vector, k=k, offset=offset, filters=filters,
        min_score=min_score, sort=sort, pending=models[model_id].has_pending,
    )  # fmt: skip


def images_search_by_image(
    *,
    user: User | AnonymousUser,
    file: UploadedFile,
    model_id: str | None = None,
    k: int = 20,
    offset: int = 0,
    filters: SearchFilters | None = None,
    min_score: float | None = None,
    sort: str = "relevance",
) -> SearchPage:
    """Images visible to ``user`` nearest to a query image, which is embedded and not stored.

    The query image is held to the upload limits (bytes, format, and pixels read from the
    header before decoding), and only IMAGE_QUERY_CONCURRENCY decode at once per process.
    """
    search_validate_page(k, offset)
    model_ids = search_models_resolve(model_id)
    if len(model_ids) > 1:
        vectors, _ = _image_query_vectors(file=file, model_ids=model_ids)
        return images_search_fused(
            user=user, model_ids=model_ids, vectors=vectors, k=k, offset=offset, filters=filters,
            min_score=min_score, sort=sort,
        )  # fmt: skip
    model_id, vector, _ = image_query_embed(file=file, model_id=model_ids[0])
    return images_search_by_vector(
        user=user, model_id=model_id, vector=vector, k=k, offset=offset, filters=filters,
        min_score=min_score, sort=sort,
    )  # fmt: skip


def image_query_embed(
    *, file: UploadedFile, model_id: str | None = None
) -> tuple[str, np.ndarray, PILImage]:
    """Decode and embed a query image: (the model used, its vector, the decoded picture).

    Held to the upload limits, IMAGE_QUERY_CONCURRENCY at once per process (``TooManyRequests``
    past that); the picture is returned for a preview and is never stored.
    """
    model_id = search_model_resolve(model_id)
    vectors, picture = _image_query_vectors(file=file, model_ids=(model_id,))
    return model_id, vectors[0], picture


def _image_query_vectors(
    *, file: UploadedFile, model_ids: Sequence[str]
) -> tuple[list[np.ndarray], PILImage]:
    """Decode a query image once and embed it with each model, in one of the process's
    IMAGE_QUERY_CONCURRENCY slots."""
    if not _image_query_slots.acquire(timeout=IMAGE_QUERY_WAIT_SECONDS):
        raise TooManyRequests("too many image searches at once; try again in a moment")
    try:
        picture = image_query_decode(file=file, label="the query image")
        vectors = [
            _query_vector(m, functools.partial(encoding.image_embedding, model_id=m, image=picture))
            for m in model_ids
        ]
    finally:
        _image_query_slots.release()
    return vectors, picture


def images_similar(
    *,
    user: User | AnonymousUser,
    image_id: int,
    model_id: str | None = None,
    k: int = 20,
    offset: int = 0,
    filters: SearchFilters | None = None,
    min_score: float | None = None,
    sort: str = "relevance",
) -> SearchPage:
    """Images visible to ``user`` most like image ``image_id`` (which ``user`` must see).

    An image the user may not see is ``NotFound`` exactly like one that does not exist.
    """
    search_validate_page(k, offset)
    if image_get_visible(user=user, image_id=image_id) is None:
        raise NotFound("no such image")
    model_ids = search_models_resolve(model_id)
    vectors = []
    for model_id in model_ids:
        vector = image_embedding_stored(image_id=image_id, model_id=model_id)
        if vector is None:
            if embedding_model_unavailable(model_id=model_id):
                raise Unavailable(model_unavailable_message(model_id))
            raise Conflict(f"image {image_id} is not indexed for {model_id} yet; try again later")
        vectors.append(vector)
    if len(model_ids) > 1:
        return images_search_fused(
            user=user, model_ids=model_ids, vectors=vectors, k=k, offset=offset, filters=filters,
            exclude_image_id=image_id, min_score=min_score, sort=sort,
        )  # fmt: skip
    return images_search_by_vector(
        user=user, model_id=model_ids[0], vector=vectors[0], k=k, offset=offset, filters=filters,
        exclude_image_id=image_id, min_score=min_score, sort=sort,
    )  # fmt: skip


def _filtered_images(*, user: User | AnonymousUser, filters: SearchFilters) -> QuerySet[Image]:
    images = images_visible_to(user=user)
    if filters.source == "dataset":
        images = images.filter(source=Image.Source.FLICKR30K)
    elif filters.source == "mine":
        if not user.is_authenticated:
            raise NotAuthenticated("sign in to search your uploads")
        images = images.filter(owner_id=user.pk)
    elif filters.source is not None:
        raise InvalidInput("source must be 'dataset' or 'mine'")
    if filters.collection_id is not None:
        collection = collections_visible_to(user=user).filter(pk=filters.collection_id).first()
        if collection is None:
            raise NotFound("no such collection")
        images = images.filter(collection_items__collection=collection)
    if filters.uploaded_after is not None:
        images = images.filter(created_at__gte=filters.uploaded_after)
    if filters.uploaded_before is not None:
        images = images.filter(created_at__lt=filters.uploaded_before)
    return images


def images_search_by_vector(
    *,
    user: User | AnonymousUser,
    model_id: str,
    vector: QueryVector,
    k: int = 20,
    offset: int = 0,
    filters: SearchFilters | None = None,
    exclude_image_id: int | None = None,
    min_score: float | None = None,
    sort: str = "relevance",
    pending: bool | None = None,
) -> SearchPage:
    """Images visible to ``user`` nearest to ``vector``, best first.

    ``pending``: whether ``model_id`` has embedding work pending, when the caller has read it
    already (None: read it here); the page then says how many images are indexed.

    Unfiltered (beyond visibility) searches go through the model's HNSW index; pgvector's
    iterative scan keeps scanning past rows the WHERE drops, up to hnsw.max_scan_tuples. Filters
    matching few rows are answered exactly instead, and so is any page the index leaves short:
    a page holds min(k, visible matches after ``offset``) images whatever the others hide.
    """
    search_validate_page(k, offset)
    if search_validate_sort(sort) == "date":
        scope: _SearchScope = {
            "user": user,
            "filters": filters,
            "exclude_image_id": exclude_image_id,
        }
        found, exact = _candidates(
            model_id=model_id, vector=vector, depth=DATE_SORT_CANDIDATES, **scope
        )
        return _page_by_date(
            found, k=k, offset=offset, min_score=min_score, model_id=model_id, exact=exact,
            coverage=search_coverage(user=user, model_id=model_id, pending=pending),
        )  # fmt: skip
    query: _SearchQuery = {
        "user": user, "model_id": model_id, "vector": vector, "filters": filters,
        "exclude_image_id": exclude_image_id,
    }  # fmt: skip
    # One row past the page tells whether another page exists, without a count.
    depth = offset + k + 1
    ranked, exact = images_search_queryset(**query, depth=depth)
    rows = list(ranked[offset:depth])
    if len(rows) <= k and not exact:
        # Short from the index: its scan may have stopped at max_scan_tuples inside a block of
        # rows this user cannot see (someone's private uploads nearest to the query). Whether
        # more visible matches exist only a scan without the index can tell.
        ranked, exact = images_search_queryset(**query, exact=True)
        rows = list(ranked[offset : offset + k + 1])
    has_more = len(rows) > k
    hits = [
        SearchHit(row.image, score=1.0 - float(row.distance), captions=tuple(row.caption_texts))
        for row in rows[:k]
    ]
    if min_score is not None:
        kept = [hit for hit in hits if hit.score >= min_score]
        # Results come best first: once one falls below min_score, so does every later page.
        has_more = has_more and len(kept) == len(hits)
        hits = kept
    return SearchPage(
        model_id=model_id, hits=hits, k=k, offset=offset, exact=exact, has_more=has_more,
        coverage=search_coverage(user=user, model_id=model_id, pending=pending),
    )  # fmt: skip


def _page_by_date(
    scored: dict[int, float], *, k: int, offset: int, min_score: float | None, **page: Any
) -> SearchPage:
    """A page of the candidates ``scored`` (image id -> score, all visible to the searcher)
    that are relevant (DATE_SORT_CUTOFF of the best, and ``min_score``), newest first."""
    best = max(scored.values(), default=None)
    cutoff = None if best is None else best - (1.0 - DATE_SORT_CUTOFF) * abs(best)
    if cutoff is not None and min_score is not None:
        cutoff = max(cutoff, min_score)
    relevant = [i for i, score in scored.items() if cutoff is not None and score >= cutoff]
    dated = Image.objects.filter(pk__in=relevant).values_list("pk", "created_at")
    newest = [pk for pk, _ in sorted(dated, key=lambda row: (row[1], row[0]), reverse=True)]
    chosen = newest[offset : offset + k]
    images = _images_with_captions(chosen)
    hits = [
        SearchHit(image=images[i], score=scored[i], captions=tuple(images[i].caption_texts))
        for i in chosen
        if i in images
    ]
    return SearchPage(
        hits=hits, k=k, offset=offset, has_more=len(newest) > offset + k, sort="date",
        best=best, cutoff=cutoff, **page,
    )  # fmt: skip


# --- Fused search ---------------------------------------------------------------------------
# "A+B" searches with two models at once: each model's HNSW query returns its top
# FUSION_CANDIDATES, and their ranks are fused. In a query string "+" reads as a space, so
# "A B" is the same choice (a link typed by hand), and "B+A" is "A+B".

FUSED_SEPARATOR = "+"
# Each model's candidates: the fused top k is drawn from their union. A few hundred keeps a
# good image that one model ranks poorly within reach of the other, at the cost of two index
# scans of this depth (bench/search_latency.py --fused measures it).
FUSION_CANDIDATES = 300
# Reciprocal-rank fusion. The evaluation (search.evaluation, `evaluate --fusion both`)
# measures z-normalised sum and RRF alike, but no run with real weights is recorded in this
# repository (none could be downloaded where it was built), so there is no measured winner to
# follow. RRF, because over candidate lists it is the same arithmetic the evaluation runs over
# the whole gallery: a candidate's rank within a model's top list is its rank in the gallery,
# whereas a z-score over the top few hundred (mean and spread of the best matches only) is not
# the evaluated z-score over every image. It needs no calibration between models either.
SEARCH_FUSION = "rrf"


def _model_choice_split(model: str) -> list[str]:
    return [part for part in re.split(r"[+\s]+", model.strip()) if part]


def search_models_resolve(model: str | None) -> tuple[str, ...]:
    """The model, or for a fused choice ("A+B") the two models, that a search should use.

    One model is ``search_model_resolve``'s. A fused choice needs two different models, each
    usable alone, whose embeddings are complete (nothing pending or blocked, as
    ``embedding_progress`` counts): fusing a model that has not yet seen every image would
    rank the unseen ones by one model alone. Anything else is ``InvalidInput`` (400).
    """
    return _models_resolve(model, _models_enabled_state())


def _models_resolve(model: str | None, models: dict[str, _EnabledModel]) -> tuple[str, ...]:
    parts = _model_choice_split(model or "")
    if len(parts) <= 1:
        return (_model_resolve(parts[0] if parts else None, models),)
    if len(parts) > 2 or len(set(parts)) < 2:
        raise InvalidInput(
            f"model {model!r}: a fused search combines two different models, as in "
            f"'{_FUSED_EXAMPLE}'; see /api/models for the choices"
        )
    default = _default_of(models)
    model_ids = sorted(
        (_model_resolve(part, models) for part in parts), key=lambda m: (m != default, m)
    )
    for model_id in model_ids:
        progress = embedding_progress(model_id=model_id)
        if progress.remaining:
            raise InvalidInput(
                f"fused search with {model_id} is not available yet: it still has "
                f"{progress.remaining} of {progress.total} images to embed. Search with one "
                "model until it is done."
            )
    return tuple(model_ids)


_FUSED_EXAMPLE = "clip-vit-base-patch32+align-base"


def search_model_choices() -> list[str]:
    """What one may search with, default first: each model of ``search_models_available``,
    then "A+B" for each pair of them whose embeddings are both complete."""
    models = search_models_available()
    if len(models) < 2:
        return models
    complete = [m for m in models if not embedding_progress(model_id=m).remaining]
    return models + [FUSED_SEPARATOR.join(pair) for pair in itertools.combinations(complete, 2)]


def _candidates(
    *, model_id: str, vector: QueryVector, depth: int, **scope: Unpack[_SearchScope]
) -> tuple[dict[int, float], bool]:
    """``model_id``'s ``depth`` nearest images (id -> cosine similarity) in the search's scope,
    and whether they are exact. The one-model path's guarantee holds: a list the index leaves
    short is fetched again without it, so it holds min(depth, images in scope)."""
    query: _SearchQuery = {"model_id": model_id, "vector": vector, **scope}
    ranked, exact = images_search_queryset(**query, depth=depth)
    rows = list(ranked.prefetch_related(None).values_list("image_id", "distance")[:depth])
    if len(rows) < depth and not exact:
        ranked, exact = images_search_queryset(**query, exact=True)
        rows = list(ranked.prefetch_related(None).values_list("image_id", "distance")[:depth])
    return {image_id: 1.0 - float(distance) for image_id, distance in rows}, exact


def _similarities(*, model_id: str, vector: QueryVector, image_ids: set[int]) -> dict[int, float]:
    """Cosine similarity of ``model_id``'s embeddings of ``image_ids`` to ``vector``."""
    rows = (
        ImageEmbedding.objects.filter(model_id=model_id, image_id__in=image_ids)
        .annotate(distance=CosineDistance("vector", list(vector)))
        .values_list("image_id", "distance")
    )
    return {image_id: 1.0 - float(distance) for image_id, distance in rows}


def images_search_fused(
    *,
    user: User | AnonymousUser,
    model_ids: Sequence[str],
    vectors: Sequence[QueryVector],
    k: int = 20,
    offset: int = 0,
    filters: SearchFilters | None = None,
    exclude_image_id: int | None = None,
    min_score: float | None = None,
    sort: str = "relevance",
) -> SearchPage:
    """Images visible to ``user`` ranked by a fusion (SEARCH_FUSION) of several models, each
    with its own query vector (``vectors[i]`` is ``model_ids[i]``'s).

    Each model contributes its top FUSION_CANDIDATES (or offset + k + 1, if more) in the same
    scope as a one-model search (visibility, filters, the excluded image). Every candidate of
    the union is then scored by every model (an exact distance for those a model did not
    return; an image a model has no embedding of ranks last for it), and the scores are fused
    with ``search.fusion``, the evaluation's own code: a candidate's rank within a model counts
    ties as the evaluation does. Equal fused scores are ordered by image id.

    A hit's ``score`` is the fused score scaled so that 1 means first for every model. It is
    not a cosine similarity, so ``min_score`` is refused.
    """
    search_validate_page(k, offset)
    sort = search_validate_sort(sort)
    if min_score is not None:
        raise InvalidInput(
            "min_score is a cosine similarity, and a fused search's scores are not one; "
            "leave it out or search with one model"
        )
    if len(model_ids) != len(vectors) or len(model_ids) < 2:
        raise ValueError("fused search needs two or more models, each with its query vector")
    depth = max(FUSION_CANDIDATES, offset + k + 1)
    scope: _SearchScope = {"user": user, "filters": filters, "exclude_image_id": exclude_image_id}
    lists, exact = [], True
    for model_id, vector in zip(model_ids, vectors, strict=True):
        found, list_exact = _candidates(model_id=model_id, vector=vector, depth=depth, **scope)
        lists.append(found)
        exact = exact and list_exact
    union = sorted(set().union(*lists))
    scores = []
    for model_id, vector, found in zip(model_ids, vectors, lists, strict=True):
        missing = set(union) - found.keys()
        if missing:
            found = {**found, **_similarities(model_id=model_id, vector=vector, image_ids=missing)}
        scores.append(np.array([[found.get(i, -np.inf) for i in union]], dtype=np.float64))
    fused = FUSE[SEARCH_FUSION](scores)[0] if union else np.empty(0)
    best = len(model_ids) / (RRF_K + 1)  # first for every model
    if sort == "date":
        scaled = {i: float(score) / best for i, score in zip(union, fused, strict=True)}
        return _page_by_date(
            scaled, k=k, offset=offset, min_score=None, model_id=FUSED_SEPARATOR.join(model_ids),
            exact=exact, fusion=SEARCH_FUSION,
        )  # fmt: skip
    order = np.lexsort((np.array(union), -fused))  # fused score descending, then image id
    chosen = [(union[i], float(fused[i]) / best) for i in order[offset : offset + k]]
    images = _images_with_captions([i for i, _ in chosen])
    hits = [
        SearchHit(image=images[i], score=score, captions=tuple(images[i].caption_texts))
        for i, score in chosen
    ]
    return SearchPage(
        model_id=FUSED_SEPARATOR.join(model_ids), hits=hits, k=k, offset=offset, exact=exact,
        has_more=len(union) > offset + k, fusion=SEARCH_FUSION,
    )  # fmt: skip


def search_coverage(
    *, user: User | AnonymousUser, model_id: str, pending: bool | None = None
) -> SearchCoverage | None:
    """Of the images ``user`` can see, how many ``model_id`` has embedded; None when the model
    has no pending work (the common case, answered from the job index without counting).
    ``pending`` is whether it has, if the caller knows (``_models_enabled_state``)."""
    if pending is None:
        jobs = EmbeddingJob.objects.filter(model_id=model_id, status=EmbeddingJob.Status.PENDING)
        pending = jobs.exists()
    if not pending:
        return None
    visible = images_visible_to(user=user)
    indexed = ImageEmbedding.objects.filter(model_id=model_id, image__in=visible).count()
    return SearchCoverage(indexed=indexed, total=visible.count())


def images_search_queryset(
    *,
    user: User | AnonymousUser,
    model_id: str,
    vector: QueryVector,
    filters: SearchFilters | None = None,
    exclude_image_id: int | None = None,
    exact: bool | None = None,
    depth: int = 0,
) -> tuple[RankedHits, bool]:
    """The ranked, visibility-scoped query behind a search, and whether it is exact.

    ``exact`` None chooses: exact for filters matching at most EXACT_SEARCH_MAX_ROWS rows, the
    HNSW index otherwise. ``depth`` is how many rows the caller will read (offset + page): the
    index path returns at most max(RERANK_CANDIDATES, depth) (see ``embeddings_ranked``).
    """
    filters = filters or SearchFilters()
    images = _filtered_images(user=user, filters=filters)
    if exclude_image_id is not None:
        images = images.exclude(pk=exclude_image_id)
    if exact is None:
        candidates = ImageEmbedding.objects.filter(model_id=model_id, image__in=images)
        exact = filters.active and _at_most(candidates, EXACT_SEARCH_MAX_ROWS)
    ranked = (
        embeddings_ranked(model_id=model_id, vector=vector, exact=exact, images=images, depth=depth)
        .select_related("image")
        .annotate(caption_texts=_caption_texts("image_id"))
        .defer("vector")
    )
    return ranked, exact


def _at_most(queryset: QuerySet, limit: int) -> bool:
    # Counting stops at limit + 1 rows, so a broad filter costs no full count.
    return queryset.values("pk")[: limit + 1].count() <= limit
