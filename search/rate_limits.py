"""Rate limits the search pages and the API share: one counter for each, whichever asks."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest
from django_ratelimit.core import is_ratelimited
from django_ratelimit.exceptions import Ratelimited


def _anonymous_image_search_rate(group: str, request: HttpRequest) -> str | None:
    # Signed-in users and token clients are accountable and bounded per process already
    # (search.selectors caps concurrent image queries); anonymous ones are limited per address.
    return None if request.user.is_authenticated else settings.RATELIMIT_ANONYMOUS_IMAGE_SEARCH


def image_search_rate_check(request: HttpRequest) -> None:
    """Count an image search; raise ``Ratelimited`` (429 on pages and API) over the limit.

    One counter for the page and the API, checked before the image is decoded. Called inside
    the endpoint rather than as a decorator so that django-ninja still reads the API
    endpoint's own signature.
    """
    if is_ratelimited(
        request,
        group="image-search",
        key="ip",
        rate=_anonymous_image_search_rate,
        increment=True,
    ):
        raise Ratelimited("too many image searches from this address; try again in a minute")
