"""Does an index build block uploads? Inserts during an online build and an inline one, by hand.

    OMP_NUM_THREADS=1 .venv/bin/python bench/index_build_online.py [--rows 100000] \
        [--vectors uniform|skewed] [--modes online,inline] [--data-dir DIR] [--database-url URL]

Loads ``--rows`` unit vectors for one model (COPY), then builds its HNSW index twice: online
(``workers.indexes.embedding_index_build``: CREATE INDEX CONCURRENTLY, then the swap) and inline
(``embedding_indexes_ensure``: plain CREATE INDEX, what migrate did for every table before). During
each build another connection stores one embedding every 0.2 s, each its own transaction, as a
worker storing an upload's embedding would; printed: the build's seconds, how many inserts
committed during it, and their median and longest latency. An inline build holds a lock that
makes every insert wait for the whole build; an online one should leave them at milliseconds.

``--vectors``: ``uniform`` (``_harness.unit_vectors``, the default and the worst case for a graph
build: every row far from every other) or ``skewed`` (``_harness.skewed_unit_vectors``, as
``ann_recall.py --generators skewed``: clustered like real image embeddings, and the size at
which a 1M build finishes in minutes rather than hours). ``--modes``: which builds, in order
(``online`` only for a large ``--rows``: an inline build there blocks for the whole build, which
the 10k and 30k runs already show). The build's memory (maintenance_work_mem) is printed, from
``workers.indexes`` as the product sizes it.

Runs on its own embedded PostgreSQL in ``--data-dir`` (default .data/bench/index_build_online),
never the site's data: see bench/_harness.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _harness

SCRIPT = "index_build_online"
MODEL_ID = "clip-vit-base-patch32"
INSERT_EVERY = 0.2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--vectors", choices=("uniform", "skewed"), default="uniform")
    parser.add_argument("--modes", default="online,inline", help="online and/or inline, in order")
    _harness.add_arguments(parser, script=SCRIPT)
    args = parser.parse_args(argv)
    args.modes = [mode for mode in args.modes.split(",") if mode]
    if not args.modes or set(args.modes) - {"online", "inline"}:
        parser.error("--modes: a comma-separated list of online and inline")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with _harness.own_django(script=SCRIPT, data_dir=args.data_dir, database_url=args.database_url):
        run(args)


def run(args: argparse.Namespace) -> None:
    from django.db import connection

    from workers.indexes import (
        embedding_index_build,
        embedding_indexes_ensure,
        hnsw_build_memory,
        hnsw_build_memory_cap,
        hnsw_index_name,
    )

    # Image rows with no embedding yet, for the inserts during the builds: one every
    # INSERT_EVERY s, enough for a build of 2.7 hours (a 1M build on a busy 2-core box).
    uploads = 50_000
    with connection.cursor() as cursor:  # COPY into a live HNSW index would insert row by row
        cursor.execute(f'DROP INDEX IF EXISTS "{hnsw_index_name(MODEL_ID)}"')
    _harness.fake_images_replace(args.rows + uploads)
    if args.vectors == "skewed":
        clusters = max(1, round(args.rows / 1000))  # ann_recall.py's --points-per-cluster
        chunks = _harness.skewed_unit_vectors(args.rows, clusters=clusters, seed=0, stream=1)
    else:
        chunks = iter([_harness.unit_vectors(args.rows, seed=0)])
    _harness.fake_embeddings_copy(model_id=MODEL_ID, chunks=chunks)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) search_imageembedding")
        memory = hnsw_build_memory(rows=args.rows, dim=512, cap=hnsw_build_memory_cap(cursor))
    print(
        f"{args.rows:,} x 512-d {args.vectors} rows of {MODEL_ID}; one insert every "
        f"{INSERT_EVERY} s; build memory {memory / 2**30:.2f} GiB; loadavg_1min "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print(
        f"{'build':<44} {'seconds':>8} {'inserts':>8} {'median ms':>10} {'p99 ms':>9} "
        f"{'max ms':>9} {'index MB':>9}"
    )
    builds: dict[str, tuple[str, Callable[[], object]]] = {
        "online": ("online (embedding_index_build, CONCURRENTLY)", lambda: embedding_index_build(
            model_id=MODEL_ID)),
        "inline": ("inline (CREATE INDEX, migrate before)", lambda: embedding_indexes_ensure(
            model_ids=[MODEL_ID])),
    }  # fmt: skip
    modes = [builds[mode] for mode in args.modes]
    next_image = args.rows + 1
    for label, build in modes:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP INDEX IF EXISTS "{hnsw_index_name(MODEL_ID)}"')
            cursor.execute("DELETE FROM search_imageembedding WHERE image_id > %s", [args.rows])
            cursor.execute("CHECKPOINT")
        seconds, latencies, next_image = _build_with_inserts(build, next_image)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_relation_size(%s::regclass)", [f'"{hnsw_index_name(MODEL_ID)}"']
            )
            index_mb = cursor.fetchone()[0] / 2**20
        print(
            f"{label:<44} {seconds:>8.1f} {len(latencies):>8} "
            f"{1000 * statistics.median(latencies):>10.1f} "
            f"{1000 * float(np.percentile(latencies, 99)):>9.1f} {1000 * max(latencies):>9.1f} "
            f"{index_mb:>9.0f}  (loadavg_1min {os.getloadavg()[0]:.2f})",
            flush=True,
        )


def _build_with_inserts(
    build: Callable[[], object], next_image: int
) -> tuple[float, list[float], int]:
    from django.db import connections

    vector = "[" + ",".join(map(str, _harness.unit_vectors(1, seed=7)[0].tolist())) + "]"
    done = threading.Event()

    def run_build() -> None:
        try:
            build()
        finally:
            connections.close_all()  # this thread's Django connection
            done.set()

    latencies: list[float] = []
    started = time.perf_counter()
    threading.Thread(target=run_build).start()
    with _harness._raw_connection() as raw:
        raw.autocommit = True
        while not done.is_set():
            began = time.perf_counter()
            raw.execute(
                "INSERT INTO search_imageembedding (image_id, model_id, vector, created_at) "
                "VALUES (%s, %s, %s::vector, now())",
                [next_image, MODEL_ID, vector],
            )
            latencies.append(time.perf_counter() - began)
            next_image += 1
            done.wait(INSERT_EVERY)
    return time.perf_counter() - started, latencies, next_image


if __name__ == "__main__":
    _harness.main_guarded(main, None)
