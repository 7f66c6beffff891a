"""The Celery application; tasks live in each app's ``tasks.py``."""

import logging
import os

from celery import Celery

from kernel.broker import BROKER_ERRORS

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

app = Celery("imagesearch")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Apps send tasks through celery.current_app, which is per thread: as the default app, this one
# is current in every thread (request threads, on_commit callbacks), never Celery's blank
# fallback. Celery's Django fix-up does the same when no default is set; this does not rely on it.
app.set_default()


class BrokerLossOneLine(logging.Filter):
    """When the broker goes away, Celery's worker logs a three-part chained traceback ("Error on
    restarting Gossip") and retry notices spread over several lines. Each becomes one line
    that says what happened; other errors keep their tracebacks.
    """

    LOGGERS = ("celery.bootsteps", "celery.worker.consumer")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.LOGGERS):
            return True
        message = " ".join(record.getMessage().split())
        if record.exc_info and record.exc_info[1] is not None:
            cause = _broker_error_in(record.exc_info[1])
            if cause is None:
                return True
            first = message.split(":", 1)[0]
            why = " ".join(str(cause).split()) or type(cause).__name__
            message = f"{first}: the broker is unreachable ({why}); retrying"
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = message, None
        return True


def _broker_error_in(error: BaseException) -> BaseException | None:
    """The broker connection error that caused ``error`` (itself, or one it was raised
    while handling), or None."""
    seen: set[int] = set()
    current: BaseException | None = error
    found = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BROKER_ERRORS):
            found = found or current
        current = current.__cause__ or current.__context__
    return found
