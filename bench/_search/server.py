"""End to end: ``GET /api/search`` served by gunicorn as ./run starts it, one query at a time,
with where a request's milliseconds go (encoder, database, the rest)."""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import numpy as np

from bench._search.common import (
    API_K,
    MODEL_ID,
    TOP_K,
    WARM_UP_QUERIES,
    MachineWatch,
    Measured,
    server_cpu_seconds,
)
from bench._search.data import Dataset
from tests.tiny_models import build_full_size_clip

REPO_ROOT = Path(__file__).resolve().parents[2]
# Whole-word tokens of the made-up tokenizer (tests/tiny_models.py), so a query tokenises to
# about as many tokens as real CLIP BPE would give a caption of the same words.
ADJECTIVES = ["red", "blue"]
NOUNS = ["cat", "dog", "car", "tree"]
PLACES = ["beach", "tree", "car"]
FIRST_QUERIES = 10  # timed one by one right after the workers are warm


def query_texts() -> Iterator[str]:
    """Distinct query texts, forever: the number makes each one new to the server's cache."""
    for n in itertools.count(1):
        a, b, c = ADJECTIVES[n % 2], NOUNS[(n // 2) % 4], PLACES[(n // 8) % 3]
        yield f"a photo of a {a} {b} on the {c} {n}"


def search_path(text: str) -> str:
    return "/api/search?q=" + quote(text)


def encoder_breakdown(model_dir: Path, args: argparse.Namespace) -> list[Measured]:
    """Where a search's milliseconds go, measured in this process on one thread: the text
    encoder, then the API's database work for that vector."""
    import torch
    from django.contrib.auth.models import AnonymousUser
    from transformers import AutoTokenizer

    from encoders import load_encoder
    from encoders.registry import clear_encoder_cache
    from search.ranking import (
        SearchRequest,
        embeddings_ranked,
        images_search_by_vector,
        ranked_rows,
    )

    torch.set_num_threads(1)  # as the web workers (OMP_NUM_THREADS=1)
    encoder = load_encoder(
        MODEL_ID, source=str(model_dir), device="cpu", dtype=args.web_dtype or None
    )
    # The texts the server gets in the sequential run (its cache is in another process).
    texts = list(itertools.islice(query_texts(), args.e2e_queries + WARM_UP_QUERIES))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens = [len(tokenizer(text)["input_ids"]) for text in texts]
    encode_seconds, vectors = [], []
    for index, text in enumerate(texts):
        started = time.perf_counter()
        vector = encoder.embed_texts([text])[0]
        if index >= WARM_UP_QUERIES:
            encode_seconds.append(time.perf_counter() - started)
        vectors.append(vector)
    long_text = " ".join(["photo"] * 200)  # truncated to the full 77 positions
    long_seconds = []
    for _ in range(20):
        started = time.perf_counter()
        encoder.embed_texts([long_text])
        long_seconds.append(time.perf_counter() - started)
    anonymous = AnonymousUser()
    search_seconds = []
    for index, vector in enumerate(vectors):
        started = time.perf_counter()
        page = images_search_by_vector(
            user=anonymous, model_id=MODEL_ID, vector=vector, search=SearchRequest(k=API_K)
        )
        [list(hit.captions) for hit in page.hits]
        if index >= WARM_UP_QUERIES:
            search_seconds.append(time.perf_counter() - started)
    hnsw_seconds = []
    for index, vector in enumerate(vectors):
        started = time.perf_counter()
        ranked_rows(
            embeddings_ranked(model_id=MODEL_ID, vector=vector)[:TOP_K].values_list("image_id")
        )
        if index >= WARM_UP_QUERIES:
            hnsw_seconds.append(time.perf_counter() - started)
    del encoder
    clear_encoder_cache()
    return [
        Measured(f"text encoder, {np.mean(tokens):.0f} tokens (in-process, 1 thread)",
                 encode_seconds),
        Measured("text encoder, 77 tokens (longest query)", long_seconds[5:]),
        Measured(f"API database work (k={API_K}, ef_search=40)", search_seconds),
        Measured(f"HNSW top {TOP_K} alone (ef_search=40, no join)", hnsw_seconds),
    ]  # fmt: skip


class WebServer:
    """gunicorn started as ./run starts it, in its own process group."""

    def __init__(
        self,
        *,
        data_dir: Path,
        model_dir: Path,
        workers: int,
        threads: int | None = None,
        dtype: str = "",
        database_url: str | None = None,
    ) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log_path = data_dir / "gunicorn.log"
        self.texts = query_texts()  # every request this server gets has a new text
        self.first_after_ready: list[float] = []
        # Measured rows by name, for the summary after the load run (search_latency.py).
        self.figures: dict[str, Measured] = {}
        env = dict(
            os.environ,
            DATA_DIR=str(data_dir),
            DJANGO_SETTINGS_MODULE="config.settings.dev",
            EMBEDDING_MODEL_SOURCES=f"{MODEL_ID}={model_dir}",
            OMP_NUM_THREADS="1",
            WEB_WORKERS=str(workers),
            DEBUG="false",
            ALLOWED_HOSTS="127.0.0.1",
            HF_HUB_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            EMBEDDING_DTYPE=dtype,
        )
        if database_url:
            env["DATABASE_URL"] = database_url
        self.log = self.log_path.open("w")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi", "-c",
             str(Path(__file__).with_name("gunicorn_ready.py")),
             "--bind", f"127.0.0.1:{self.port}",
             *(["--threads", str(threads)] if threads else [])],
            cwd=REPO_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, texts: Iterator[str], timeout: float = 180) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.process.returncode}):\n{self.tail()}")
            try:
                status, _ = self.get(search_path(next(texts)), timeout=30)
                if status == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"gunicorn did not answer within {timeout:.0f} s:\n{self.tail()}")

    def get(self, path: str, timeout: float = 30) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def wait_warm(self, workers: int, timeout: float = 300) -> float:
        """Seconds from start until every worker logged the end of its warm-up (no request
        sent: the first query after this is the first the server ever answers)."""
        from bench._search.gunicorn_ready import READY_LINE

        while time.monotonic() - self.started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.process.returncode}):\n{self.tail()}")
            if self.log_path.read_text(errors="replace").count(READY_LINE) >= workers:
                return time.monotonic() - self.started
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn workers not warm within {timeout:.0f} s:\n{self.tail()}")

    def workers_booted(self) -> int:
        return self.log_path.read_text(errors="replace").count("Booting worker")

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def end_to_end(dataset: Dataset, args: argparse.Namespace, data_dir: Path) -> WebServer:
    model_dir = build_full_size_clip(data_dir / "clip-vit-b32-random")
    breakdown = encoder_breakdown(model_dir, args)

    database_url = None
    if args.persistent_connections:
        from config.devserver import embedded

        # The bench's database: --database-url, else the embedded server's URI.
        database_url = args.database_url or embedded.postgres_start(data_dir)
    server = WebServer(
        data_dir=data_dir,
        model_dir=model_dir,
        workers=args.web_workers,
        threads=args.web_threads,
        dtype=args.web_dtype,
        database_url=database_url,
    )
    texts = server.texts
    warm = server.wait_warm(args.web_workers)
    # The first queries the server ever answers, each on a new connection (so either worker),
    # right after every worker finished its warm-up: what the first visitors after a restart get.
    first: list[float] = []
    for text in itertools.islice(texts, FIRST_QUERIES):
        started = time.perf_counter()
        status, _ = server.get(search_path(text))
        first.append(time.perf_counter() - started)
        if status != 200:
            raise RuntimeError(f"first query after ready: status {status}\n{server.tail()}")
    server.first_after_ready = first
    print(
        f"  all {args.web_workers} workers warm {warm:.1f} s after start; first query after "
        f"ready {first[0] * 1000:.1f} ms, the next {len(first) - 1} (new connection each): "
        f"{' '.join(f'{s * 1000:.0f}' for s in first[1:])} ms",
        flush=True,
    )
    ready = server.wait_ready(texts)
    # The first answer proves one worker warmed up; give the other workers' warm-up (model load
    # and one query, in gunicorn's post_worker_init) time to finish, then touch every thread.
    time.sleep(15)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda text: server.get(search_path(text)), itertools.islice(texts, 40)))
    print(f"  then answered a search {ready:.1f} s later (log: {server.log_path})", flush=True)

    watch = MachineWatch(data_dir)
    # One keep-alive connection, so one worker answers all: the second pass over the same texts
    # hits that worker's query cache and shows the request without the text encoder.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    sequential = list(itertools.islice(texts, args.e2e_queries))
    seconds, cached, failures = [], [], 0
    cpu_per_request: list[tuple[float, float]] = []
    for times in (seconds, cached):
        cpu_before = server_cpu_seconds(data_dir)
        for text in sequential:
            started = time.perf_counter()
            conn.request("GET", search_path(text))
            response = conn.getresponse()
            body = response.read()
            times.append(time.perf_counter() - started)
            if response.status != 200 or len(json.loads(body)["results"]) != API_K:
                failures += 1
        cpu_after = server_cpu_seconds(data_dir)
        (web_before, db_before), (web_after, db_after) = cpu_before, cpu_after
        count = len(sequential)
        cpu_per_request.append(
            ((web_after - web_before) * 1000 / count, (db_after - db_before) * 1000 / count)
        )
    conn.close()
    e2e = Measured(f"GET /api/search (gunicorn, {args.web_workers} workers, sequential)", seconds)
    hit = Measured("  same texts again: query cache hit, no encoder", cached)

    print(
        f"\nEnd to end at N={dataset.size:,}: full-size ViT-B/32 CLIP (random weights, "
        f"{args.web_dtype or 'fp32'}), {len(seconds)} distinct queries, one at a time; "
        f"database connections: "
        f"{'persistent (CONN_MAX_AGE=60)' if args.persistent_connections else 'settings default'}"
        f"; non-200 or short pages: {failures}"
    )
    header = f"{'what':<58}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}"
    print(header)
    print("-" * len(header))
    for row in [e2e, hit, *breakdown]:
        print(
            f"{row.label:<58}{row.pct(50):>9.2f}{row.pct(95):>9.2f}"
            f"{np.mean(row.seconds) * 1000:>9.2f}"
        )
    labels = ("distinct", "cache hit")
    for label, (web_cpu, database_cpu) in zip(labels, cpu_per_request, strict=True):
        print(
            f"server CPU per request, {label}: gunicorn {web_cpu:.2f} ms + PostgreSQL "
            f"{database_cpu:.2f} ms (unlike latency, hardly moved by other load)"
        )
    rest = hit.pct(50) - breakdown[2].pct(50)
    print(
        f"p50 split: encoder in the server {e2e.pct(50) - hit.pct(50):.1f} ms (distinct - hit), "
        f"database {breakdown[2].pct(50):.1f} ms, HTTP + Django + JSON {rest:.1f} ms (hit - db)"
    )
    print(f"goal: p95 <= 40 ms -> {'met' if e2e.pct(95) <= 40 else 'MISSED'}", flush=True)
    server.figures = {
        "distinct": e2e,
        "hit": hit,
        "first": Measured("first query after ready", server.first_after_ready[:1]),
        "encoder": breakdown[0],
        "database": breakdown[2],
        "hnsw": breakdown[3],
    }
    watch.report("end to end")
    return server
