"""A synthetic check of negative terms ("beach -people"): does excluding a concept push down
the images that match it, by the rule search uses (``search.query_vectors.vector_without``)?

Flickr30k has no queries with negatives, so they are made from its captions: a caption of one
image is the query and a caption of another image the excluded concept, whose image is "the
image that matches the negative". The check reports how often that image falls in the ranking
once the concept is excluded, and how far, beside what happens to the query's own image (which
should barely move). Plain numpy over the evaluation's vectors: no database.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from search.query_vectors import vector_without

NEGATIVE_PAIRS = 500


@dataclass(frozen=True)
class NegativeCheck:
    pairs: int
    weight: float
    demoted: int  # pairs whose negative's image ranks lower with the negative than without
    negative_median_before: float
    negative_median_after: float
    own_median_before: float
    own_median_after: float

    def describe(self, model_id: str) -> str:
        share = 100 * self.demoted / self.pairs if self.pairs else 0.0
        return (
            f"{model_id}: negative terms (synthetic: {self.pairs} pairs of one image's caption "
            f"as the query and another image's caption excluded, w={self.weight:g}): the "
            f"excluded caption's image ranked lower in {share:.1f}% of pairs, median rank "
            f"{self.negative_median_before:g} -> {self.negative_median_after:g}; the query's "
            f"own image {self.own_median_before:g} -> {self.own_median_after:g}"
        )


def _rank(scores: np.ndarray, column: int) -> int:
    return 1 + int((scores > scores[column]).sum())


def negative_check(
    *,
    queries: np.ndarray,
    query_image_rows: np.ndarray,
    images: np.ndarray,
    weight: float,
    pairs: int = NEGATIVE_PAIRS,
    seed: int = 0,
) -> NegativeCheck:
    """``queries``: caption vectors, ``query_image_rows[i]`` the row of query i's image in
    ``images`` (the gallery's vectors). Pairs are drawn with a fixed seed, so a rerun on the
    same data reports the same figures."""
    rng = np.random.default_rng(seed)
    count = len(queries)
    chosen: list[tuple[int, int]] = []
    for _ in range(pairs * 4):
        if len(chosen) == pairs or count < 2:
            break
        query, negative = (int(x) for x in rng.integers(0, count, 2))
        if query_image_rows[query] != query_image_rows[negative]:
            chosen.append((query, negative))
    if not chosen:
        return NegativeCheck(0, weight, 0, 0.0, 0.0, 0.0, 0.0)
    before_negative, after_negative, before_own, after_own = [], [], [], []
    for query, negative in chosen:
        plain = images @ queries[query]
        excluded = images @ vector_without(queries[query], [queries[negative]], weight=weight)
        target, own = int(query_image_rows[negative]), int(query_image_rows[query])
        before_negative.append(_rank(plain, target))
        after_negative.append(_rank(excluded, target))
        before_own.append(_rank(plain, own))
        after_own.append(_rank(excluded, own))
    demoted = sum(a > b for a, b in zip(after_negative, before_negative, strict=True))
    return NegativeCheck(
        pairs=len(chosen),
        weight=weight,
        demoted=demoted,
        negative_median_before=float(np.median(before_negative)),
        negative_median_after=float(np.median(after_negative)),
        own_median_before=float(np.median(before_own)),
        own_median_after=float(np.median(after_own)),
    )
