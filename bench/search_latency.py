"""Search latency: the seed's in-memory ranking against pgvector, end to end and under load.

    .venv/bin/python bench/search_latency.py [--sizes 31783,1000000] [--queries 200] \
        [--ef-search 40,100,200] [--skip-ranking] [--skip-e2e] [--skip-load] \
        [--load-seconds 60] [--clients 50] [--persistent-connections] [--web-dtype int8]

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

Then, at N = ``--e2e-size`` (31,783, Flickr30k's size): ``GET /api/search`` served by gunicorn
exactly as ``./run`` starts it, with the full-size ViT-B/32 CLIP architecture (``CLIPConfig()``,
random seeded weights: none can be downloaded here; speed depends on the architecture), first
one query at a time, then ``--clients`` concurrent keep-alive clients for ``--load-seconds``.
Every query text is distinct, so the server's query cache never hits. The tokenizer is the
tests' made-up one (whole-word tokens for a few words, single characters otherwise); query
texts use its whole words plus a number, about 15 tokens each, a Flickr30k caption's length.
The table splits a request's time: the same texts sent again on the same keep-alive connection
(same worker, so query-cache hits) give the request without the encoder; the encoder and the
database work are also timed in this process. ``--persistent-connections`` and ``--web-dtype``
run the same server with those settings changed, to see what each costs.

Each section ends with the CPU time other processes used meanwhile: on 2 cores any other
benchmark or test run skews the figures, so rerun when that is not ~0.

The data live in a separate embedded PostgreSQL in ``--data-dir`` (default
/tmp/bench-search-data), never the developer's ``.data``; a later run with the same N reuses
the loaded rows and index unless ``--reload``. The server is stopped when the script ends.
"""

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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_ID = "clip-vit-base-patch32"
DIM = 512
TOP_K = 10
API_K = 20  # the API's default page size
RECALL_GOAL = 0.95
NOISE = 0.35  # as tests/search/test_search.py::clustered
LOAD_CHUNK = 50_000
DATASET_MARKER = "bench-search-dataset.json"
WARM_UP_QUERIES = 5
# Whole-word tokens of the made-up tokenizer (bench/_models.py), so a query tokenises to
# about as many tokens as real CLIP BPE would give a caption of the same words.
ADJECTIVES = ["red", "blue"]
NOUNS = ["cat", "dog", "car", "tree"]
PLACES = ["beach", "tree", "car"]


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
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/bench-search-data"))
    parser.add_argument("--reload", action="store_true", help="reload rows even if present")
    args = parser.parse_args(argv)
    args.sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    args.ef_search = [int(ef) for ef in args.ef_search.split(",") if ef.strip()]
    args.e2e_queries = args.e2e_queries or args.queries
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Read by the settings when Django is set up: they start PostgreSQL in DATA_DIR. An inherited
    # DATABASE_URL or MEDIA_ROOT would point the TRUNCATE below at someone's real data.
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.dev"
    os.environ["DATA_DIR"] = str(data_dir)
    os.environ["DEBUG"] = "0"  # DEBUG keeps every SQL query in memory
    for name in ("DATABASE_URL", "MEDIA_ROOT", "EMBEDDING_MODELS", "EMBEDDING_DEFAULT_MODEL"):
        os.environ.pop(name, None)
    sys.path.insert(0, str(REPO_ROOT))

    import django

    django.setup()
    from config import embedded

    server: WebServer | None = None
    try:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        print_header(args, data_dir)
        for size in args.sizes:
            dataset = dataset_ensure(size, args, data_dir)
            if not args.skip_ranking:
                vector_benchmark(dataset, args)
            if size == args.e2e_size and not args.skip_e2e:
                server = end_to_end(dataset, args, data_dir)
                if not args.skip_load:
                    load_test(server, args)
                server.stop()
                server = None
        if not args.skip_e2e and args.e2e_size not in args.sizes:
            print(f"\nno end-to-end run: --e2e-size {args.e2e_size} is not in --sizes")
    finally:
        if server is not None:
            server.stop()
        from django.db import connections

        connections.close_all()
        embedded.postgres_stop(data_dir)


def _processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far) for every process now running."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After "pid (comm)": state, ppid, ..., utime and stime are fields 14 and 15 of stat.
        found[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return found


class MachineWatch:
    """CPU time that processes other than this benchmark's used during a section.

    This benchmark's processes are this one and everything under it (gunicorn), and the
    embedded PostgreSQL of its data directory with its backends. Anything else that ran
    (another benchmark, a test suite) competed for the same 2 cores and skews the figures.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.started = time.monotonic()
        self.before = _processes()

    def _ours(self, processes: dict[int, tuple[int, float]]) -> set[int]:
        roots = {os.getpid()}
        pid_file = self.data_dir / "postgres" / "postmaster.pid"
        if pid_file.exists():
            roots.add(int(pid_file.read_text().split()[0]))
        ours, grew = set(roots), True
        while grew:
            grew = False
            for pid, (parent, _) in processes.items():
                if parent in ours and pid not in ours:
                    ours.add(pid)
                    grew = True
        return ours

    def report(self, section: str) -> None:
        after = _processes()
        ours = self._ours(after)
        elapsed = time.monotonic() - self.started
        used = {
            pid: cpu - self.before.get(pid, (0, 0.0))[1]
            for pid, (_, cpu) in after.items()
            if pid not in ours
        }
        busy = sorted(((cpu, pid) for pid, cpu in used.items() if cpu >= 0.5), reverse=True)
        other = sum(cpu for cpu, _ in busy)
        names = ", ".join(f"{_command(pid)} {cpu:.0f}s" for cpu, pid in busy[:3])
        print(
            f"[{section}] {elapsed:.0f} s; other processes used {other:.0f} CPU-s "
            f"({100 * other / (elapsed * (os.cpu_count() or 1)):.0f}% of the machine)"
            f"{': ' + names if names else ''}; loadavg_1min={os.getloadavg()[0]:.2f}",
            flush=True,
        )


def _command(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    text = " ".join(w.decode(errors="replace") for w in words if w)
    return f"{pid}:{text[:60]}"


def print_header(args: argparse.Namespace, data_dir: Path) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT version(), current_setting('shared_buffers')")
        version, shared_buffers = cursor.fetchone()
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        (pgvector_version,) = cursor.fetchone()
    print(
        f"{version.split(' on ')[0]}, pgvector {pgvector_version}, shared_buffers="
        f"{shared_buffers}; numpy {np.__version__}; cpus={os.cpu_count()} "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')} "
        f"loadavg_1min={os.getloadavg()[0]:.2f}; data in {data_dir}",
        flush=True,
    )


# --- data ---------------------------------------------------------------------------------


@dataclass
class Dataset:
    size: int
    clusters: int
    matrix: np.ndarray  # (size, DIM) float32, unit rows, row i is image id i + 1
    queries: np.ndarray  # (queries, DIM) float32, unit rows, same distribution
    notes: list[str] = field(default_factory=list)


def clustered_chunks(
    size: int, *, clusters: int, seed: int, chunk: int = LOAD_CHUNK
) -> Iterator[np.ndarray]:
    """Unit vectors around ``clusters`` centres (as ``tests/search/test_search.py::clustered``),
    generated ``chunk`` rows at a time so a million rows never exist in float64."""
    centres = np.random.default_rng(seed).normal(size=(clusters, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    for start in range(0, size, chunk):
        count = min(chunk, size - start)
        rows = centres[rng.integers(0, clusters, count)]
        rows = rows + NOISE * rng.standard_normal((count, DIM), dtype=np.float32)
        yield rows / np.linalg.norm(rows, axis=1, keepdims=True)


def query_vectors(count: int, *, clusters: int, seed: int) -> np.ndarray:
    # Same centres as the data, fresh noise: a query lands near the images it describes.
    centres = np.random.default_rng(seed).normal(size=(clusters, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed + 2)
    rows = centres[rng.integers(0, clusters, count)]
    rows = rows + NOISE * rng.standard_normal((count, DIM), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def dataset_ensure(size: int, args: argparse.Namespace, data_dir: Path) -> Dataset:
    clusters = max(1, round(size / args.points_per_cluster))
    total_queries = args.queries + WARM_UP_QUERIES
    print(f"\n=== N={size:,}: {clusters} clusters, {args.queries} queries ===", flush=True)
    marker = data_dir / DATASET_MARKER
    wanted = {"size": size, "clusters": clusters, "seed": args.seed, "noise": NOISE}
    started = time.perf_counter()
    matrix = np.empty((size, DIM), dtype=np.float32)
    reuse = not args.reload and marker.exists() and json.loads(marker.read_text()) == wanted
    reuse = reuse and _stored_count() == size and _index_exists()
    notes: list[str] = []
    if reuse:
        offset = 0
        for rows in clustered_chunks(size, clusters=clusters, seed=args.seed):
            matrix[offset : offset + len(rows)] = rows
            offset += len(rows)
        notes.append("rows and HNSW index reused from an earlier run (--reload rebuilds)")
        print(f"  reusing the {size:,} stored rows; vectors regenerated in memory", flush=True)
    else:
        marker.unlink(missing_ok=True)
        notes += dataset_load(size, clusters=clusters, seed=args.seed, matrix=matrix)
        marker.write_text(json.dumps(wanted))
    notes.append(table_sizes())
    queries = query_vectors(total_queries, clusters=clusters, seed=args.seed)
    print(f"  data ready in {time.perf_counter() - started:.0f} s", flush=True)
    for note in notes:
        print(f"  {note}", flush=True)
    return Dataset(size=size, clusters=clusters, matrix=matrix, queries=queries, notes=notes)


def _stored_count() -> int:
    from search.models import ImageEmbedding

    return ImageEmbedding.objects.filter(model_id=MODEL_ID).count()


def _index_exists() -> bool:
    from django.db import connection

    from search.indexes import hnsw_index_name

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [hnsw_index_name(MODEL_ID)])
        return cursor.fetchone() is not None


def dataset_load(size: int, *, clusters: int, seed: int, matrix: np.ndarray) -> list[str]:
    """Replace every image with ``size`` data-set images and their embeddings, by COPY, then
    build the model's HNSW index on the full table (much faster than growing it row by row)."""
    import psycopg
    from django.db import connection
    from pgvector.psycopg import register_vector

    from gallery.models import Image
    from search.indexes import embedding_indexes_ensure, hnsw_index_name
    from search.models import ImageEmbedding

    images = Image._meta.db_table
    embeddings = ImageEmbedding._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {images} RESTART IDENTITY CASCADE")
        cursor.execute(f'DROP INDEX IF EXISTS "{hnsw_index_name(MODEL_ID)}"')

    # A connection of its own for COPY, so the binary vector adapters registered on it never
    # change how Django's connection reads vectors.
    params = connection.get_connection_params()
    keys = ("dbname", "user", "password", "host", "port")
    started = time.perf_counter()
    now = datetime.now(UTC)
    with psycopg.connect(**{k: params[k] for k in keys if params.get(k)}) as raw:
        register_vector(raw)
        with raw.cursor() as cursor:
            with cursor.copy(
                f"COPY {images} (id, source, owner_id, visibility, file, width, height, sha256, "
                "original_filename, created_at, flickr30k_id, split) FROM STDIN"
            ) as copy:
                for index in range(size):
                    image_id = index + 1
                    copy.write_row(
                        (image_id, "flickr30k", None, "public", "x.jpg", 500, 375,
                         f"{image_id:064x}", "", now, image_id, "")
                    )  # fmt: skip
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{images}', 'id'), %s)", [size])
            images_seconds = time.perf_counter() - started
            with cursor.copy(
                f"COPY {embeddings} (image_id, model_id, vector, created_at) "
                "FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "varchar", "vector", "timestamptz"])
                offset = 0
                for rows in clustered_chunks(size, clusters=clusters, seed=seed):
                    matrix[offset : offset + len(rows)] = rows
                    for index, vector in enumerate(rows, start=offset + 1):
                        copy.write_row((index, MODEL_ID, vector, now))
                    offset += len(rows)
                    print(f"  copied {offset:,}/{size:,}", end="\r", flush=True)
                print()
        raw.commit()
    copy_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM (ANALYZE) {images}")
        cursor.execute(f"VACUUM (ANALYZE) {embeddings}")
    vacuum_seconds = time.perf_counter() - started

    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '8GB'")
        cursor.execute("SET max_parallel_maintenance_workers = 1")  # leader + 1 = 2 cores
        started = time.perf_counter()
        embedding_indexes_ensure(model_ids=[MODEL_ID])
        build_seconds = time.perf_counter() - started
        cursor.execute("RESET maintenance_work_mem")
        cursor.execute("RESET max_parallel_maintenance_workers")
        # Flush the build's writes now rather than in a checkpoint during the timed queries.
        cursor.execute("CHECKPOINT")
    return [
        f"COPY {size:,} images + embeddings: {copy_seconds:.0f} s "
        f"(images {images_seconds:.0f} s); VACUUM ANALYZE {vacuum_seconds:.0f} s",
        f"HNSW build (m=16, ef_construction=64, maintenance_work_mem=8GB, "
        f"max_parallel_maintenance_workers=1): {build_seconds:.1f} s",
    ]


def table_sizes() -> str:
    from django.db import connection

    from gallery.models import Image
    from search.indexes import hnsw_index_name
    from search.models import ImageEmbedding

    table = ImageEmbedding._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_relation_size(c.oid), pg_total_relation_size(c.reltoastrelid), "
            "pg_indexes_size(c.oid), pg_relation_size(%s::regclass), "
            "pg_total_relation_size(c.oid), pg_total_relation_size(%s::regclass) "
            "FROM pg_class c WHERE c.oid = %s::regclass",
            [f'"{hnsw_index_name(MODEL_ID)}"', Image._meta.db_table, table],
        )
        heap, toast, indexes, hnsw, total, images = cursor.fetchone()
    return (
        f"sizes: embeddings heap {_mb(heap)} + TOAST {_mb(toast)} (vectors stored out of line) "
        f"+ indexes {_mb(indexes)} (HNSW {_mb(hnsw)}) = {_mb(total)}; images table {_mb(images)}"
    )


def _mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"


# --- vector ranking -----------------------------------------------------------------------


@dataclass
class Measured:
    label: str
    seconds: list[float]
    recall: float | None = None

    def pct(self, q: float) -> float:
        return float(np.percentile(self.seconds, q)) * 1000


def seed_method(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    """sklearn's ``cosine_similarity(query[None], matrix)`` then a full argsort, in numpy.

    ``cosine_similarity`` normalises copies of both inputs on every call (``normalize`` with
    ``copy=True``: row norms by einsum, then an in-place divide), then takes one dot product.
    """
    q = query[None, :].copy()
    q /= np.sqrt(np.einsum("ij,ij->i", q, q))[:, None]
    m = matrix.copy()
    m /= np.sqrt(np.einsum("ij,ij->i", m, m))[:, None]
    scores = (q @ m.T)[0]
    return np.argsort(-scores)[:TOP_K] + 1  # row i is image id i + 1


def numpy_best(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    scores = matrix @ query
    top = np.argpartition(-scores, TOP_K)[:TOP_K]
    return top[np.argsort(-scores[top])] + 1


def timed_queries(
    queries: np.ndarray, run_one: Callable[[np.ndarray], Sequence[int]]
) -> tuple[list[float], list[list[int]]]:
    for query in queries[:WARM_UP_QUERIES]:  # caches, plans, first-touch: untimed
        run_one(query)
    seconds, results = [], []
    for query in queries[WARM_UP_QUERIES:]:
        started = time.perf_counter()
        ids = run_one(query)
        seconds.append(time.perf_counter() - started)
        results.append([int(i) for i in ids])
    return seconds, results


def recall_at(results: Sequence[Sequence[int]], truth: Sequence[Sequence[int]], k: int) -> float:
    hits = [len(set(got[:k]) & set(want[:k])) / k for got, want in zip(results, truth, strict=True)]
    return float(np.mean(hits))


def vector_benchmark(dataset: Dataset, args: argparse.Namespace) -> None:
    from django.contrib.auth.models import AnonymousUser
    from django.db import connection

    from search.selectors import (
        embeddings_ranked,
        images_search_by_vector,
        images_search_queryset,
    )

    matrix, queries = dataset.matrix, dataset.queries
    rows: list[Measured] = []
    watch = MachineWatch(Path(os.environ["DATA_DIR"]))

    seconds, seed_ids = timed_queries(queries, lambda q: seed_method(matrix, q))
    rows.append(Measured("(a) seed: numpy cosine_similarity + argsort", seconds))
    print(f"  (a) done: p50 {rows[-1].pct(50):.1f} ms", flush=True)
    seconds, best_ids = timed_queries(queries, lambda q: numpy_best(matrix, q))
    rows.append(Measured("(a') numpy, pre-normalised + argpartition", seconds))

    def ranked(query: np.ndarray, *, exact: bool) -> list[int]:
        top = embeddings_ranked(model_id=MODEL_ID, vector=query, exact=exact)[:TOP_K]
        return list(top.values_list("image_id", flat=True))

    seconds, exact_ids = timed_queries(queries, lambda q: ranked(q, exact=True))
    rows.append(Measured("(b) PostgreSQL exact scan", seconds, recall=1.0))
    print(f"  (b) done: p50 {rows[-1].pct(50):.1f} ms", flush=True)
    rows[0].recall = recall_at(seed_ids, exact_ids, TOP_K)
    rows[1].recall = recall_at(best_ids, exact_ids, TOP_K)

    plan = embeddings_ranked(model_id=MODEL_ID, vector=queries[0])[:TOP_K].explain()
    scans = [_plan_scans(plan)]
    warmed = hnsw_index_warm()
    hnsw_rows: dict[int, Measured] = {}
    with connection.cursor() as cursor:
        for ef in args.ef_search:
            cursor.execute(f"SET hnsw.ef_search = {int(ef)}")
            seconds, ids = timed_queries(queries, lambda q: ranked(q, exact=False))
            default = " (default)" if ef == 40 else ""
            measured = Measured(
                f"(c) HNSW ef_search={ef}{default}", seconds, recall_at(ids, exact_ids, TOP_K)
            )
            hnsw_rows[ef] = measured
            rows.append(measured)
            print(f"  (c) ef_search={ef} done: p50 {measured.pct(50):.2f} ms", flush=True)

        # The API's database work at the cheapest ef_search that meets the recall goal.
        good = [ef for ef, row in hnsw_rows.items() if (row.recall or 0) >= RECALL_GOAL]
        tuned = min(good) if good else max(hnsw_rows)
        cursor.execute(f"SET hnsw.ef_search = {int(tuned)}")
        anonymous = AnonymousUser()

        def api_query(query: np.ndarray) -> list[int]:
            page = images_search_by_vector(user=anonymous, model_id=MODEL_ID, vector=query, k=API_K)
            # What the API's response reads from each hit (captions were prefetched).
            hits = [(hit.image.pk, [c.text for c in hit.image.captions.all()]) for hit in page.hits]
            return [pk for pk, _ in hits]

        seconds, ids = timed_queries(queries, api_query)
        api_plan = images_search_queryset(user=anonymous, model_id=MODEL_ID, vector=queries[0])
        scans.append(_plan_scans(api_plan[0][:API_K].explain()))
        rows.append(
            Measured(
                f"(c') API query, ef_search={tuned}, k={API_K}",
                seconds,
                recall_at(ids, exact_ids, TOP_K),
            )
        )
        cursor.execute("RESET hnsw.ef_search")

    print_vector_table(dataset, rows, reference=rows[0], scans=scans)
    print(warmed)
    print(top_k_margins(matrix, queries[WARM_UP_QUERIES:]))
    watch.report("ranking")


def hnsw_index_warm() -> str:
    """Read the HNSW index's files once, so (c) runs against a warm OS page cache.

    A server under steady traffic keeps its hot index in memory; right after the index is built
    and a 2 GB exact scan has gone through the cache, the first HNSW queries would instead pay
    for disk reads (shared_buffers is only 128 MB, so PostgreSQL relies on the OS cache).
    the embedded PostgreSQL ships no pg_prewarm, hence the plain read.
    """
    from django.db import connection

    from search.indexes import hnsw_index_name

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('data_directory'), pg_relation_filepath(%s::regclass)",
            [f'"{hnsw_index_name(MODEL_ID)}"'],
        )
        data_directory, relative = cursor.fetchone()
    first = Path(data_directory) / relative
    started, size = time.perf_counter(), 0
    try:
        # Segments of 1 GB: "12345", "12345.1", ...
        for path in [first, *sorted(first.parent.glob(first.name + ".*"))]:
            with path.open("rb") as segment:
                while chunk := segment.read(1 << 24):
                    size += len(chunk)
    except OSError as exc:
        return f"HNSW index not pre-read ({exc}); (c) may include cold-cache reads"
    return (
        f"before (c): HNSW index files read into the OS page cache ({_mb(size)} in "
        f"{time.perf_counter() - started:.1f} s)"
    )


def top_k_margins(matrix: np.ndarray, queries: np.ndarray, sample: int = 50) -> str:
    """How far apart the true neighbours are: near-ties make recall@10 hard for any ANN index."""
    ranks = np.array([1, TOP_K, TOP_K + 1, 100])
    scores = []
    for query in queries[:sample]:
        similarity = matrix @ query
        top = -np.partition(-similarity, ranks.max())[: ranks.max() + 1]
        scores.append(np.sort(top)[::-1][ranks - 1])
    mean = np.mean(scores, axis=0)
    return (
        f"exact cosine similarity at rank 1 / {TOP_K} / {TOP_K + 1} / 100 (mean of {len(scores)} "
        f"queries): {' / '.join(f'{value:.4f}' for value in mean)}"
    )


def _plan_scans(plan: str) -> str:
    # The plan's scan and join nodes, without costs: enough to see which index answers.
    kinds = ("Scan", "Join", "Loop")
    nodes = [line.strip(" ->") for line in plan.splitlines() if any(k in line for k in kinds)]
    return " / ".join(node.split("  (cost")[0] for node in nodes)


def print_vector_table(
    dataset: Dataset, rows: Sequence[Measured], *, reference: Measured, scans: Sequence[str]
) -> None:
    print(
        f"\nTop-{TOP_K} ranking, N={dataset.size:,} ({dataset.clusters} clusters), "
        f"{len(reference.seconds)} queries; recall@{TOP_K} against (b)"
    )
    header = (
        f"{'method':<47}{'p50 ms':>9}{'p95 ms':>9}{'recall@10':>11}{'p50/(a)':>10}{'p95/(a)':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        recall = "" if row.recall is None else f"{row.recall:.3f}"
        print(
            f"{row.label:<47}{row.pct(50):>9.2f}{row.pct(95):>9.2f}{recall:>11}"
            f"{row.pct(50) / reference.pct(50):>10.4f}{row.pct(95) / reference.pct(95):>10.4f}"
        )
    print(f"plan (c): {scans[0]}\nplan (c'): {scans[1]}", flush=True)


# --- end to end ---------------------------------------------------------------------------


def query_texts() -> Iterator[str]:
    """Distinct query texts, forever: the number makes each one new to the server's cache."""
    for n in itertools.count(1):
        a, b, c = ADJECTIVES[n % 2], NOUNS[(n // 2) % 4], PLACES[(n // 8) % 3]
        yield f"a photo of a {a} {b} on the {c} {n}"


def search_path(text: str) -> str:
    return "/api/search?q=" + quote(text)


def build_full_size_clip(directory: Path) -> Path:
    from bench._models import build_full_size_clip as build

    return build(directory)


def encoder_breakdown(model_dir: Path, args: argparse.Namespace) -> list[Measured]:
    """Where a search's milliseconds go, measured in this process on one thread: the text
    encoder, then the API's database work for that vector."""
    import torch
    from django.contrib.auth.models import AnonymousUser
    from transformers import AutoTokenizer

    from encoders import load_encoder
    from encoders.registry import clear_encoder_cache
    from search.selectors import images_search_by_vector

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
        page = images_search_by_vector(user=anonymous, model_id=MODEL_ID, vector=vector, k=API_K)
        [[c.text for c in hit.image.captions.all()] for hit in page.hits]
        if index >= WARM_UP_QUERIES:
            search_seconds.append(time.perf_counter() - started)
    del encoder
    clear_encoder_cache()
    return [
        Measured(f"text encoder, {np.mean(tokens):.0f} tokens (in-process, 1 thread)",
                 encode_seconds),
        Measured("text encoder, 77 tokens (longest query)", long_seconds[5:]),
        Measured(f"API database work (k={API_K}, ef_search=40)", search_seconds),
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
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi", "-c",
             str(REPO_ROOT / "config/gunicorn.py"), "--bind", f"127.0.0.1:{self.port}",
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
        from config import embedded

        database_url = embedded.postgres_start(data_dir)  # the running server's URI
    server = WebServer(
        data_dir=data_dir,
        model_dir=model_dir,
        workers=args.web_workers,
        threads=args.web_threads,
        dtype=args.web_dtype,
        database_url=database_url,
    )
    texts = server.texts
    ready = server.wait_ready(texts)
    # The first answer proves one worker warmed up; give the other workers' warm-up (model load
    # and one query, in gunicorn's post_worker_init) time to finish, then touch every thread.
    time.sleep(15)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda text: server.get(search_path(text)), itertools.islice(texts, 40)))
    print(f"  gunicorn answered after {ready:.1f} s (log: {server.log_path})", flush=True)

    watch = MachineWatch(data_dir)
    # One keep-alive connection, so one worker answers all: the second pass over the same texts
    # hits that worker's query cache and shows the request without the text encoder.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    sequential = list(itertools.islice(texts, args.e2e_queries))
    seconds, cached, failures = [], [], 0
    for times in (seconds, cached):
        for text in sequential:
            started = time.perf_counter()
            conn.request("GET", search_path(text))
            response = conn.getresponse()
            body = response.read()
            times.append(time.perf_counter() - started)
            if response.status != 200 or len(json.loads(body)["results"]) != API_K:
                failures += 1
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
    rest = hit.pct(50) - breakdown[2].pct(50)
    print(
        f"p50 split: encoder in the server {e2e.pct(50) - hit.pct(50):.1f} ms (distinct - hit), "
        f"database {breakdown[2].pct(50):.1f} ms, HTTP + Django + JSON {rest:.1f} ms (hit - db)"
    )
    print(f"goal: p95 <= 40 ms -> {'met' if e2e.pct(95) <= 40 else 'MISSED'}", flush=True)
    watch.report("end to end")
    return server


# --- load ---------------------------------------------------------------------------------


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0


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


def load_test(server: WebServer, args: argparse.Namespace) -> None:
    texts = server.texts  # continues after the sequential run's texts: all distinct
    lock = threading.Lock()
    result = LoadResult()
    watch = MachineWatch(Path(os.environ["DATA_DIR"]))
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


if __name__ == "__main__":
    main()
