"""The API's one mapping of errors to HTTP: every error is JSON ``{"error": message}`` with its
status, whether an endpoint raised it (``ApplicationError`` kinds, ninja's own errors, rate
limits, malformed bodies) or it came before any endpoint ran (an oversized body, a method the
path does not take).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django_ratelimit.exceptions import Ratelimited
from ninja import NinjaAPI
from ninja.errors import HttpError, ValidationError

from kernel.errors import ApplicationError
from kernel.middleware import request_body_max_bytes
from kernel.views import RATE_LIMIT_RETRY_AFTER_SECONDS

logger = logging.getLogger(__name__)


def json_errors(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Refuse an oversized body before anything reads it (as the site-wide middleware does,
    for an API mounted without it), and answer ninja's plain-text 405 as JSON like every other
    API error."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _error("invalid Content-Length header", 400)
        if length > request_body_max_bytes():
            limit = settings.UPLOAD_MAX_BYTES / 1e6
            return _error(
                f"the request body is {length / 1e6:.1f} MB; the limit is {limit:.0f} MB", 413
            )
        response = view(request, *args, **kwargs)
        if response.status_code == 405 and not response.get("Content-Type", "").startswith(
            "application/json"
        ):
            allowed = response.get("Allow", "")
            error = _error(f"method {request.method} not allowed; use {allowed}", 405)
            error["Allow"] = allowed
            return error
        return response

    return wrapped


def _error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def _unauthorised(request: HttpRequest, message: str, *, api: NinjaAPI) -> HttpResponse:
    response = api.create_response(request, {"error": message}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def application_error(
    request: HttpRequest, exc: ApplicationError, *, api: NinjaAPI
) -> HttpResponse:
    if exc.status == 401:
        return _unauthorised(request, exc.message, api=api)
    return api.create_response(request, {"error": exc.message}, status=exc.status)


def http_error(request: HttpRequest, exc: HttpError, *, api: NinjaAPI) -> HttpResponse:
    if exc.status_code == 401:
        return _unauthorised(request, "invalid or missing credentials", api=api)
    return api.create_response(request, {"error": str(exc)}, status=exc.status_code)


def validation_error(request: HttpRequest, exc: ValidationError, *, api: NinjaAPI) -> HttpResponse:
    details = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'request'}: {e.get('msg')}"
        for e in exc.errors
    )
    return api.create_response(request, {"error": details, "details": exc.errors}, status=400)


def rate_limited(request: HttpRequest, exc: Ratelimited, *, api: NinjaAPI) -> HttpResponse:
    response = api.create_response(
        request, {"error": str(exc) or "too many requests; try again later"}, status=429
    )
    response["Retry-After"] = str(RATE_LIMIT_RETRY_AFTER_SECONDS)
    return response


def suspicious_request(
    request: HttpRequest, exc: SuspiciousOperation, *, api: NinjaAPI
) -> HttpResponse:
    if isinstance(exc, RequestDataTooBig):
        return api.create_response(request, {"error": "the request body is too large"}, status=413)
    return api.create_response(request, {"error": "malformed request"}, status=400)


def malformed_multipart(
    request: HttpRequest, exc: MultiPartParserError, *, api: NinjaAPI
) -> HttpResponse:
    # Django's own handler makes this a 400 for pages; the API's catch-all would make it a 500.
    message = f"the multipart/form-data body cannot be read: {exc}"
    if "boundary" in str(exc):
        message = (
            "the multipart/form-data body cannot be read: its Content-Type needs a boundary "
            "(multipart/form-data; boundary=X) that separates the parts; send the image as "
            'a file field named "image"'
        )
    return api.create_response(request, {"error": message}, status=400)


def server_error(request: HttpRequest, exc: Exception, *, api: NinjaAPI) -> HttpResponse:
    if isinstance(exc, DatabaseError):
        # The site-wide "database unavailable" handling answers these (503, and recovers).
        raise exc
    logger.exception("API error on %s %s", request.method, request.path, exc_info=exc)
    return api.create_response(request, {"error": "internal server error"}, status=500)


_HANDLERS: tuple[tuple[type[Exception], Callable[..., HttpResponse]], ...] = (
    (ApplicationError, application_error),
    (HttpError, http_error),
    (ValidationError, validation_error),
    (Ratelimited, rate_limited),
    (SuspiciousOperation, suspicious_request),
    (MultiPartParserError, malformed_multipart),
    (Exception, server_error),
)


def exception_handlers_add(api: NinjaAPI) -> None:
    """Answer every error an endpoint raises as JSON, with its HTTP status (ninja picks the
    handler of the exception's nearest class)."""
    for kind, handler in _HANDLERS:
        api.add_exception_handler(kind, functools.partial(handler, api=api))
