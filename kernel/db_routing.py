"""Read replicas: which database each read goes to.

Every read and write goes to the primary (``default``) unless code runs inside
:func:`replica_reads`, which the read-only pages enter through :func:`reads_from_replica`
(search, browse, similar images, public collections). So the admin, the workers, management
commands and every service stay on the primary by construction; only a view that says so reads
from a replica (``DATABASE_REPLICA_URLS`` adds them as ``replica_0``, ``replica_1``, ...).

Inside that block the router still sends to the primary:
- everything, when the request is pinned to it: a write request (POST ...) and, for
  ``DATABASE_READ_YOUR_WRITES_SECONDS`` after one, the same browser's requests
  (``kernel.middleware.ReadYourWritesMiddleware``), so a person sees their own upload at once;
- reads inside a transaction on the primary (an ``atomic`` block reads what it wrote);
- a person's sign-in state (sessions, users, lock-outs), which must never be stale.

A replica is used only while it answers and its replay lag is at most
``DATABASE_REPLICA_MAX_LAG_SECONDS``, checked at most every ``DATABASE_REPLICA_CHECK_SECONDS``
per process. One that fails during a request is marked down and the view runs again on the
primary: the person sees their page, not an error.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections
from django.db.models import Model
from django.http import HttpRequest

logger = logging.getLogger(__name__)

REPLICA_PREFIX = "replica_"
# The database being unreachable or gone mid-statement (kernel.views answers these with a 503).
DATABASE_ERRORS = (OperationalError, InterfaceError)
# Apps whose rows are a person's sign-in state: a sign-out or a password change must take
# effect at once on every page, whatever a replica has replayed yet.
PRIMARY_ONLY_APPS = frozenset({"sessions", "auth", "axes"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# The replica this context reads from (None: the primary), and whether it is pinned to the
# primary (a write request, or a browser that wrote a moment ago).
_read_alias = ContextVar[str | None]("replica_read_alias", default=None)
_primary_pinned = ContextVar[bool]("primary_pinned", default=False)


def replica_aliases() -> list[str]:
    """The configured replicas' database aliases (``replica_0``, ...), in order."""
    return sorted(alias for alias in connections if alias.startswith(REPLICA_PREFIX))


# --- Health: is a replica up, and how far behind? ------------------------------------------


@dataclass(frozen=True)
class ReplicaState:
    """One replica as this process last saw it."""

    alias: str
    usable: bool
    lag_seconds: float | None  # None: it did not answer
    checked_at: float  # time.monotonic()
    problem: str = ""  # why it is not usable, for the admin and the log


# The standby is caught up when it has replayed everything the primary had flushed (read just
# before); otherwise its lag is the age of the last transaction it replayed. That over-estimates
# when the primary sat idle before its latest WAL (a checkpoint's record on an idle site made a
# caught-up standby look seconds behind), so a standby found behind is asked again for a moment
# (CATCH_UP_POLLS): a healthy one replays within milliseconds. A server that is not in recovery
# is not a standby of this primary (a promoted one no longer follows it): never read from it.
LAG_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_last_wal_replay_lsn() >= %s::pg_lsn THEN 0
            ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()),
                          'Infinity')
       END
"""

CATCH_UP_POLLS = 5
CATCH_UP_POLL_SECONDS = 0.02

_states: dict[str, ReplicaState] = {}
_states_lock = threading.Lock()
_round_robin = itertools.count()


def replica_state(alias: str, *, fresh: bool = False) -> ReplicaState:
    """``alias``'s state, checked again when the last check is older than
    ``DATABASE_REPLICA_CHECK_SECONDS`` (or ``fresh``)."""
    now = time.monotonic()
    state = _states.get(alias)
    if state is None or fresh or now - state.checked_at >= settings.DATABASE_REPLICA_CHECK_SECONDS:
        state = _replica_check(alias, now)
        with _states_lock:
            _states[alias] = state
    return state


def _replica_check(alias: str, now: float) -> ReplicaState:
    try:
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_flush_lsn()::text")
            primary_lsn = cursor.fetchone()[0]
    except DATABASE_ERRORS as exc:
        return ReplicaState(alias, False, None, now, f"primary unreachable: {_first_line(exc)}")
    try:
        with connections[alias].cursor() as cursor:
            for poll in range(CATCH_UP_POLLS):
                if poll:
                    time.sleep(CATCH_UP_POLL_SECONDS)
                cursor.execute(LAG_SQL, [primary_lsn])
                in_recovery, lag = cursor.fetchone()
                if not in_recovery or not lag:
                    break
    except DATABASE_ERRORS as exc:
        connections[alias].close()
        problem = f"unreachable: {_first_line(exc)}"
        _log_change(alias, problem)
        return ReplicaState(alias, False, None, now, problem)
    lag = float(lag)
    if not in_recovery:
        problem = "not a standby (promoted?): never read from"
    elif lag > settings.DATABASE_REPLICA_MAX_LAG_SECONDS:
        problem = f"lagging {lag:.1f} s (DATABASE_REPLICA_MAX_LAG_SECONDS)"
    else:
        problem = ""
    _log_change(alias, problem)
    return ReplicaState(alias, not problem, lag, now, problem)


def replica_mark_down(alias: str, problem: str) -> None:
    """Skip ``alias`` until the next check (it failed in the middle of a request)."""
    _log_change(alias, problem)
    with _states_lock:
        _states[alias] = ReplicaState(alias, False, None, time.monotonic(), problem)


def replicas_forget() -> None:
    """Forget every check: the next read checks again (tests, after a replica changed)."""
    with _states_lock:
        _states.clear()


def _log_change(alias: str, problem: str) -> None:
    before = _states.get(alias)
    if before is None and not problem:
        return
    if before is not None and before.problem == problem:
        return
    if problem:
        logger.warning("read replica %s skipped: %s", alias, problem)
    else:
        logger.info("read replica %s back in use", alias)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def replica_choose() -> str | None:
    """A usable replica, taking turns among them; None when there is none."""
    usable = [alias for alias in replica_aliases() if replica_state(alias).usable]
    if not usable:
        return None
    return usable[next(_round_robin) % len(usable)]


# --- Where reads go -------------------------------------------------------------------------


@contextmanager
def replica_reads() -> Iterator[str]:
    """Let reads in this block go to a replica; yields the alias they go to (``default`` when
    no replica may serve them: pinned to the primary, inside a transaction, none usable).

    One replica for the whole block, so that its reads never step back in time between two
    servers that replayed different amounts.
    """
    alias = None
    if not _primary_pinned.get() and not connections[DEFAULT_DB_ALIAS].in_atomic_block:
        alias = replica_choose()
    token = _read_alias.set(alias)
    try:
        yield alias or DEFAULT_DB_ALIAS
    finally:
        _read_alias.reset(token)


@contextmanager
def primary_pinned(pinned: bool = True) -> Iterator[None]:
    """Keep every read in this block on the primary (when ``pinned``)."""
    token = _primary_pinned.set(pinned)
    try:
        yield
    finally:
        _primary_pinned.reset(token)


def read_alias() -> str:
    """The database this context's reads go to (for raw SQL and ``atomic(using=...)``)."""
    return _read_alias.get() or DEFAULT_DB_ALIAS


P = ParamSpec("P")
R = TypeVar("R")


def replica_call(call: Callable[[], R]) -> R:
    """``call()`` with its reads on a replica; if the replica fails meanwhile, mark it down and
    call again on the primary (so ``call`` must only read: it may run twice)."""
    with replica_reads() as alias:
        if alias == DEFAULT_DB_ALIAS:
            return call()
        replica = connections[alias]
        replica.errors_occurred = False
        try:
            return call()
        except DATABASE_ERRORS as exc:
            if not replica.errors_occurred:
                raise  # the primary's error: the site's 503 handling answers it
            replica_mark_down(alias, f"failed during a request: {_first_line(exc)}")
            replica.close()
    return call()  # on the primary, as if the replica had been skipped


def reads_from_replica(view: Callable[P, R]) -> Callable[P, R]:
    """A read-only view whose reads go to a replica (:func:`replica_call`). A request of
    another method than GET, HEAD or OPTIONS runs on the primary as it is."""

    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        request = next((a for a in args if isinstance(a, HttpRequest)), None)
        if request is not None and request.method not in SAFE_METHODS:
            return view(*args, **kwargs)
        return replica_call(lambda: view(*args, **kwargs))

    return wrapper


class PrimaryReplicaRouter:
    """Django's database router: writes and migrations on the primary; reads on the replica
    that :func:`replica_reads` chose, if any (see the module's docstring for when not)."""

    def db_for_read(self, model: type[Model], **hints: Any) -> str:
        alias = _read_alias.get()
        if (
            alias is None
            or model._meta.app_label in PRIMARY_ONLY_APPS
            or connections[DEFAULT_DB_ALIAS].in_atomic_block
        ):
            return DEFAULT_DB_ALIAS
        return alias

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        # Every replica holds the primary's rows: objects read from any of them may relate.
        same_data = {obj1._state.db, obj2._state.db} <= {DEFAULT_DB_ALIAS, None, *replica_aliases()}
        return True if same_data else None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        # A standby is read-only and replays the primary's migrations itself.
        return False if db.startswith(REPLICA_PREFIX) else None
