"""Ranks, Recall@K and fusion in plain numpy: no database, no model.

The tie rule, the same in every path of the evaluation: a query's rank is 1 + the number of
candidates strictly more similar than its best right answer, so candidates that score exactly
as well as the answer count for the query. Two things make exact ties survive the arithmetic
here, where they would otherwise be broken by where a candidate happens to sit:

- identical candidate vectors (a caption text that several images share, a duplicated photo)
  are scored once and the score copied, since BLAS may round the same dot product differently
  in different columns of one matrix product;
- reciprocal-rank fusion gives candidates that tie within a model the same rank (the best
  one, as above), not consecutive ranks in column order, and adds each candidate's terms in
  sorted order, so candidates whose ranks are a permutation of each other's tie exactly.

The fusions themselves live in ``search.fusion``, which fused search uses too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from search.fusion import FUSE, FUSIONS

KS = (1, 5, 10)
# Largest query x candidate block scored at once (about 64 MB of float32 per model).
_BLOCK_CELLS = 1 << 24


@dataclass(frozen=True)
class RankSummary:
    """Recall@1/5/10 in percent and the median and mean rank of ``n`` queries.

    A rank of ``inf`` is a query whose answer was not retrieved at all (beyond the top k of an
    index search): it counts as a miss, and makes the mean unknown (None), and the median too
    when more than half the queries missed.
    """

    n: int
    r1: float
    r5: float
    r10: float
    median_rank: float | None
    mean_rank: float | None


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Percentage of queries whose answer ranks within the top ``k``."""
    return 100.0 * float(np.mean(np.asarray(ranks) <= k)) if len(ranks) else 0.0


def rank_summary(ranks: np.ndarray) -> RankSummary:
    ranks = np.asarray(ranks, dtype=np.float64)
    if not len(ranks):
        raise ValueError("no ranks to summarise")
    median = float(np.median(ranks))
    mean = float(np.mean(ranks))
    r1, r5, r10 = (recall_at_k(ranks, k) for k in KS)
    return RankSummary(
        n=len(ranks),
        r1=r1,
        r5=r5,
        r10=r10,
        median_rank=median if np.isfinite(median) else None,
        mean_rank=mean if np.isfinite(mean) else None,
    )


def ranks_from_scores(
    scores: np.ndarray, *, query_keys: np.ndarray, candidate_keys: np.ndarray
) -> np.ndarray:
    """1-based rank of each query's best right answer among the candidates (columns).

    Query ``i``'s right answers are the candidates whose key equals ``query_keys[i]``: for
    text->image the key is the image id (one answer); for image->text, the image id each caption
    belongs to (five answers, the best one counts). Ties count for the query.
    """
    relevant = np.asarray(query_keys)[:, None] == np.asarray(candidate_keys)[None, :]
    if not relevant.any(axis=1).all():
        raise ValueError("a query has no right answer among the candidates")
    best = np.where(relevant, scores, -np.inf).max(axis=1)
    return 1 + (scores > best[:, None]).sum(axis=1)


@dataclass(frozen=True)
class DistinctRows:
    """A matrix as its distinct rows plus, per original row, which distinct row it is."""

    rows: np.ndarray
    inverse: np.ndarray

    @classmethod
    def of(cls, matrix: np.ndarray) -> DistinctRows:
        rows, inverse = np.unique(np.ascontiguousarray(matrix), axis=0, return_inverse=True)
        return cls(rows=rows, inverse=inverse.reshape(-1))


def ranks_numpy(
    *,
    queries: Sequence[np.ndarray],
    candidates: Sequence[np.ndarray],
    query_keys: np.ndarray,
    candidate_keys: np.ndarray,
    fusion: str = "",
) -> np.ndarray:
    """Ranks by cosine similarity (rows are unit vectors), one model or a ``fusion`` of several.

    ``queries[m]`` and ``candidates[m]`` are model m's vectors; blocks of queries are scored at
    a time so memory stays bounded for a gallery of all 31,783 images or their captions.
    """
    if len(queries) != len(candidates) or not queries:
        raise ValueError("one query matrix and one candidate matrix per model")
    if len(queries) > 1 and fusion not in FUSE:
        raise ValueError(f"fusing {len(queries)} models needs fusion in {FUSIONS}")
    distinct = [DistinctRows.of(c) for c in candidates]
    n_queries, n_candidates = len(query_keys), len(candidate_keys)
    step = max(1, _BLOCK_CELLS // max(n_candidates, 1))
    ranks = np.empty(n_queries, dtype=np.int64)
    for start in range(0, n_queries, step):
        stop = min(start + step, n_queries)
        blocks = [
            (q[start:stop] @ d.rows.T)[:, d.inverse] for q, d in zip(queries, distinct, strict=True)
        ]
        scores = blocks[0] if len(blocks) == 1 else FUSE[fusion](blocks)
        ranks[start:stop] = ranks_from_scores(
            scores, query_keys=query_keys[start:stop], candidate_keys=candidate_keys
        )
    return ranks
