"""Time limits for embedding tasks that hold in any Celery pool.

Celery enforces ``soft_time_limit``/``time_limit`` only in the prefork pool; the workers run
the solo pool (one process per GPU, models loaded once, in the process that embeds), where
they are ignored. So the limits are kept here: the soft one raises Celery's own
``SoftTimeLimitExceeded`` in the task's thread (SIGALRM, which Python delivers to the main
thread, where the solo pool and each prefork child run tasks), and the batch releases its
jobs; the hard one, for a task stuck where no exception reaches it (native code), kills this
process as Celery kills a prefork child: its supervisor restarts it and the leases run out.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from celery.exceptions import SoftTimeLimitExceeded

logger = logging.getLogger(__name__)


def _soft_limit_reached(signum: int, frame: FrameType | None) -> None:
    raise SoftTimeLimitExceeded()


def _hard_limit_reached(seconds: float) -> None:
    logger.critical("an embedding task ran past its hard time limit (%.0fs): killing this "
                    "worker process; its jobs are queued again when their lease runs out",
                    seconds)  # fmt: skip
    os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def time_limits(*, soft: float, hard: float, kill: bool) -> Iterator[None]:
    """Raise ``SoftTimeLimitExceeded`` in the block after ``soft`` seconds (in the main thread
    only: elsewhere a signal cannot reach it); with ``kill``, kill the process after ``hard``
    seconds (only a worker asks: never a test or a command). 0 turns a limit off."""
    armed = soft > 0 and threading.current_thread() is threading.main_thread()
    previous = None
    if armed:
        previous = signal.signal(signal.SIGALRM, _soft_limit_reached)
        signal.setitimer(signal.ITIMER_REAL, soft)
    killer = threading.Timer(hard, _hard_limit_reached, (hard,)) if kill and hard > 0 else None
    if killer is not None:
        killer.daemon = True
        killer.start()
    try:
        yield
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        if killer is not None:
            killer.cancel()
