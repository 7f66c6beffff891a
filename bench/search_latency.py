"""Search latency: the seed's in-memory ranking against pgvector, end to end and under load.

    .venv/bin/python bench/search_latency.py [--sizes 31783,1000000] [--queries 200] \
        [--ef-search 40,100,200] [--skip-ranking] [--skip-e2e] [--skip-load] \
        [--load-seconds 60] [--clients 50] [--persistent-connections] [--web-dtype int8] \
        [--fused] [--parsed] [--data-dir DIR] [--database-url URL]

For each N in ``--sizes`` it loads N synthetic 512-d unit vectors (clustered like real image
embeddings: ``N / --points-per-cluster`` centres plus Gaussian noise, the generator of
``tests/search/test_search.py::clustered``) as Flickr30k images of ``clip-vit-base-patch32``,
with PostgreSQL COPY and the HNSW index built after the load, and times top-10 queries drawn
from the same distribution:

(a) the seed project's method: sklearn ``cosine_similarity`` of the query against the whole
    in-memory matrix, then a full ``argsort``. scikit-learn is not a dependency of this project,
    so this is its numpy equivalent, step for step: copy and L2-normalise both inputs (what
    ``sklearn.preprocessing.normalize`` does inside ``cosine_similarity``), one matrix product,
    ``np.argsort`` of all N scores. A row (a') shows the best in-memory brute force for
    reference: pre-normalised matrix, one product, ``argpartition``.
(b) exact scan in PostgreSQL: ``embeddings_ranked(exact=True)[:10]``, the product's query.
(c) HNSW: ``embeddings_ranked()[:10]`` at each ``hnsw.ef_search`` (40 is pgvector's default),
    with the iterative scan the product's connections enable; recall@10 against (b). The
    index files are read once first, so (c) runs on a warm OS cache as a busy server would.
(c') the API's database work: ``images_search_by_vector`` (visibility join, 20 hits with their
    images and captions) at the lowest ef_search that reached recall@10 >= 0.95 (else the
    highest tried).

With ``--fused``, after the table: fused search ("A+B", two models' HNSW top lists fused by
RRF) beside one model, on the same queries, with a second model's synthetic vectors stored for
the same images (bench/_search/fused.py).

With ``--parsed``: queries read the way people ask (a date chip, a negative term, hybrid)
beside a plain one, without the text encoder (bench/_search/parsed.py).

Then, at N = ``--e2e-size`` (31,783, Flickr30k's size): ``GET /api/search`` served by gunicorn
exactly as ``./run`` starts it, with the full-size ViT-B/32 CLIP architecture (``CLIPConfig()``,
random seeded weights: none can be downloaded here; speed depends on the architecture), first
one query at a time, then ``--clients`` concurrent keep-alive clients for ``--load-seconds``.
Every query text is distinct, so the server's query cache never hits. The tokenizer is the
tests' made-up one (whole-word tokens for a few words, single characters otherwise); query
texts use its whole words plus a number, about 15 tokens each, a Flickr30k caption's length.
Before anything else reaches the server, the first queries after "ready" are timed one by one
on new connections: ready is when every worker has logged the end of its warm-up
(bench/_search/gunicorn_ready.py, config/gunicorn.py plus that one log line), so the first
query is the first request the server ever answers. The table splits a request's time: the
same texts sent again on the same keep-alive connection (same worker, so query-cache hits) give
the request without the encoder; the encoder, the database work and the HNSW top 10 alone are
also timed in this process. The run ends with the issue's goals in one table (distinct-query
p95, cache-hit p95, first query after ready, req/s and errors under load) beside the encoder
alone and the HNSW scan alone from the same run. ``--persistent-connections`` and ``--web-dtype``
run the same server with those settings changed, to see what each costs.

Each section ends with the CPU time other processes used meanwhile: on 2 cores any other
benchmark or test run skews the figures, so rerun when that is not ~0.

The data live in the bench's own embedded PostgreSQL in ``--data-dir`` (default
.data/bench/search_latency), never the site's (see bench/_harness.py); a later run with the same
N reuses the loaded rows and index unless ``--reload``. The server and PostgreSQL are stopped
when the script ends. The parts live in bench/_search/: ``data`` (the data set), ``ranking``
(the table of (a)-(c')), ``server`` (gunicorn, end to end) and ``load`` (concurrent clients).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _harness

SCRIPT = "search_latency"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="31783,1000000", help="comma-separated N")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per method")
    parser.add_argument("--ef-search", default="40,100,200", help="hnsw.ef_search values")
    parser.add_argument("--points-per-cluster", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-ranking", action="store_true", help="no (a)/(b)/(c) table")
    parser.add_argument("--skip-e2e", action="store_true", help="no gunicorn latency run")
    parser.add_argument("--skip-load", action="store_true", help="no concurrent load run")
    parser.add_argument(
        "--fused", action="store_true", help="also time fused search (two models) vs one"
    )
    parser.add_argument(
        "--fusion-sweep",
        default="",
        help="with --fused: CANDIDATES:EF_SEARCH pairs (comma-separated) to time and check "
        "fused search's agreement with whole-gallery RRF at, e.g. 1000:40,1000:1000",
    )
    parser.add_argument(
        "--fusion-ivf",
        default="",
        help="with --fused: LISTS:PROBES pairs (comma-separated): fused search with each "
        "model's lists from an IVFFlat index instead of HNSW (a trial, rolled back), e.g. 100:5",
    )
    parser.add_argument("--e2e-size", type=int, default=31_783)
    parser.add_argument("--e2e-queries", type=int, default=None, help="default: --queries")
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument(
        "--web-threads", type=int, default=None, help="default: config/gunicorn.py's (4)"
    )
    parser.add_argument(
        "--web-dtype", default="", help="EMBEDDING_DTYPE for the server (e.g. int8); default fp32"
    )
    parser.add_argument(
        "--persistent-connections",
        action="store_true",
        help="give the server the embedded database as DATABASE_URL, so the settings keep "
        "connections open (CONN_MAX_AGE=60) instead of one new connection per request",
    )
    parser.add_argument(
        "--parsed", action="store_true", help="date chip, negative and hybrid vs a plain query"
    )
    _harness.add_arguments(parser, script=SCRIPT)
    parser.add_argument("--reload", action="store_true", help="reload rows even if present")
    args = parser.parse_args(argv)
    args.sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    args.ef_search = [int(ef) for ef in args.ef_search.split(",") if ef.strip()]
    args.e2e_queries = args.e2e_queries or args.queries
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # The server must use the model this bench builds, whatever the user's settings enable.
    for name in ("EMBEDDING_MODELS", "EMBEDDING_DEFAULT_MODEL"):
        os.environ.pop(name, None)
    with _harness.own_django(
        script=SCRIPT, data_dir=args.data_dir, database_url=args.database_url
    ) as data_dir:
        run(args, data_dir)


def run(args: argparse.Namespace, data_dir: Path) -> None:
    from bench._search.data import dataset_ensure, print_header
    from bench._search.fused import fused_benchmark
    from bench._search.load import load_test
    from bench._search.parsed import parsed_benchmark
    from bench._search.ranking import vector_benchmark
    from bench._search.server import WebServer, end_to_end

    server: WebServer | None = None
    try:
        print_header(args, data_dir)
        for size in args.sizes:
            dataset = dataset_ensure(size, args, data_dir)
            if not args.skip_ranking:
                vector_benchmark(dataset, args, data_dir)
            if args.fused:
                fused_benchmark(dataset, args, data_dir)
            if args.parsed:
                parsed_benchmark(dataset, args, data_dir)
            if size == args.e2e_size and not args.skip_e2e:
                server = end_to_end(dataset, args, data_dir)
                load = None if args.skip_load else load_test(server, args, data_dir)
                server.stop()
                goals_print(server, load, args)
                server = None
        if not args.skip_e2e and args.e2e_size not in args.sizes:
            print(f"\nno end-to-end run: --e2e-size {args.e2e_size} is not in --sizes")
    finally:
        if server is not None:
            server.stop()


def goals_print(server, load, args: argparse.Namespace) -> None:
    """The issue's end-to-end goals in one table, beside the encoder alone and the HNSW scan
    alone from the same run, so figures from different machines can be compared."""
    figures = server.figures
    encoder, hnsw = figures["encoder"], figures["hnsw"]
    print(
        f"\nGoals at N={args.e2e_size:,} ({args.web_dtype or 'fp32'}); same run: text encoder "
        f"alone p50/p95 {encoder.pct(50):.1f} / {encoder.pct(95):.1f} ms, HNSW top 10 alone "
        f"{hnsw.pct(50):.2f} / {hnsw.pct(95):.2f} ms, API database work "
        f"{figures['database'].pct(50):.1f} / {figures['database'].pct(95):.1f} ms"
    )
    header = f"{'what':<44}{'measured':>26}{'goal':>18}{'':>8}"
    print(header)
    print("-" * len(header))
    rows = [
        ("distinct queries, p50 / p95 ms", figures["distinct"], 40.0),
        ("cache hit (no encoder), p50 / p95 ms", figures["hit"], 10.0),
    ]
    for label, row, goal in rows:
        met = "met" if row.pct(95) <= goal else "MISSED"
        print(
            f"{label:<44}{f'{row.pct(50):.1f} / {row.pct(95):.1f}':>26}"
            f"{f'p95 <= {goal:.0f}':>18}{met:>8}"
        )
    first = figures["first"].pct(50)
    print(
        f"{'first query after ready, ms':<44}{f'{first:.1f}':>26}{'<= 100':>18}"
        f"{'met' if first <= 100 else 'MISSED':>8}"
    )
    if load is not None:
        measured = f"{load.requests_per_s:.1f} / {load.p95_ms:.0f} / {load.failed}"
        met = load.requests_per_s >= 60 and load.failed == 0
        print(
            f"{f'{args.clients} clients {args.load_seconds:.0f} s: req/s / p95 ms / errors':<44}"
            f"{measured:>26}{'>= 60, 0 errors':>18}{'met' if met else 'MISSED':>8}",
            flush=True,
        )


if __name__ == "__main__":
    _harness.main_guarded(main, sys.argv[1:])
