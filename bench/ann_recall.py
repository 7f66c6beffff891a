"""HNSW at a million vectors: recall@10 against exact, latency, build time and index size, for
several index variants on two synthetic generators.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/ann_recall.py --size 100000 \\
        [--generators blobs,skewed] [--variants vector:16:64,halfvec:16:64,vector:32:128] \\
        [--ef-search 40,100,200,400] [--rerank 100,200,400] [--queries 200] \\
        [--build-memory 8GB] [--build-workers 1] [--data-dir DIR] [--reload]

Data: ``--size`` 512-d unit vectors in a plain table ``bench_ann_<generator>`` (id, embedding
vector(512), stored like the product's ``search_imageembedding.vector``: out of line, in TOAST),
loaded by binary COPY, kept for later runs with the same size and seed (``--reload`` redoes it).

- ``blobs``: ``_harness.clustered_unit_vectors``, the search-latency bench's generator
  (``size / --points-per-cluster`` equal-sized isotropic Gaussian blobs, noise 0.35);
- ``skewed``: ``_harness.skewed_unit_vectors`` (power-law cluster sizes, per-cluster spread,
  a shared mean direction, low intrinsic dimension), closer to real CLIP image embeddings.

Queries come from the same generator (fresh points around the same centres); the truth is the
exact top 10 by cosine in numpy (float64), so recall is against exact search.

Variants (``kind:m:ef_construction``), one index at a time on the table (the others dropped, so
the planner has one choice), built with ``maintenance_work_mem = --build-memory`` and
``max_parallel_maintenance_workers = --build-workers``:

- ``vector``: ``USING hnsw (embedding vector_cosine_ops)`` (the product's index, on the column
  rather than the product's ``vector::vector(512)`` expression: the same thing for one model),
  queried ``ORDER BY embedding <=> q LIMIT 10`` at each ``--ef-search``;
- ``halfvec``: ``USING hnsw ((embedding::halfvec(512)) halfvec_cosine_ops)`` (half the memory),
  queried for the nearest N by halfvec distance (N in ``--rerank``, ef_search = N; and with no
  rerank, LIMIT 10 at each ``--ef-search``), then ranked again exactly on the full vectors:
  ``SELECT id FROM (... ORDER BY embedding::halfvec(512) <=> q::halfvec(512) LIMIT N) c
  ORDER BY embedding <=> q LIMIT 10``;
- ``product`` (``product:32:128``, the m and ef_construction of ``workers.indexes``, which
  the variant checks): the product itself. The generator's rows are copied into the product's
  tables (as public Flickr30k images of clip-vit-base-patch32, image id = row id), the index
  is built by ``workers.indexes.embedding_indexes_ensure`` (its name, expression, parameters
  and build memory), and each query is the product's one-model search:
  ``search.ranking.images_search_by_vector`` for an anonymous searcher, the API's page of 10
  (k=10: 11 rows read), through Django: the visibility scope, the written-out ranking statement
  of ``search.ranking_sql`` (halfvec candidates, exact rerank, the join to the images and
  their captions) with the vector as one binary parameter, in ``workers.index_scans``'s
  transaction (``hnsw.iterative_scan=strict_order`` and ``hnsw.ef_search`` SET LOCAL). One
  row per N in ``--rerank`` (``search.ranking.RERANK_CANDIDATES`` set to it) and per
  ``--product-ef-search`` (``settings.HNSW_EF_SEARCH`` set to it; the scan gets
  ``hnsw_ef_search``'s max of it and the candidates, the figure in the row), each twice: the
  page through Django (ORM, Image instances, SearchPage), then its ranking statement alone
  (``ranking_execute``, the scope's SQL compiled before timing) in the same transaction on
  the same connection, the database's share.

Each row: recall@10, p50/p95 of one query at a time on one connection (psycopg, prepared
statements, binary vectors; no Django, no join to the images), the build's seconds and the
index's size (``pg_relation_size``). The index files are read once before timing (a warm OS
page cache, as a busy server has) and the queries run once untimed first, so what they touch
is in shared_buffers as far as it holds (``--shared-buffers``, default what the embedded
server starts with, ``config.devserver.embedded.postgres_shared_buffers()``: 1GB, or a quarter
of the memory if less; another size restarts the bench's server with it).
``hnsw.iterative_scan`` stays off for the plain-table variants (with no filter and LIMIT <=
ef_search it changes nothing); the product variant has the product's ``strict_order``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _harness

SCRIPT = "ann_recall"
DIM = _harness.DIM
TOP_K = 10
WARM_UP = 10
GOAL_RECALL, GOAL_P95_MS = 0.97, 8.0  # issue 22
GENERATORS = ("blobs", "skewed")
BLOB_NOISE = 0.35  # bench/_search/data.py's NOISE


@dataclass(frozen=True)
class Variant:
    kind: str  # "vector" or "halfvec"
    m: int
    ef_construction: int

    @classmethod
    def parse(cls, text: str) -> Variant:
        kind, m, efc = text.split(":")
        if kind not in ("vector", "halfvec", "product"):
            raise SystemExit(f"--variants: unknown kind {kind!r} (vector, halfvec or product)")
        return cls(kind, int(m), int(efc))

    def __str__(self) -> str:
        return f"{self.kind} m={self.m} efc={self.ef_construction}"


@dataclass
class Row:
    generator: str
    variant: Variant
    mode: str
    recall: float
    p50: float
    p95: float
    build_s: float
    index_mb: float

    def line(self) -> str:
        goal = "yes" if self.recall >= GOAL_RECALL and self.p95 <= GOAL_P95_MS else ""
        return (
            f"{self.generator:<8}{str(self.variant):<26}{self.mode:<26}{self.recall:>7.3f}"
            f"{self.p50:>8.2f}{self.p95:>8.2f}{self.build_s:>9.0f}{self.index_mb:>9.0f}{goal:>6}"
        )


HEADER = (
    f"{'data':<8}{'index':<26}{'query':<26}{'R@10':>7}{'p50 ms':>8}{'p95 ms':>8}"
    f"{'build s':>9}{'MB':>9}{'goal':>6}"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--generators", default="blobs,skewed")
    parser.add_argument("--variants", default="vector:16:64,halfvec:16:64")
    parser.add_argument("--ef-search", default="40,100,200,400")
    parser.add_argument("--rerank", default="100,200,400", help="halfvec candidates N")
    parser.add_argument(
        "--halfvec-ef-search", default="", help="ef_search values without rerank (halfvec)"
    )
    parser.add_argument(
        "--product-ef-search", default="40", help="hnsw.ef_search values for the product variant"
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--points-per-cluster", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build-memory", default="8GB", help="maintenance_work_mem for builds")
    parser.add_argument("--build-workers", type=int, default=1)
    parser.add_argument(
        "--shared-buffers",
        default=None,
        help="the bench server's shared_buffers (set, and the server restarted, when it differs; "
        "default: the embedded server's, 1GB or a quarter of the memory, as docker-compose's)",
    )
    parser.add_argument("--reload", action="store_true")
    parser.add_argument("--keep-index", action="store_true", help="leave the last index")
    parser.add_argument(
        "--reuse-index",
        action="store_true",
        help="query the index a --keep-index run left instead of rebuilding it (same variant)",
    )
    _harness.add_arguments(parser, script=SCRIPT)
    args = parser.parse_args(argv)
    args.generators = [g for g in args.generators.split(",") if g]
    for generator in args.generators:
        if generator not in GENERATORS:
            parser.error(f"--generators: {generator!r} is not one of {', '.join(GENERATORS)}")
    args.variants = [Variant.parse(v) for v in args.variants.split(",") if v]
    args.ef_search = [int(v) for v in args.ef_search.split(",") if v]
    args.rerank = [int(v) for v in args.rerank.split(",") if v]
    args.halfvec_ef_search = [int(v) for v in args.halfvec_ef_search.split(",") if v]
    args.product_ef_search = [int(v) for v in args.product_ef_search.split(",") if v]
    return args


def vectors(
    generator: str, count: int, *, clusters: int, seed: int, stream: int, chunk: int = 50_000
) -> Iterator[np.ndarray]:
    if generator == "blobs":
        return _harness.clustered_unit_vectors(
            count, clusters=clusters, seed=seed, noise=BLOB_NOISE, stream=stream, chunk=chunk
        )
    return _harness.skewed_unit_vectors(
        count, clusters=clusters, seed=seed, stream=stream, chunk=chunk
    )


def table_ensure(raw, generator: str, args: argparse.Namespace, data_dir: Path) -> np.ndarray:
    """The generator's table with ``--size`` rows (reused when already loaded); its matrix."""
    table = f"bench_ann_{generator}"
    clusters = max(1, round(args.size / args.points_per_cluster))
    wanted = {"size": args.size, "clusters": clusters, "seed": args.seed, "generator": generator}
    marker = data_dir / f"{table}.json"
    matrix = np.empty((args.size, DIM), dtype=np.float32)
    with raw.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY, embedding vector)")
        cursor.execute(f"SELECT count(*) FROM {table}")
        (stored,) = cursor.fetchone()
    reuse = (
        not args.reload
        and marker.exists()
        and json.loads(marker.read_text()) == wanted
        and stored == args.size
    )
    started = time.perf_counter()
    chunks = vectors(generator, args.size, clusters=clusters, seed=args.seed, stream=1)
    if reuse:
        offset = 0
        for rows in chunks:
            matrix[offset : offset + len(rows)] = rows
            offset += len(rows)
        print(f"  {table}: {args.size:,} stored rows reused", flush=True)
        return matrix
    marker.unlink(missing_ok=True)
    with raw.transaction(), raw.cursor() as cursor:
        cursor.execute(f"DROP TABLE {table}")
        # The product's column is an untyped vector stored out of line; vector(512) here.
        cursor.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, embedding vector({DIM}))")
        with cursor.copy(f"COPY {table} (id, embedding) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "vector"])
            offset = 0
            for rows in chunks:
                matrix[offset : offset + len(rows)] = rows
                for vector in rows:
                    offset += 1
                    copy.write_row((offset, vector))
                print(f"  copied {offset:,}/{args.size:,}", end="\r", flush=True)
    with raw.cursor() as cursor:
        cursor.execute(f"VACUUM (ANALYZE) {table}")
    marker.write_text(json.dumps(wanted))
    print(f"\n  {table}: {args.size:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
    return matrix


def exact_top(matrix: np.ndarray, queries: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    """Ids (row + 1) of each query's exact top 10 by cosine, in float64."""
    q = queries.astype(np.float64)
    best_scores = np.full((len(q), 0), -np.inf)
    best_ids = np.zeros((len(q), 0), dtype=np.int64)
    for start in range(0, len(matrix), chunk):
        scores = q @ matrix[start : start + chunk].astype(np.float64).T
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]) + 1, scores.shape)
        scores = np.concatenate([best_scores, scores], axis=1)
        ids = np.concatenate([best_ids, ids], axis=1)
        keep = np.argpartition(-scores, TOP_K, axis=1)[:, :TOP_K]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_ids = np.take_along_axis(ids, keep, axis=1)
    order = np.argsort(-best_scores, axis=1)
    return np.take_along_axis(best_ids, order, axis=1)


def margins(matrix: np.ndarray, queries: np.ndarray, sample: int = 50) -> str:
    """Mean exact cosine at ranks 1/10/11/100 and between random rows: near-ties at rank 10
    make recall@10 hard for any ANN index."""
    ranks = np.array([1, 10, 11, 100])
    tops = []
    for query in queries[:sample]:
        similarity = matrix @ query
        top = -np.partition(-similarity, 100)[:101]
        tops.append(np.sort(top)[::-1][ranks - 1])
    pairs = np.random.default_rng(0).integers(0, len(matrix), (2000, 2))
    random_pair = float(np.mean(np.sum(matrix[pairs[:, 0]] * matrix[pairs[:, 1]], axis=1)))
    sample_rows = matrix[np.random.default_rng(1).integers(0, len(matrix), 20_000)]
    eigen = np.linalg.eigvalsh(np.cov(sample_rows.T))
    effective = float(eigen.sum() ** 2 / (eigen**2).sum())
    return (
        f"cosine at rank 1/10/11/100: "
        f"{' / '.join(f'{v:.4f}' for v in np.mean(tops, axis=0))}; random pair {random_pair:.3f}; "
        f"effective dimensionality (participation ratio) {effective:.0f}"
    )


def index_build(
    raw, table: str, variant: Variant, args: argparse.Namespace, data_dir: Path
) -> tuple[float, int]:
    """Build the variant's index (every other HNSW index on the table dropped first), or with
    ``--reuse-index`` keep it when a run with ``--keep-index`` left it; seconds and bytes."""
    notices: list[str] = []
    raw.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    name = f"{table}_{variant.kind}_m{variant.m}_efc{variant.ef_construction}"
    record = data_dir / f"{name}.json"
    with raw.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%hnsw%%'",
            [table],
        )
        existing = [found for (found,) in cursor.fetchall()]
        if args.reuse_index and existing == [name] and record.exists():
            seconds = json.loads(record.read_text())["build_s"]
            print(f"  reusing {name} (built in {seconds:.0f} s by an earlier run)", flush=True)
        else:
            record.unlink(missing_ok=True)
            for found in existing:
                cursor.execute(f'DROP INDEX "{found}"')
            cursor.execute(
                "SELECT set_config('maintenance_work_mem', %s, false)", [args.build_memory]
            )
            cursor.execute(f"SET max_parallel_maintenance_workers = {int(args.build_workers)}")
            expression = (
                "embedding vector_cosine_ops"
                if variant.kind == "vector"
                else f"(embedding::halfvec({DIM})) halfvec_cosine_ops"
            )
            started = time.perf_counter()
            cursor.execute(
                f'CREATE INDEX "{name}" ON {table} USING hnsw ({expression}) '
                f"WITH (m = {variant.m}, ef_construction = {variant.ef_construction})"
            )
            seconds = time.perf_counter() - started
            cursor.execute("RESET maintenance_work_mem")
            cursor.execute("RESET max_parallel_maintenance_workers")
            cursor.execute("CHECKPOINT")
            record.write_text(json.dumps({"build_s": seconds}))
        size = index_size_read_into_cache(cursor, name)
    for note in notices:
        print(f"  notice: {note}", flush=True)
    return seconds, size


def index_size_read_into_cache(cursor, name: str) -> int:
    """The index's bytes, after reading its files once (a warm OS cache, as a busy server has)."""
    cursor.execute(
        "SELECT pg_relation_size(%s::regclass), current_setting('data_directory'), "
        "pg_relation_filepath(%s::regclass)",
        [f'"{name}"', f'"{name}"'],
    )
    size, data_directory, relative = cursor.fetchone()
    first = Path(data_directory) / relative
    for path in [first, *sorted(first.parent.glob(first.name + ".*"))]:
        with path.open("rb") as segment:
            while segment.read(1 << 24):
                pass
    return size


def timed(
    raw, queries: np.ndarray, sql: str, settings: dict[str, int]
) -> tuple[list[float], list[list[int]]]:
    with raw.cursor() as cursor:
        for name, value in settings.items():
            cursor.execute(f"SET {name} = {int(value)}")
        for query in queries:  # untimed: the index pages these queries touch, in the caches
            cursor.execute(sql, {"q": query}, prepare=True)
            cursor.fetchall()
        seconds, results = [], []
        for index, query in enumerate(queries):
            started = time.perf_counter()
            cursor.execute(sql, {"q": query}, prepare=True)
            ids = [row[0] for row in cursor.fetchall()]
            if index >= WARM_UP:
                seconds.append(time.perf_counter() - started)
                results.append(ids)
        cursor.execute("RESET hnsw.ef_search")
    return seconds, results


def recall(results: Sequence[Sequence[int]], truth: np.ndarray) -> float:
    return float(
        np.mean(
            [
                len(set(got) & set(want.tolist())) / TOP_K
                for got, want in zip(results, truth, strict=True)
            ]
        )
    )


def variant_rows(
    raw,
    generator: str,
    variant: Variant,
    queries: np.ndarray,
    truth: np.ndarray,
    args: argparse.Namespace,
    data_dir: Path,
) -> list[Row]:
    table = f"bench_ann_{generator}"
    print(f"  building {variant} ...", flush=True)
    build_s, size = index_build(raw, table, variant, args, data_dir)
    print(f"  built in {build_s:.0f} s, {size / 2**20:,.0f} MB", flush=True)
    runs: list[tuple[str, str, dict[str, int]]] = []
    if variant.kind == "vector":
        sql = f"SELECT id FROM {table} ORDER BY embedding <=> %(q)s LIMIT {TOP_K}"
        runs += [(f"ef_search={ef}", sql, {"hnsw.ef_search": ef}) for ef in args.ef_search]
    else:
        half = f"embedding::halfvec({DIM}) <=> %(q)s::halfvec({DIM})"
        plain = f"SELECT id FROM {table} ORDER BY {half} LIMIT {TOP_K}"
        runs += [
            (f"ef_search={ef}, no rerank", plain, {"hnsw.ef_search": ef})
            for ef in args.halfvec_ef_search
        ]
        for n in args.rerank:
            sql = (
                f"SELECT id FROM (SELECT id, embedding FROM {table} ORDER BY {half} LIMIT {n}) c "
                f"ORDER BY embedding <=> %(q)s LIMIT {TOP_K}"
            )
            runs.append((f"top {n} + exact rerank", sql, {"hnsw.ef_search": n}))
    rows = []
    for mode, sql, settings in runs:
        with raw.cursor() as cursor:
            plan = "\n".join(
                r[0] for r in cursor.execute("EXPLAIN " + sql, {"q": queries[0]}).fetchall()
            )
        if "Index Scan" not in plan:
            print(f"  WARNING: {mode} does not use the index:\n{plan}", flush=True)
        seconds, results = timed(raw, queries, sql, settings)
        ms = np.array(seconds) * 1000
        row = Row(
            generator, variant, mode, recall(results, truth[WARM_UP:]),
            float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), build_s, size / 2**20,
        )  # fmt: skip
        rows.append(row)
        print(row.line(), flush=True)
    return rows


def product_load(raw, generator: str, variant: Variant, data_dir: Path) -> tuple[float, int]:
    """The generator's rows as the product's images and embeddings, with the product's index
    built by ``embedding_indexes_ensure``; seconds of the build and the index's bytes. Kept for
    the next run while the generator, size and index name are the same."""
    from django.db import connection

    from bench._search.common import MODEL_ID
    from bench._search.data import product_index_build
    from workers.indexes import HNSW_EF_CONSTRUCTION, HNSW_M, hnsw_index_name
    from workers.models import ImageEmbedding

    if (variant.m, variant.ef_construction) != (HNSW_M, HNSW_EF_CONSTRUCTION):
        raise SystemExit(
            f"--variants product:{variant.m}:{variant.ef_construction}: the product builds "
            f"m={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION} (workers.indexes)"
        )
    table, name = f"bench_ann_{generator}", hnsw_index_name(MODEL_ID)
    with raw.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        (size,) = cursor.fetchone()
    record = data_dir / "product.json"
    wanted = {"table": table, "size": size, "index": name}
    stored = ImageEmbedding.objects.filter(model_id=MODEL_ID).count()
    if record.exists() and json.loads(record.read_text())["key"] == wanted and stored == size:
        seconds = json.loads(record.read_text())["build_s"]
        print(f"  product tables hold {table} (index built in {seconds:.0f} s earlier)")
    else:
        record.unlink(missing_ok=True)
        started = time.perf_counter()
        _harness.fake_images_replace(size)  # image id i = bench row id i; embeddings cascade
        with connection.cursor() as cursor:
            cursor.execute(f'DROP INDEX IF EXISTS "{name}"')
            cursor.execute(
                f"INSERT INTO {ImageEmbedding._meta.db_table} (image_id, model_id, vector, "
                f"created_at) SELECT id, %s, embedding, now() FROM {table}",
                [MODEL_ID],
            )
            cursor.execute("VACUUM (ANALYZE) gallery_image")
            cursor.execute(f"VACUUM (ANALYZE) {ImageEmbedding._meta.db_table}")
            print(f"  {size:,} rows into the product's tables in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        seconds = product_index_build()
        record.write_text(json.dumps({"key": wanted, "build_s": seconds}))
    with connection.cursor() as cursor:
        return seconds, index_size_read_into_cache(cursor, name)


def product_rows(
    raw,
    generator: str,
    variant: Variant,
    queries: np.ndarray,
    truth: np.ndarray,
    args: argparse.Namespace,
    data_dir: Path,
) -> list[Row]:
    """The product's one-model search (``images_search_by_vector``, the API's page: 10 hits
    and one row more) at each N and ef_search, and its ranking statement alone."""
    from django.conf import settings
    from django.contrib.auth.models import AnonymousUser
    from django.db import router

    from bench._search.common import MODEL_ID
    from encoders.registry import model_spec
    from search import ranking
    from search.ranking_sql import binding_cursor, ranking_execute, scope_sql
    from workers.index_scans import hnsw_ef_search, hnsw_scan_transaction
    from workers.indexes import hnsw_index_name
    from workers.models import ImageEmbedding

    print("  product tables and index (workers.indexes) ...", flush=True)
    build_s, size = product_load(raw, generator, variant, data_dir)
    print(f"  built in {build_s:.0f} s, {size / 2**20:,.0f} MB", flush=True)
    anonymous = AnonymousUser()
    request = ranking.SearchRequest(k=TOP_K)
    depth = TOP_K + 1  # the page's statement: offset + k + 1 rows
    dim = model_spec(MODEL_ID).dim
    images, exact = ranking.search_scope(
        user=anonymous, filters=None, exclude_image_id=None, exact=None
    )
    assert not exact
    # Compiled once, before timing: the scope's SQL is the same for every anonymous search.
    scope = scope_sql(images, alias=router.db_for_read(ImageEmbedding))

    def page(index: int) -> list[int]:
        # What the API runs for a one-model page once the model is chosen (pending read).
        found = ranking.images_search_by_vector(
            user=anonymous, model_id=MODEL_ID, vector=queries[index], search=request,
            pending=False,
        )  # fmt: skip
        assert not found.exact
        return [hit.image.pk for hit in found.hits]

    def statement(index: int, *, explain: bool = False) -> list:
        # The page's ranking statement alone, in the scan's transaction with the ef_search the
        # product gives it (one set_config round trip, as the product's): no ORM compile, no
        # Image instances.
        candidates = max(ranking.RERANK_CANDIDATES, depth)
        with (
            hnsw_scan_transaction(ef_search=hnsw_ef_search(candidates)) as alias,
            binding_cursor(alias) as cursor,
        ):
            rows = ranking_execute(
                cursor, model_id=MODEL_ID, dim=dim, vector=queries[index],
                scope=scope, exact=False, candidates=candidates,
                limit=depth, offset=0, hits=True, explain=explain,
            )  # fmt: skip
        return rows if explain else [row[0] for row in rows][:TOP_K]

    def measured(run_one) -> tuple[list[float], list[list[int]]]:
        for index in range(len(queries)):  # untimed: caches
            run_one(index)
        seconds, results = [], []
        for index in range(len(queries)):
            started = time.perf_counter()
            ids = run_one(index)
            if index >= WARM_UP:
                seconds.append(time.perf_counter() - started)
                results.append(ids)
        return seconds, results

    rows = []
    default_n, default_ef = ranking.RERANK_CANDIDATES, settings.HNSW_EF_SEARCH
    try:
        for n in args.rerank:
            ranking.RERANK_CANDIDATES = n
            for ef in args.product_ef_search:
                # The product's rule reads the setting at each search: hnsw.ef_search =
                # max(HNSW_EF_SEARCH, candidates), SET LOCAL with the iterative scan.
                settings.HNSW_EF_SEARCH = ef
                plan = "\n".join(line for (line,) in statement(0, explain=True))
                if hnsw_index_name(MODEL_ID) not in plan:
                    print(f"  WARNING: the product query does not use the index:\n{plan}")
                if n == args.rerank[0] and ef == args.product_ef_search[0]:
                    nodes = [line.strip().split("  (")[0] for line in plan.splitlines()]
                    print("  plan: " + " / ".join(x for x in nodes if "->" in x or x == nodes[0]))
                used = hnsw_ef_search(max(n, depth))
                for mode, run_one in (
                    (f"top {n} + rerank, ef {used}", page),
                    ("  same, SQL only", statement),
                ):
                    seconds, results = measured(run_one)
                    ms = np.array(seconds) * 1000
                    row = Row(
                        generator, variant, mode, recall(results, truth[WARM_UP:]),
                        float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), build_s,
                        size / 2**20,
                    )  # fmt: skip
                    rows.append(row)
                    print(row.line(), flush=True)
    finally:
        ranking.RERANK_CANDIDATES = default_n
        settings.HNSW_EF_SEARCH = default_ef
    return rows


def shared_buffers_ensure(size: str, data_dir: Path, *, external: bool) -> None:
    """Give the bench's server ``size`` of shared_buffers (a restart: it is fixed at start)."""
    from django.db import connection, connections

    from config.devserver import embedded

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_size_bytes(current_setting('shared_buffers')), pg_size_bytes(%s)",
                       [size])  # fmt: skip
        current, wanted = cursor.fetchone()
        if current == wanted:
            return
        if external:
            raise SystemExit(f"--shared-buffers {size}: restart the --database-url server yourself")
        cursor.execute(f"ALTER SYSTEM SET shared_buffers = '{size}'")
    connections.close_all()
    embedded.postgres_stop(data_dir)
    embedded.postgres_start(data_dir)


def run(args: argparse.Namespace, data_dir: Path) -> None:
    from bench._search.common import MachineWatch

    print(
        f"ann_recall: N={args.size:,}, {args.queries} queries (+{WARM_UP} warm-up), "
        f"cpus={os.cpu_count()}, nice={os.nice(0)}, loadavg_1min={os.getloadavg()[0]:.2f}, "
        f"build: maintenance_work_mem={args.build_memory}, "
        f"max_parallel_maintenance_workers={args.build_workers}; data in {data_dir}",
        flush=True,
    )
    rows: list[Row] = []
    from config.devserver.embedded import postgres_shared_buffers

    size = args.shared_buffers or postgres_shared_buffers()
    shared_buffers_ensure(size, data_dir, external=bool(args.database_url))
    with _harness._raw_connection() as raw:
        raw.autocommit = True
        with raw.cursor() as cursor:
            cursor.execute("SELECT version(), current_setting('shared_buffers')")
            version, shared = cursor.fetchone()
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            print(f"{version.split(' on ')[0]}, pgvector {cursor.fetchone()[0]}, "
                  f"shared_buffers={shared}", flush=True)  # fmt: skip
        for generator in args.generators:
            watch = MachineWatch(data_dir)
            clusters = max(1, round(args.size / args.points_per_cluster))
            print(f"\n=== {generator}: N={args.size:,}, {clusters} clusters ===", flush=True)
            matrix = table_ensure(raw, generator, args, data_dir)
            queries = next(
                vectors(
                    generator, args.queries + WARM_UP, clusters=clusters, seed=args.seed,
                    stream=2, chunk=args.queries + WARM_UP,
                )
            )  # fmt: skip
            truth = exact_top(matrix, queries)
            print(f"  {margins(matrix, queries)}", flush=True)
            del matrix
            print(HEADER)
            for variant in args.variants:
                measure = product_rows if variant.kind == "product" else variant_rows
                rows += measure(raw, generator, variant, queries, truth, args, data_dir)
            if not args.keep_index:
                with raw.cursor() as cursor:
                    cursor.execute(
                        "SELECT indexname FROM pg_indexes WHERE tablename = %s "
                        "AND indexdef LIKE '%%hnsw%%'",
                        [f"bench_ann_{generator}"],
                    )
                    for (name,) in cursor.fetchall():
                        cursor.execute(f'DROP INDEX "{name}"')
            watch.report(generator)
    print(f"\nAll rows (goal: recall@10 >= {GOAL_RECALL} at p95 <= {GOAL_P95_MS:.0f} ms)")
    print(HEADER)
    print("-" * len(HEADER))
    for row in rows:
        print(row.line())
    print(f"loadavg_1min at the end: {os.getloadavg()[0]:.2f}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with _harness.own_django(
        script=SCRIPT, data_dir=args.data_dir, database_url=args.database_url
    ) as data_dir:
        run(args, data_dir)


if __name__ == "__main__":
    _harness.main_guarded(main, sys.argv[1:])
