"""Development and ./run settings: the base, with the embedded PostgreSQL when no URL is set.

The default settings module of manage.py, the WSGI app and the Celery app. ``./run`` starts the
embedded servers itself and passes their URLs in; a bare ``python manage.py`` attaches to (or
starts) the embedded PostgreSQL in ``DATA_DIR`` so it works with no set-up at all.
"""

from config.devserver import embedded
from config.settings.base import *  # noqa: F403
from config.settings.base import DATA_DIR, DATABASE_REPLICAS, DATABASE_URL, database_from_url

if not DATABASE_URL:
    DATABASES = {
        "default": database_from_url(embedded.postgres_start(DATA_DIR)),
        **DATABASE_REPLICAS,
    }
