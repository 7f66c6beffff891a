"""Whole-site error responses: a short page for people, JSON ``{"error": ...}`` for the API.

Rendered without a request context on purpose: context processors read the session and the
user, which needs the database, and these pages must work while it is down.
"""

from __future__ import annotations

import logging
import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)

DATABASE_ERRORS = (OperationalError, InterfaceError)
DATABASE_DOWN = (
    "The database is not reachable right now. Nothing you stored is lost; the site works "
    "again as soon as it is back. Please try again in a minute."
)
RETRY_AFTER_SECONDS = 30


def error_response(request: HttpRequest, status: int, title: str, message: str) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"error": message}, status=status)
    html = render_to_string("error.html", {"title": title, "message": message})
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
    return error_response(request, 400, "Bad request", "The request could not be understood.")


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    return error_response(
        request, 403, "Forbidden", "You are not allowed to do this (or your session expired)."
    )
