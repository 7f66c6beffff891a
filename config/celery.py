"""The Celery application; tasks live in each app's ``tasks.py``."""

import os

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

app = Celery("imagesearch")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# What sending a task raises when the broker cannot be reached.
BROKER_ERRORS = (KombuOperationalError, RedisConnectionError, ConnectionError, OSError)
