"""Search on the primary against one and two read replicas: latency and throughput.

The bench's embedded PostgreSQL holds N clustered vectors (the search-latency data set, reused
between runs); two hot standbys are made from it with ``pg_basebackup -R -X stream``
(``config.devserver.standby``) and added as ``replica_0`` and ``replica_1``. Then, for each
set-up (no replica, one, two), ``--clients`` threads run the product's vector search
(``search.ranking.images_search_by_vector`` through ``kernel.db_routing.replica_call``, as the
API's pages do) for ``--seconds``, and the script prints queries per second, p50 and p95, and
which server answered. One Python process: the ORM's own CPU time is shared under the GIL, and
every server shares this machine's cores, so the figures say whether a replica serves as fast
as the primary, not how a site with replicas on their own machines scales.

    OMP_NUM_THREADS=1 .venv/bin/python bench/replica_reads.py --size 31783 --seconds 20
"""

from __future__ import annotations

import argparse
import copy
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _harness

SCRIPT = "replica_reads"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=31_783, help="vectors stored (N)")
    parser.add_argument("--seconds", type=float, default=20.0, help="load per set-up")
    parser.add_argument("--clients", type=int, default=4, help="threads searching at once")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--points-per-cluster", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=200, help="distinct query vectors")
    parser.add_argument("--standby-shared-buffers", default="256MB")
    parser.add_argument("--reload", action="store_true", help="reload rows even if present")
    _harness.add_arguments(parser, script=SCRIPT)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with _harness.own_django(
        script=SCRIPT, data_dir=args.data_dir, database_url=args.database_url
    ) as data_dir:
        if args.database_url:
            raise _harness.BenchRefused("this bench makes standbys of its embedded server only")
        run(args, data_dir)


def run(args: argparse.Namespace, data_dir: Path) -> None:
    from django.db import connections

    from bench._search.data import dataset_ensure
    from config.devserver import embedded
    from config.devserver.standby import Standby

    dataset = dataset_ensure(args.size, args, data_dir)
    socket = embedded.postgres_socket_dir(data_dir)
    assert socket is not None
    standbys = [Standby(data_dir / f"standby_{n}", socket) for n in range(2)]
    try:
        for server in standbys:
            print(f"  making {server.pgdata.name} (pg_basebackup -R -X stream)", flush=True)
            server.create()
            server.stop()
            server.start(shared_buffers=args.standby_shared_buffers)
        with connections["default"].cursor() as cursor:
            cursor.execute("CHECKPOINT")
            cursor.execute("SELECT pg_current_wal_flush_lsn()::text")
            lsn = cursor.fetchone()[0]
        for server in standbys:
            server.wait_replayed(lsn)
        primary = connections["default"].settings_dict
        print(
            f"\nN={args.size:,}, {args.clients} clients, {args.seconds:.0f} s per set-up, "
            f"k={args.k}; standbys' shared_buffers {args.standby_shared_buffers}"
        )
        print(f"{'set-up':<12} {'queries/s':>10} {'p50 ms':>8} {'p95 ms':>8}  served by")
        for replicas in (0, 1, 2):
            aliases = [f"replica_{n}" for n in range(replicas)]
            for alias, server in zip(aliases, standbys, strict=False):
                settings = copy.deepcopy(primary)
                settings["HOST"] = str(server.pgdata)
                connections.settings[alias] = settings
            try:
                qps, p50, p95, served = load_run(args, dataset.queries)
            finally:
                for alias in aliases:
                    del connections.settings[alias]
            label = f"{replicas} replica{'s' if replicas != 1 else ''}" if replicas else "primary"
            shares = ", ".join(f"{a} {n}" for a, n in sorted(served.items()))
            print(f"{label:<12} {qps:>10.1f} {p50:>8.2f} {p95:>8.2f}  {shares}", flush=True)
    finally:
        for server in standbys:
            server.remove()


def load_run(args: argparse.Namespace, queries) -> tuple[float, float, float, Counter[str]]:
    """``--clients`` threads searching for ``--seconds``: (queries/s, p50 ms, p95 ms, queries
    per server)."""
    import numpy as np
    from django.contrib.auth.models import AnonymousUser
    from django.db import connections

    from bench._search.common import MODEL_ID
    from kernel.db_routing import read_alias, replica_call, replicas_forget
    from search.ranking import SearchRequest, images_search_by_vector

    replicas_forget()
    anonymous = AnonymousUser()
    latencies: list[float] = []
    served: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(args.clients + 1, timeout=600)

    def search(query) -> str:
        page = images_search_by_vector(
            user=anonymous, model_id=MODEL_ID, vector=query, search=SearchRequest(k=args.k)
        )
        [(hit.image.pk, list(hit.captions)) for hit in page.hits]  # what the API reads
        return read_alias()

    def client(number: int) -> None:
        mine: list[float] = []
        counts: Counter[str] = Counter()
        try:
            for query in queries[: args.clients]:  # connect and warm up before the clock
                replica_call(lambda q=query: search(q))
            start.wait()
            deadline = time.monotonic() + args.seconds
            n = number
            while time.monotonic() < deadline:
                query = queries[n % len(queries)]
                began = time.perf_counter()
                counts[replica_call(lambda q=query: search(q))] += 1
                mine.append(time.perf_counter() - began)
                n += args.clients
        finally:
            connections.close_all()
            with lock:
                latencies.extend(mine)
                served.update(counts)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    ms = np.array(latencies) * 1000
    return len(ms) / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), served


if __name__ == "__main__":
    _harness.main_guarded(main, sys.argv[1:])
