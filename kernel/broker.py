"""What talking to the Celery broker can raise. Apps send tasks through ``celery.current_app``
(the project's app, which ``config.celery`` makes the default for every thread), so they import
neither ``config`` nor each other's tasks."""

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

# What sending a task raises when the broker cannot be reached.
BROKER_ERRORS = (KombuOperationalError, RedisConnectionError, ConnectionError, OSError)
