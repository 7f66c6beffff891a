"""The per-model HNSW indexes, one on each model's partition of the embedding table (see
``workers.models``, ``workers.partitions``): their names, their state, building them online
(``embedding_index_build``: CREATE INDEX CONCURRENTLY with progress, then a swap), creating the
small ones inline after migrate, and dropping one for a bulk load."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any, Literal

import psycopg
from django.conf import settings
from django.db import connections
from django.db.backends.utils import CursorWrapper

from encoders.registry import MODELS, model_spec
from kernel.errors import Conflict
from workers.models import ImageEmbedding
from workers.partitions import partition_name, partitions_ensure

logger = logging.getLogger(__name__)

# Each model's index holds its vectors as halfvec (2-byte floats): half the size of a vector
# index (1.6 GB instead of 2.6 GB at 1M 512-d rows, 156 MB instead of 260 MB at 100k), so
# twice as much of it stays in memory, and about as accurate at the same ef_search (recall@10
# at ef_search 40: 0.953 vs 0.949 at 1M blobs; 0.987 vs 0.993 at 100k, where ef_search 100
# gives 0.993); search ranks the index's nearest candidates again on the full vectors
# (``search.ranking.embeddings_ranked``), so scores keep full precision. Graph parameters:
# pgvector's defaults (m=16, ef_construction=64) reach recall@10 0.80 at 1M clustered vectors
# with ef_search 40; m=32 / ef_construction=128 reach 0.95 at the same query cost, for about
# twice the build time (bench/README.md, ann_recall.py).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 128
HNSW_OPCLASS = "halfvec_cosine_ops"
# Part of every index name, so that changing the storage or the parameters builds new indexes
# on the next migrate (and drops the old ones) instead of leaving existing sites on the old
# graphs: "hv32" is halfvec with m=32; earlier sites have "m32" (vector, m=32) or no tag
# (vector, m=16).
_GRAPH_TAG = f"hv{HNSW_M}"
_NAME_PREFIX = "search_emb_hnsw_"
# An online build makes its index under this suffix and renames it when it is valid, so the
# index searches use is never one half built (the longest model id gives 53 of PostgreSQL's 63
# characters).
_BUILD_SUFFIX = "_build"

# maintenance_work_mem for a build: the whole graph should fit (a build that spills is several
# times slower: 174 s instead of 32 s at 100k vectors), within what the database server may
# spend (``hnsw_build_memory_cap``).
HNSW_BUILD_MEMORY_MIN = 64 * 2**20


def hnsw_index_name(model_id: str) -> str:
    return f"{_NAME_PREFIX}{model_id.replace('-', '_').replace('.', '_')}_{_GRAPH_TAG}"


def hnsw_build_name(model_id: str) -> str:
    """The name an online build gives the model's new index until it is swapped in."""
    return hnsw_index_name(model_id) + _BUILD_SUFFIX


def hnsw_build_memory(*, rows: int, dim: int, cap: int) -> int:
    """Bytes of maintenance_work_mem that hold the graph of ``rows`` halfvecs of ``dim``
    dimensions: each element keeps its vector (2 bytes a dimension) and up to 2*m neighbours
    at layer 0, each a 16-byte candidate (pointer, distance, flag), plus upper layers and
    bookkeeping (~25 % more), at most ``cap`` (``hnsw_build_memory_cap``). Counting 8 bytes a
    neighbour (1.94 GiB for 1M 512-d rows) made a 1M build spill to pgvector's slow on-disk
    phase after ~900k rows."""
    graph = int(rows * (dim * 2 + 2 * HNSW_M * 16 + 128) * 1.25)
    return max(HNSW_BUILD_MEMORY_MIN, min(graph, cap))


def hnsw_build_memory_cap(cursor: Any) -> int:
    """The most maintenance_work_mem a build may take, from the database server itself (the
    process running migrate or the command may be another machine with other memory):
    HNSW_BUILD_MEMORY when set (PostgreSQL units: "8GB"); otherwise the larger of the server's
    own maintenance_work_mem and its shared_buffers (by convention a quarter of its memory)."""
    if settings.HNSW_BUILD_MEMORY:
        cursor.execute("SELECT pg_size_bytes(%s)", [settings.HNSW_BUILD_MEMORY])
        return int(cursor.fetchone()[0])
    cursor.execute(
        "SELECT greatest(pg_size_bytes(current_setting('maintenance_work_mem')), "
        "pg_size_bytes(current_setting('shared_buffers')))"
    )
    return int(cursor.fetchone()[0])


def index_ddl(*, model_id: str, name: str, concurrently: bool) -> tuple[str, list[str]]:
    """The model's HNSW index, on its own partition (``workers.partitions``): every row there is
    the model's, so no WHERE; a search's ``model_id = '<model>'`` prunes to the partition and
    its index."""
    spec = model_spec(model_id)
    mode = "CONCURRENTLY " if concurrently else ""
    return (
        f'CREATE INDEX {mode}"{name}" ON "{partition_name(model_id)}" '
        f"USING hnsw ((vector::halfvec({spec.dim})) {HNSW_OPCLASS}) "
        f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})",
        [],
    )


def _model_rows(cursor: Any, model_id: str, *, at_most: int | None = None) -> int:
    """The model's embeddings, counted only up to ``at_most`` (a page or migrate need not
    count ten million rows to know they are many)."""
    table = ImageEmbedding._meta.db_table
    limit = "" if at_most is None else f" LIMIT {int(at_most)}"
    cursor.execute(
        f'SELECT count(*) FROM (SELECT 1 FROM "{table}" WHERE model_id = %s{limit}) AS rows',
        [model_id],
    )
    return int(cursor.fetchone()[0])


def _index_valid(cursor: Any, name: str) -> bool | None:
    """True for a usable index, False for one a failed or killed concurrent build left invalid
    (written on, never read), None when there is none."""
    cursor.execute(
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", [f'"{name}"']
    )
    row = cursor.fetchone()
    return None if row is None else bool(row[0])


def embedding_indexes_ensure(
    *, using: str = "default", model_ids: Iterable[str] | None = None, concurrently: bool = False
) -> None:
    """Create the HNSW index of each registered model that lacks one (on its partition, made
    first if missing), then drop the model's indexes built with other storage or graph
    parameters (searches used them meanwhile).

    Inline, whatever the table's size: for tests, benchmarks and the post-migrate hook's small
    models. A site's big tables are built online by ``embedding_index_build``.
    ``concurrently`` builds without blocking reads and writes of the table; it cannot run
    inside a transaction.
    """
    mode = "CONCURRENTLY " if concurrently else ""
    model_ids = list(model_ids or MODELS)
    partitions_ensure(using=using, model_ids=model_ids)
    with connections[using].cursor() as cursor:
        for model_id in model_ids:
            name = hnsw_index_name(model_id)
            valid = _index_valid(cursor, name)
            if valid is False:  # left by a killed concurrent build: never used, rebuild it
                cursor.execute(f'DROP INDEX {mode}IF EXISTS "{name}"')
            if not valid:
                memory = hnsw_build_memory(
                    rows=_model_rows(cursor, model_id),
                    dim=model_spec(model_id).dim,
                    cap=hnsw_build_memory_cap(cursor),
                )
                cursor.execute(
                    "SELECT set_config('maintenance_work_mem', %s, false)", [f"{memory // 1024}kB"]
                )
                sql, params = index_ddl(model_id=model_id, name=name, concurrently=concurrently)
                cursor.execute(sql, params)
                cursor.execute("RESET maintenance_work_mem")
            for old in _older_indexes(cursor, model_id=model_id, keep=name):
                cursor.execute(f'DROP INDEX {mode}IF EXISTS "{old}"')


def _older_indexes(cursor: CursorWrapper | Any, *, model_id: str, keep: str) -> list[str]:
    """This model's HNSW indexes on its partition under the names of earlier storage or graph
    parameters: no tag (vector, m=16), "_m<m>" (vector) or "_hv<m>" (halfvec); never ``keep``
    nor a build's."""
    base = _NAME_PREFIX + model_id.replace("-", "_").replace(".", "_")
    cursor.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexname <> %s "
        "AND indexname ~ %s",
        [partition_name(model_id), keep, "^" + re.escape(base) + "(_(m|hv)[0-9]+)?$"],
    )
    return [row[0] for row in cursor.fetchall()]


# --- What each model's index needs ---------------------------------------------------------

IndexStatus = Literal["ready", "missing", "old", "invalid", "building"]


@dataclass(frozen=True)
class IndexBuildProgress:
    """One reading of ``pg_stat_progress_create_index`` for a build."""

    phase: str
    blocks_done: int
    blocks_total: int
    tuples_done: int
    tuples_total: int

    @property
    def percent(self) -> float | None:
        """How far the phase has got, by tuples when it counts them, else by blocks."""
        if self.tuples_total:
            return 100.0 * self.tuples_done / self.tuples_total
        if self.blocks_total:
            return 100.0 * self.blocks_done / self.blocks_total
        return None

    def __str__(self) -> str:
        text = self.phase
        if self.tuples_total:
            text += f", {self.tuples_done:,}/{self.tuples_total:,} tuples"
        elif self.blocks_total:
            text += f", {self.blocks_done:,}/{self.blocks_total:,} blocks"
        percent = self.percent
        return text + (f" ({percent:.0f}%)" if percent is not None else "")


@dataclass(frozen=True)
class IndexState:
    model_id: str
    status: IndexStatus
    rows: int  # counted up to HNSW_INLINE_BUILD_MAX_ROWS + 1 only
    older: list[str] = field(default_factory=list)  # indexes of earlier parameters still there
    progress: IndexBuildProgress | None = None

    @property
    def command(self) -> str:
        return f"python manage.py embedding_index_build --model {self.model_id}"

    @property
    def advice(self) -> str:
        """What a person should do about it, or "" when nothing."""
        if self.status == "missing":
            return (
                f"{self.model_id} has no search index (searches scan all its embeddings): "
                f"build it online with `{self.command}`"
            )
        if self.status == "old":
            return (
                f"{self.model_id}'s search index has older graph parameters: build the new one "
                f"online with `{self.command}` (searches use the old one meanwhile)"
            )
        if self.status == "invalid":
            return (
                f"{self.model_id}'s search index is invalid (a build failed or was stopped): "
                f"build it again with `{self.command}`"
            )
        return ""


_PROGRESS_SQL = (
    "SELECT p.phase, p.blocks_done, p.blocks_total, p.tuples_done, p.tuples_total "
    "FROM pg_stat_progress_create_index p "
)


def _progress_read(cursor: Any, *, pid: int) -> IndexBuildProgress | None:
    cursor.execute(_PROGRESS_SQL + "WHERE p.pid = %s", [pid])
    row = cursor.fetchone()
    return IndexBuildProgress(*row) if row else None


def embedding_index_states(
    *, using: str = "default", model_ids: Iterable[str] | None = None
) -> list[IndexState]:
    """Each model's index: ready, missing, old (only an index of earlier parameters), invalid,
    or building (with its progress), and its row count up to HNSW_INLINE_BUILD_MAX_ROWS + 1."""
    states = []
    with connections[using].cursor() as cursor:
        cursor.execute(
            _PROGRESS_SQL.replace("SELECT ", "SELECT c.relname, ", 1)
            + "JOIN pg_class c ON c.oid = p.index_relid"
        )
        building = {row[0]: IndexBuildProgress(*row[1:]) for row in cursor.fetchall()}
        for model_id in MODELS if model_ids is None else model_ids:
            name = hnsw_index_name(model_id)
            older = _older_indexes(cursor, model_id=model_id, keep=name)
            valid = _index_valid(cursor, name)
            progress = building.get(hnsw_build_name(model_id)) or building.get(name)
            status: IndexStatus
            if progress is not None:
                status = "building"
            elif valid:
                status = "ready"
            elif valid is False:
                status = "invalid"
            else:
                status = "old" if older else "missing"
            states.append(
                IndexState(
                    model_id=model_id,
                    status=status,
                    rows=_model_rows(
                        cursor, model_id, at_most=settings.HNSW_INLINE_BUILD_MAX_ROWS + 1
                    ),
                    older=older,
                    progress=progress,
                )
            )
    return states


# --- After migrate: small indexes inline, big ones left to the online build -----------------


def embedding_indexes_after_migrate(
    *, using: str = "default", stdout: IO[str] | None = None
) -> None:
    """Build inline the missing index of each model with at most HNSW_INLINE_BUILD_MAX_ROWS
    embeddings (a fresh or small site searches at once; the build blocks the table's writes for
    seconds at most) and drop its indexes of earlier parameters; for a bigger model build and
    drop nothing (that would block uploads for minutes to hours) and say what to run."""
    limit = settings.HNSW_INLINE_BUILD_MAX_ROWS
    for state in embedding_index_states(using=using):
        if state.status == "building":
            continue
        if state.rows <= limit:
            if state.status != "ready" or state.older:
                embedding_indexes_ensure(using=using, model_ids=[state.model_id])
            continue
        if not state.advice and state.older:
            advice = (
                f"{state.model_id} still has search indexes of older parameters "
                f"({', '.join(state.older)}): drop them online with `{state.command}`"
            )
        else:
            advice = state.advice
        if advice:
            message = (
                f"{advice} (not built by migrate: more embeddings than "
                f"HNSW_INLINE_BUILD_MAX_ROWS={limit})"
            )
            logger.warning(message)
            if stdout is not None:
                stdout.write(message + "\n")


# --- The online build -----------------------------------------------------------------------


class IndexBuildRunning(Conflict):
    """Another build of the same model's index holds its lock."""


@dataclass(frozen=True)
class IndexBuildResult:
    model_id: str
    built: bool  # False when the index was already there and no rebuild was asked for
    rows: int
    maintenance_work_mem: int  # bytes; 0 when nothing was built
    seconds: float
    dropped: list[str]  # old indexes dropped, and leftovers of failed builds


def own_connection(using: str) -> psycopg.Connection[Any]:
    """A connection of the build's own, in autocommit (CREATE INDEX CONCURRENTLY runs in no
    transaction), so that its memory settings touch no other work's session."""
    params = connections[using].get_connection_params()
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)
    # Client-side binding, as Django's cursors: DDL takes no server-side parameters.
    return psycopg.connect(**params, autocommit=True, cursor_factory=psycopg.ClientCursor)


def embedding_index_build(
    *,
    model_id: str,
    using: str = "default",
    rebuild: bool = False,
    on_progress: Callable[[IndexBuildProgress], None] | None = None,
    poll_seconds: float = 2.0,
) -> IndexBuildResult:
    """Build ``model_id``'s HNSW index online, then swap it in.

    ``CREATE INDEX CONCURRENTLY`` under a build name (uploads and embedding writes go on, and
    searches use the old index or scan exactly), reporting ``pg_stat_progress_create_index`` to
    ``on_progress`` every ``poll_seconds``; then the model's older indexes are dropped
    concurrently and the new one is renamed to the index name. An invalid index left by a
    failed or killed build is dropped first. One build per model at a time (an advisory lock:
    ``IndexBuildRunning`` otherwise). With the index already valid, only older indexes are
    dropped, unless ``rebuild``.
    """
    spec = model_spec(model_id)
    name, build_name = hnsw_index_name(model_id), hnsw_build_name(model_id)
    started = time.monotonic()
    dropped: list[str] = []
    partitions_ensure(using=using, model_ids=[model_id])  # a model registered since migrate
    with own_connection(using) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [f"hnsw build {model_id}"])
        locked = cursor.fetchone()
        if not (locked and locked[0]):
            raise IndexBuildRunning(f"an index build of {model_id} is already running")
        if _index_valid(cursor, build_name) is not None:  # a failed or killed build's
            cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{build_name}"')
            dropped.append(build_name)
        current = _index_valid(cursor, name)
        rows, memory = _model_rows(cursor, model_id), 0
        if current is False:
            cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
            dropped.append(name)
        build = rebuild or not current
        if build:
            memory = hnsw_build_memory(rows=rows, dim=spec.dim, cap=hnsw_build_memory_cap(cursor))
            # Session settings of this connection only; closed with it.
            cursor.execute(
                "SELECT set_config('maintenance_work_mem', %s, false)", [f"{memory // 1024}kB"]
            )
            if settings.HNSW_BUILD_PARALLEL_WORKERS is not None:
                cursor.execute(
                    "SELECT set_config('max_parallel_maintenance_workers', %s, false)",
                    [str(settings.HNSW_BUILD_PARALLEL_WORKERS)],
                )
            sql, params = index_ddl(model_id=model_id, name=build_name, concurrently=True)
            try:
                _run_watched(
                    conn, cursor, sql, params, using=using, on_progress=on_progress,
                    poll_seconds=poll_seconds,
                )  # fmt: skip
            except BaseException:
                # The failed build's index is invalid: drop it now if the connection still
                # works (the next build drops it otherwise).
                with contextlib.suppress(psycopg.Error):
                    cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{build_name}"')
                raise
        olders = _older_indexes(cursor, model_id=model_id, keep=name)
        for old in olders + ([name] if build and current else []):
            cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{old}"')
            dropped.append(old)
        if build:
            cursor.execute(f'ALTER INDEX "{build_name}" RENAME TO "{name}"')
        cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", [f"hnsw build {model_id}"])
    return IndexBuildResult(
        model_id=model_id,
        built=build,
        rows=rows,
        maintenance_work_mem=memory,
        seconds=time.monotonic() - started,
        dropped=dropped,
    )


def _run_watched(
    conn: psycopg.Connection[Any],
    cursor: psycopg.Cursor[Any],
    sql: str,
    params: list[str],
    *,
    using: str,
    on_progress: Callable[[IndexBuildProgress], None] | None,
    poll_seconds: float,
) -> None:
    """Run ``sql`` on ``cursor`` in a thread while this one reads its progress from another
    connection; re-raise the build's error."""
    failure: list[Exception] = []

    def run() -> None:
        try:
            cursor.execute(sql, params)
        except Exception as exc:  # noqa: BLE001  # re-raised in the caller's thread
            failure.append(exc)

    pid = conn.info.backend_pid
    worker = threading.Thread(target=run, name="hnsw-build", daemon=True)
    worker.start()
    try:
        if on_progress is None:
            worker.join()
        else:
            with own_connection(using) as watcher, watcher.cursor() as watch:
                while worker.is_alive():
                    worker.join(poll_seconds)
                    progress = _progress_read(watch, pid=pid)
                    if progress is not None and worker.is_alive():
                        on_progress(progress)
    except BaseException:
        # Interrupted (Ctrl-C, a task's time limit): stop the build, whose index is left
        # invalid and dropped by the caller.
        conn.cancel_safe()
        worker.join()
        raise
    if failure:
        raise failure[0]


def embedding_index_drop(*, model_id: str, using: str = "default") -> None:
    """Drop a model's HNSW index without blocking the table (for a bulk load, then rebuild)."""
    with connections[using].cursor() as cursor:
        cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{hnsw_index_name(model_id)}"')
