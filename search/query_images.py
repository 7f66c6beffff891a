"""Query images behind shareable search-by-image URLs.

A search by image is a POST (the file), but its results must have a URL people can reload,
share and come back to. The POST keeps the query's embedding (and a small preview for the
page) in the cache under a random key for QUERY_IMAGE_TTL and redirects to a GET carrying the
key; the image itself is never stored.
"""

from __future__ import annotations

import base64
import io
import secrets
from dataclasses import dataclass

from django.core.cache import cache
from PIL import Image as PILImage

QUERY_IMAGE_TTL = 60 * 60 * 24  # a day: long enough to share a link, short enough to forget
PREVIEW_SIZE = 160
_PREFIX = "query-image:"


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
    cache.set(_PREFIX + query.key, entry, QUERY_IMAGE_TTL)
    # The site's cache fails open (Redis down answers nothing): check it really kept it.
    return query if cache.get(_PREFIX + query.key) is not None else None


def query_image_recall(*, key: str) -> QueryImage | None:
    """The query image kept under ``key``, or None once it has expired (or never existed)."""
    if not key or len(key) > 64:
        return None
    entry = cache.get(_PREFIX + key)
    if not isinstance(entry, dict):
        return None
    return QueryImage(
        key=key, model_id=entry["model_id"], vector=entry["vector"], preview=entry["preview"]
    )
