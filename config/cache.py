"""The site's cache: Django's Redis cache, failing open while Redis is unreachable.

It holds the rate-limit counters (django-ratelimit), which every web process must share.
Losing Redis must not take sign-up or image search down with it: while the cache is
unreachable the counters read as absent (django-ratelimit with RATELIMIT_FAIL_OPEN then lets
requests through), and a warning says so once a minute.
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
    """RedisCache whose reads and counter updates survive an unreachable server."""

    _last_warning = 0.0

    def _unavailable(self, error: RedisError) -> None:
        now = time.monotonic()
        if now - FailOpenRedisCache._last_warning >= _WARN_EVERY_SECONDS:
            FailOpenRedisCache._last_warning = now
            logger.warning("cache unavailable, rate limits are not enforced: %s", error)

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

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        try:
            return super().incr(key, delta, version)
        except RedisError as error:
            self._unavailable(error)
            # What a missing key raises: django-ratelimit reads it as "no count".
            raise ValueError(f"cache unavailable: {error}") from error
