"""Fusion of several models' similarity scores, in plain numpy: no database, no model.

Shared by the evaluation (``search.evaluation``, which measures fusions over a whole gallery)
and by fused search (``search.selectors``, which fuses each model's top candidates), so the
product ranks with exactly the arithmetic the evaluation measured.

Scores are (queries x candidates) blocks, one per model, higher is more similar. The tie rule,
the same as the evaluation's: a candidate's rank within a model is 1 + the number of candidates
strictly more similar, so exact ties share the best of their ranks; reciprocal-rank fusion adds
each candidate's terms in sorted order, so candidates whose ranks are a permutation of each
other's tie exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

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


def fuse_rrf(scores: Sequence[np.ndarray], *, k: int = RRF_K) -> np.ndarray:
    """Reciprocal-rank fusion: the sum over models of 1 / (k + the candidate's rank)."""
    terms = np.stack([1.0 / (k + competition_ranks(block)) for block in scores])
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
