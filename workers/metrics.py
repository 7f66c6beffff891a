"""Prometheus metrics read at scrape time: embedding jobs, the broker's queue, live workers,
and how fast images are embedded.

django-prometheus's middlewares count requests and their latency; this collector adds what
the site itself knows. It is registered once (``register``), from the workers app's ready().

Under gunicorn (config/gunicorn.py sets PROMETHEUS_MULTIPROC_DIR) each web process writes its
request counts to files in that folder, and ``scrape_registry`` sums every process's, the
dead ones' included, so a scrape answered by any process gives the site's totals.

The embed rate comes from the database, not from counters in the worker processes: workers run
on other hosts, behind no port the scraper reaches, and a process's counter dies with it. The
heartbeat already brings each worker's count to the database, and stored embeddings are counted
per model there, so any web process on any host reports every worker and every model:
``rate(imagesearch_worker_images_embedded_total[5m])`` per worker (a counter that restarts with
its worker, which rate() allows for) and ``deriv(imagesearch_embeddings_stored[5m])`` per model.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator

from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kernel.views import DATABASE_ERRORS
from workers.models import EmbeddingJob, EmbeddingModel
from workers.queueing import broker_queue_length
from workers.readiness import (
    embedding_job_counts,
    embeddings_stored_counts,
    live_workers,
    workers_embedded,
)
from workers.routing import embedding_queue

logger = logging.getLogger(__name__)
_registered = False
_lock = threading.Lock()


def _queue_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "imagesearch_broker_queue_length",
        "Messages waiting in the broker queue (absent while the broker is unreachable).",
        labels=["queue"],
    )


def _jobs_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "imagesearch_embedding_jobs",
        "Embedding jobs by model and status (pending or failed).",
        labels=["model", "status"],
    )


def _workers_family(count: int | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "imagesearch_workers_live", "Embedding workers with a fresh heartbeat.", value=count
    )


def _model_live_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "imagesearch_embedding_model_live",
        "1 when some live worker loads this enabled model, else 0.",
        labels=["model"],
    )


def _stored_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "imagesearch_embeddings_stored",
        "Image embeddings stored, by model; deriv() over it is the embed rate per model.",
        labels=["model"],
    )


def _worker_embedded_family() -> CounterMetricFamily:
    return CounterMetricFamily(
        "imagesearch_worker_images_embedded",
        "Images each live worker embedded since it started (from its heartbeat).",
        labels=["worker", "pid", "device"],
    )


def _families() -> tuple[Metric, ...]:
    return (
        _queue_family(),
        _jobs_family(),
        _workers_family(),
        _model_live_family(),
        _stored_family(),
        _worker_embedded_family(),
    )


class SiteCollector(Collector):
    def describe(self) -> Iterator[Metric]:
        # Without describe() the registry would call collect() on registering: queries at
        # start-up (before migrate has even made the tables).
        yield from _families()

    def collect(self) -> Iterator[Metric]:
        queue = _queue_family()
        # Each model's queue (workers.routing) and the housekeeping one.
        names = [embedding_queue(m) for m in settings.EMBEDDING_MODELS]
        for name in [*names, settings.CELERY_TASK_DEFAULT_QUEUE]:
            length = broker_queue_length(name)
            if length is not None:
                queue.add_metric([name], length)
        yield queue
        try:
            counts = embedding_job_counts()
            workers = live_workers()
            model_ids = set(
                EmbeddingModel.objects.filter(enabled=True).values_list("model_id", flat=True)
            )
            stored = embeddings_stored_counts()
            embedded = workers_embedded()
        except DATABASE_ERRORS as exc:
            # The request metrics still come out; the database's own gauges are absent.
            logger.warning("metrics: database unavailable: %s", str(exc).splitlines()[0])
            return
        jobs = _jobs_family()
        model_ids |= {model_id for model_id, _ in counts}
        for model_id in sorted(model_ids):
            for status in (EmbeddingJob.Status.PENDING, EmbeddingJob.Status.FAILED):
                jobs.add_metric([model_id, status.value], counts.get((model_id, status.value), 0))
        yield jobs
        yield _workers_family(workers.count)
        loaded = _model_live_family()
        for model_id, up in workers.models.items():
            loaded.add_metric([model_id], 1 if up else 0)
        yield loaded
        stored_family = _stored_family()
        for model_id in sorted(model_ids | set(stored)):
            stored_family.add_metric([model_id], stored.get(model_id, 0))
        yield stored_family
        embedded_family = _worker_embedded_family()
        for name, pid, device, count in embedded:
            embedded_family.add_metric([name, str(pid), device], count)
        yield embedded_family


def register() -> None:
    """Register the collector with the default registry, once per process."""
    global _registered
    with _lock:
        if not _registered:
            REGISTRY.register(SiteCollector())
            _registered = True


def scrape_registry() -> CollectorRegistry:
    """What /metrics serves: with PROMETHEUS_MULTIPROC_DIR (gunicorn), every web process's
    request metrics summed, plus this collector; otherwise this process's default registry."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(SiteCollector())
    return registry
