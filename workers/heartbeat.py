"""This worker process's health: at start it checks that it can load each enabled model, then
records a heartbeat (``workers.models.Worker``) every WORKER_HEARTBEAT_SECONDS from a timer
thread, and forgets itself on a clean shutdown.

A worker that can load none of the enabled models stops consuming the embedding queue (it
would only hand the batches back) but keeps its heartbeat, so the admin shows it and why. One
that loads some of them hands back, to the workers that can, the batches of a model it cannot
load (``workers.pipeline.embedding_batch_run``). Celery's ``worker_ready`` starts it all; the
checks run in the consumer's thread before the first task, so with the solo pool the models
are loaded once, in the process that embeds.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection

from encoders import EncoderError
from workers.encoder_cache import encoder_for
from workers.selectors import embedding_models_enabled
from workers.services import WorkerReport, worker_forget, worker_heartbeat_record

logger = logging.getLogger(__name__)


@dataclass
class WorkerProcess:
    """What this process can do and has done; the heartbeat writes it out."""

    name: str
    hostname: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    device: str = field(default_factory=lambda: str(settings.EMBEDDING_DEVICE))
    batch_size: int = field(default_factory=lambda: int(settings.EMBEDDING_BATCH_SIZE))
    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    embedded: int = 0
    checked: bool = False  # the checks at start have run
    _rate_mark: tuple[float, int] = field(default_factory=lambda: (time.monotonic(), 0))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def models_check(self, model_ids: list[str]) -> None:
        """Load each model once (the encoder cache keeps it for the batches)."""
        for model_id in model_ids:
            try:
                encoder_for(model_id)
            except EncoderError as exc:
                self.note_failed(model_id, str(exc), record=False)
                logger.error("this worker cannot load %s: %s", model_id, exc)
            else:
                self.note_loaded(model_id, record=False)

    def note_loaded(self, model_id: str, *, record: bool = True) -> None:
        with self._lock:
            changed = model_id not in self.loaded
            self.failed.pop(model_id, None)
            if changed:
                self.loaded.append(model_id)
        if changed and record:
            self.beat()

    def note_failed(self, model_id: str, reason: str, *, record: bool = True) -> None:
        with self._lock:
            changed = self.failed.get(model_id) != reason
            self.failed[model_id] = reason
            if model_id in self.loaded:
                self.loaded.remove(model_id)
        if changed and record:
            self.beat()

    def note_embedded(self, count: int) -> None:
        with self._lock:
            self.embedded += count

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
                rate_per_minute=rate,
            )

    def checks_run(self) -> None:
        """The checks at start: load each enabled model, then the first heartbeat."""
        self.models_check(embedding_models_enabled())
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
    """Check the enabled models, record the first heartbeat, and start the timer thread.

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
            process.beat() if process.checked else process.checks_run()
        except DatabaseError as exc:  # the next beat tries again
            logger.warning("heartbeat not recorded: %s", exc)
        finally:
            # This thread's own connection: closed between beats rather than held idle.
            close_old_connections()
            connection.close()


@worker_ready.connect(dispatch_uid="workers_heartbeat_start")
def _on_worker_ready(sender: object, **kwargs: object) -> None:
    process = worker_start(name=str(getattr(sender, "hostname", "") or socket.gethostname()))
    if process.checked and process.failed and not process.loaded:
        # Every batch would only be handed back: let the workers that can load take them.
        logger.error(
            "this worker can load none of %s: it stops taking embedding batches (queue %r)",
            ", ".join(sorted(process.failed)), settings.EMBEDDING_QUEUE,
        )  # fmt: skip
        cancel = getattr(sender, "cancel_task_queue", None)
        if cancel is not None:
            cancel(settings.EMBEDDING_QUEUE)


@worker_shutdown.connect(dispatch_uid="workers_heartbeat_stop")
def _on_worker_shutdown(sender: object, **kwargs: object) -> None:
    worker_stop()
