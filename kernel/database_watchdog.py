"""Cuts a web request's database connection when one call to the database does not return.

A database server that stops answering without closing its sockets (a frozen process, a stalled
disk, a network that drops packets) leaves a request blocked in a read forever: libpq has no read
timeout, TCP keepalives only help over TCP (the embedded server listens on a unix socket), and a
server-side ``statement_timeout`` is useless when the server itself is stuck. So a thread of this
process watches the connections of the requests in flight, and shuts down the socket of one that
has been busy with the same call for ``DATABASE_STALL_SECONDS``: the blocked read returns, psycopg
raises ``OperationalError``, and the site's database-down handling answers 503
(``kernel.middleware.DatabaseUnavailableMiddleware``).

"The same call": libpq reports a connection ACTIVE while a command is in flight, and every
statement Django sends goes through an execute wrapper that counts it. A connection seen ACTIVE
with an unchanged count for the whole bound is stuck in one statement, or in a call Django makes
without a wrapper (the health check's ``SELECT 1``, a COMMIT). The bound is met within one poll
(``POLL_SECONDS``) after it passes.

With Django's psycopg pool (DATABASE_POOL) the health check is the pool's: it runs while the
pool hands a connection out, before Django holds it, so the watch also follows the connection
the pool is checking for the watched request (``_pool_check_watched``); the pool drops one that
was cut and hands out another.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg import pq

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.25


class _Watch:
    """One request's connection: how many statements it sent, and since when it looks stuck."""

    def __init__(self, connection: BaseDatabaseWrapper, stall_seconds: float) -> None:
        self.connection = connection
        self.stall_seconds = stall_seconds
        self.thread = threading.get_ident()
        self.statements = 0
        self.seen_statements = -1
        self.busy_since: float | None = None
        # The connection a pool is checking for this request before handing it out.
        self.pending: Any = None
        # The psycopg connection cut, if any: a replacement the request goes on with (the
        # pool's next one, or Django's new one after a failed health check) is watched afresh.
        self.cut: Any = None

    def count_statement(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        self.statements += 1  # read by the watchdog thread; a stale read only delays a cut
        return execute(sql, params, many, context)

    def check(self, now: float) -> None:
        psycopg_connection = self.connection.connection
        if psycopg_connection is None:
            psycopg_connection = self.pending
        if (
            psycopg_connection is None
            or psycopg_connection is self.cut
            or psycopg_connection.closed
        ):
            self.busy_since = None
            return
        if psycopg_connection.pgconn.transaction_status != pq.TransactionStatus.ACTIVE:
            self.busy_since = None
            return
        if self.busy_since is None or self.seen_statements != self.statements:
            self.busy_since, self.seen_statements = now, self.statements
            return
        if now - self.busy_since >= self.stall_seconds:
            self.cut = psycopg_connection
            _socket_shut_down(psycopg_connection.pgconn.socket)
            logger.warning(
                "database call unanswered for %.0f s: connection cut (DATABASE_STALL_SECONDS)",
                now - self.busy_since,
            )


def _socket_shut_down(fd: int) -> None:
    """Shut the connection's socket down (on a duplicate, so libpq's own fd stays valid until
    psycopg closes it): a read blocked on it returns at once with end-of-file."""
    try:
        with socket.socket(fileno=os.dup(fd)) as duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        logger.warning("could not shut down a stalled database socket", exc_info=True)


class DatabaseStallWatchdog:
    """The watched connections of this process, and the thread that polls them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: set[_Watch] = set()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watching(self, connection: BaseDatabaseWrapper, *, stall_seconds: float) -> Iterator[None]:
        """Watch ``connection`` (this thread's) for the duration of the block."""
        watch = _Watch(connection, stall_seconds)
        pool = getattr(connection, "pool", None)  # Django's psycopg pool, when configured
        with self._lock:
            if pool is not None:
                self._pool_check_watched(pool)
            self._watches.add(watch)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._poll, name="database-stall-watchdog", daemon=True
                )
                self._thread.start()
        try:
            with connection.execute_wrapper(watch.count_statement):
                yield
        finally:
            with self._lock:
                self._watches.discard(watch)

    def _pool_check_watched(self, pool: Any) -> None:
        """Make ``pool``'s health check visible to the watches of the thread it runs in (the
        requesting thread, inside ``getconn``), once per pool; called under the lock.

        Django makes the pool with its check (``ConnectionPool.check_connection``, an empty
        query) and offers no way to pass another, so the check is wrapped where psycopg_pool
        keeps it (``_check``, psycopg-pool 3.3, pinned; tests/config/test_database_stall.py
        fails if it moves; the pool's check then goes unwatched, as before)."""
        check = getattr(pool, "_check", None)
        if check is None or getattr(check, "stall_watched", False):
            return

        def watched(conn: Any) -> None:
            with self._lock:
                mine = [
                    w
                    for w in self._watches
                    if w.thread == threading.get_ident()
                    and getattr(w.connection, "pool", None) is pool
                ]
            for watch in mine:
                watch.pending, watch.busy_since = conn, None
            try:
                check(conn)
            finally:
                for watch in mine:
                    watch.pending = None

        watched.stall_watched = True  # type: ignore[attr-defined]
        pool._check = watched

    def _poll(self) -> None:
        while True:
            time.sleep(POLL_SECONDS)
            with self._lock:
                watches = list(self._watches)
            now = time.monotonic()
            for watch in watches:
                try:
                    watch.check(now)
                except Exception:  # the watchdog must outlive any one connection
                    logger.exception("database stall check failed")


watchdog = DatabaseStallWatchdog()
