"""The site's cache: Django's Redis cache, failing open while Redis is unreachable.

It holds the rate-limit counters (django-ratelimit), which every web process must share.
Losing Redis must not take sign-up or image search down with it: while the cache is
unreachable, reads find nothing, writes are dropped (django-ratelimit with RATELIMIT_FAIL_OPEN
then lets requests through), and a warning says so once a minute. ``ping`` is the one call
that does not fail open: the health check and the launcher's start-up check use it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

_WARN_EVERY_SECONDS = 60.0


class FailOpenRedisCache(RedisCache):
    """RedisCache whose every call survives an unreachable server."""

    _last_warning = 0.0

    def _unavailable(self, error: RedisError) -> None:
        now = time.monotonic()
        if now - FailOpenRedisCache._last_warning >= _WARN_EVERY_SECONDS:
            FailOpenRedisCache._last_warning = now
            logger.warning("cache unavailable, rate limits are not enforced: %s", error)

    def ping(self) -> None:
        """Raise RedisError unless the server answers (never fails open)."""
        self._cache.get_client(write=True).ping()

    def add(self, key: Any, value: Any, timeout: Any = None, version: int | None = None) -> bool:
        try:
            return super().add(key, value, timeout, version)
        except RedisError as error:
            self._unavailable(error)
            return False

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        try:
            return super().get(key, default, version)
        except RedisError as error:
            self._unavailable(error)
            return default

    def set(self, key: Any, value: Any, timeout: Any = None, version: int | None = None) -> None:
        try:
            super().set(key, value, timeout, version)
        except RedisError as error:
            self._unavailable(error)

    def touch(self, key: Any, timeout: Any = None, version: int | None = None) -> bool:
        try:
            return super().touch(key, timeout, version)
        except RedisError as error:
            self._unavailable(error)
            return False

    def delete(self, key: Any, version: int | None = None) -> bool:
        try:
            return super().delete(key, version)
        except RedisError as error:
            self._unavailable(error)
            return False

    def get_many(self, keys: Any, version: int | None = None) -> dict[Any, Any]:
        try:
            return super().get_many(keys, version)
        except RedisError as error:
            self._unavailable(error)
            return {}

    def has_key(self, key: Any, version: int | None = None) -> bool:
        try:
            return super().has_key(key, version)
        except RedisError as error:
            self._unavailable(error)
            return False

    def set_many(self, data: Any, timeout: Any = None, version: int | None = None) -> list[Any]:
        try:
            return super().set_many(data, timeout, version)
        except RedisError as error:
            self._unavailable(error)
            return list(data)

    def delete_many(self, keys: Any, version: int | None = None) -> None:
        try:
            super().delete_many(keys, version)
        except RedisError as error:
            self._unavailable(error)

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        try:
            return super().incr(key, delta, version)
        except RedisError as error:
            self._unavailable(error)
            # What a missing key raises: django-ratelimit reads it as "no count".
            raise ValueError(f"cache unavailable: {error}") from error
