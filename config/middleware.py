"""Middleware of the whole site."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from config.views import DATABASE_ERRORS, database_unavailable


class DatabaseUnavailableMiddleware:
    """A view that cannot reach the database answers 503 (page or JSON), never a traceback.

    Runs in development too (DEBUG would show Django's debug page); errors raised outside views
    (the session middleware saving) reach ``config.views.server_error`` instead. Connections
    are health-checked (CONN_HEALTH_CHECKS), so the first request after the database is back
    reconnects and succeeds.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, DATABASE_ERRORS):
            return database_unavailable(request, exception)
        return None
