"""Every request is bounded before the application reads it: the body by the first middleware
(gunicorn has no body limit), form data by Django's limits, the request head by gunicorn's."""

from __future__ import annotations

import runpy
import socket
import time
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from django.conf import settings
from django.test import Client
from gunicorn.config import Config

from kernel.middleware import request_body_max_bytes
from search.selectors import MAX_QUERY_CHARS
from tests.factories import UserFactory

GUNICORN_CONFIG = Path(__file__).resolve().parents[2] / "config" / "gunicorn.py"
HUGE = str(200 * 1024 * 1024)


def test_the_body_limit_runs_before_anything_reads_the_body() -> None:
    # Only django-prometheus's counter and the request id come first; neither reads the body.
    assert settings.MIDDLEWARE[:3] == [
        "django_prometheus.middleware.PrometheusBeforeMiddleware",
        "kernel.middleware.RequestIdMiddleware",
        "kernel.middleware.RequestBodyLimitMiddleware",
    ]
    assert settings.MIDDLEWARE.index("django.middleware.csrf.CsrfViewMiddleware") > 0
    # Room for one image and its framing, not for a second one.
    assert settings.UPLOAD_MAX_BYTES < request_body_max_bytes() < 2 * settings.UPLOAD_MAX_BYTES


def test_django_form_limits_are_set() -> None:
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE <= 5 * 1024 * 1024
    assert settings.FILE_UPLOAD_MAX_MEMORY_SIZE <= 5 * 1024 * 1024
    assert 0 < settings.DATA_UPLOAD_MAX_NUMBER_FIELDS <= 1000
    assert 0 < settings.DATA_UPLOAD_MAX_NUMBER_FILES <= 10


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/upload/", "/search/image/", "/accounts/login/"])
def test_an_oversized_page_post_is_a_413_page_before_the_csrf_check(path: str) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(UserFactory())
    response = client.post(path, data=b"x", content_type="image/png", CONTENT_LENGTH=HUGE)
    assert response.status_code == 413
    assert response["Content-Type"].startswith("text/html")
    assert "the limit is" in response.content.decode()


@pytest.mark.django_db
def test_an_oversized_api_post_is_a_json_413() -> None:
    client = Client(enforce_csrf_checks=True)
    response = client.post(
        "/api/search/image", data=b"x", content_type="image/png", CONTENT_LENGTH=HUGE
    )
    assert response.status_code == 413
    assert "the limit is" in response.json()["error"]


@pytest.mark.django_db
def test_a_content_length_that_is_not_a_number_is_a_400() -> None:
    response = Client().post("/api/search/image", data=b"x", content_type="image/png",
                             CONTENT_LENGTH="lots")  # fmt: skip
    assert response.status_code == 400
    assert "Content-Length" in response.json()["error"]


def test_a_live_server_answers_413_without_reading_a_200_mb_body(live_server) -> None:
    """Over real HTTP: the server answers from the head alone while the client still holds back
    almost all of the body it announced."""
    host, port = live_server.thread.host, live_server.thread.port
    head = (
        f"POST /api/search/image HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {HUGE}\r\n\r\n"
    )
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=10) as connection:
        connection.sendall(head.encode() + b"--b\r\n")
        reply = b""
        while b'"error"' not in reply and time.monotonic() - started < 5:
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
    reply = reply.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert '"error"' in reply
    assert time.monotonic() - started < 5


def test_gunicorn_bounds_the_request_head() -> None:
    options = runpy.run_path(str(GUNICORN_CONFIG))
    config = Config()
    for name in ("limit_request_line", "limit_request_fields", "limit_request_field_size"):
        assert name in options, f"config/gunicorn.py leaves {name} unset"
        config.set(name, options[name])  # gunicorn's own range check
        assert getattr(config, name) > 0, f"{name} = 0 means unlimited"
    # The longest text query the site accepts still fits in the request line.
    longest = f"GET /search/?q={quote_plus('é' * MAX_QUERY_CHARS)}&model=siglip2-so400m" + (
        "-patch14-384&k=100&offset=1000 HTTP/1.1"
    )
    assert len(longest) <= config.limit_request_line
