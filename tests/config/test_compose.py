"""The deployment files: docker-compose.yml is valid and wires the stack together, .env.example
documents every setting, and the Dockerfile installs the torch that requirements.txt pins.

Checked offline with docker-compose 1.29 (``./run test`` installs it); no Docker engine and no
database needed. Each run copies the compose file into a temporary folder and passes a clean
environment, so a developer's own ``.env`` or exported variables cannot change the outcome.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from kernel.db_setup import setup_sql

pytestmark = pytest.mark.slow  # runs docker-compose on the deployment files

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SETTINGS_DIR = ROOT / "config" / "settings"

# os.environ.get("X"), os.getenv("X"), os.environ["X"], env_bool("X", ...), env_list("X"...),
# env_map("X"), and environ.get("X") of helpers given the environment as a parameter
SETTINGS_VAR = re.compile(
    r"""(?:(?:os\.)?environ\.get\(|os\.getenv\(|os\.environ\[|env_bool\(|env_list\(|env_map\()"""
    r"""\s*["']([A-Z][A-Z0-9_]*)["']"""
)
# "NAME=value" or the commented-out form "# NAME=value".
DOCUMENTED_VAR = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)

APP_SERVICES = ("migrate", "web", "worker-gpu", "worker-cpu")
WORKERS = ("worker-gpu", "worker-cpu")
GUNICORN_CONF = ROOT / "config" / "gunicorn.py"
# What an operator must choose: compose refuses to start without each of them.
SECRETS = {
    "SECRET_KEY": "k",
    "POSTGRES_PASSWORD": "superuser-pw",
    "POSTGRES_APP_PASSWORD": "app-pw",
    "REDIS_PASSWORD": "redis-pw",
}


def settings_env_vars() -> set[str]:
    names = set()
    for path in SETTINGS_DIR.glob("*.py"):
        names.update(SETTINGS_VAR.findall(path.read_text()))
    return names


def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail(
            "docker-compose is not installed, so docker-compose.yml cannot be validated. "
            "`./run test` installs it; by hand: apt-get install docker-compose"
        )
    return path


def compose(
    workdir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``docker-compose -f docker-compose.yml ARGS`` on a copy of the file in ``workdir``.

    Only PATH and HOME come from the test process: every variable the file interpolates must be
    given in ``env`` (or in a ``.env`` the caller writes into ``workdir``).
    """
    shutil.copy(COMPOSE_FILE, workdir / "docker-compose.yml")
    clean_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)}
    return subprocess.run(
        [docker_compose(), "-f", "docker-compose.yml", *args],
        cwd=workdir,
        env={**clean_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as docker-compose resolves it, with only the secrets given."""
    result = compose(tmp_path_factory.mktemp("compose"), "config", env=SECRETS)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return command if isinstance(command, str) else " ".join(command)


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service.get("healthcheck", {}).get("test", "")
    return test if isinstance(test, str) else " ".join(test)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> source, for the short ("src:dst:mode") and long syntax alike."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        found[target] = source
    return found


def test_compose_file_is_valid_with_only_the_secrets_set(tmp_path: Path) -> None:
    result = compose(tmp_path, "config", "-q", env=SECRETS)

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("unset", "message"),
    [
        ("SECRET_KEY", "SECRET_KEY is not set"),
        ("POSTGRES_PASSWORD", "set POSTGRES_PASSWORD"),
        ("POSTGRES_APP_PASSWORD", "set POSTGRES_APP_PASSWORD"),
        ("REDIS_PASSWORD", "set REDIS_PASSWORD"),
    ],
)
def test_compose_refuses_to_run_without_each_secret(
    tmp_path: Path, unset: str, message: str
) -> None:
    # Empty counts as unset: no password defaults to a known value.
    result = compose(tmp_path, "config", "-q", env={**SECRETS, unset: ""})

    assert result.returncode != 0
    assert message in result.stderr


def test_env_example_drives_compose_once_a_secret_key_is_filled_in(tmp_path: Path) -> None:
    example = ENV_EXAMPLE.read_text()
    (tmp_path / ".env").write_text(example)
    # The example ships no usable key: copied unchanged, compose still refuses.
    assert compose(tmp_path, "config", "-q").returncode != 0

    filled = example
    for name in SECRETS:
        # Each ships empty (asserted here), so a copied example cannot run with a known value.
        assert re.search(rf"^{name}=$", example, re.MULTILINE), name
        filled = re.sub(rf"^{name}=$", f"{name}={name.lower()}-from-dot-env", filled, flags=re.M)
    (tmp_path / ".env").write_text(filled)
    result = compose(tmp_path, "config")

    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    web_env = services["web"]["environment"]
    assert web_env["SECRET_KEY"] == "secret_key-from-dot-env"
    assert ":postgres_app_password-from-dot-env@postgres:5432/" in web_env["DATABASE_URL"]
    assert ":redis_password-from-dot-env@redis:6379/" in web_env["CELERY_BROKER_URL"]
    postgres_env = services["postgres"]["environment"]
    assert postgres_env["POSTGRES_PASSWORD"] == "postgres_password-from-dot-env"


def test_postgres_is_pgvector_with_a_healthcheck_and_a_named_volume(
    config: dict[str, Any],
) -> None:
    postgres = config["services"]["postgres"]

    assert postgres["image"].startswith("pgvector/pgvector:")
    assert "pg_isready" in healthcheck_text(postgres)
    assert mounts(postgres)["/var/lib/postgresql/data"] in config["volumes"]


def test_redis_has_a_healthcheck_and_persists_its_queue(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]

    assert "redis-cli ping" in healthcheck_text(redis)
    assert "--appendonly yes" in command_text(redis)
    assert mounts(redis)["/data"] in config["volumes"]
    # A password, which redis-cli (the healthcheck) reads from REDISCLI_AUTH.
    # ($$: docker-compose config keeps the escape that leaves the variable to the shell.)
    assert '--requirepass "$$REDISCLI_AUTH"' in command_text(redis)
    assert redis["environment"]["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"]


def test_the_app_connects_as_a_role_the_init_script_creates(config: dict[str, Any]) -> None:
    postgres = config["services"]["postgres"]
    env = postgres["environment"]
    mounted = mounts(postgres)["/docker-entrypoint-initdb.d/10-app-role.sh"]
    script = ROOT / "deploy" / "postgres" / "init-app-role.sh"

    # The test runs compose on a copy of the file in a temporary folder.
    assert mounted.endswith("/deploy/postgres/init-app-role.sh")
    assert env["POSTGRES_APP_USER"] != env["POSTGRES_USER"]
    for name in APP_SERVICES:
        url = urlsplit(config["services"][name]["environment"]["DATABASE_URL"])
        assert (url.username, url.password) == (
            env["POSTGRES_APP_USER"],
            SECRETS["POSTGRES_APP_PASSWORD"],
        ), name
    # The script creates what `manage.py db_setup_sql` prints (tests/config/test_database_role.py
    # runs it against a real server).
    for statement in setup_sql().splitlines():
        if not statement.startswith("--"):
            assert statement in script.read_text()


def test_app_services_use_production_settings_and_the_compose_servers(
    config: dict[str, Any],
) -> None:
    for name in APP_SERVICES:
        env = config["services"][name]["environment"]
        assert env["DJANGO_SETTINGS_MODULE"] == "config.settings.production", name
        assert env["DATABASE_URL"].startswith("postgresql://"), name
        assert "@postgres:5432/" in env["DATABASE_URL"], name
        broker = urlsplit(env["CELERY_BROKER_URL"])
        assert (broker.hostname, broker.port) == ("redis", 6379), name
        assert broker.password == SECRETS["REDIS_PASSWORD"], name
        assert urlsplit(env["CELERY_RESULT_BACKEND"]).password == SECRETS["REDIS_PASSWORD"], name


def test_every_setting_reaches_the_app_containers(config: dict[str, Any]) -> None:
    # No env_file (so .env stays optional): a setting reaches the containers only if the file
    # lists it. DEBUG stays unset (production refuses it); REDIS_URL is CELERY_BROKER_URL's
    # fallback, which compose always sets.
    wanted = settings_env_vars() - {"DEBUG", "REDIS_URL"}
    for name in ("web", "worker-gpu", "worker-cpu"):
        missing = wanted - set(config["services"][name]["environment"])
        assert not missing, f"{name} does not receive {sorted(missing)}"


def test_web_waits_for_migrations_and_has_an_http_healthcheck(config: dict[str, Any]) -> None:
    services = config["services"]
    web = services["web"]

    assert "python manage.py migrate --noinput" in command_text(services["migrate"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert web["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert web["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "gunicorn config.wsgi" in command_text(web)
    assert "0.0.0.0:8000" in command_text(web)
    assert "http://127.0.0.1:8000/health/" in healthcheck_text(web)


def test_the_web_servers_settings_reach_the_containers(config: dict[str, Any]) -> None:
    read = set(SETTINGS_VAR.findall(GUNICORN_CONF.read_text()))
    # Guards the regex: config/gunicorn.py certainly reads these.
    assert {"WEB_WORKERS", "WEB_CONCURRENCY", "WEB_TIMEOUT"} <= read
    # GUNICORN_BIND is ./run's; compose gives --bind on the command line instead. Without
    # PROMETHEUS_MULTIPROC_DIR gunicorn makes its own folder, inside the container.
    wanted = read - {"GUNICORN_BIND", "PROMETHEUS_MULTIPROC_DIR"}
    missing = wanted - set(config["services"]["web"]["environment"])
    assert not missing, f"web does not receive {sorted(missing)}"


def test_workers_have_a_heartbeat_healthcheck(config: dict[str, Any]) -> None:
    for name in WORKERS:
        check = config["services"][name]["healthcheck"]
        assert "manage.py worker_alive" in healthcheck_text(config["services"][name]), name
        assert check["start_period"], name  # models load before the first heartbeat


def test_workers_run_one_celery_process_and_choose_their_models(config: dict[str, Any]) -> None:
    for name in WORKERS:
        service = config["services"][name]
        command = command_text(service)
        assert command.startswith("celery -A config worker"), name
        # One process per GPU (or per CPU host, with threads inside the batch).
        assert "--pool=solo" in command, name
        # No fixed queues: the worker adds each model's queue itself once it loads the model
        # (workers.heartbeat); a fixed --queues would take batches before the checks.
        assert "--queues" not in command and " -Q" not in command, name
        assert "EMBEDDING_WORKER_MODELS" in service["environment"], name
    cpu = config["services"]["worker-cpu"]["environment"]
    assert cpu["OMP_NUM_THREADS"] == cpu["EMBEDDING_ONNX_THREADS"] == "4"


def test_gpu_worker_reserves_an_nvidia_gpu_and_gets_a_cuda_torch(
    config: dict[str, Any],
) -> None:
    gpu_workers = [
        (name, service)
        for name, service in config["services"].items()
        if any(
            device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", [])
            for device in (
                service.get("deploy", {})
                .get("resources", {})
                .get("reservations", {})
                .get("devices", [])
            )
        )
    ]

    assert [name for name, _ in gpu_workers] == ["worker-gpu"]
    worker = gpu_workers[0][1]
    assert worker["profiles"] == ["gpu"]
    assert worker["environment"]["EMBEDDING_DEVICE"] == "cuda"
    assert re.search(r"/whl/cu\d+", worker["build"]["args"]["TORCH_INDEX_URL"])
    assert config["services"]["worker-cpu"]["profiles"] == ["cpu"]
    assert config["services"]["worker-cpu"]["environment"]["EMBEDDING_DEVICE"] == "cpu"


def test_media_and_model_cache_live_on_named_volumes(config: dict[str, Any]) -> None:
    named = set(config["volumes"])
    for name in ("web", *WORKERS):
        service = config["services"][name]
        env, mounted = service["environment"], mounts(service)
        assert env["MEDIA_ROOT"] == "/data/media", name
        assert mounted["/data/media"] in named, name
        assert env["HF_HOME"].startswith("/models/"), name
        assert mounted["/models"] in named, name
    # The three kinds of data do not share a volume.
    web_mounts = mounts(config["services"]["web"])
    postgres_mounts = mounts(config["services"]["postgres"])
    volumes = {
        web_mounts["/data/media"],
        web_mounts["/models"],
        postgres_mounts["/var/lib/postgresql/data"],
    }
    assert len(volumes) == 3


def test_env_example_documents_every_setting() -> None:
    read = settings_env_vars()
    documented = set(DOCUMENTED_VAR.findall(ENV_EXAMPLE.read_text()))

    # Guards the regex itself: these are certainly read by the settings.
    assert {"SECRET_KEY", "DATABASE_URL", "ALLOWED_HOSTS", "EMBEDDING_MODELS"} <= read
    assert not read - documented, f".env.example lacks {sorted(read - documented)}"


def test_env_example_documents_launcher_and_compose_variables() -> None:
    documented = set(DOCUMENTED_VAR.findall(ENV_EXAMPLE.read_text()))
    compose_vars = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE_FILE.read_text()))

    assert {"HOST", "PORT", "WEB_WORKERS", "DATA_DIR"} <= documented
    assert not compose_vars - documented, f".env.example lacks {sorted(compose_vars - documented)}"


def test_dockerfile_installs_the_pinned_torch_from_a_chosen_index() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    pin = re.search(r"^torch==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)

    assert re.search(r"^FROM python:3\.11-slim-bookworm", dockerfile, re.MULTILINE)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
    torch_install = dockerfile.index(f'--index-url "${{TORCH_INDEX_URL}}" torch=={pin.group(1)}')
    assert torch_install < dockerfile.index("pip install -r requirements.txt")
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.MULTILINE)
    assert "collectstatic" in dockerfile


@pytest.fixture(scope="module")
def replicas_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file with the ``replicas`` profile on and the web pointed at its services,
    as the README's *Read replicas* tells an operator to set .env."""
    env = {
        **SECRETS,
        "WEB_DATABASE_HOST": "pgbouncer",
        "WEB_DATABASE_PORT": "6432",
        "DATABASE_PGBOUNCER": "transaction",
        "DATABASE_REPLICA_URLS": "postgresql://imagesearch:app-pw@postgres-replica:5432/imagesearch",
    }
    result = compose(
        tmp_path_factory.mktemp("compose-replicas"), "--profile", "replicas", "config", env=env
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_replicas_profile_runs_a_streaming_standby_of_the_postgres_service(
    replicas_config: dict[str, Any], config: dict[str, Any]
) -> None:
    services = replicas_config["services"]
    replica, primary = services["postgres-replica"], services["postgres"]

    assert replica["profiles"] == ["replicas"]
    assert replica["image"] == primary["image"]
    assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert replica["environment"]["PRIMARY_HOST"] == "postgres"
    # The superuser streams WAL and makes the slot; the app's role has no REPLICATION.
    assert replica["environment"]["PGPASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    assert replica["environment"]["PGUSER"] == primary["environment"]["POSTGRES_USER"]
    assert "pg_isready" in healthcheck_text(replica)
    # Its own volume: a standby never shares the primary's data directory.
    data = mounts(replica)["/var/lib/postgresql/data"]
    assert data in replicas_config["volumes"]
    assert data != mounts(primary)["/var/lib/postgresql/data"]
    # The entrypoint mounted is the script in the repository, and it clones with -R.
    entrypoint = " ".join(replica["entrypoint"])
    script = next(
        source for target, source in mounts(replica).items() if target in entrypoint.split()
    )
    text = (ROOT / "deploy" / "postgres" / Path(script).name).read_text()
    assert "pg_basebackup" in text and " -R " in text and "docker-entrypoint.sh" in text
    # The primary's fresh volume allows replication connections from the compose network.
    init_scripts = [
        (ROOT / "deploy" / "postgres" / Path(source).name).read_text()
        for target, source in mounts(primary).items()
        if target.startswith("/docker-entrypoint-initdb.d/")
    ]
    assert any("host replication" in text for text in init_scripts)
    # Off by default (the profile above): nothing plain `up` starts waits for it.
    for service in config["services"].values():
        assert "postgres-replica" not in service.get("depends_on", {})


def test_replicas_profile_puts_only_the_web_behind_pgbouncer_in_transaction_mode(
    replicas_config: dict[str, Any], config: dict[str, Any]
) -> None:
    services = replicas_config["services"]
    pgbouncer = services["pgbouncer"]

    assert pgbouncer["profiles"] == ["replicas"]
    assert pgbouncer["environment"]["POOL_MODE"] == "transaction"
    assert str(pgbouncer["environment"]["LISTEN_PORT"]) == "6432"
    assert "@postgres:5432/" in pgbouncer["environment"]["DATABASE_URL"]
    web = services["web"]["environment"]
    # The pool and the web log in as the app's role, as every app service does.
    app_login = urlsplit(services["migrate"]["environment"]["DATABASE_URL"]).netloc.split("@")[0]
    assert urlsplit(pgbouncer["environment"]["DATABASE_URL"]).netloc.split("@")[0] == app_login
    assert urlsplit(web["DATABASE_URL"]).netloc.split("@")[0] == app_login
    assert "@pgbouncer:6432/" in web["DATABASE_URL"]
    assert web["DATABASE_PGBOUNCER"] == "transaction"
    assert web["DATABASE_REPLICA_URLS"].endswith("@postgres-replica:5432/imagesearch")
    # Advisory locks and CREATE INDEX CONCURRENTLY need a session: never through the pooler.
    for name in ("migrate", "worker-cpu", "worker-gpu", "beat"):
        assert "@postgres:5432/" in services[name]["environment"]["DATABASE_URL"], name
    # By default the web's URL is everyone's.
    default = config["services"]
    assert (
        default["web"]["environment"]["DATABASE_URL"]
        == (default["migrate"]["environment"]["DATABASE_URL"])
    )
