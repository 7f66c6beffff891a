"""Whole-site error responses: a short page for people, JSON ``{"error": ...}`` for the API.

Rendered without a request context on purpose: context processors read the session and the
user, which needs the database, and these pages must work while it is down.
"""

from __future__ import annotations

import logging
import sys

from django.conf import settings
from django.core.exceptions import TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import reverse

from kernel.db_routing import DATABASE_ERRORS, replica_aliases, replica_state

logger = logging.getLogger(__name__)

DATABASE_DOWN = (
    "The database is not reachable right now. Nothing you stored is lost; the site works "
    "again as soon as it is back. Please try again in a minute."
)
RETRY_AFTER_SECONDS = 30
LOOPBACK = {"127.0.0.1", "::1"}
# Rate-limit windows are a minute or an hour: a minute is an honest first wait.
RATE_LIMIT_RETRY_AFTER_SECONDS = 60


def error_response(
    request: HttpRequest,
    status: int,
    title: str,
    message: str,
    *,
    next_step: tuple[str, str] | None = None,
) -> HttpResponse:
    """``next_step`` is (URL, link text): what a person can do about it, linked on the page."""
    # The pages' own scripts (one upload per request) ask for JSON to show the reason in place.
    if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"error": message}, status=status)
    context = {"title": title, "message": message, "next_step": next_step}
    html = render_to_string("error.html", context)
    return HttpResponse(html, status=status)


def database_unavailable(request: HttpRequest, error: Exception) -> HttpResponse:
    # One line, no traceback: the launcher's log already says the database went away.
    logger.warning("database unavailable (%s): %s", request.path, str(error).splitlines()[0])
    response = error_response(request, 503, "Temporarily unavailable", DATABASE_DOWN)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500; an unreachable database raised outside a view is still a 503."""
    error = sys.exc_info()[1]
    if isinstance(error, DATABASE_ERRORS):
        return database_unavailable(request, error)
    return error_response(
        request, 500, "Something went wrong", "The server failed to answer this request."
    )


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return error_response(request, 404, "Not found", "There is nothing at this address.")


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    # Django's own request limits end here, raised while it reads the body: say which one, since
    # the person can act on it (send fewer files), and that nothing of the request was kept.
    if isinstance(exception, TooManyFilesSent):
        message = (
            f"At most {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files can be sent at once. "
            "Nothing was stored: choose fewer files and send them again."
        )
        return error_response(
            request, 400, "Too many files", message, next_step=(request.path, "Go back")
        )
    if isinstance(exception, TooManyFieldsSent):
        message = "The form sent more fields than the site accepts. Nothing was stored."
        return error_response(request, 400, "Too many fields", message)
    if isinstance(exception, MultiPartParserError):
        # Django reads at most 1 KB of each part's headers: a file name of about 900
        # characters or more is the usual way to pass it.
        if "header size" in str(exception):
            message = (
                "A file's name is too long to be sent (keep it under a few hundred "
                "characters). Nothing was stored: rename the file and send it again."
            )
        else:
            message = "The upload could not be read (it arrived broken); please send it again."
        return error_response(
            request, 400, "Upload not readable", message, next_step=(request.path, "Go back")
        )
    return error_response(request, 400, "Bad request", "The request could not be understood.")


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    return error_response(
        request, 403, "Forbidden", "You are not allowed to do this (or your session expired)."
    )


def rate_limited(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """RATELIMIT_VIEW: a django-ratelimit limit was reached (sign-up, tokens, image search)."""
    response = error_response(
        request,
        429,
        "Too many requests",
        "Too many requests of this kind from you in a short time. Please wait and try again.",
    )
    response["Retry-After"] = str(RATE_LIMIT_RETRY_AFTER_SECONDS)
    return response


def signin_locked_out(
    request: HttpRequest,
    response: HttpResponse | None = None,
    credentials: dict[str, object] | None = None,
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: too many wrong passwords for this username from this address."""
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    locked = error_response(
        request,
        429,
        "Too many sign-in attempts",
        f"Too many wrong passwords for this account from your address. Signing in is blocked "
        f"for {minutes} minutes; then try again, or reset your password now (a link is sent to "
        "your account's e-mail address).",
        next_step=(reverse("password_reset"), "Reset your password"),
    )
    locked["Retry-After"] = str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    return locked


def client_address(request: HttpRequest) -> str | None:
    """AXES_CLIENT_IP_CALLABLE: the client's address as django-ratelimit reads it, so that the
    sign-in lock-out and the rate limits agree behind a proxy (RATELIMIT_IP_META_KEY)."""
    return request.META.get(settings.RATELIMIT_IP_META_KEY or "REMOTE_ADDR")


def process_checks() -> dict[str, str]:
    """What this process cannot reach, of the database and the cache: part -> reason (empty
    when both answer). Shared by ``/health/`` and the fuller ``/healthz``."""
    from django.core.cache import cache
    from django.db import connection

    failed: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DATABASE_ERRORS as exc:
        failed["database"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    ping = getattr(cache, "ping", None)
    if ping is not None:
        try:
            ping()
        except Exception as exc:  # noqa: BLE001 - any failure to reach the cache is the answer
            failed["cache"] = f"{type(exc).__name__}: {exc}"
    return failed


def health(request: HttpRequest) -> JsonResponse:
    """``/health/``: 200 when this process reaches the database and the cache, else 503 naming
    what failed. The launcher waits for it before saying "ready", and probes use it: a
    listening port alone said nothing about a worker still loading models or a bad cache URL.
    """
    failed = process_checks()
    status = 503 if failed else 200
    body: dict[str, object] = {
        "database": "ok" if "database" not in failed else "unavailable",
        "cache": "ok" if "cache" not in failed else "unavailable",
    }
    if failed and (settings.DEBUG or request.META.get("REMOTE_ADDR") in LOOPBACK):
        # The reasons name internal hosts and paths: only for this machine's own probes.
        body["errors"] = failed
    return JsonResponse(body, status=status, headers={"Cache-Control": "no-store"})


def replicas_status(request: HttpRequest) -> HttpResponse:
    """The admin's page of read replicas: each one's replay lag and whether reads use it,
    checked now (staff only: config.urls wraps it in the admin's sign-in check)."""
    from django.contrib import admin  # needs the app registry: not at import time

    context = {
        **admin.site.each_context(request),
        "title": "Read replicas",
        "replicas": [replica_state(alias, fresh=True) for alias in replica_aliases()],
        "max_lag": settings.DATABASE_REPLICA_MAX_LAG_SECONDS,
        "pin_seconds": settings.DATABASE_READ_YOUR_WRITES_SECONDS,
    }
    return TemplateResponse(request, "admin/replicas.html", context)
