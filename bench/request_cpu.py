"""CPU per search request outside the encoder and the index: where each millisecond goes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/request_cpu.py [--size 31783] [--requests 300] \
        [--repeat 3] [--profile 40] [--path "/api/search?q={text}"] [--fused] \
        [--data-dir .data/bench/search_latency]

Serves ``GET /api/search`` (or ``--path``) through Django's test client with the production
middleware stack (``config.settings.dev`` with DEBUG off, as ./run serves), in this process, on
the search-latency bench's data set (bench/_search/data.py: N clustered vectors, 5 captions per
image; its data dir is shared, so a loaded set is reused). The query encoder is a tiny CLIP of
the same output size (tests/tiny_models.py) and every timed request repeats a text already
asked, so the server's query cache answers it: what is left is the request path itself
(middleware, sessions, auth, the API, the ORM's statements, JSON) plus the database's answers.

Printed: this process's CPU time per request (``time.process_time``: hardly moved by other
load on the machine, unlike latency) and the database server's CPU per request, best of
``--repeat`` runs; with ``--profile N`` a cProfile of one more run, the N functions with the
most time of their own and the N with the most time under them. ``perf stat`` is not used:
the container may not count instructions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import pstats
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _harness

SCRIPT = "search_latency"  # the same data set and data dir as bench/search_latency.py
TEXTS = 50


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=31_783)
    parser.add_argument("--requests", type=int, default=300, help="timed requests per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, help="cProfile: show N functions")
    parser.add_argument("--path", default="/api/search?q={text}", help="{text}: a query text")
    parser.add_argument("--fused", action="store_true", help="search with both bench models (A+B)")
    parser.add_argument("--points-per-cluster", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reload", action="store_true")
    _harness.add_arguments(parser, script=SCRIPT)
    args = parser.parse_args(argv)
    args.queries = 20  # dataset_ensure's query vectors (unused here)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    for name in ("EMBEDDING_MODELS", "EMBEDDING_DEFAULT_MODEL"):
        os.environ.pop(name, None)
    with _harness.own_django(
        script=SCRIPT, data_dir=args.data_dir, database_url=args.database_url
    ) as data_dir:
        run(args, data_dir)


def run(args: argparse.Namespace, data_dir: Path) -> None:
    from django.conf import settings
    from django.test import Client

    from bench._search.common import MODEL_ID, server_cpu_seconds
    from bench._search.data import dataset_ensure, print_header
    from tests.tiny_models import build_tiny_clip

    print_header(args, data_dir)
    dataset = dataset_ensure(args.size, args, data_dir)
    model_dir = build_tiny_clip(data_dir / "clip-tiny")
    sources = {MODEL_ID: str(model_dir)}
    model = MODEL_ID
    if args.fused:
        from bench._search.fused import SECOND_MODEL, second_model_ensure
        from tests.tiny_models import build_tiny_align

        _, note = second_model_ensure(dataset, args)
        print(f"  {note}")
        sources[SECOND_MODEL] = str(build_tiny_align(data_dir / "align-tiny"))
        model = f"{MODEL_ID}+{SECOND_MODEL}"
    settings.EMBEDDING_MODEL_SOURCES = sources
    settings.ALLOWED_HOSTS = ["testserver"]
    texts = [f"a photo of a red dog on the beach {n}" for n in range(TEXTS)]
    paths = [args.path.format(text=quote(text)) + f"&model={quote(model)}" for text in texts]
    client = Client()
    for path in paths:  # fills the query cache; the first requests also warm everything else
        response = client.get(path)
        if response.status_code != 200:
            raise SystemExit(f"{path}: {response.status_code} {response.content[:300]!r}")

    def one_run() -> None:
        for path in itertools.islice(itertools.cycle(paths), args.requests):
            client.get(path)

    best: tuple[float, float, float] | None = None
    for _ in range(args.repeat):
        web_before, db_before = time.process_time(), server_cpu_seconds(data_dir)[1]
        started = time.perf_counter()
        one_run()
        wall = (time.perf_counter() - started) * 1000 / args.requests
        web = (time.process_time() - web_before) * 1000 / args.requests
        database = (server_cpu_seconds(data_dir)[1] - db_before) * 1000 / args.requests
        print(
            f"  {args.requests} cached requests: this process {web:.2f} ms CPU, PostgreSQL "
            f"{database:.2f} ms CPU, {wall:.2f} ms wall per request",
            flush=True,
        )
        if best is None or web < best[0]:
            best = (web, database, wall)
    assert best is not None
    print(
        f"\nN={dataset.size:,} {args.path} model={model}: best of {args.repeat} x "
        f"{args.requests}: Django process {best[0]:.2f} ms CPU + PostgreSQL {best[1]:.2f} ms CPU "
        f"per cached request ({best[2]:.2f} ms wall); loadavg_1min={os.getloadavg()[0]:.2f}"
    )
    if args.profile:
        # CPU time, not wall time: waiting for the database is the database's figure.
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        one_run()
        profiler.disable()
        for order in ("tottime", "cumulative"):
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats(order).print_stats(args.profile)
            print(f"\n--- cProfile, {args.requests} requests, by {order} ---")
            print(out.getvalue().split("\n", 6)[-1])


if __name__ == "__main__":
    _harness.main_guarded(main, sys.argv[1:])
