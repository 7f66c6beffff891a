"""Errors the application raises for its users, each kind with the HTTP status it maps to.

Services and selectors raise these with a message written for the person who sent the
request; the API (``search.api``) and the pages (``search.views``, ``gallery.views``) turn them
into a response in one place each. Nothing here imports Django: gallery, search and any
Django-free code can raise them, and the module sits in the kernel rather than in one app
because every app raises them, the lowest (gallery) included.
"""

from __future__ import annotations


class ApplicationError(Exception):
    """A request the application refuses or cannot serve, with a message for the user."""

    status: int = 400

    @property
    def message(self) -> str:
        return str(self)


class InvalidInput(ApplicationError):
    """The request itself is wrong (a bad parameter, an unreadable file): fix it and resend."""

    status = 400


class NotAuthenticated(InvalidInput):
    """The request needs a signed-in user (or an API token) and has none."""

    status = 401


class TooLarge(InvalidInput):
    """The request carries more bytes than the site accepts."""

    status = 413


class NotFound(ApplicationError):
    """Nothing by that id that this user may see; never says whether it exists for others."""

    status = 404


class Conflict(ApplicationError):
    """The request is valid, but the state of things does not allow it yet (or any more)."""

    status = 409


class TooManyRequests(ApplicationError):
    """More of this kind of request at once (or in a while) than the site serves; retry later."""

    status = 429


class Unavailable(ApplicationError):
    """A part of the site this request needs is not available now (e.g. a model's weights)."""

    status = 503
