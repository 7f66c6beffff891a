"""Values a process keeps for a while instead of reading them on every request."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

_Value = TypeVar("_Value")


class KeptAWhile(Generic[_Value]):
    """Per key, the value ``read()`` gave, read again once it is older than ``max_age``
    seconds. Per process and unlocked: two threads may both read a stale value, and the
    later one is kept."""

    def __init__(self) -> None:
        self._kept: dict[Hashable, tuple[float, _Value]] = {}

    def get(self, key: Hashable, *, max_age: float, read: Callable[[], _Value]) -> _Value:
        # max_age is given per call, so a setting (or a test) changing it takes effect at once.
        now = time.monotonic()
        kept = self._kept.get(key)
        if kept is None or now - kept[0] > max_age:
            kept = (now, read())
            self._kept[key] = kept
        return kept[1]

    def forget(self) -> None:
        self._kept.clear()
