"""Ranking: the images nearest to a query vector on one model's HNSW index, scoped to what the
searcher may see and to the search's filters, a page at a time (by relevance or by date).

The public searches (``search.selectors``) choose the model and turn a query into a vector;
fused search (``search.fusion``) ranks with several models' candidates from here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict, TypeVar, Unpack

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import BooleanField, Exists, F, Func, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Cast
from pgvector.django import CosineDistance, HalfVectorField

from encoders.registry import model_spec
from gallery.models import SORTED_AT, Caption, Image
from gallery.selectors import collections_visible_to, images_visible_to
from kernel.errors import InvalidInput, NotAuthenticated, NotFound
from search.ranking_sql import (
    binding_cursor,
    image_of_row,
    images_with_captions_execute,
    nearest_lists_execute,
    ranking_execute,
    scope_sql,
)
from workers.index_scans import hnsw_ef_search, hnsw_scan_transaction
from workers.models import EmbeddingJob, ImageEmbedding

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


class SearchScope(TypedDict):
    """Which images a search may return, beyond its model and vector."""

    user: User | AnonymousUser
    filters: SearchFilters | None
    exclude_image_id: int | None


class _SearchQuery(SearchScope):
    model_id: str
    vector: QueryVector


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
    The candidate query repeats the index's ``vector::halfvec(dim)`` cast and filters by the
    model (pruning the table to the model's partition), which is what lets PostgreSQL answer it
    from the index, and it holds the ``images`` filter
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
        # model_id again on the outer lookup: the planner then reads the candidates by the
        # model's partition's primary key only, not every partition's.
        embeddings = ImageEmbedding.objects.filter(
            _PkInArray(ArraySubquery(candidates)), model_id=model_id
        )
    return embeddings.annotate(distance=CosineDistance("vector", query)).order_by("distance")


class _PkInArray(Func):
    """``pk = ANY(ARRAY(candidates))``: the candidate query becomes an InitPlan, run once.

    ``pk__in=candidates`` let the planner turn it into a semi join whose inner side it may
    re-run for every embedding row: with statistics that made the nested loop look cheap, the
    HNSW iterative scan ran once per row (3,000 scans of up to hnsw.max_scan_tuples each, 46 s
    at 3,000 rows, 20+ minutes in a test database full of dead tuples), and each re-run could
    return a different set, so the page could even come back short."""

    template = "(%(expressions)s))"
    arg_joiner = " = ANY("
    output_field = BooleanField()

    def __init__(self, candidates: ArraySubquery) -> None:
        super().__init__(F("pk"), candidates)


_Row = TypeVar("_Row")


def ranked_rows(ranked: QuerySet[Any, _Row]) -> list[_Row]:
    """The rows of a ranking query (``embeddings_ranked`` or built on it), read inside a
    transaction that gives its HNSW scan the site's settings (``workers.index_scans``): a
    ranking queryset evaluated elsewhere scans the index without the iterative scan."""
    with hnsw_scan_transaction() as alias:
        return list(ranked.using(alias))


def _vector_text(vector: QueryVector) -> str:
    """pgvector's text form of a query vector, '[x,y,...]'."""
    values = np.asarray(vector, dtype=np.float64).ravel().tolist()
    return "[" + ",".join(map(repr, values)) + "]"


def embeddings_nearest(
    *, model_id: str, vector: QueryVector, k: int = 20, exact: bool = False
) -> RankedEmbeddings:
    """The ``k`` embeddings of ``model_id`` closest to ``vector`` (see ``embeddings_ranked``)."""
    return embeddings_ranked(model_id=model_id, vector=vector, exact=exact, depth=k)[:k]


MAX_K = 100
MAX_OFFSET = 1000
# A filter matching at most this many images is answered exactly (filter first, then sort
# the few rows), which is both faster and complete; above it, the HNSW index with iterative
# scans. pgvector's iterative scan gives up after hnsw.max_scan_tuples (20,000 by default), so
# a filter much more selective than k / 20,000 of the rows could otherwise come back short.
EXACT_SEARCH_MAX_ROWS = 20_000
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
# Their index scan keeps the site's ef_search (pgvector's iterative scan goes on past it): raised
# to 500 it found 98% of the exact 500 instead of 95-96%, in 2-3 times the time (47-60 ms p50
# against 18-30 at 1M, bench/README.md "1M through Django, ef_search per k").


@dataclass(frozen=True)
class SearchFilters:
    source: str | None = None  # "dataset" | "mine" | None (everything visible)
    collection_id: int | None = None
    uploaded_after: datetime | None = None
    uploaded_before: datetime | None = None
    # What a parsed query (search.query_parser) or the API's structured form asks for; see
    # ``_filter_by_metadata``. An image without a taken date never matches a taken range.
    taken_after: datetime | None = None
    taken_before: datetime | None = None
    places: tuple[str, ...] = ()
    camera: str | None = None
    owner: str | None = None  # a username
    must: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return any(
            value is not None
            for value in (
                self.source,
                self.collection_id,
                self.uploaded_after,
                self.uploaded_before,
                self.taken_after,
                self.taken_before,
                self.camera,
                self.owner,
            )
        ) or bool(self.places or self.must)


@dataclass(frozen=True)
class SearchRequest:
    """What every search asks for besides its query and model: which page, of which images,
    in which order. The pages and the API build one from their parameters; checked by the
    searches (``search_validate_page``, ``search_validate_sort``), whose messages both share."""

    k: int = 20
    offset: int = 0
    filters: SearchFilters | None = None
    # A cosine-similarity floor: hits below it are left out (refused by a fused search).
    min_score: float | None = None
    sort: str = "relevance"  # one of SEARCH_SORTS
    # A text search ranks by meaning and by its words at once (search.hybrid).
    hybrid: bool = False


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


def images_with_captions(
    image_ids: Sequence[int],
) -> dict[int, WithAnnotations[Image, CaptionTexts]]:
    """``Image.objects.in_bulk`` whose images carry ``caption_texts`` (see ``_caption_texts``),
    read by one written-out statement (``search.ranking_sql.images_with_captions_execute``)."""
    return images_with_captions_execute(image_ids)  # type: ignore[return-value]


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
    # A text search: how its query was read (search.query_parser.ParsedQuery); None otherwise.
    parsed: Any = None

    @property
    def next_offset(self) -> int | None:
        following = self.offset + self.k
        return following if self.has_more and following <= MAX_OFFSET else None


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


def filtered_images(*, user: User | AnonymousUser, filters: SearchFilters) -> QuerySet[Image]:
    """The images a search may return: those ``user`` may see, narrowed by ``filters``."""
    return _filtered_images(user=user, filters=filters)


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
    return _filter_by_metadata(images, filters)


def _filter_by_metadata(images: QuerySet[Image], filters: SearchFilters) -> QuerySet[Image]:
    """The filters a parsed query adds: taken date range (``[after, before)``), any of the
    places (city, region or country, as stored), the camera (make or model), the owner, and
    exact words, each of which must appear in the title, description, file name or a caption
    (case-insensitive)."""
    if filters.taken_after is not None:
        images = images.filter(taken_at__gte=filters.taken_after)
    if filters.taken_before is not None:
        images = images.filter(taken_at__lt=filters.taken_before)
    if filters.places:
        places = list(filters.places)
        images = images.filter(
            Q(place_city__in=places) | Q(place_region__in=places) | Q(place_country__in=places)
        )
    if filters.camera:
        images = images.filter(
            Q(camera_make__iexact=filters.camera) | Q(camera_model__iexact=filters.camera)
        )
    if filters.owner:
        images = images.filter(owner__username=filters.owner)
    for words in filters.must:
        in_captions = Caption.objects.filter(image_id=OuterRef("pk"), text__icontains=words)
        images = images.filter(
            Q(title__icontains=words)
            | Q(description__icontains=words)
            | Q(original_filename__icontains=words)
            | Exists(in_captions)
        )
    return images


def images_search_by_vector(
    *,
    user: User | AnonymousUser,
    model_id: str,
    vector: QueryVector,
    search: SearchRequest | None = None,
    exclude_image_id: int | None = None,
    pending: bool | None = None,
) -> SearchPage:
    """Images visible to ``user`` nearest to ``vector``, best first (``search``: which page,
    filters and order; the first 20 by relevance if None).

    ``pending``: whether ``model_id`` has embedding work pending, when the caller has read it
    already (None: read it here); the page then says how many images are indexed.

    Unfiltered (beyond visibility) searches go through the model's HNSW index; pgvector's
    iterative scan keeps scanning past rows the WHERE drops, up to hnsw.max_scan_tuples. Filters
    matching few rows are answered exactly instead, and so is any page the index leaves short:
    a page holds min(k, visible matches after ``offset``) images whatever the others hide.
    """
    search = search or SearchRequest()
    k, offset, min_score = search.k, search.offset, search.min_score
    search_validate_page(k, offset)
    if search_validate_sort(search.sort) == "date":
        scope: SearchScope = {
            "user": user,
            "filters": search.filters,
            "exclude_image_id": exclude_image_id,
        }
        found, exact = candidates_nearest(
            model_id=model_id, vector=vector, depth=DATE_SORT_CANDIDATES, **scope
        )
        return page_by_date(
            found, k=k, offset=offset, min_score=min_score, model_id=model_id, exact=exact,
            coverage=search_coverage(user=user, model_id=model_id, pending=pending),
        )  # fmt: skip
    query: _SearchQuery = {
        "user": user, "model_id": model_id, "vector": vector, "filters": search.filters,
        "exclude_image_id": exclude_image_id,
    }  # fmt: skip
    # One row past the page tells whether another page exists, without a count.
    # A page deeper than the rerank's candidates gets as deep an index scan (ef_search), which
    # found more of ranks 101-120 in less time than pgvector's iterative scan going on past
    # ef_search 40 (bench/README.md, "1M through Django, ef_search per k").
    ef_search = hnsw_ef_search(max(RERANK_CANDIDATES, offset + k + 1))
    rows, exact = _nearest_rows(
        **query, depth=offset + k + 1, offset=offset, hits=True, ef_search=ef_search
    )
    if len(rows) <= k and not exact:
        # Short from the index: its scan may have stopped at max_scan_tuples inside a block of
        # rows this user cannot see (someone's private uploads nearest to the query). Whether
        # more visible matches exist only a scan without the index can tell.
        rows, exact = _nearest_rows(
            **query, depth=offset + k + 1, offset=offset, hits=True, exact=True
        )
    has_more = len(rows) > k
    hits = [
        SearchHit(image, score=1.0 - float(distance), captions=tuple(captions))
        for image, distance, captions in rows[:k]
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


def page_by_date(
    scored: dict[int, float], *, k: int, offset: int, min_score: float | None, **page: Any
) -> SearchPage:
    """A page of the candidates ``scored`` (image id -> score, all visible to the searcher)
    that are relevant (DATE_SORT_CUTOFF of the best, and ``min_score``), newest first."""
    best = max(scored.values(), default=None)
    cutoff = None if best is None else best - (1.0 - DATE_SORT_CUTOFF) * abs(best)
    if cutoff is not None and min_score is not None:
        cutoff = max(cutoff, min_score)
    relevant = [i for i, score in scored.items() if cutoff is not None and score >= cutoff]
    # Newest by when the photo was taken (else uploaded), as browsing orders them.
    dated = (
        Image.objects.filter(pk__in=relevant)
        .annotate(sorted_at=SORTED_AT)
        .values_list("pk", "sorted_at")
    )
    newest = [pk for pk, _ in sorted(dated, key=lambda row: (row[1], row[0]), reverse=True)]
    chosen = newest[offset : offset + k]
    images = images_with_captions(chosen)
    hits = [
        SearchHit(image=images[i], score=scored[i], captions=tuple(images[i].caption_texts))
        for i in chosen
        if i in images
    ]
    return SearchPage(
        hits=hits, k=k, offset=offset, has_more=len(newest) > offset + k, sort="date",
        best=best, cutoff=cutoff, **page,
    )  # fmt: skip


def candidates_nearest(
    *, model_id: str, vector: QueryVector, depth: int, **scope: Unpack[SearchScope]
) -> tuple[dict[int, float], bool]:
    """``model_id``'s ``depth`` nearest images (id -> cosine similarity) in the search's scope,
    and whether they are exact. The one-model path's guarantee holds: a list the index leaves
    short is fetched again without it, so it holds min(depth, images in scope)."""
    query: _SearchQuery = {"model_id": model_id, "vector": vector, **scope}
    rows, exact = _nearest_rows(**query, depth=depth)
    if len(rows) < depth and not exact:
        rows, exact = _nearest_rows(**query, depth=depth, exact=True)
    return {image_id: 1.0 - float(distance) for image_id, distance, _ in rows}, exact


def candidate_lists_nearest(
    *,
    model_ids: Sequence[str],
    vectors: Sequence[QueryVector],
    depth: int,
    ef_search: int | None = None,
    **scope: Unpack[SearchScope],
) -> tuple[list[list[int]], bool]:
    """Each model's ``depth`` nearest images in the search's scope (image ids, nearest first;
    ``vectors[i]`` is ``model_ids[i]``'s query), and whether every list is exact: every
    model's index query in one statement (``search.ranking_sql.nearest_lists_execute``),
    ordered as its HNSW index orders them (half precision: no full vector is read). The
    one-model guarantee holds: a list the index leaves short is fetched again without it, so
    each holds min(depth, the model's images in scope). ``ef_search``: the index scans'
    hnsw.ef_search (None: the server's)."""
    images, exact = search_scope(
        user=scope["user"], filters=scope["filters"],
        exclude_image_id=scope["exclude_image_id"], exact=None,
    )  # fmt: skip
    wanted = [
        (model_id, model_spec(model_id).dim, vector, exact)
        for model_id, vector in zip(model_ids, vectors, strict=True)
    ]
    with (
        hnsw_scan_transaction(ef_search=ef_search) as alias,
        binding_cursor(alias) as cursor,
    ):
        query_scope = scope_sql(images, alias=alias)
        lists = nearest_lists_execute(cursor, lists=wanted, scope=query_scope, depth=depth)
        short = [i for i, found in enumerate(lists) if len(found) < depth and not wanted[i][3]]
        if short:
            again = [(*wanted[i][:3], True) for i in short]
            for i, found in zip(
                short,
                nearest_lists_execute(cursor, lists=again, scope=query_scope, depth=depth),
                strict=True,
            ):
                lists[i] = found
                wanted[i] = again[short.index(i)]
    return lists, all(list_exact for *_, list_exact in wanted)


def _nearest_rows(
    *,
    user: User | AnonymousUser,
    model_id: str,
    vector: QueryVector,
    filters: SearchFilters | None,
    exclude_image_id: int | None,
    depth: int,
    offset: int = 0,
    hits: bool = False,
    exact: bool | None = None,
    ef_search: int | None = None,
) -> tuple[list[tuple[Any, float, list[str]]], bool]:
    """The rows ``offset`` to ``depth`` of a search's ranking, and whether it was exact: the
    query of ``images_search_queryset`` run as ``search.ranking_sql``'s written-out statement
    (the vector a binary parameter), in the index scan's transaction, with hnsw.ef_search
    ``ef_search`` (None: ``settings.HNSW_EF_SEARCH``). Each row is (the ``Image`` with
    ``hits``, else its id; the cosine distance; the caption texts, with ``hits``)."""
    images, exact = search_scope(
        user=user, filters=filters, exclude_image_id=exclude_image_id, exact=exact
    )
    # The exact path scans no index: its transaction needs no ef_search.
    ef_search = None if exact else (ef_search or settings.HNSW_EF_SEARCH)
    with hnsw_scan_transaction(ef_search=ef_search) as alias, binding_cursor(alias) as cursor:
        rows = ranking_execute(
            cursor, model_id=model_id, dim=model_spec(model_id).dim, vector=vector,
            scope=scope_sql(images, alias=alias), exact=exact,
            candidates=max(RERANK_CANDIDATES, depth), limit=depth - offset, offset=offset,
            hits=hits,
        )  # fmt: skip
    if hits:
        return [(image_of_row(row, alias=alias), row[1], row[2]) for row in rows], exact
    return [(row[0], row[1], []) for row in rows], exact


def search_coverage(
    *, user: User | AnonymousUser, model_id: str, pending: bool | None = None
) -> SearchCoverage | None:
    """Of the images ``user`` can see, how many ``model_id`` has embedded; None when the model
    has no pending work (the common case, answered from the job index without counting).
    ``pending`` is whether it has, if the caller knows (``search.model_choice``)."""
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
    images, exact = search_scope(
        user=user, filters=filters, exclude_image_id=exclude_image_id, exact=exact
    )
    ranked = (
        embeddings_ranked(model_id=model_id, vector=vector, exact=exact, images=images, depth=depth)
        .select_related("image")
        .annotate(caption_texts=_caption_texts("image_id"))
        .defer("vector")
    )
    return ranked, exact


def search_scope(
    *,
    user: User | AnonymousUser,
    filters: SearchFilters | None,
    exclude_image_id: int | None,
    exact: bool | None,
) -> tuple[QuerySet[Image], bool]:
    """The images a search may return, and whether to rank them exactly (``exact`` None:
    exact for filters matching at most EXACT_SEARCH_MAX_ROWS images, the index otherwise; see
    ``_few_enough`` for how that is told without counting a broad filter's rows).

    Images, not the model's embeddings of them: a model has at most one per image, so the
    exact ranking never reads more rows than were counted, and the count reads the filter's
    own index instead of joining the embeddings (a month's 247 photos: 2 ms, most of it a
    scan of every embedding). A model still embedding some of them may take the index where
    exact would do; its page then comes back short and is ranked again exactly."""
    filters = filters or SearchFilters()
    images = _filtered_images(user=user, filters=filters)
    if exclude_image_id is not None:
        images = images.exclude(pk=exclude_image_id)
    if exact is None:
        exact = filters.active and _few_enough(images, EXACT_SEARCH_MAX_ROWS)
    return images, exact


def _few_enough(queryset: QuerySet, limit: int) -> bool:
    """Whether ``queryset`` has at most ``limit`` rows, as far as choosing exact or index needs.

    The planner's estimate first (EXPLAIN, planning only: no row is read): above ``limit``,
    the index, without counting. Counting even up to ``limit`` + 1 rows (embeddings joined to
    their images, then) made every broad filter read 20,001 rows ("2015 to 2022": 38 ms of a
    44 ms search at 31,783 images, bench/README.md). At or below it, the rows are counted,
    stopping at ``limit`` + 1: that count reads no more rows than the exact ranking it
    chooses, which then reads each one's vector too. A wrong estimate costs time, never
    results: an index scan that comes back short is run again exactly
    (``images_search_by_vector``, ``candidates_nearest``), which keeps k results under every
    filter."""
    if _row_estimate(queryset) > limit:
        return False
    return queryset.order_by().values("pk")[: limit + 1].count() <= limit


def _row_estimate(queryset: QuerySet) -> float:
    """How many rows the planner expects ``queryset`` to return (its plan's top "Plan Rows")."""
    plan = json.loads(queryset.order_by().values("pk").explain(format="json"))
    return float(plan[0]["Plan"]["Plan Rows"])
