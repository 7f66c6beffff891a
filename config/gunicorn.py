"""Gunicorn settings for ./run and the compose web service (``gunicorn -c config/gunicorn.py``)."""

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# WEB_WORKERS, else WEB_CONCURRENCY (the variable gunicorn and hosting platforms use), else 2.
workers = int(os.environ.get("WEB_WORKERS") or os.environ.get("WEB_CONCURRENCY") or "2")
threads = 4
worker_class = "gthread"
graceful_timeout = 10
# Loading a large model (or exporting it to ONNX once) before the first request can take longer
# than gunicorn's 30 s default for a worker to report in.
timeout = int(os.environ.get("WEB_TIMEOUT") or "120")
accesslog = "-"
# LOG_FORMAT=json: gunicorn's own lines (start-up, worker exits, the access log) as JSON objects
# too, with the formatter the site's lines use (kernel.log_format). Text keeps gunicorn's own
# formats, which are timestamped already.
if (os.environ.get("LOG_FORMAT") or "").strip().lower() == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            # kernel.log_format's json formatter (named here: the master has not set up Django).
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(levelname)s %(name)s %(message)s",
                "rename_fields": {"levelname": "level", "name": "logger"},
                "timestamp": True,
            }
        },
        "handlers": {
            "error": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            },
        },
        "root": {"level": "INFO", "handlers": []},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
    }
# Each worker is replaced after this many requests (plus a random 0..jitter, so the workers do
# not all restart at once): memory that one request's peak took (a decoded image, numpy
# buffers) stays with the process otherwise, as the allocator seldom returns it. A worker
# finishes the requests it holds before it goes; 0 turns recycling off.
max_requests = int(os.environ.get("WEB_MAX_REQUESTS") or "1000")
max_requests_jitter = int(os.environ.get("WEB_MAX_REQUESTS_JITTER") or "100")
# Bounded request heads. The line holds a text query of up to 1,000 characters (search.selectors
# MAX_QUERY_CHARS) percent-encoded, so it gets gunicorn's largest limit rather than its 4 KB
# default; headers keep gunicorn's defaults, stated so they are not loosened by accident.
# Bodies gunicorn does not bound: kernel.middleware.RequestBodyLimitMiddleware does.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# gunicorn's control socket lives in $HOME and would be shared by every site on the machine.
control_socket_disable = True


# Prometheus across processes: each worker writes its request metrics into files in
# PROMETHEUS_MULTIPROC_DIR and /metrics sums them (workers.metrics.scrape_registry), so a scrape
# answered by any worker gives the site's totals, recycled workers' counts included. Set here,
# in the master before any worker forks; an operator's own folder is honoured (and emptied at
# start: the files of a previous run would add to this one's counts).
_metrics_dir_made: list[str] = []


def on_starting(server: Any) -> None:  # gunicorn's hook signature
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for stale in Path(folder).glob("*.db"):
            stale.unlink()
    else:
        folder = tempfile.mkdtemp(prefix="imagesearch-prometheus-")
        _metrics_dir_made.append(folder)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder


def child_exit(server: Any, worker: Any) -> None:
    # Its live gauges go; its counters and histograms stay in the sums.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    for folder in _metrics_dir_made:
        shutil.rmtree(folder, ignore_errors=True)


def post_worker_init(worker: Any) -> None:  # gunicorn's hook signature
    # Load every enabled search model in each worker before it takes requests (not only those
    # with embeddings already: after a first import the first query would pay for the load).
    # Skipped: models the workers found unloadable, and weights not on this machine yet (a
    # download, or an offline hub's retries, must not hold up a worker's start).
    try:
        from django.conf import settings

        from encoders import weights_on_disk
        from search.query_encoder import warm_up
        from workers.selectors import (
            embedding_model_default,
            embedding_model_unavailable,
            embedding_models_enabled,
        )

        default = embedding_model_default()
        models = []
        for model_id in embedding_models_enabled():
            if embedding_model_unavailable(model_id=model_id):
                continue
            if not weights_on_disk(model_id, settings.EMBEDDING_MODEL_SOURCES.get(model_id)):
                worker.log.info("%s: weights not on this machine yet; loads on first use", model_id)
                continue
            models.append(model_id)
        warm_up(model_ids=sorted(models, key=lambda m: (m != default, m)))
        if default in models:
            _warm_request_path(worker)
    except Exception:  # a cold first search beats a web worker that won't boot
        worker.log.exception("search warm-up failed; models will load on first use")


def _warm_request_path(worker: Any) -> None:
    """One search through the whole Django stack (middleware, URL resolver, API schema, ORM
    and the index pages), so the worker's first real search costs what later ones do
    (measured: 73 ms for each worker's first query against ~25 ms after, without this)."""
    from django.conf import settings
    from django.db import connections
    from django.test import Client

    hosts = [h.lstrip(".") for h in settings.ALLOWED_HOSTS if h != "*"] or ["localhost"]
    try:
        response = Client(HTTP_HOST=hosts[0]).get("/api/search?q=a+photo&k=1")
        if response.status_code != 200:
            worker.log.info("request warm-up answered %s", response.status_code)
    finally:
        # Request threads open their own connections; this one would only sit idle.
        for connection in connections.all(initialized_only=True):
            if not connection.in_atomic_block:
                connection.close()
