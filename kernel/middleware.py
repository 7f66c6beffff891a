"""Middleware of the whole site."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack

from django.conf import settings
from django.core.signals import request_finished
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.utils.cache import add_never_cache_headers, patch_vary_headers

from kernel import log_format
from kernel.database_watchdog import watchdog
from kernel.db_routing import SAFE_METHODS, primary_pinned, replica_aliases
from kernel.views import DATABASE_ERRORS, database_unavailable, error_response

# Room for the multipart framing and the other form fields around one image.
REQUEST_BODY_SLACK_BYTES = 64 * 1024


def request_body_max_bytes() -> int:
    """The largest request body the site reads: one image of UPLOAD_MAX_BYTES and its form."""
    return settings.UPLOAD_MAX_BYTES + REQUEST_BODY_SLACK_BYTES


class RequestBodyLimitMiddleware:
    """Refuse a request whose declared body is larger than any the site accepts, before anything
    reads it: 413 (JSON under /api/, a short page elsewhere).

    Gunicorn has no body limit and Django's DATA_UPLOAD_MAX_MEMORY_SIZE leaves multipart files
    out (they spool to disk), so without this a 200 MB body is read in full. First in MIDDLEWARE
    because the CSRF middleware reads POST bodies. A body without Content-Length (chunked) is
    not read at all: Django's WSGI request reads at most Content-Length bytes.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        declared = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            return error_response(
                request, 400, "Bad request", "The Content-Length header is not a byte count."
            )
        if length > request_body_max_bytes():
            return error_response(
                request,
                413,
                "Too large",
                f"The request body is {length / 1e6:.1f} MB; the limit is "
                f"{settings.UPLOAD_MAX_BYTES / 1e6:.0f} MB per image. Choosing several files "
                "without JavaScript sends them in one request: send fewer or smaller ones.",
            )
        return self.get_response(request)


class DatabaseStallMiddleware:
    """A database that stops answering on a connection already open answers 503 after
    DATABASE_STALL_SECONDS (plus a quarter second) rather than never (``kernel.database_watchdog``
    cuts the connection; DatabaseUnavailableMiddleware turns the error into the 503). New
    connections are bounded by DATABASE_CONNECT_TIMEOUT instead; so the worst case, a kept
    connection whose health check is cut and whose replacement cannot connect, is the sum of
    the two (10 + 0.25 + 5 s by default).

    Outermost but for the body limit, so the session, authentication and rate-limit queries are
    watched as well as the view's. Web requests only: workers and management commands run long
    statements on purpose.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        stall_seconds = settings.DATABASE_STALL_SECONDS
        if not stall_seconds:
            return self.get_response(request)
        # The read replicas' connections too: one that freezes is cut like the primary's, and
        # kernel.db_routing.reads_from_replica then answers from the primary.
        with ExitStack() as stack:
            for alias in ["default", *replica_aliases()]:
                stack.enter_context(
                    watchdog.watching(connections[alias], stall_seconds=stall_seconds)
                )
            return self.get_response(request)


# The cookie that pins a browser's reads to the primary after it wrote: the time (Unix seconds)
# until which it holds. A cookie rather than the session, so that it costs no database query,
# holds across web processes and covers people who are not signed in.
READ_YOUR_WRITES_COOKIE = "primary_reads_until"


class ReadYourWritesMiddleware:
    """A person sees their own writes at once, even on pages that read from a replica.

    A write request (any method but GET, HEAD, OPTIONS) runs on the primary, and its response
    sets a cookie that keeps the same browser's reads on the primary for
    DATABASE_READ_YOUR_WRITES_SECONDS: longer than a usable replica may lag
    (DATABASE_REPLICA_MAX_LAG_SECONDS plus DATABASE_REPLICA_CHECK_SECONDS), the replicas have
    then replayed the write. Does nothing without replicas.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        seconds = settings.DATABASE_READ_YOUR_WRITES_SECONDS
        if not seconds or not replica_aliases():
            return self.get_response(request)
        writes = request.method not in SAFE_METHODS
        with primary_pinned(writes or self._pinned(request, seconds)):
            response = self.get_response(request)
        if writes:
            response.set_cookie(
                READ_YOUR_WRITES_COOKIE,
                f"{time.time() + seconds:.0f}",
                max_age=int(seconds) + 1,
                secure=request.is_secure(),
                httponly=True,
                samesite="Lax",
            )
        return response

    @staticmethod
    def _pinned(request: HttpRequest, seconds: float) -> bool:
        try:
            until = float(request.COOKIES.get(READ_YOUR_WRITES_COOKIE, ""))
        except ValueError:
            return False
        now = time.time()
        # A cookie from the future (a clock change, a forged value) pins no longer than one write.
        return now < until <= now + seconds + 1


class DatabaseUnavailableMiddleware:
    """A view that cannot reach the database answers 503 (page or JSON), never a traceback.

    Runs in development too (DEBUG would show Django's debug page); errors raised outside views
    (the session middleware saving) reach ``kernel.views.server_error`` instead. Connections
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


class PrivatePagesNotStoredMiddleware:
    """A response made for a signed-in person is stored by no cache: not a shared proxy's, and
    not the browser's either, so Back after deleting an image asks the server again (a 404)
    instead of showing the deleted page with a live Delete button.

    Responses that chose their own caching (thumbnails and files: ``private, max-age``) keep
    it. Sits after the authentication middleware, which sets ``request.user``.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated and not response.has_header("Cache-Control"):
            add_never_cache_headers(response)
            patch_vary_headers(response, ["Cookie"])
        return response


class RequestIdMiddleware:
    """Gives each request an id (the proxy's X-Request-ID when it looks like one, else a new
    one), which every log line written for it carries (kernel.log_format) and the response
    echoes, so a person reporting a problem can quote it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        request_finished.connect(log_format.request_id_clear, dispatch_uid="kernel.request_id")

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = log_format.request_id_accept(
            request.headers.get(log_format.REQUEST_ID_HEADER, "")
        )
        log_format.request_id_bind(request_id)
        response = self.get_response(request)
        response[log_format.REQUEST_ID_HEADER] = request_id
        return response
