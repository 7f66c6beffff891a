"""``/healthz`` (readiness of every part) and ``/metrics`` (Prometheus), wired in config.urls.

They live in workers/ because they read the embedding index and the image storage; the cheap
``/health/`` self-check stays in kernel.views.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kernel.views import LOOPBACK, process_checks
from workers import readiness
from workers.metrics import scrape_registry

NO_LIVE_WORKER = (
    "No embedding worker has a fresh heartbeat: searches and uploads work, new images wait "
    "for one to start."
)


def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database, the cache, the broker and the image storage answer, else 503
    naming what failed. Live workers are reported, not required: the site serves without."""
    failed = process_checks()
    for part, check in (("broker", readiness.broker_check), ("storage", readiness.storage_check)):
        reason = check()
        if reason is not None:
            failed[part] = reason
    body: dict[str, object] = {
        part: "unavailable" if part in failed else "ok"
        for part in ("database", "cache", "broker", "storage")
    }
    if "database" in failed:
        body["workers"] = None  # unknown: the heartbeats are in the database
    else:
        workers = readiness.live_workers()
        live: dict[str, object] = {"live": workers.count, "models": workers.models}
        if workers.count == 0:
            live["note"] = NO_LIVE_WORKER
        body["workers"] = live
    body["status"] = "unavailable" if failed else "ok"
    if failed and (settings.DEBUG or request.META.get("REMOTE_ADDR") in LOOPBACK):
        # The reasons name internal hosts and paths: only for this machine's own probes.
        body["errors"] = failed
    return JsonResponse(body, status=503 if failed else 200, headers={"Cache-Control": "no-store"})


def metrics_allowed(request: HttpRequest) -> bool:
    """Loopback clients, or anyone with ``Authorization: Bearer <METRICS_TOKEN>``."""
    if request.META.get("REMOTE_ADDR") in LOOPBACK:
        return True
    token = settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus's text format: django-prometheus's request metrics (summed over gunicorn's
    processes) and workers.metrics."""
    if not metrics_allowed(request):
        # 404, not 403: an address that may not scrape learns nothing about the endpoint.
        return HttpResponse(status=404)
    return HttpResponse(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)
