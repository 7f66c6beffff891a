"""Query images behind shareable search-by-image URLs.

A search by image is a POST (the file), but its results must have a URL people can reload,
share and come back to. The POST keeps the query's embedding (and a small preview for the
page) under a random key for QUERY_IMAGE_TTL and redirects to a GET carrying the key; the
image itself is never stored.

The store is ``caches["query_images"]``, a table in PostgreSQL with a bound on its entries
(QUERY_IMAGE_MAX_ENTRIES; settings say why not Redis). It keeps the preview as well as the
vector because the results page shows what was searched with; keeping only the vector would
save the preview's part of an entry (a 160 px JPEG, up to ~6 KB of its ~15 KB as stored) and
lose that. A store that cannot be reached or written costs only the shareable URL: the results
are shown all the same.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

from django.core.cache import caches
from django.db import DatabaseError, transaction
from PIL import Image as PILImage

logger = logging.getLogger(__name__)

QUERY_IMAGE_TTL = 60 * 60 * 24  # a day: long enough to share a link, short enough to forget
STORE = "query_images"  # the alias in settings.CACHES
PREVIEW_SIZE = 160
_PREFIX = "query-image:"
_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")  # secrets.token_urlsafe's alphabet


@dataclass(frozen=True)
class QueryImage:
    key: str
    model_id: str
    vector: list[float]
    preview: str  # a data: URL of a small JPEG, for the results page


def query_image_remember(
    *, model_id: str, vector: list[float], picture: PILImage.Image
) -> QueryImage | None:
    """Keep a query image's embedding under a new key; None if the cache would not keep it
    (then the caller shows the results without a shareable URL)."""
    small = picture.convert("RGB")
    small.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=75)
    preview = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    query = QueryImage(
        key=secrets.token_urlsafe(12),
        model_id=model_id,
        vector=[float(x) for x in vector],
        preview=preview,
    )
    entry = {"model_id": model_id, "vector": query.vector, "preview": preview}
    try:
        # A savepoint: a failed write must not break the request's transaction.
        with transaction.atomic():
            caches[STORE].set(_PREFIX + query.key, entry, QUERY_IMAGE_TTL)
    except DatabaseError as error:
        logger.warning("query image not kept (no shareable URL for this search): %s", error)
        return None
    return query


def query_image_recall(*, key: str) -> QueryImage | None:
    """The query image kept under ``key``, or None once it has expired (or never existed)."""
    if not _KEY.fullmatch(key):  # never one we made (a NUL would reach PostgreSQL)
        return None
    entry: Any = None
    try:
        with transaction.atomic():
            entry = caches[STORE].get(_PREFIX + key)
    except DatabaseError as error:
        logger.warning("query image store unavailable: %s", error)
    if not isinstance(entry, dict):
        return None
    return QueryImage(
        key=key, model_id=entry["model_id"], vector=entry["vector"], preview=entry["preview"]
    )
