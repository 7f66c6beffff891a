"""Hybrid search: one ranking over meaning (the model's vector ranking) and words (PostgreSQL
full-text search over title, description, file name and captions, plus trigram similarity of
file names), fused by reciprocal rank fusion with the evaluation's own code
(``search.fusion.fuse_rrf``, its tie rule included).

So an image whose title says "Eiffel" comes up for "eiffel tower" even when its pixels are
far from what the model thinks the words mean, and a photo named ``IMG_2041.jpg`` is found by
its name. Each side contributes its best HYBRID_CANDIDATES in the search's scope (visibility
and every filter). Every image of the union gets its exact cosine (so its rank on the meaning
side), while an image whose words do not match is not on the keyword side at all and gets
nothing from it (RRF over lists, ``fuse_rrf(..., unlisted_adds_nothing=True)``): a keyword
match far down the meaning ranking can then come first, which is the point.

``evaluate`` never ranks this way: its queries are Flickr30k captions, which are stored as the
images' own captions, so the keyword side would find each answer by its own text.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.postgres.search import SearchQuery, SearchRank, TrigramSimilarity
from django.db import connections, router
from django.db.models import F, Max

from encoders.registry import model_spec
from gallery.models import TEXT_SEARCH_CONFIG, Caption, Image
from kernel.kept import KeptAWhile
from search.fusion import RRF_K, fuse_rrf, fused_page
from search.ranking import (
    RERANK_CANDIDATES,
    QueryVector,
    SearchFilters,
    SearchPage,
    SearchRequest,
    candidates_nearest,
    filtered_images,
    search_scope,
    search_validate_page,
    search_validate_sort,
)
from search.ranking_sql import binding_cursor, hybrid_execute, scope_sql
from workers.index_scans import hnsw_ef_search, hnsw_scan_transaction

# Each side's candidates (or offset + k + 1, if more); the fused page is drawn from their
# union. 100 holds every image of a first page of 20: the 20th fused score is at least
# 1 / (RRF_K + 20), the vector side's 20th alone, while an image past the first 100 of both
# sides scores under 2 / (RRF_K + 100), which is that. It was 300, and the vector side's scan
# 300 deep plus 300 keyword-only cosines were most of a hybrid search's cost (2.1-2.3x a plain
# query's p95; bench/README.md).
HYBRID_CANDIDATES = 100
# A file name "matches" words whose trigram similarity reaches this (pg_trgm's own default
# threshold for its % operator, which the trigram index serves).
FILENAME_SIMILARITY = 0.3
HYBRID_FUSION = "rrf"
# A word held by more than this share of the images' words or of the captions is too common
# to rank by (see ``common_words``): about IDF 3, where a word starts to tell images apart.
HYBRID_COMMON_WORD_SHARE = 0.05
# ... and in more rows than this, so that a small gallery keeps every word it has: ranking a
# few thousand matches costs a few ms.
HYBRID_COMMON_WORD_ROWS = 2000
COMMON_WORDS_MAX_AGE = 300.0
_common_words: KeptAWhile[frozenset[str]] = KeptAWhile()


def keyword_candidates(
    *,
    user: User | AnonymousUser,
    filters: SearchFilters | None,
    words: str,
    depth: int,
    exclude_image_id: int | None = None,
) -> dict[int, float]:
    """Up to ``depth`` images in the search's scope whose words match ``words`` (image id ->
    keyword score, higher is better): full-text matches of the title, description and file
    name (``IMAGE_WORDS``) or of a caption (``CAPTION_WORDS``), and file names similar by
    trigrams. Any of the words matches; the score is the best of the text ranks (higher when
    more of the words match) and the file name's similarity.

    The ORM's form of the keyword side, for reading and for the tests: a search runs the same
    three lists inside ``hybrid_lists``' one statement."""
    words = words.strip()
    if not words:
        return {}
    images = filtered_images(user=user, filters=filters or SearchFilters())
    if exclude_image_id is not None:
        images = images.exclude(pk=exclude_image_id)
    any_word = _any_word(words)
    if not any_word:
        return {}
    query = SearchQuery(any_word, config=TEXT_SEARCH_CONFIG, search_type="websearch")
    # Three queries, each answered from its own GIN index (one statement ORing them made
    # PostgreSQL compute every visible image's tsvector: 200 ms at 31,783 images), merged here.
    by_image_words = (
        images.filter(search_words=query)
        .annotate(score=SearchRank(F("search_words"), query))
        .order_by("-score", "pk")
        .values_list("pk", "score")[:depth]
    )
    by_captions = (
        Caption.objects.filter(search_words=query, image__in=images)
        .values("image_id")
        .annotate(score=Max(SearchRank(F("search_words"), query)))
        .order_by("-score", "image_id")
        .values_list("image_id", "score")[:depth]
    )
    by_name = (
        images.filter(original_filename__trigram_similar=words)
        .annotate(score=TrigramSimilarity("original_filename", words))
        .order_by("-score", "pk")
        .values_list("pk", "score")[:depth]
    )
    scores: dict[int, float] = {}
    for found in (by_image_words, by_captions, by_name):
        for pk, score in found:
            scores[pk] = max(scores.get(pk, 0.0), float(score))
    best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:depth]
    return dict(best)


def _any_word(words: str) -> str:
    # Any of the words (ranked by how many match and how often): a title saying "Eiffel"
    # matches "eiffel tower". websearch_to_tsquery reads "or" between words and never fails
    # on punctuation a person types. Words too common to tell images apart are left out.
    common = common_words()
    return " or ".join(w for w in re.findall(r"\w+", words) if w.lower() not in common)


def common_words() -> frozenset[str]:
    """The words in more than HYBRID_COMMON_WORD_SHARE of the images' or of the captions'
    stored words (and more than HYBRID_COMMON_WORD_ROWS of them), which the keyword side
    leaves out: the "simple" configuration has no stop words (any language), so "a dog on the
    beach" would otherwise match nearly every caption of a captioned gallery and rank each
    one (100 ms at 158,915 captions, bench/README.md), for words that tell no image apart.
    Read from PostgreSQL's own statistics (ANALYZE keeps a tsvector column's most common
    words with the share of rows holding each), so no row is scanned; empty until the tables
    are first analysed. At most every COMMON_WORDS_MAX_AGE seconds per process."""
    alias = router.db_for_read(Caption)

    def read() -> frozenset[str]:
        with connections[alias].cursor() as cursor:
            cursor.execute(
                """SELECT s.most_common_elems::text::text[], s.most_common_elem_freqs,
                  c.reltuples
                FROM pg_stats s JOIN pg_class c ON c.oid = (
                  quote_ident(s.schemaname) || '.' || quote_ident(s.tablename))::regclass
                WHERE s.schemaname = current_schema()
                AND s.tablename IN (%s, %s) AND s.attname = 'search_words'""",
                [Image._meta.db_table, Caption._meta.db_table],
            )
            return frozenset(
                word
                for words, shares, rows in cursor.fetchall()
                # The shares hold one per word, then the lowest, highest and null share.
                for word, share in zip(words or [], shares or [], strict=False)
                if share > HYBRID_COMMON_WORD_SHARE and share * rows > HYBRID_COMMON_WORD_ROWS
            )

    return _common_words.get(alias, max_age=COMMON_WORDS_MAX_AGE, read=read)


def hybrid_lists(
    *,
    user: User | AnonymousUser,
    model_id: str,
    vector: QueryVector,
    words: str,
    depth: int,
    filters: SearchFilters | None,
    exclude_image_id: int | None,
) -> tuple[dict[int, float], dict[int, float], bool]:
    """Both sides of a hybrid search in the search's scope: image id -> cosine similarity for
    the vector side's ``depth`` nearest and for every keyword match, image id -> keyword
    score for the keyword side (``keyword_candidates``'s), and whether the vector side is
    exact. One statement (``search.ranking_sql.hybrid_execute``) instead of five queries;
    the vector side keeps the one-model guarantee: a list the index leaves short is fetched
    again exactly (as ``candidates_nearest`` does)."""
    words = words.strip()
    any_word = _any_word(words)
    if not any_word:
        by_vector, exact = candidates_nearest(
            model_id=model_id, vector=vector, depth=depth, user=user, filters=filters,
            exclude_image_id=exclude_image_id,
        )  # fmt: skip
        return by_vector, {}, exact
    images, exact = search_scope(
        user=user, filters=filters, exclude_image_id=exclude_image_id, exact=None
    )
    candidates = max(RERANK_CANDIDATES, depth)
    with (
        hnsw_scan_transaction(ef_search=None if exact else hnsw_ef_search(candidates)) as alias,
        binding_cursor(alias) as cursor,
    ):
        query: dict[str, Any] = {
            "model_id": model_id, "dim": model_spec(model_id).dim, "vector": vector,
            "scope": scope_sql(images, alias=alias), "depth": depth, "words": words,
            "any_word": any_word, "config": TEXT_SEARCH_CONFIG,
            "candidates": candidates,
        }  # fmt: skip
        nearest, by_words, others = hybrid_execute(cursor, exact=exact, **query)
        if len(nearest) < depth and not exact:
            exact = True
            nearest, by_words, others = hybrid_execute(cursor, exact=exact, **query)
    similarities = {
        image_id: 1.0 - float(distance) for image_id, distance in (nearest | others).items()
    }
    return similarities, by_words, exact


def images_search_hybrid(
    *,
    user: User | AnonymousUser,
    model_id: str,
    vector: QueryVector,
    words: str,
    search: SearchRequest | None = None,
    exclude_image_id: int | None = None,
) -> SearchPage:
    """Images visible to ``user`` ranked by RRF of the vector ranking and the keyword ranking
    of ``words`` (see the module). A hit's ``score`` is the fused score scaled so that 1 means
    first on both sides, not a cosine; ``min_score`` still drops images whose cosine
    similarity is below it."""
    search = search or SearchRequest()
    k, offset = search.k, search.offset
    search_validate_page(k, offset)
    sort = search_validate_sort(search.sort)
    depth = max(HYBRID_CANDIDATES, offset + k + 1)
    by_vector, by_words, exact = hybrid_lists(
        user=user, model_id=model_id, vector=vector, words=words, depth=depth,
        filters=search.filters, exclude_image_id=exclude_image_id,
    )  # fmt: skip
    union = sorted(set(by_vector) | set(by_words))
    if search.min_score is not None:
        # Still a floor on the cosine similarity (every image of the union has one), though
        # the scores shown are fused.
        union = [i for i in union if by_vector.get(i, -np.inf) >= search.min_score]
    scores = [
        np.array([[by_vector.get(i, -np.inf) for i in union]], dtype=np.float64),
        np.array([[by_words.get(i, -np.inf) for i in union]], dtype=np.float64),
    ]
    fused = fuse_rrf(scores, unlisted_adds_nothing=True)[0] if union else np.empty(0)
    best = 2 / (RRF_K + 1)  # first on both sides
    return fused_page(
        union, fused / best, k=k, offset=offset, sort=sort, model_id=model_id, exact=exact,
        fusion=HYBRID_FUSION,
    )  # fmt: skip
