"""Fusion of several models' similarity scores, and fused search ("A+B"), which ranks with it.

The arithmetic (first) is plain numpy: no database, no model. It is shared by the evaluation
(``search.evaluation``, which measures fusions over a whole gallery) and by fused search
(``images_search_fused``, which fuses each model's top candidates), so the product ranks with
exactly the arithmetic the evaluation measured.

Scores are (queries x candidates) blocks, one per model, higher is more similar. The tie rule,
the same as the evaluation's: a candidate's rank within a model is 1 + the number of candidates
strictly more similar, so exact ties share the best of their ranks; reciprocal-rank fusion adds
each candidate's terms in sorted order, so candidates whose ranks are a permutation of each
other's tie exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from django.contrib.auth.models import AnonymousUser, User

from kernel.errors import InvalidInput
from search.model_choice import FUSED_SEPARATOR
from search.ranking import (
    QueryVector,
    SearchHit,
    SearchPage,
    SearchRequest,
    SearchScope,
    candidate_lists_nearest,
    images_with_captions,
    page_by_date,
    search_validate_page,
    search_validate_sort,
)

FUSIONS = ("zsum", "rrf")
# Reciprocal-rank fusion's constant, as in Cormack et al. (2009) and most systems since.
RRF_K = 60


def competition_ranks(scores: np.ndarray) -> np.ndarray:
    """Per row, each column's rank by descending score, ties sharing the best of their ranks
    (1 + the number of columns strictly higher): the tie rule above, within one model."""
    ordered = -np.sort(-scores, axis=1)
    # For each score, how many in its row are strictly larger: the insertion point of -score
    # into the row's ascending negated scores.
    ranks = np.empty(scores.shape, dtype=np.float64)
    for row in range(scores.shape[0]):
        ranks[row] = 1 + np.searchsorted(-ordered[row], -scores[row], side="left")
    return ranks


def fuse_zsum(scores: Sequence[np.ndarray]) -> np.ndarray:
    """Per query, z-normalise each model's similarities over the candidates, then add them.

    Each model's cosine similarities live on their own scale (ALIGN's spread is not CLIP's);
    centring and scaling per query makes them comparable while keeping how far apart the
    candidates are, which rank fusion throws away.
    """
    total = np.zeros_like(scores[0], dtype=np.float64)
    for block in scores:
        block = block.astype(np.float64)
        spread = block.std(axis=1, keepdims=True)
        total += (block - block.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1.0)
    return total


def fuse_rrf(
    scores: Sequence[np.ndarray], *, k: int = RRF_K, unlisted_adds_nothing: bool = False
) -> np.ndarray:
    """Reciprocal-rank fusion: the sum over models of 1 / (k + the candidate's rank).

    ``unlisted_adds_nothing``: a score of -inf means "not in this ranking at all" (a keyword
    ranking lists only the images whose words match, ``search.hybrid``) and adds 0, as in
    Cormack et al.'s RRF over lists, rather than ranking last among the candidates."""
    terms = np.stack([1.0 / (k + competition_ranks(block)) for block in scores])
    if unlisted_adds_nothing:
        terms[np.isneginf(np.stack(scores))] = 0.0
    # Added smallest first per candidate: the sum then depends only on the set of terms, so
    # ranks (2, 5) and (5, 2) -- or any permutation over three or more models -- tie exactly.
    terms.sort(axis=0)
    total = terms[0].copy()
    for term in terms[1:]:
        total += term
    return total


FUSE: dict[str, Callable[[Sequence[np.ndarray]], np.ndarray]] = {
    "zsum": fuse_zsum,
    "rrf": fuse_rrf,
}


# --- Fused search ---------------------------------------------------------------------------
# "A+B" searches with two models at once: each model's HNSW query returns its top
# FUSION_CANDIDATES, and their ranks are fused (the choice's spelling: ``search.model_choice``).

# Each model's candidates: the fused top k is drawn from their union, and each candidate's
# rank within a model is its place in that model's list (past every listed one for an image
# the model did not list). Chosen by measurement against RRF over the whole gallery (the
# evaluation's, ``fuse_rrf``): the fused top 20's agreement with it on bench/search_latency.py's
# 31,783 clustered vectors per model. With exact top lists (numpy, 100 queries) it was 0.854 /
# 0.966 / 0.984 / 0.995 / 0.998 / 1.000 at 300 / 600 / 700 / 800 / 900 / 1,000 candidates.
# With the product's lists (HNSW, 60 queries, bench/README.md): 0.973 at 1,000 candidates and
# ef_search 40, 0.993 at ef_search 200, 0.996 at ef_search 1000 (the same database CPU, about
# 33 ms per search on a loaded 2-core box), 0.990 at 800 / 1000. The lists read no full vector
# and need no second query for the images a model did not list.
FUSION_CANDIDATES = 1000
# hnsw.ef_search of those index scans (pgvector's largest), SET LOCAL in their transaction.
FUSION_EF_SEARCH = 1000
SEARCH_FUSION = "rrf"


def images_search_fused(
    *,
    user: User | AnonymousUser,
    model_ids: Sequence[str],
    vectors: Sequence[QueryVector],
    search: SearchRequest | None = None,
    exclude_image_id: int | None = None,
) -> SearchPage:
    """Images visible to ``user`` ranked by a fusion (SEARCH_FUSION) of several models, each
    with its own query vector (``vectors[i]`` is ``model_ids[i]``'s).

    Each model contributes its top FUSION_CANDIDATES (or offset + k + 1, if more) in the same
    scope as a one-model search (visibility, filters, the excluded image), all in one
    statement. A candidate's rank within a model is its place in that model's list, and an
    image a model did not list ranks after every listed one; the ranks are fused with the
    arithmetic above, the evaluation's own. Over the whole gallery (every image listed) this is
    the evaluation's RRF exactly; with lists of FUSION_CANDIDATES it agrees with it as measured
    there. Equal fused scores are ordered by image id.

    A hit's ``score`` is the fused score scaled so that 1 means first for every model. It is
    not a cosine similarity, so ``min_score`` is refused.
    """
    search = search or SearchRequest()
    k, offset = search.k, search.offset
    search_validate_page(k, offset)
    sort = search_validate_sort(search.sort)
    if search.min_score is not None:
        raise InvalidInput(
            "min_score is a cosine similarity, and a fused search's scores are not one; "
            "leave it out or search with one model"
        )
    if len(model_ids) != len(vectors) or len(model_ids) < 2:
        raise ValueError("fused search needs two or more models, each with its query vector")
    depth = max(FUSION_CANDIDATES, offset + k + 1)
    scope: SearchScope = {
        "user": user,
        "filters": search.filters,
        "exclude_image_id": exclude_image_id,
    }
    lists, exact = candidate_lists_nearest(
        model_ids=model_ids, vectors=vectors, depth=depth, ef_search=FUSION_EF_SEARCH, **scope
    )
    union = sorted(set().union(*lists))
    scores = []
    for found in lists:
        # A list's order as scores (-place): its competition ranks within the union are the
        # places, and an unlisted image (-inf) ranks after every listed one.
        place = {image_id: position for position, image_id in enumerate(found, 1)}
        scores.append(np.array([[-place.get(i, np.inf) for i in union]], dtype=np.float64))
    fused = FUSE[SEARCH_FUSION](scores)[0] if union else np.empty(0)
    best = len(model_ids) / (RRF_K + 1)  # first for every model
    return fused_page(
        union, fused / best, k=k, offset=offset, sort=sort,
        model_id=FUSED_SEPARATOR.join(model_ids), exact=exact, fusion=SEARCH_FUSION,
    )  # fmt: skip


def fused_page(
    union: list[int],
    scores: np.ndarray,
    *,
    k: int,
    offset: int,
    sort: str,
    model_id: str,
    exact: bool,
    fusion: str,
) -> SearchPage:
    """A page of a fused ranking: ``scores[i]`` (1 = first everywhere) belongs to image
    ``union[i]``; by score then image id, or newest first among the best (``sort="date"``)."""
    if sort == "date":
        scaled = {i: float(score) for i, score in zip(union, scores, strict=True)}
        return page_by_date(
            scaled, k=k, offset=offset, min_score=None, model_id=model_id, exact=exact,
            fusion=fusion,
        )  # fmt: skip
    order = np.lexsort((np.array(union), -scores))  # fused score descending, then image id
    chosen = [(union[i], float(scores[i])) for i in order[offset : offset + k]]
    images = images_with_captions([i for i, _ in chosen])
    hits = [
        SearchHit(image=images[i], score=score, captions=tuple(images[i].caption_texts))
        for i, score in chosen
    ]
    return SearchPage(
        model_id=model_id, hits=hits, k=k, offset=offset, exact=exact,
        has_more=len(union) > offset + k, fusion=fusion,
    )  # fmt: skip
