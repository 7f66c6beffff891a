"""Test settings: the base with its own embedded Redis and fast password hashing."""

import os
from pathlib import Path

from config.devserver import embedded
from config.settings.base import *  # noqa: F403
from config.settings.base import CACHES as BASE_CACHES
from config.settings.base import (
    DATA_DIR,
    DATABASE_PGBOUNCER,
    DATABASE_URL,
    cache_url_from_broker,
    caches_for,
    database_from_url,
    image_storages,
)

if not DATABASE_URL:
    # The tests' own database lives on the embedded server (pytest-django adds "test_").
    DATABASES = {"default": database_from_url(embedded.postgres_start(DATA_DIR))}
# No replicas from the environment: the test runner would try to create its database on a
# read-only standby. The replica tests start their own standby and add it for their duration.
DATABASES = {"default": DATABASES["default"]}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
TEST_DATA_DIR = DATA_DIR / "test"
# tests/conftest.py starts this Redis for the session unless a broker URL is given.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or embedded.socket_url(
    embedded.redis_socket(TEST_DATA_DIR)
)
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
# Worker processes started by the tests get the test's media folder through the environment.
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT") or TEST_DATA_DIR / "media")
EMBEDDING_DEVICE = "cpu"
# Tests compare query vectors with stored ones exactly; the int8 default ("auto") has its own
# tests (tests/search/test_query_precision.py), which set it.
SEARCH_QUERY_DTYPE = os.environ.get("SEARCH_QUERY_DTYPE") or "float32"
STORAGES = {
    **image_storages(),
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# The same cache ./run builds: Redis over the broker's socket, database 1 (a LocMemCache here
# once hid a sign-up 500 that every ./run user met). tests/conftest.py starts that Redis for
# the session and empties the cache before each test, so rate-limit counts never carry over.
CACHE_URL = os.environ.get("CACHE_URL") or cache_url_from_broker(CELERY_BROKER_URL)
CACHES = caches_for(CACHE_URL)
CACHES["query_images"] = BASE_CACHES["query_images"]  # the same PostgreSQL table as everywhere
# Tests never run collectstatic: serve static files from the apps' folders.
WHITENOISE_AUTOREFRESH = True
WHITENOISE_USE_FINDERS = True
# Mail stays in django.core.mail.outbox even with EMAIL_HOST in the environment (pytest-django
# sets this only inside its test environment; the live server's thread shares the outbox).
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
# A statement that runs away (seen twice in full runs on a loaded box: an HNSW iterative scan in
# tests/search/test_search.py ran for over 20 minutes) fails its test after 5 minutes instead
# of holding the whole run until CI's limit. Not through PgBouncer, which refuses start-up
# options (a test that runs through one, tests/config/test_pgbouncer.py, has its own limit).
DATABASES["default"].setdefault("OPTIONS", {})
if not DATABASE_PGBOUNCER:
    DATABASES["default"]["OPTIONS"]["options"] = (
        DATABASES["default"]["OPTIONS"].get("options", "") + " -c statement_timeout=300000"
    ).strip()
