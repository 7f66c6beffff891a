"""Query vectors made of several parts: what a search looks for minus what it excludes, and
words plus an image, each as ONE unit vector, so every path (the HNSW index query, its exact
fallback, fused search) ranks by the same rule.

The rule for negatives ("beach -people", "city without cars"):

    q' = normalize(q - w * (n_1 + ... + n_m))

with q the unit vector of the words searched, n_i the unit vector of each excluded concept (same
model) and w = SEARCH_NEGATIVE_WEIGHT (0.5 by default). Cosine similarity to q' is then
(cos(x, q) - w * sum cos(x, n_i)) / |q - w * sum n_i|: the positive similarity, demoted by the
negative one, with one constant for the whole query, so the index answers it like any query.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kernel.errors import InvalidInput

# Below this length the parts cancel out ("cat -cat"): no direction is left to rank by.
_MIN_NORM = 1e-6


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm < _MIN_NORM:
        raise InvalidInput("what the query asks for and what it excludes cancel out")
    return (vector / norm).astype(np.float32)


def vector_without(
    positive: np.ndarray, negatives: Sequence[np.ndarray], *, weight: float
) -> np.ndarray:
    """``positive`` pushed away from each of ``negatives`` by the module's rule."""
    if not negatives or weight == 0:
        return np.asarray(positive, dtype=np.float32)
    total = np.asarray(positive, dtype=np.float64).copy()
    for negative in negatives:
        total -= weight * _unit(np.asarray(negative, dtype=np.float64))
    return _unit(total)


def vector_combined(parts: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
    """One query from several (unit vector, weight) parts, e.g. words and an image:
    normalize(sum of weight * part). Weights need not add up to 1."""
    if not parts:
        raise ValueError("a combined query needs at least one part")
    total = sum(weight * _unit(np.asarray(v, dtype=np.float64)) for v, weight in parts)
    return _unit(np.asarray(total, dtype=np.float64))
