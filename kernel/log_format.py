"""Log lines for people (LOG_FORMAT=text) and for log collectors (LOG_FORMAT=json), each with
its time, and the request id of the web request that wrote it.

Web processes, Celery workers and beat all log through the root handler that
``config.settings`` builds with :func:`logging_config` (Celery is told not to replace it);
gunicorn's own error and access logs get the same formatters from ``config/gunicorn.py``.
``kernel.middleware.RequestIdMiddleware`` binds each request's id. No Django imports here:
settings and gunicorn's master read this module before Django is set up.
"""

from __future__ import annotations

import importlib
import logging
import re
import uuid
from contextvars import ContextVar
from datetime import datetime
from typing import Any

LOG_FORMATS = ("text", "json")
REQUEST_ID_HEADER = "X-Request-ID"
# An id a proxy in front sent (nginx's $request_id, a load balancer's trace id) is kept if it
# looks like one; anything else is replaced, so a client cannot write arbitrary text into logs.
_ACCEPTED_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class TextFormatter(logging.Formatter):
    """``2026-12-02T16:26:17.123+00:00 INFO name: message``: local time with its UTC offset."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created).astimezone()
        return moment.isoformat(timespec="milliseconds")


class RequestIdFilter(logging.Filter):
    """Puts the current web request's id (None outside one) on every record as ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        return True


def formatters() -> dict[str, dict[str, Any]]:
    """The two formatters, for a dictConfig (Django's LOGGING, gunicorn's logconfig_dict)."""
    return {
        "text": {
            "()": "kernel.log_format.TextFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s: %(message)s",
        },
        # One JSON object a line: timestamp (ISO 8601, UTC), level, logger, message, request_id,
        # and exc_info when there is a traceback.
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": True,
        },
    }


def formatter(log_format: str) -> logging.Formatter:
    """The formatter ``logging_config`` gives the console handler, built alone."""
    options = dict(formatters()[log_format])
    factory = options.pop("()")
    module, _, name = factory.rpartition(".")
    return getattr(importlib.import_module(module), name)(**options)  # type: ignore[no-any-return]


def logging_config(
    log_format: str, level: str, filters: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The root logger's dictConfig: one console handler in ``log_format`` (text or json),
    with the request id filter and any other ``filters`` (dictConfig filter definitions)."""
    filters = {"request_id": {"()": "kernel.log_format.RequestIdFilter"}, **(filters or {})}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters(),
        "filters": filters,
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "filters": list(filters),
            }
        },
        "root": {"handlers": ["console"], "level": level},
    }


def request_id_accept(given: str) -> str:
    """The id for a request: the proxy's, when it looks like one, else a new one."""
    return given if _ACCEPTED_ID.fullmatch(given) else uuid.uuid4().hex


def request_id_bind(request_id: str | None) -> None:
    """Make ``request_id`` the current request's id in this thread, until the next bind.

    Not reset when the middleware returns: Django logs a 4xx/5xx ("Not Found: ...") after the
    middleware chain, and that line belongs to the request too. ``request_finished`` clears it
    (``request_id_clear``), so nothing logged between requests carries a stale id.
    """
    _request_id.set(request_id)


def request_id_clear(**kwargs: object) -> None:
    """A ``request_finished`` receiver."""
    _request_id.set(None)
