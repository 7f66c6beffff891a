"""``/healthz`` (readiness of every part) and ``/metrics`` (Prometheus) against the real
embedded PostgreSQL and Redis; the broker is made unreachable by pointing its URL at a dead
socket."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from config.devserver import embedded
from tests.factories import ImageFactory
from workers.models import EmbeddingJob, EmbeddingModel, Worker

pytestmark = pytest.mark.django_db
MODEL = "clip-vit-base-patch32"
OTHER = "align-base"


def live_worker(*models: str, pid: int = 1) -> Worker:
    now = timezone.now()
    return Worker.objects.create(
        name=f"celery@test-{pid}",
        hostname="test",
        pid=pid,
        device="cpu",
        batch_size=8,
        models_loaded=list(models),
        started_at=now,
        last_seen=now,
    )


def metric(text: str, name: str, **labels: str) -> float:
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.escape(f"{name}{{{inner}}}" if labels else name) + r" (\S+)"
    found = re.search(rf"^{pattern}$", text, re.MULTILINE)
    assert found is not None, f"{name} {labels} not in /metrics"
    return float(found.group(1))


def test_healthz_is_ok_with_every_part_up_and_says_when_no_worker_is_live() -> None:
    EmbeddingModel.objects.update_or_create(model_id=MODEL, defaults={"enabled": True})
    response = Client().get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in ("database", "cache", "broker", "storage", "status")} == {
        "database": "ok",
        "cache": "ok",
        "broker": "ok",
        "storage": "ok",
        "status": "ok",
    }
    assert body["workers"]["live"] == 0 and body["workers"]["models"][MODEL] is False
    assert "No embedding worker" in body["workers"]["note"]
    assert response["Cache-Control"] == "no-store"

    live_worker(MODEL)
    workers = Client().get("/healthz").json()["workers"]
    assert workers["live"] == 1 and workers["models"][MODEL] is True and "note" not in workers


def test_healthz_names_an_unreachable_broker(settings, tmp_path: Path) -> None:
    settings.CELERY_BROKER_URL = embedded.socket_url(tmp_path / "no-broker-here.sock")
    down = Client(REMOTE_ADDR="127.0.0.1").get("/healthz")
    assert down.status_code == 503
    body = down.json()
    assert body["broker"] == "unavailable" and body["status"] == "unavailable"
    assert body["database"] == body["cache"] == body["storage"] == "ok"
    assert set(body["errors"]) == {"broker"}
    # Elsewhere the answer never names internal paths.
    remote = Client(REMOTE_ADDR="203.0.113.5").get("/healthz")
    assert remote.status_code == 503 and "errors" not in remote.json()
    assert remote.json()["broker"] == "unavailable"


def test_metrics_has_request_metrics_and_the_sites_gauges() -> None:
    EmbeddingModel.objects.update_or_create(model_id=MODEL, defaults={"enabled": True})
    EmbeddingModel.objects.update_or_create(model_id=OTHER, defaults={"enabled": True})
    images = ImageFactory.create_batch(3)
    EmbeddingJob.objects.all().delete()  # only the jobs made here
    for image in images:
        EmbeddingJob.objects.create(image=image, model_id=MODEL)
    EmbeddingJob.objects.create(image=images[0], model_id=OTHER, status="failed", error="x")
    live_worker(MODEL, pid=1)
    live_worker(MODEL, pid=2)

    client = Client()
    client.get("/health/")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "django_http_requests_total_by_method_total" in text
    assert "django_http_requests_latency_seconds_by_view_method" in text
    assert metric(text, "imagesearch_embedding_jobs", model=MODEL, status="pending") == 3
    assert metric(text, "imagesearch_embedding_jobs", model=MODEL, status="failed") == 0
    assert metric(text, "imagesearch_embedding_jobs", model=OTHER, status="failed") == 1
    assert metric(text, "imagesearch_embedding_jobs", model=OTHER, status="pending") == 0
    assert metric(text, "imagesearch_workers_live") == 2
    assert metric(text, "imagesearch_embedding_model_live", model=MODEL) == 1
    assert metric(text, "imagesearch_embedding_model_live", model=OTHER) == 0
    assert metric(text, "imagesearch_broker_queue_length", queue="embed.clip-vit-base-patch32") >= 0


def test_metrics_refuses_other_addresses_without_the_token(settings) -> None:
    settings.METRICS_TOKEN = "s3cret"
    remote = Client(REMOTE_ADDR="203.0.113.5")
    assert remote.get("/metrics").status_code == 404
    assert remote.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 404
    allowed = remote.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret")
    assert allowed.status_code == 200 and b"imagesearch_workers_live" in allowed.content

    settings.METRICS_TOKEN = ""  # no token: loopback only, whatever is sent
    assert remote.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404
