"""Whole numbers from request parameters (query strings, form fields, admin filters).

``str.isdigit()`` is true for "①" and "²", which ``int()`` refuses, and ``int()`` of 5,000
digits raises too: every such parameter goes through ``int_param``, which reads only ASCII
digits of a bounded length and refuses the rest with a message the person can act on.
"""

from __future__ import annotations

import re

from kernel.errors import InvalidInput

_ASCII_INT = re.compile(r"[0-9]{1,18}")  # up to 18 digits always fits a 64-bit integer


def int_param(raw: str, *, name: str, low: int, high: int) -> int:
    """``raw`` (ASCII digits, no sign) as an integer within [low, high] (``low`` >= 0), or
    ``InvalidInput`` naming ``name``."""
    text = raw.strip()
    if not _ASCII_INT.fullmatch(text) or not low <= int(text) <= high:
        raise InvalidInput(f"{name} must be a whole number between {low} and {high}")
    return int(text)
