"""Under load: ``--clients`` concurrent keep-alive clients against the running server for
``--load-seconds``, distinct queries, counting non-200s, errors and reconnects."""

from __future__ import annotations

import argparse
import http.client
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench._search.common import MachineWatch
from bench._search.server import WebServer, search_path


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0


@dataclass(frozen=True)
class LoadSummary:
    requests_per_s: float
    p95_ms: float
    failed: int  # non-200 answers and errors


def load_client(
    port: int, texts: Iterator[str], lock: threading.Lock, deadline: float, result: LoadResult
) -> None:
    """One client: keep-alive requests back to back until ``deadline``.

    A request that fails because the server closed an idle keep-alive connection is retried
    once on a new connection (as browsers and wrk do); it counts as a reconnect, not an error.
    """
    conn: http.client.HTTPConnection | None = None
    latencies, statuses, errors, reconnects = [], {}, {}, 0
    while time.monotonic() < deadline:
        with lock:
            path = search_path(next(texts))
        started = time.perf_counter()
        for attempt in range(2):
            fresh = conn is None
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                conn = None
                if fresh or attempt:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    break
                reconnects += 1
                continue
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = None
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                break
            latencies.append(time.perf_counter() - started)
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if response.will_close:
                conn.close()
                conn = None
            break
    if conn is not None:
        conn.close()
    with lock:
        result.latencies += latencies
        result.reconnects += reconnects
        for status, count in statuses.items():
            result.statuses[status] = result.statuses.get(status, 0) + count
        for name, count in errors.items():
            result.errors[name] = result.errors.get(name, 0) + count


def load_test(server: WebServer, args: argparse.Namespace, data_dir: Path) -> LoadSummary:
    texts = server.texts  # continues after the sequential run's texts: all distinct
    lock = threading.Lock()
    result = LoadResult()
    watch = MachineWatch(data_dir)
    cpu_before = time.process_time()
    started = time.monotonic()
    deadline = started + args.load_seconds
    clients = [
        threading.Thread(target=load_client, args=(server.port, texts, lock, deadline, result))
        for _ in range(args.clients)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    elapsed = time.monotonic() - started
    client_cpu = time.process_time() - cpu_before

    answered = len(result.latencies)
    non_200 = sum(count for status, count in result.statuses.items() if status != 200)
    failed = non_200 + sum(result.errors.values())
    print(
        f"\nLoad: {args.clients} concurrent keep-alive clients for {args.load_seconds:.0f} s on "
        f"loopback, gunicorn {args.web_workers} workers x {args.web_threads or 4} threads, "
        f"{args.web_dtype or 'fp32'}, "
        f"{'persistent' if args.persistent_connections else 'default'} database connections, "
        f"distinct queries, N={args.e2e_size:,}"
    )
    header = (
        f"{'requests':>9}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'non-200':>9}{'errors':>8}{'reconnects':>12}"
    )
    print(header)
    print("-" * len(header))
    lat = np.array(result.latencies) * 1000 if answered else np.zeros(1)
    print(
        f"{answered:>9}{answered / elapsed:>8.1f}{np.percentile(lat, 50):>9.1f}"
        f"{np.percentile(lat, 95):>9.1f}{np.percentile(lat, 99):>9.1f}{lat.max():>9.1f}"
        f"{non_200:>9}{sum(result.errors.values()):>8}{result.reconnects:>12}"
    )
    print(
        f"statuses {result.statuses}; errors {result.errors or 'none'}; elapsed {elapsed:.1f} s; "
        f"load-client CPU {client_cpu:.1f} s ({100 * client_cpu / elapsed:.0f}% of one core)"
    )
    print(f"goal: 0 errors -> {'met' if failed == 0 else 'MISSED'}", flush=True)
    watch.report("load")
    return LoadSummary(
        requests_per_s=answered / elapsed,
        p95_ms=float(np.percentile(lat, 95)),
        failed=failed,
    )
