"""One table with a partial HNSW index per model (today) against a table LIST-partitioned by
model (a partition and its own HNSW index per model), by hand.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python -u bench/partition_by_model.py \\
        [--rows-per-model 100000] [--models 2] [--queries 200] [--ef-search 40] \\
        [--keep] [--data-dir DIR] [--database-url URL]

The same vectors (``_harness.skewed_unit_vectors``, as ``ann_recall.py --generators skewed``;
one seed per model, every image embedded by every model) go into two layouts, each a copy of
``search_imageembedding``'s columns (id, image_id, model_id, vector, created_at; the untyped
``vector`` column, stored out of line like the product's):

- ``flat``: one table, ``UNIQUE (image_id, model_id)``, a b-tree on model_id, and per model the
  DDL of ``workers.indexes`` (``_index_ddl`` at the time: ``USING hnsw ((vector::halfvec(512))
  halfvec_cosine_ops) WITH (m = 32, ef_construction = 128) WHERE model_id = '...'``);
- ``partitioned``: ``PARTITION BY LIST (model_id)``, a partition per model, ``PRIMARY KEY (id,
  model_id)`` (a partitioned table's keys must hold the partition key), and per partition the
  same HNSW index without the WHERE.

Both indexes are built as the product's online build does (``CREATE INDEX CONCURRENTLY``, with
``workers.indexes.hnsw_build_memory`` as maintenance_work_mem). Printed per layout:

- build seconds and index bytes per model;
- what the second model's build locks: the build backend's relation locks, and from another
  connection (``lock_timeout`` 1 s, each probe rolled back) an insert for either model, the lock
  VACUUM / ANALYZE / another model's build take (``SHARE UPDATE EXCLUSIVE``) on the first model's
  storage, and dropping the first model's index or partition;
- the search page's query shape (``search.ranking.embeddings_ranked``: the nearest 40 by the
  halfvec index with the visibility filter inside, an InitPlan ``id = ANY(ARRAY(...))``, ranked
  again on the full vectors; ``SET LOCAL hnsw.iterative_scan = strict_order`` and
  ``hnsw.ef_search``), one query at a time, the two layouts alternating query by query so the
  shared box's load falls on both alike: recall@10 against exact numpy, p50/p95;
- dropping the first model: flat ``DROP INDEX CONCURRENTLY`` + ``DELETE`` + ``VACUUM`` against
  partitioned ``DETACH PARTITION CONCURRENTLY`` + ``DROP TABLE``, seconds and disk given back.

Runs on its own embedded PostgreSQL in ``--data-dir`` (default .data/bench/partition_by_model),
never the site's data (bench/_harness.py); its tables are dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _harness

SCRIPT = "partition_by_model"
DIM = _harness.DIM
TOP_K = 10
CANDIDATES = 40  # search.ranking.RERANK_CANDIDATES
WARM_UP = 10
FLAT, PART = "bench_pm_flat", "bench_pm_part"
IMAGES = "bench_pm_image"
LAYOUTS = ("flat", "partitioned")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows-per-model", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef-search", type=int, default=40)
    parser.add_argument("--points-per-cluster", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="leave the tables for a look")
    _harness.add_arguments(parser, script=SCRIPT)
    args = parser.parse_args(argv)
    if args.models < 2:
        parser.error("--models: at least 2 (a build of one beside the other is the point)")
    return args


def model_ids(count: int) -> list[str]:
    return [f"bench-model-{chr(ord('a') + i)}" for i in range(count)]


def partition_name(index: int) -> str:
    return f"{PART}_m{index}"


def index_name(layout: str, index: int) -> str:
    return f"{FLAT}_hnsw_m{index}" if layout == "flat" else f"{partition_name(index)}_hnsw"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with _harness.own_django(script=SCRIPT, data_dir=args.data_dir, database_url=args.database_url):
        run(args)


def run(args: argparse.Namespace) -> None:
    models = model_ids(args.models)
    load = os.getloadavg()[0]
    print(
        f"partition_by_model: {args.models} models x {args.rows_per_model:,} x {DIM}-d, "
        f"{args.queries} queries per model, ef_search {args.ef_search}, cpus={os.cpu_count()}, "
        f"nice={os.nice(0)}, loadavg_1min={load:.2f}",
        flush=True,
    )
    with _harness._raw_connection() as raw:
        raw.autocommit = True
        version = raw.execute(
            "SELECT current_setting('server_version'), extversion, "
            "current_setting('shared_buffers') FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
        print(f"PostgreSQL {version[0]}, pgvector {version[1]}, shared_buffers={version[2]}")
        schema_create(raw, models)
        matrices = data_load(raw, models, args)
        print(f"\n{'build':<14}{'model':<16}{'seconds':>9}{'index MB':>10}")
        builds: dict[str, list[tuple[float, int]]] = {layout: [] for layout in LAYOUTS}
        probes: dict[str, list[tuple[str, str]]] = {}
        for layout in LAYOUTS:
            for index, model in enumerate(models):
                last = index == len(models) - 1
                seconds, size, found = index_build(raw, layout, index, model, probe=last)
                builds[layout].append((seconds, size))
                if last:
                    probes[layout] = found
                print(f"{layout:<14}{model:<16}{seconds:>9.1f}{size / 2**20:>10.1f}", flush=True)
        for layout in LAYOUTS:
            print(f"\nwhile {layout}'s {models[-1]} index builds CONCURRENTLY:")
            for what, outcome in probes[layout]:
                print(f"  {what:<74} {outcome}")
        plans_check(raw, models[0], matrices[0])
        queries_compare(raw, models, args)
        drops_compare(raw, models[0])
        if not args.keep:
            raw.execute(f"DROP TABLE IF EXISTS {FLAT}, {PART}, {IMAGES}")
            raw.execute(f"DROP TABLE IF EXISTS {partition_name(0)}")
            print("\nscratch tables dropped")


def schema_create(raw, models: list[str]) -> None:
    for table in (FLAT, PART, partition_name(0), IMAGES):
        raw.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    columns = (
        "id bigint GENERATED BY DEFAULT AS IDENTITY, image_id integer NOT NULL, "
        "model_id varchar(64) NOT NULL, vector vector NOT NULL, "
        "created_at timestamptz NOT NULL DEFAULT now()"
    )
    raw.execute(f"CREATE TABLE {IMAGES} (id integer PRIMARY KEY, public boolean NOT NULL)")
    # As search_imageembedding: id key, one row per image and model, a b-tree on model_id.
    raw.execute(f"CREATE TABLE {FLAT} ({columns}, PRIMARY KEY (id), UNIQUE (image_id, model_id))")
    raw.execute(f"CREATE INDEX {FLAT}_model ON {FLAT} (model_id)")
    raw.execute(
        f"CREATE TABLE {PART} ({columns}, PRIMARY KEY (id, model_id), "
        f"UNIQUE (image_id, model_id)) PARTITION BY LIST (model_id)"
    )
    for index, model in enumerate(models):
        raw.execute(
            f"CREATE TABLE {partition_name(index)} PARTITION OF {PART} FOR VALUES IN ('{model}')"
        )


def data_load(raw, models: list[str], args: argparse.Namespace) -> list[np.ndarray]:
    """Each model's vectors (image i has row i - 1 of every model's matrix), copied into both
    layouts; the matrices."""
    started = time.perf_counter()
    count = args.rows_per_model
    clusters = max(1, round(count / args.points_per_cluster))
    with raw.cursor() as cursor, cursor.copy(f"COPY {IMAGES} (id, public) FROM STDIN") as copy:
        for image in range(1, count + 1):
            copy.write_row((image, True))
    matrices = []
    for index, model in enumerate(models):
        matrix = np.concatenate(
            list(_harness.skewed_unit_vectors(count, clusters=clusters, seed=index, stream=1))
        )
        matrices.append(matrix)
        for table in (FLAT, PART):
            with raw.cursor() as cursor:
                statement = f"COPY {table} (image_id, model_id, vector) FROM STDIN (FORMAT BINARY)"
                with cursor.copy(statement) as copy:
                    copy.set_types(["int4", "varchar", "vector"])
                    for image, vector in enumerate(matrix, start=1):
                        copy.write_row((image, model, vector))
        print(f"  {model}: {count:,} rows in both layouts", end="\r", flush=True)
    raw.execute(f"VACUUM (ANALYZE) {FLAT}")
    raw.execute(f"VACUUM (ANALYZE) {PART}")
    raw.execute(f"VACUUM (ANALYZE) {IMAGES}")
    print(f"\nloaded in {time.perf_counter() - started:.0f} s", flush=True)
    return matrices


def _ddl(layout: str, index: int, model: str, *, concurrently: bool = True) -> str:
    from workers.indexes import HNSW_EF_CONSTRUCTION, HNSW_M, HNSW_OPCLASS

    mode = "CONCURRENTLY " if concurrently else ""
    table, where = (FLAT, f" WHERE model_id = '{model}'") if layout == "flat" else (
        partition_name(index), "")  # fmt: skip
    return (
        f'CREATE INDEX {mode}"{index_name(layout, index)}" ON {table} '
        f"USING hnsw ((vector::halfvec({DIM})) {HNSW_OPCLASS}) "
        f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}){where}"
    )


def index_build(
    raw, layout: str, index: int, model: str, *, probe: bool
) -> tuple[float, int, list[tuple[str, str]]]:
    """Build one model's index CONCURRENTLY on a connection of its own; with ``probe``, try
    what other sessions would do while it runs. Seconds, bytes, the probes' outcomes."""
    from workers.indexes import hnsw_build_memory

    rows = raw.execute(f"SELECT count(*) FROM {FLAT} WHERE model_id = %s", [model]).fetchone()[0]
    memory = hnsw_build_memory(rows=rows, dim=DIM, cap=8 * 2**30)
    failure: list[BaseException] = []
    ready = threading.Event()
    pid_box: list[int] = []

    def build() -> None:
        try:
            with _harness._raw_connection() as own:
                own.autocommit = True
                pid_box.append(own.info.backend_pid)
                own.execute(f"SET maintenance_work_mem = '{memory // 2**20}MB'")
                own.execute("SET max_parallel_maintenance_workers = 0")
                ready.set()
                own.execute(_ddl(layout, index, model))
        except BaseException as exc:  # reported by the caller
            failure.append(exc)
            ready.set()

    started = time.perf_counter()
    thread = threading.Thread(target=build)
    thread.start()
    ready.wait()
    found: list[tuple[str, str]] = []
    if probe and not failure:
        found = probes_run(raw, layout, pid_box[0], model=model)
    thread.join()
    seconds = time.perf_counter() - started
    if failure:
        raise failure[0]
    raw.execute("CHECKPOINT")
    size = raw.execute(
        "SELECT pg_relation_size(%s::regclass)", [f'"{index_name(layout, index)}"']
    ).fetchone()[0]
    return seconds, size, found


def _build_phase(raw, pid: int) -> str | None:
    row = raw.execute(
        "SELECT phase FROM pg_stat_progress_create_index WHERE pid = %s", [pid]
    ).fetchone()
    return None if row is None else row[0]


def probes_run(raw, layout: str, pid: int, *, model: str) -> list[tuple[str, str]]:
    """Once the build is loading tuples into its graph (the long phase), what it holds and
    what another session can do meanwhile."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        phase = _build_phase(raw, pid)
        if phase is not None and phase.startswith("building index"):
            break
        time.sleep(0.05)
    else:
        return [("the build never reached its building phase within 120 s", "?")]
    held = raw.execute(
        "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "WHERE l.pid = %s AND l.granted AND c.relname LIKE 'bench_pm_%%' ORDER BY 1, 2",
        [pid],
    ).fetchall()
    found = [("build backend holds", "; ".join(f"{name} {mode}" for name, mode in held))]
    first_storage = FLAT if layout == "flat" else partition_name(0)
    table = FLAT if layout == "flat" else PART
    vector = "[" + ",".join(["0.044"] * DIM) + "]"
    attempts = [
        (
            "insert an embedding of the model being built",
            f"INSERT INTO {table} (image_id, model_id, vector) "
            f"VALUES (1, '{model}', '{vector}') ON CONFLICT DO NOTHING",
        ),
        (
            "insert an embedding of the other model",
            f"INSERT INTO {table} (image_id, model_id, vector) "
            f"VALUES (1, '{model_ids(1)[0]}', '{vector}') ON CONFLICT DO NOTHING",
        ),
        (
            f"VACUUM/ANALYZE/another build's lock (SHARE UPDATE EXCLUSIVE on {first_storage})",
            f"LOCK TABLE {first_storage} IN SHARE UPDATE EXCLUSIVE MODE",
        ),
        (
            "drop the other model: "
            + ("DROP INDEX of its partial index" if layout == "flat" else "DROP its partition"),
            f'DROP INDEX "{index_name("flat", 0)}"'
            if layout == "flat"
            else f"DROP TABLE {partition_name(0)}",
        ),
    ]
    for what, statement in attempts:
        began = time.perf_counter()
        try:
            with raw.transaction():
                raw.execute("SET LOCAL lock_timeout = '1s'")
                raw.execute(statement)
                outcome = f"ok in {1000 * (time.perf_counter() - began):.0f} ms"
                raise _Rollback
        except _Rollback:
            pass
        except Exception as exc:  # lock timeout: blocked
            outcome = f"BLOCKED ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        still = _build_phase(raw, pid)
        found.append((what, outcome + ("" if still else " [build had ended]")))
    return found


class _Rollback(Exception):
    pass


def _product_query(layout: str) -> str:
    """search.ranking.embeddings_ranked's statement for one model and an anonymous visitor:
    the visibility filter inside the candidate query, an InitPlan, the exact rerank. The
    partitioned one repeats model_id outside, so that the rerank's id lookup is pruned to the
    model's partition too."""
    table = FLAT if layout == "flat" else PART
    outer_model = "" if layout == "flat" else " AND e.model_id = %(model)s"
    return (
        f"SELECT e.image_id FROM {table} e WHERE e.id = ANY(ARRAY("
        f"SELECT c.id FROM {table} c WHERE c.model_id = %(model)s "
        f"AND c.image_id IN (SELECT i.id FROM {IMAGES} i WHERE i.public) "
        f"ORDER BY c.vector::halfvec({DIM}) <=> %(q)s::halfvec({DIM}) LIMIT {CANDIDATES}))"
        f"{outer_model} ORDER BY e.vector <=> %(q)s LIMIT {TOP_K}"
    )


def _scan_settings(raw, ef_search: int) -> None:
    raw.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)")
    raw.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(ef_search)])


def plans_check(raw, model: str, matrix: np.ndarray) -> None:
    """Both layouts' plans use the model's HNSW index (and the partitioned one only its own
    partition); printed, as a query that fell back to a full scan would make the rest moot."""
    for layout in LAYOUTS:
        with raw.transaction():
            _scan_settings(raw, 40)
            plan = raw.execute(
                "EXPLAIN (COSTS OFF) " + _product_query(layout), {"model": model, "q": matrix[0]}
            ).fetchall()
        lines = [line for (line,) in plan]
        used = [line.strip() for line in lines if "Index Scan using" in line]
        print(f"\n{layout} plan: {' | '.join(used)}")
        if not any("hnsw" in line for line in used):
            print("\n".join(lines))
            raise SystemExit(f"{layout}: the product query did not use an HNSW index")


def queries_compare(raw, models: list[str], args: argparse.Namespace) -> None:
    print(
        f"\n{'layout':<14}{'model':<16}{'R@10':>7}{'p50 ms':>8}{'p95 ms':>8}"
        f"   ({args.queries} queries, ef_search {args.ef_search}, {CANDIDATES} candidates)"
    )
    clusters = max(1, round(args.rows_per_model / args.points_per_cluster))
    results = []
    for index, model in enumerate(models):
        matrix = np.concatenate(
            list(
                _harness.skewed_unit_vectors(
                    args.rows_per_model, clusters=clusters, seed=index, stream=1
                )
            )
        )
        queries = next(
            _harness.skewed_unit_vectors(
                args.queries + WARM_UP, clusters=clusters, seed=index, stream=2
            )
        )
        truth = np.argsort(-(queries.astype(np.float64) @ matrix.astype(np.float64).T), axis=1)
        truth = truth[:, :TOP_K] + 1
        times: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        hits: dict[str, int] = dict.fromkeys(LAYOUTS, 0)
        statements = {layout: _product_query(layout) for layout in LAYOUTS}
        for number, query in enumerate(queries):
            for layout in LAYOUTS if number % 2 else LAYOUTS[::-1]:
                began = time.perf_counter()
                with raw.transaction():
                    _scan_settings(raw, args.ef_search)
                    found = raw.execute(
                        statements[layout], {"model": model, "q": query}, prepare=True
                    ).fetchall()
                elapsed = time.perf_counter() - began
                if number >= WARM_UP:
                    times[layout].append(elapsed)
                    hits[layout] += len({image for (image,) in found} & set(truth[number]))
        for layout in LAYOUTS:
            p50 = 1000 * statistics.median(times[layout])
            p95 = 1000 * float(np.percentile(times[layout], 95))
            recall = hits[layout] / (TOP_K * args.queries)
            results.append((layout, model, recall, p50, p95))
            print(f"{layout:<14}{model:<16}{recall:>7.3f}{p50:>8.2f}{p95:>8.2f}", flush=True)


def drops_compare(raw, model: str) -> None:
    """Drop the first model from each layout, as a site would when retiring it."""

    def size(table: str) -> int:
        return raw.execute("SELECT pg_total_relation_size(%s::regclass)", [table]).fetchone()[0]

    print(f"\ndrop {model}:")
    flat_before = size(FLAT)
    steps = [
        ("DROP INDEX CONCURRENTLY", f'DROP INDEX CONCURRENTLY "{index_name("flat", 0)}"'),
        ("DELETE its rows", f"DELETE FROM {FLAT} WHERE model_id = '{model}'"),
        ("VACUUM (the space becomes reusable)", f"VACUUM {FLAT}"),
    ]
    total = 0.0
    for what, statement in steps:
        began = time.perf_counter()
        raw.execute(statement)
        seconds = time.perf_counter() - began
        total += seconds
        print(f"  flat         {what:<40}{seconds:>8.2f} s")
    flat_after = size(FLAT)
    print(
        f"  flat         total {total:.2f} s; table+indexes {flat_before / 2**20:.0f} MB -> "
        f"{flat_after / 2**20:.0f} MB on disk (the freed pages stay the table's)"
    )
    part_before = _partitioned_size(raw)
    steps = [
        (
            "DETACH PARTITION CONCURRENTLY",
            f"ALTER TABLE {PART} DETACH PARTITION {partition_name(0)} CONCURRENTLY",
        ),
        ("DROP TABLE (the partition)", f"DROP TABLE {partition_name(0)}"),
    ]
    total = 0.0
    for what, statement in steps:
        began = time.perf_counter()
        raw.execute(statement)
        seconds = time.perf_counter() - began
        total += seconds
        print(f"  partitioned  {what:<40}{seconds:>8.2f} s")
    part_after = _partitioned_size(raw)
    print(
        f"  partitioned  total {total:.2f} s; partitions+indexes {part_before / 2**20:.0f} MB -> "
        f"{part_after / 2**20:.0f} MB on disk"
    )


def _partitioned_size(raw) -> int:
    return raw.execute(
        "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
        "WHERE inhparent = %s::regclass",
        [PART],
    ).fetchone()[0]


if __name__ == "__main__":
    _harness.main_guarded(main, None)
