"""This worker process's health: at start it checks that it can reach the image storage and
load each model it serves, then records a heartbeat (``workers.models.Worker``) every
WORKER_HEARTBEAT_SECONDS from a timer thread, and forgets itself on a clean shutdown.

A worker starts on the housekeeping queue alone (CELERY_TASK_DEFAULT_QUEUE) and consumes a
model's queue (``workers.routing.embedding_queue``) only while the storage answers and the
model is loaded: one that cannot reach the storage takes no batches at all, one that cannot
load a model takes none of that model's, and its heartbeat says why (the admin's Workers page).
Both are tried again from the timer thread, a model with a backoff (WORKER_RETRY_SECONDS,
doubling); when it loads, the worker starts consuming its queue.

Queue changes are made by the consumer's own thread (a Celery timer on its event loop), never
from the heartbeat thread: kombu's consumers are not thread-safe. Celery's ``worker_ready``
starts it all; the first checks run in the consumer's thread before the first task, so with
the solo pool the models are loaded once, in the process that embeds.
"""

from __future__ import annotations

import logging
import os
import queue
import resource
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from celery.concurrency.solo import TaskPool as SoloPool
from celery.signals import task_postrun, worker_ready, worker_shutdown
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection

from encoders import EncoderError
from workers.encoder_cache import encoder_for
from workers.readiness import storage_check
from workers.routing import batch_size_for, device_resolved, embedding_queue, worker_models
from workers.services import WorkerReport, worker_forget, worker_heartbeat_record

logger = logging.getLogger(__name__)

# A failed model is tried again after WORKER_RETRY_SECONDS, doubling up to this many times as
# long: a missing GPU or weights are not fixed in seconds, but a restarted volume may be.
RETRY_BACKOFF_MAX_FACTOR = 16
# How often the consumer's thread applies the queue changes the heartbeat thread asked for.
QUEUE_CHANGES_SECONDS = 1.0


@dataclass
class WorkerProcess:
    """What this process can do and has done; the heartbeat writes it out."""

    name: str
    hostname: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    device: str = field(default_factory=device_resolved)
    batch_size: int = 0
    models: list[str] = field(default_factory=list)  # the models it serves
    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    storage_error: str | None = None  # None: not checked yet; "": reachable
    embedded: int = 0
    batches: int = 0  # forward passes (model calls)
    checked: bool = False  # the checks at start have run
    consuming: set[str] = field(default_factory=set)  # model queues asked for
    _retry: dict[str, tuple[float, float]] = field(default_factory=dict)  # model: (at, delay)
    _queue_changes: queue.SimpleQueue[tuple[bool, str]] = field(default_factory=queue.SimpleQueue)
    _rate_mark: tuple[float, int] = field(default_factory=lambda: (time.monotonic(), 0))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.batch_size = self.batch_size or batch_size_for(self.device)

    # --- the checks ------------------------------------------------------------------------
    def storage_verify(self) -> bool:
        """Ask the image storage for a name (a stat or a HEAD); True when it answers."""
        error = storage_check() or ""
        if error and error != self.storage_error:
            logger.error(
                "this worker cannot reach the image storage (%s): it takes no embedding "
                "batches until it can", error,
            )  # fmt: skip
        elif not error and self.storage_error:
            logger.info("the image storage answers again")
        self.storage_error = error
        return not error

    def note_storage_unreachable(self, reason: str) -> None:
        """A batch found the storage away: stop taking batches until a check says it is back."""
        with self._lock:
            self.storage_error = reason
        self.queues_update()

    def models_due(self) -> list[str]:
        """Served models not loaded whose (re)try is due."""
        now = time.monotonic()
        return [
            m for m in self.models
            if m not in self.loaded and self._retry.get(m, (0.0, 0.0))[0] <= now
        ]  # fmt: skip

    def models_check(self, model_ids: list[str]) -> None:
        """Load each model once (the encoder cache keeps it for the batches)."""
        for model_id in model_ids:
            try:
                encoder_for(model_id)
            except EncoderError as exc:
                self.note_failed(model_id, str(exc), record=False)
            else:
                if model_id in self._retry:
                    logger.info("%s loads now: taking its batches (queue %s)", model_id,
                                embedding_queue(model_id))  # fmt: skip
                self.note_loaded(model_id, record=False)

    def note_loaded(self, model_id: str, *, record: bool = True) -> None:
        with self._lock:
            changed = model_id not in self.loaded
            self.failed.pop(model_id, None)
            self._retry.pop(model_id, None)
            if changed:
                self.loaded.append(model_id)
        if changed:
            self.queues_update()
        if changed and record:
            self.beat()

    def note_failed(self, model_id: str, reason: str, *, record: bool = True) -> None:
        with self._lock:
            changed = self.failed.get(model_id) != reason
            self.failed[model_id] = reason
            if model_id in self.loaded:
                self.loaded.remove(model_id)
            delay = self._retry.get(model_id, (0.0, 0.0))[1]
            base = float(settings.WORKER_RETRY_SECONDS)
            delay = min(delay * 2, base * RETRY_BACKOFF_MAX_FACTOR) if delay else base
            self._retry[model_id] = (time.monotonic() + delay, delay)
        logger.error(
            "this worker cannot load %s (%s): it takes no embedding batches of it (queue %s); "
            "trying again in %.0fs", model_id, reason, embedding_queue(model_id), delay,
        )  # fmt: skip
        self.queues_update()
        if changed and record:
            self.beat()

    def note_embedded(self, count: int) -> None:
        with self._lock:
            self.embedded += count
            self.batches += 1

    # --- queues ----------------------------------------------------------------------------
    def queues_update(self) -> None:
        """Ask the consumer for the queues of the loaded models, or none while the storage is
        unreachable."""
        with self._lock:
            wanted = set() if self.storage_error else {embedding_queue(m) for m in self.loaded}
            added, cancelled = wanted - self.consuming, self.consuming - wanted
            self.consuming = wanted
        for name in sorted(added):
            self._queue_changes.put((True, name))
        for name in sorted(cancelled):
            self._queue_changes.put((False, name))

    def queue_changes_apply(self, consumer: Any) -> None:
        """Add or cancel queues as asked; called in the consumer's thread."""
        while True:
            try:
                add, name = self._queue_changes.get_nowait()
            except queue.Empty:
                return
            if add:
                consumer.add_task_queue(name)
            else:
                consumer.cancel_task_queue(name)

    # --- the heartbeat ---------------------------------------------------------------------
    def report(self) -> WorkerReport:
        with self._lock:
            now = time.monotonic()
            since, before = self._rate_mark
            # Over the time since the last heartbeat: an in-process counter, no query.
            rate = 60.0 * (self.embedded - before) / (now - since) if now > since else 0.0
            self._rate_mark = (now, self.embedded)
            return WorkerReport(
                name=self.name,
                hostname=self.hostname,
                pid=self.pid,
                device=self.device,
                batch_size=self.batch_size,
                models_loaded=list(self.loaded),
                models_failed=dict(self.failed),
                embedded=self.embedded,
                batches=self.batches,
                rate_per_minute=rate,
                storage_error=self.storage_error or "",
                queues=sorted(self.consuming),
            )

    def checks_run(self) -> None:
        """The checks: the storage (at start, and while it is unreachable), then each served
        model not loaded yet whose try is due; then the queues and a heartbeat."""
        self.models = worker_models()
        if self.storage_error is None or self.storage_error:
            self.storage_verify()
        self.models_check(self.models_due())
        self.queues_update()
        self.beat()
        self.checked = True

    def beat(self) -> None:
        worker_heartbeat_record(report=self.report())


_current: WorkerProcess | None = None
_stop = threading.Event()


def current() -> WorkerProcess | None:
    """This process's worker, or None outside a Celery worker (web, commands, tests)."""
    return _current


def worker_start(*, name: str) -> WorkerProcess:
    """Check the storage and the served models, record the first heartbeat, and start the
    timer thread.

    With the database unreachable (or not migrated yet) the checks wait for the timer's next
    tick rather than fail the worker's start.
    """
    global _current
    process = WorkerProcess(name=name)
    _current = process
    _stop.clear()
    try:
        process.checks_run()
    except DatabaseError as exc:
        logger.warning("worker checks deferred, the database is unreachable: %s", exc)
    threading.Thread(target=_beat_forever, args=(process,), name="heartbeat", daemon=True).start()
    return process


def worker_stop() -> None:
    """Stop the timer and take this worker off the list (a clean shutdown)."""
    global _current
    process, _current = _current, None
    _stop.set()
    if process is not None:
        try:
            worker_forget(hostname=process.hostname, pid=process.pid)
        except DatabaseError:
            logger.warning("could not remove this worker's heartbeat; it goes when it is stale")


def _beat_forever(process: WorkerProcess) -> None:
    while not _stop.wait(settings.WORKER_HEARTBEAT_SECONDS):
        try:
            process.checks_run()
        except DatabaseError as exc:  # the next beat tries again
            logger.warning("heartbeat not recorded: %s", exc)
        finally:
            # This thread's own connection: closed between beats rather than held idle.
            close_old_connections()
            connection.close()


def memory_over_limit() -> bool:
    """True when this process's peak resident memory passed CELERY_WORKER_MAX_MEMORY_PER_CHILD
    (KiB, as Celery measures it for prefork children: ``ru_maxrss``)."""
    limit = int(settings.CELERY_WORKER_MAX_MEMORY_PER_CHILD)
    return limit > 0 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > limit


def _after_task_memory_check(**kwargs: object) -> None:
    # The solo pool ignores worker_max_memory_per_child (prefork children are replaced by
    # Celery itself): the worker shuts down warm after the task, and its supervisor (compose's
    # restart policy, ./run's launcher) starts a fresh one.
    if memory_over_limit():
        logger.warning(
            "this worker passed CELERY_WORKER_MAX_MEMORY_PER_CHILD (%d KiB): shutting down to be "
            "restarted", settings.CELERY_WORKER_MAX_MEMORY_PER_CHILD,
        )  # fmt: skip
        os.kill(os.getpid(), signal.SIGTERM)


@worker_ready.connect(dispatch_uid="workers_heartbeat_start")
def _on_worker_ready(sender: Any, **kwargs: object) -> None:
    process = worker_start(name=str(getattr(sender, "hostname", "") or socket.gethostname()))
    if sender is None or not hasattr(sender, "add_task_queue"):
        return
    process.queue_changes_apply(sender)  # this is the consumer's thread, before any task
    timer = getattr(sender, "timer", None)
    if timer is not None:
        timer.call_repeatedly(QUEUE_CHANGES_SECONDS, process.queue_changes_apply, (sender,))
    if isinstance(getattr(sender, "pool", None), SoloPool):
        task_postrun.connect(_after_task_memory_check, weak=False, dispatch_uid="workers_memory")


@worker_shutdown.connect(dispatch_uid="workers_heartbeat_stop")
def _on_worker_shutdown(sender: object, **kwargs: object) -> None:
    worker_stop()
