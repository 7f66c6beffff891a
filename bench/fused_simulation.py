"""Fused search ("A+B") in numpy: can shallow lists plus an estimate of each candidate's rank
in the other model match RRF over the whole gallery? (issue 22; no database, no Django.)

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/fused_simulation.py [--queries 100]

The data are bench/search_latency.py's at 31,783 images: the clustered generator
(``bench._harness.clustered_unit_vectors``, 32 centres, noise 0.35, seed 0), the first model
512-d (stream 1), the second 640-d with the same clusters and its own noise
(bench/_search/fused.py), queries from stream 2. The truth is RRF over every image (k = 60,
competition ranks: ``search.fusion.fuse_rrf``'s arithmetic); a method's agreement is the
share of the true top 20 its top 20 holds (ties by image id), as bench/_search/fused.py
measures it. Lists are exact top lists here (the product's HNSW lists only lose from that).

Sections:

1. where the true top 20 lie: the worst query's largest min(rank A, rank B) and largest
   max(rank A, rank B) among its 20;
2. lists of depth D, an image a model did not list ranked D + 1 (the product's rule);
3. (a) lists of depth D, each candidate's cosine in the other model known (a primary-key
   lookup) and its rank there, when unlisted, estimated from a fixed uniform sample of S
   images: D + 1 + (N / S) x #{sampled images between its cosine and the list's last};
4. (b) bounds: listed ranks exact, unlisted in [D + 1, N]: the share of queries whose top-20
   set the bounds decide (the others must read deeper);
5. (c) a per-query fit of the list's own cosines (a Gaussian tail: rank = n (1 - Phi(a s + b)),
   n by grid), extrapolated to each unlisted candidate's cosine;
6. how precise the other model's rank must be: exact ranks times (1 + e), e ~ N(0, sigma);
7. how the depth needed depends on how alike the two models are: the second model's noise
   made rho x (the first's, embedded in 640-d) + sqrt(1 - rho^2) x its own (rho = 0 is the
   bench's data).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZE = 31_783
CLUSTERS = 32  # round(SIZE / bench/search_latency.py's --points-per-cluster 1000)
NOISE = 0.35  # bench/_search/data.py
RRF_K = 60  # search.fusion.RRF_K
TOP = 20
WARM_UP = 5  # the bench's queries start after its warm-up ones


def parts(count: int, *, stream: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's centre and noise as ``bench._harness.clustered_unit_vectors`` draws them."""
    centres = np.random.default_rng(0).normal(size=(CLUSTERS, dim)).astype(np.float32)
    rng = np.random.default_rng(stream)
    return centres[rng.integers(0, CLUSTERS, count)], rng.standard_normal(
        (count, dim), dtype=np.float32
    )


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def competition_ranks(scores: np.ndarray) -> np.ndarray:
    ordered = -np.sort(-scores)
    return 1 + np.searchsorted(-ordered, -scores, side="left")


def rrf(ranks_a: np.ndarray, ranks_b: np.ndarray) -> np.ndarray:
    terms = np.sort(np.stack([1 / (RRF_K + ranks_a), 1 / (RRF_K + ranks_b)]), axis=0)
    return terms[0] + terms[1]


def top(ids: np.ndarray, scores: np.ndarray) -> set[int]:
    return set(ids[np.lexsort((ids, -scores))[:TOP]].tolist())


class Pair:
    """Both models' cosines and ranks for every query, and the true top 20s."""

    def __init__(self, queries: int, rho: float = 0.0) -> None:
        count = queries + WARM_UP
        centres_a, noise_a = parts(SIZE, stream=1, dim=512)
        centres_b, noise_b = parts(SIZE, stream=1, dim=640)
        query_centres_a, query_noise_a = parts(count, stream=2, dim=512)
        query_centres_b, query_noise_b = parts(count, stream=2, dim=640)
        if rho:
            embed = np.linalg.qr(np.random.default_rng(99).standard_normal((640, 512)))[0]
            embed = embed.astype(np.float32)
            own = np.float32(np.sqrt(1 - rho**2))
            noise_b = rho * noise_a @ embed.T + own * noise_b
            query_noise_b = rho * query_noise_a @ embed.T + own * query_noise_b
        a = unit(centres_a + NOISE * noise_a)
        if not rho:  # the bench's own vectors, drawn as its generator draws them
            from bench import _harness

            same = next(
                _harness.clustered_unit_vectors(
                    SIZE, clusters=CLUSTERS, seed=0, noise=NOISE, stream=1, chunk=SIZE, dim=640
                )
            )
            assert np.array_equal(same, unit(centres_b + NOISE * noise_b))
        b = unit(centres_b + NOISE * noise_b)
        query_a = unit(query_centres_a + NOISE * query_noise_a)[WARM_UP:]
        query_b = unit(query_centres_b + NOISE * query_noise_b)[WARM_UP:]
        self.cosines = [(query_a @ a.T).astype(np.float64), (query_b @ b.T).astype(np.float64)]
        self.ranks = [np.array([competition_ranks(row) for row in s]) for s in self.cosines]
        everyone = np.arange(SIZE)
        self.truth = [
            top(everyone, rrf(self.ranks[0][q], self.ranks[1][q])) for q in range(queries)
        ]
        self.queries = queries

    def agreement(self, depth: int, unlisted: Callable[[np.ndarray, np.ndarray], np.ndarray]):
        """The fused top 20 over both models' ``depth``-deep lists, an unlisted candidate's
        rank in a model given by ``unlisted(the model's cosines for the query, the
        candidates' cosines)``, against the truth."""
        held = 0
        for q in range(self.queries):
            ranks = [r[q] for r in self.ranks]
            candidates = np.where(np.minimum(*ranks) <= depth)[0]
            estimated = []
            for cosines, rank in zip((c[q] for c in self.cosines), ranks, strict=True):
                mine = rank[candidates].astype(np.float64)
                outside = mine > depth
                mine[outside] = unlisted(cosines, cosines[candidates[outside]])
                estimated.append(mine)
            held += len(top(candidates, rrf(*estimated)) & self.truth[q])
        return held / (self.queries * TOP)


def sampled(depth: int, size: int, rng: np.random.Generator):
    sample = rng.choice(SIZE, size, replace=False)

    def estimate(cosines: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        last = np.partition(cosines, SIZE - depth)[SIZE - depth]  # the list's last cosine
        below = np.sort(cosines[sample])
        below = below[below < last]
        between = len(below) - np.searchsorted(below, wanted, side="right")
        return depth + 1 + between * (SIZE / size)

    return estimate


def tail_fit(depth: int):
    def estimate(cosines: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        listed = np.sort(cosines)[::-1][:depth]
        ranks = np.arange(1, depth + 1)
        best = None
        for n in np.geomspace(depth * 1.5, SIZE, 40):
            z = norm.ppf(1 - (ranks - 0.5) / n)
            fit = np.polyfit(listed, z, 1)
            residual = float(((np.polyval(fit, listed) - z) ** 2).sum())
            if best is None or residual < best[0]:
                best = (residual, n, fit)
        _, n, fit = best
        return np.maximum(depth + 1, n * (1 - norm.cdf(np.polyval(fit, wanted))))

    return estimate


def decided_by_bounds(pair: Pair, depth: int) -> float:
    decided = 0
    for q in range(pair.queries):
        ranks = [r[q] for r in pair.ranks]
        candidates = np.where(np.minimum(*ranks) <= depth)[0]
        listed = [r[candidates] <= depth for r in ranks]
        pairs = list(zip(listed, ranks, strict=True))
        best = rrf(*(np.where(ok, r[candidates], depth + 1.0) for ok, r in pairs))
        worst = rrf(*(np.where(ok, r[candidates], float(SIZE)) for ok, r in pairs))
        chosen = np.argsort(-worst)[:TOP]
        others = np.ones(len(candidates), bool)
        others[chosen] = False
        unseen = 2 / (RRF_K + depth + 1)  # an image in neither list
        decided += worst[chosen].min() > max(best[others].max(), unseen)
    return decided / pair.queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    pair = Pair(args.queries)
    worst_min = max(
        max(min(pair.ranks[0][q][i], pair.ranks[1][q][i]) for i in pair.truth[q])
        for q in range(pair.queries)
    )
    worst_max = max(
        max(max(pair.ranks[0][q][i], pair.ranks[1][q][i]) for i in pair.truth[q])
        for q in range(pair.queries)
    )
    print(f"N={SIZE:,} per model, {pair.queries} queries, agreement with whole-gallery RRF")
    print(f"1. true top 20: min(rank A, rank B) <= {worst_min}, max(...) <= {worst_max}")

    def plus_one(depth: int):
        return lambda cosines, wanted: np.full(len(wanted), depth + 1.0)

    depths = (100, 150, 300, 500, 800, 1000)
    row = ", ".join(f"{d}: {pair.agreement(d, plus_one(d)):.3f}" for d in depths)
    print(f"2. lists of D, unlisted = D + 1: {row}")
    rng = np.random.default_rng(123)
    for depth in (150, 300, 500):
        row = ", ".join(
            f"S={s}: {pair.agreement(depth, sampled(depth, s, rng)):.3f}"
            for s in (1000, 2000, 4000)
        )
        print(f"3. (a) lists of {depth} + uniform sample: {row}")
    row = ", ".join(f"{d}: {decided_by_bounds(pair, d):.2f}" for d in (100, 300, 500, 800))
    print(f"4. (b) share of queries the bounds decide, by D: {row}")
    row = ", ".join(f"{d}: {pair.agreement(d, tail_fit(d)):.3f}" for d in (150, 300, 500))
    print(f"5. (c) lists of D + Gaussian tail fit: {row}")
    noise_rng = np.random.default_rng(7)
    cells = []
    for sigma in (0.02, 0.05, 0.10):
        held = 0
        for q in range(pair.queries):
            ranks = [r[q] for r in pair.ranks]
            candidates = np.where(np.minimum(*ranks) <= 100)[0]
            blurred = [
                np.where(
                    r[candidates] <= 100,
                    r[candidates],
                    r[candidates] * (1 + sigma * noise_rng.standard_normal(len(candidates))),
                )
                for r in ranks
            ]
            held += len(top(candidates, rrf(*blurred)) & pair.truth[q])
        cells.append(f"sigma {sigma:.2f}: {held / (pair.queries * TOP):.3f}")
    print(f"6. lists of 100, other ranks exact x (1 + e): {', '.join(cells)}")
    for rho in (0.5, 0.7, 0.9):
        alike = Pair(args.queries, rho=rho)
        row = ", ".join(
            f"{d}: {alike.agreement(d, plus_one(d)):.3f}" for d in (100, 150, 300, 500, 800)
        )
        print(f"7. rho {rho}: lists of D, unlisted = D + 1: {row}")


if __name__ == "__main__":
    main()
