"""Who is asking the JSON API: a personal API token, a signed-in browser session, or no one.

django-ninja auth classes; the API (``search.api``) lists them in the order it tries them.
Credentials that are present but wrong are a 401 (``NotAuthenticated``), never a silent
fall-back to anonymous results.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security import APIKeyCookie, APIKeyHeader, HttpBearer

from gallery.selectors import api_token_find
from gallery.services.accounts import api_token_mark_used
from kernel.errors import NotAuthenticated


def _token_user(request: HttpRequest, raw: str) -> User:
    token = api_token_find(raw=raw.strip())
    if token is None:
        raise NotAuthenticated("invalid API token")
    api_token_mark_used(token=token)
    request.user = token.user
    return token.user


class TokenBearer(HttpBearer):
    """``Authorization: Bearer <token>`` with a personal API token."""

    def __call__(self, request: HttpRequest) -> Any:
        value = request.headers.get(self.header)
        if value is None:
            return None
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated(
                "unsupported Authorization header; send 'Authorization: Bearer <API token>'"
            )
        return self.authenticate(request, token)

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        return _token_user(request, token)


class TokenHeader(APIKeyHeader):
    """``X-API-Token: <token>`` with a personal API token."""

    param_name = "X-API-Token"

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        if key is None:
            return None
        if not key.strip():
            raise NotAuthenticated("the X-API-Token header is empty")
        return _token_user(request, key)


class SignedInSession(APIKeyCookie):
    """A signed-in browser session (Django's session cookie), CSRF-checked on unsafe methods.

    Only a request whose session is signed in is checked: the CSRF check protects the cookie
    credentials a browser attaches by itself, and a token or anonymous client has none. (Ninja's
    own session auth checks every request and so refused every anonymous or token POST.)
    """

    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request: HttpRequest) -> str | None:
        if not request.user.is_authenticated:
            return None
        try:
            return super()._get_key(request)
        except HttpError as exc:
            raise HttpError(
                403,
                "CSRF check failed: a signed-in browser session must send the csrftoken "
                "cookie's value in the X-CSRFToken header (API clients: use an API token)",
            ) from exc

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        return request.user if request.user.is_authenticated else None


class Anonymous:
    """Lets a request through without credentials; it then sees public images only."""

    def __call__(self, request: HttpRequest) -> bool:
        return True
