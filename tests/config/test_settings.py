"""Settings: production refuses unsafe configurations; the embedded default needs no servers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from django.conf import settings

CHECK = "import django; django.setup(); print('started')"


def start_with(**env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
    full.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings.production",
            "CELERY_BROKER_URL": "redis://redis.invalid:6379/0",
            **env,
        }
    )
    return subprocess.run(
        [sys.executable, "-c", CHECK],
        env=full,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_the_default_secret_key() -> None:
    result = start_with()
    assert result.returncode != 0
    assert "refuse the default SECRET_KEY" in result.stderr


def test_production_refuses_debug() -> None:
    result = start_with(SECRET_KEY="x" * 50, DEBUG="true")
    assert result.returncode != 0
    assert "refuse DEBUG" in result.stderr


def test_production_refuses_to_start_without_a_database_url() -> None:
    result = start_with(SECRET_KEY="x" * 50, DATABASE_URL="")
    assert result.returncode != 0
    assert "Production settings need DATABASE_URL" in result.stderr


def test_production_refuses_to_start_without_a_broker_url() -> None:
    # Without one, it fell back to ./run's embedded Redis socket under the code's folder.
    result = start_with(
        SECRET_KEY="x" * 50,
        DATABASE_URL="postgresql://u@db.invalid:5432/x",
        CELERY_BROKER_URL="",
        REDIS_URL="",
    )
    assert result.returncode != 0
    assert "Production settings need CELERY_BROKER_URL (or REDIS_URL)" in result.stderr


def test_production_refuses_a_per_process_cache() -> None:
    # A broker that is not Redis gives no cache URL: rate limits would be per process.
    configured = dict(SECRET_KEY="x" * 50, DATABASE_URL="postgresql://u@db.invalid:5432/x")
    refused = start_with(**configured, CELERY_BROKER_URL="amqp://mq.invalid//", CACHE_URL="")
    assert refused.returncode != 0
    assert "Production settings need CACHE_URL" in refused.stderr

    given = start_with(
        **configured,
        CELERY_BROKER_URL="amqp://mq.invalid//",
        CACHE_URL="redis://:secret@redis.invalid:6379/1",
    )
    assert given.returncode == 0, given.stderr


def test_production_starts_when_configured() -> None:
    # Settings never connect at import: any well-formed URL starts the app.
    result = start_with(SECRET_KEY="x" * 50, DATABASE_URL="postgresql://u@db.invalid:5432/x")
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout


def test_importing_base_settings_starts_no_server(tmp_path) -> None:
    # A fresh DATA_DIR with no DATABASE_URL: base settings must not initdb or start anything.
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(DATA_DIR=str(tmp_path / "data"), DJANGO_SETTINGS_MODULE="config.settings.base")
    subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env, cwd=settings.BASE_DIR, check=True, timeout=60,
    )  # fmt: skip
    assert not (tmp_path / "data" / "postgres").exists()


def test_default_database_is_the_embedded_postgres() -> None:
    if os.environ.get("DATABASE_URL"):
        return  # an external database was configured on purpose
    host = settings.DATABASES["default"]["HOST"]
    assert host.startswith(str(settings.DATA_DIR))


def check_deploy(**env: str) -> subprocess.CompletedProcess[str]:
    # What a deployment has: none of the test run's own variables (DJANGO_ALLOW_ASYNC_UNSAFE is
    # an error under --deploy).
    full = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR"}}
    full.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings.production",
            "SECRET_KEY": "k" * 50 + "-not-the-default",
            "DATABASE_URL": "postgresql://u@db.invalid:5432/x",
            "CELERY_BROKER_URL": "redis://redis.invalid:6379/0",
            **env,
        }
    )
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=full,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings() -> None:
    result = check_deploy()
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_is_clean_with_the_documented_environment() -> None:
    # .env.example's values as given (what `cp .env.example .env` starts from), with what it
    # asks the operator to fill in.
    example = (Path(settings.BASE_DIR) / ".env.example").read_text()
    given = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", example, re.MULTILINE))
    given.update(
        SECRET_KEY="a-long-random-value-" + "x" * 40,
        DATABASE_URL="postgresql://imagesearch:app-pw@db.invalid:5432/imagesearch",
        CELERY_BROKER_URL="redis://:redis-pw@redis.invalid:6379/0",
        LOG_FORMAT="json",
    )
    result = check_deploy(**given)
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_https_settings_come_from_the_environment() -> None:
    # A plain-HTTP trial turns them off, and check --deploy then says what that gives up.
    result = check_deploy(SECURE_SSL_REDIRECT="false", SECURE_HSTS_SECONDS="0")
    assert result.returncode != 0
    assert "security.W004" in result.stderr and "security.W008" in result.stderr
    preload = check_deploy(SECURE_HSTS_PRELOAD="true")
    assert preload.returncode == 0, preload.stderr


def test_replica_urls_become_database_aliases_with_the_primary_options() -> None:
    """Any number of DATABASE_REPLICA_URLS (commas or spaces) become replica_0, replica_1, ...
    built like the primary (the same connection options), behind the replica router."""
    show = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(sorted(s.DATABASES)); print(s.DATABASES['replica_1']['HOST']); "
        "print(s.DATABASES['replica_1']['OPTIONS'] == s.DATABASES['default']['OPTIONS'] != {}); "
        "print(s.DATABASE_ROUTERS)"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.production",
        CELERY_BROKER_URL="redis://redis.invalid:6379/0",
        SECRET_KEY="x" * 50,
        DATABASE_URL="postgresql://u@db.invalid:5432/x",
        DATABASE_REPLICA_URLS="postgresql://u@r0.invalid:5432/x, postgresql://u@r1.invalid/x",
    )
    result = subprocess.run(
        [sys.executable, "-c", show], env=env, cwd=settings.BASE_DIR,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    aliases, host, same_options, routers = result.stdout.splitlines()
    assert aliases == "['default', 'replica_0', 'replica_1']"
    assert host == "r1.invalid"
    assert same_options == "True"
    assert routers == "['kernel.db_routing.PrimaryReplicaRouter']"
