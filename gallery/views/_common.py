"""Helpers the page views share."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.http import Http404, HttpRequest
from django.utils.http import url_has_allowed_host_and_scheme

from gallery.models import Collection, Image
from gallery.selectors import (
    collections_of,
    image_viewable_by,
)

# One message for an image that does not exist and for one this user may not see, so that
# the answer never tells whether someone else's private image exists.
NO_SUCH_IMAGE = "No such image."


class AuthenticatedHttpRequest(HttpRequest):
    """The request a ``login_required`` view receives: its ``user`` is signed in, never the
    AnonymousUser, which lets such views hand ``request.user`` to services that take a User.
    Only ever an annotation; Django builds the real request."""

    user: User


def visible_image(request: HttpRequest, image_id: int) -> Image:
    image = Image.objects.filter(pk=image_id).first()
    # 404, not 403: someone else's private image must not even be known to exist.
    if image is None or not image_viewable_by(image=image, user=request.user):
        raise Http404(NO_SUCH_IMAGE)
    return image


def safe_next(request: HttpRequest) -> str | None:
    target = request.POST.get("next", "")
    allowed = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if target and allowed else None


def selection_collections(request: HttpRequest) -> list[Collection]:
    """The signed-in user's collections, for the selection bar's "save to" menu."""
    return list(collections_of(user=request.user)) if request.user.is_authenticated else []
