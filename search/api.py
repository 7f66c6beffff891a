"""The JSON API (django-ninja): text and image search, similar images, models. OpenAPI at
/api/openapi.json, interactive docs at /api/docs.

Endpoints parse their input, call one selector and render; ``search.selectors`` holds the
searches the pages run too. Every error is JSON ``{"error": message}`` with its HTTP status:
``ApplicationError`` kinds map to their status here, once.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import URLPattern, URLResolver, reverse
from django_ratelimit.exceptions import Ratelimited
from ninja import Field, File, NinjaAPI, Query, Schema
from ninja.errors import HttpError, ValidationError
from ninja.files import UploadedFile
from ninja.security import APIKeyCookie, APIKeyHeader, HttpBearer
from pydantic import field_validator

from gallery.selectors import api_token_find
from gallery.services.accounts import api_token_mark_used
from kernel.errors import ApplicationError, NotAuthenticated, NotFound
from kernel.middleware import request_body_max_bytes
from kernel.views import RATE_LIMIT_RETRY_AFTER_SECONDS
from search.selectors import (
    MAX_K,
    MAX_OFFSET,
    MAX_QUERY_CHARS,
    SEARCH_SORTS,
    SearchFilters,
    SearchPage,
    images_search_by_image,
    images_search_by_text,
    images_similar,
    search_model_choices,
)
from search.views import image_search_rate_check
from workers.selectors import embedding_model_default

logger = logging.getLogger(__name__)

# --- Who is asking ----------------------------------------------------------------------------
# Tokens first, then a signed-in browser session, then anonymous: credentials only widen what
# one sees, and credentials that are present but wrong are a 401, never a silent fall-back to
# anonymous results.


def _token_user(request: HttpRequest, raw: str):
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


AUTH: list[Callable[..., Any]] = [TokenBearer(), TokenHeader(), SignedInSession(), Anonymous()]


class SearchAPI(NinjaAPI):
    """NinjaAPI whose responses outside an endpoint (unknown method, oversized body) are JSON
    errors too, and whose schema says that the endpoints take anonymous clients."""

    def _get_urls(self) -> list[URLPattern | URLResolver]:
        urls = super()._get_urls()
        for pattern in urls:
            if isinstance(pattern, URLPattern):
                pattern.callback = _json_errors(pattern.callback)
        return urls

    def get_openapi_schema(self, *, path_prefix=None, path_params=None):
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        # Built per request: the models one may search with change as staff enable them, and
        # fused choices ("A+B") come and go as backfills finish.
        models = search_model_choices()
        for operations in schema["paths"].values():
            for operation in operations.values():
                if operation.get("security"):
                    # An empty requirement: no credentials at all is accepted as well.
                    operation["security"].append({})
                for parameter in operation.get("parameters", []):
                    if models and parameter["name"] == "model" and parameter["in"] == "query":
                        parameter["schema"] = {"type": "string", "enum": models}
        return schema


def _json_errors(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
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


api = SearchAPI(
    title="Image search API",
    version="1",
    description=(
        "Search images with natural-language text, with an image, or for images similar to one "
        "you can see. Every endpoint also answers anonymous clients, who see public images "
        "only; with a personal API token (`Authorization: Bearer <token>` or `X-API-Token`) "
        "or a signed-in session you also see your private uploads. Credentials that are "
        'present but wrong are a 401. Errors are JSON: {"error": message}.'
    ),
    urls_namespace="api",
    auth=AUTH,
)


# --- Errors: one mapping to HTTP for the whole API ------------------------------------------


def _unauthorised(request: HttpRequest, message: str) -> HttpResponse:
    response = api.create_response(request, {"error": message}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


@api.exception_handler(ApplicationError)
def application_error(request: HttpRequest, exc: ApplicationError) -> HttpResponse:
    if exc.status == 401:
        return _unauthorised(request, exc.message)
    return api.create_response(request, {"error": exc.message}, status=exc.status)


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 401:
        return _unauthorised(request, "invalid or missing credentials")
    return api.create_response(request, {"error": str(exc)}, status=exc.status_code)


@api.exception_handler(ValidationError)
def validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    details = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'request'}: {e.get('msg')}"
        for e in exc.errors
    )
    return api.create_response(request, {"error": details, "details": exc.errors}, status=400)


@api.exception_handler(Ratelimited)
def rate_limited(request: HttpRequest, exc: Ratelimited) -> HttpResponse:
    response = api.create_response(
        request, {"error": str(exc) or "too many requests; try again later"}, status=429
    )
    response["Retry-After"] = str(RATE_LIMIT_RETRY_AFTER_SECONDS)
    return response


@api.exception_handler(SuspiciousOperation)
def suspicious_request(request: HttpRequest, exc: SuspiciousOperation) -> HttpResponse:
    if isinstance(exc, RequestDataTooBig):
        return api.create_response(request, {"error": "the request body is too large"}, status=413)
    return api.create_response(request, {"error": "malformed request"}, status=400)


@api.exception_handler(MultiPartParserError)
def malformed_multipart(request: HttpRequest, exc: MultiPartParserError) -> HttpResponse:
    # Django's own handler makes this a 400 for pages; the API's catch-all would make it a 500.
    message = f"the multipart/form-data body cannot be read: {exc}"
    if "boundary" in str(exc):
        message = (
            "the multipart/form-data body cannot be read: its Content-Type needs a boundary "
            "(multipart/form-data; boundary=X) that separates the parts; send the image as "
            'a file field named "image"'
        )
    return api.create_response(request, {"error": message}, status=400)


@api.exception_handler(Exception)
def server_error(request: HttpRequest, exc: Exception) -> HttpResponse:
    if isinstance(exc, DatabaseError):
        # The site-wide "database unavailable" handling answers these (503, and recovers).
        raise exc
    logger.exception("API error on %s %s", request.method, request.path, exc_info=exc)
    return api.create_response(request, {"error": "internal server error"}, status=500)


# --- Schemas ------------------------------------------------------------------------------


class Hit(Schema):
    id: int
    score: float
    thumbnail_url: str
    image_url: str
    similar_url: str
    title: str = Field(description="The owner's title; empty when none is set.")
    description: str = Field(description="The owner's description; empty when none is set.")
    captions: list[str]
    source: str
    width: int
    height: int


class Results(Schema):
    model: str
    k: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last one.")
    exact: bool
    indexed: int | None = Field(
        description="While the model is still embedding images: how many of those you can "
        "see it has embedded (results come from these only). Null when all are."
    )
    total: int | None = Field(description="Images you can see; null when all are indexed.")
    sort: str = Field(
        "relevance",
        description='"relevance" (best first) or "date" (newest first among the relevant).',
    )
    cutoff: float | None = Field(
        None,
        description="With sort=date: the lowest score listed, 80% of the best hit's "
        "(best - 0.2 * |best|, and at least min_score); the relevant images are those at or "
        "above it among the best 500 by relevance. Null with sort=relevance.",
    )
    fusion: str | None = Field(
        None,
        description='For a fused model ("A+B"): how the models\' rankings were fused '
        '("rrf", reciprocal rank fusion); each score is then the fused score, 1 = ranked '
        "first by every model, not a cosine similarity. Null for one model.",
    )
    results: list[Hit]


class ErrorOut(Schema):
    error: str


class ModelOut(Schema):
    id: str
    default: bool


# The bounds below are declared for the schema and enforced by the selectors, whose messages
# the pages share ("k must be between 1 and 100").
_K = Field(20, json_schema_extra={"minimum": 1, "maximum": MAX_K})
_OFFSET = Field(0, json_schema_extra={"minimum": 0, "maximum": MAX_OFFSET})


class PageQuery(Schema):
    model: str | None = Field(
        None,
        description='A model id from /api/models; default: the default. "A+B" (also listed '
        "there once both models have embedded every image) fuses two models' rankings.",
    )
    k: int = _K
    offset: int = _OFFSET
    source: str | None = Field(
        None,
        description="dataset: the Flickr30k images; mine: your uploads (needs credentials).",
        json_schema_extra={"enum": ["dataset", "mine"]},
    )
    collection: int | None = Field(None, ge=1, le=2**31 - 1, description="A collection id.")
    uploaded_after: datetime | None = None
    uploaded_before: datetime | None = None
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="Cosine similarity cut.")
    sort: str = Field(
        "relevance",
        description="relevance: best match first. date: newest first among the relevant "
        "results, those scoring at least 80% of the best hit's score (see `cutoff`).",
        json_schema_extra={"enum": list(SEARCH_SORTS)},
    )

    @field_validator("uploaded_after", "uploaded_before", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        # Pydantic also reads a number ("+0.0") as Unix time; the schema promises RFC 3339.
        if isinstance(value, str) and not re.match(r"\d{4}-\d{2}-\d{2}", value.strip()):
            raise ValueError("expected an RFC 3339 date-time such as 2024-05-01T12:00:00Z")
        return value

    @field_validator("uploaded_after", "uploaded_before")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        # Any RFC 3339 offset is valid, but PostgreSQL refuses offsets beyond 15:59: compare in
        # UTC. A bound beyond what UTC can represent (year 1 at +01:00) is the same bound
        # clamped to the earliest or latest moment.
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:
            edge = datetime.min if value.year == datetime.min.year else datetime.max
            return edge.replace(tzinfo=UTC)

    def filters(self) -> SearchFilters:
        return SearchFilters(
            source=self.source,
            collection_id=self.collection,
            uploaded_after=self.uploaded_after,
            uploaded_before=self.uploaded_before,
        )

    def page_args(self) -> dict[str, Any]:
        return {
            "model_id": self.model,
            "k": self.k,
            "offset": self.offset,
            "filters": self.filters(),
            "min_score": self.min_score,
            "sort": self.sort,
        }


def _regex_class(chars: str) -> str:
    """``chars`` as the inside of a regex character class, as \\uXXXX escapes and ranges that
    ECMA-262 (JSON Schema's dialect) and Python's ``re`` read alike."""
    codes = sorted(map(ord, chars))
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(
        f"\\u{low:04x}" + (f"-\\u{high:04x}" if high > low else "") for low, high in runs
    )


# The characters the selectors trim from a query's ends (Python's ``str.strip``): a query of
# these alone is empty. Spelled out rather than ``\s``, whose meaning differs between regex
# dialects: Python's counts the separator controls U+001C-U+001F and U+0085, ECMA-262's does
# not (and counts U+FEFF, which Python does not trim).
QUERY_WHITESPACE = "".join(c for c in map(chr, range(0x110000)) if c.isspace())
QUERY_PATTERN = f"^[^\\u0000]*[^\\u0000{_regex_class(QUERY_WHITESPACE)}][^\\u0000]*$"


class TextQuery(PageQuery):
    q: str = Field(
        description=(
            "What to look for, in words. Whitespace at either end is ignored, including the "
            "separator control characters U+001C-U+001F and U+0085; a query of nothing else "
            "is empty (400), as is one with a NUL character. Other control characters are "
            "kept as part of the query."
        ),
        json_schema_extra={
            "minLength": 1,
            "maxLength": MAX_QUERY_CHARS,
            # Something besides the whitespace the API trims, and no NUL character.
            "pattern": QUERY_PATTERN,
        },
    )


ERRORS = {status: ErrorOut for status in (400, 401, 403, 404, 409, 413, 429, 500, 503)}


def _url_maker(name: str) -> Callable[[int], str]:
    """``reverse(name, args=[image_id])`` for many ids at the cost of one ``reverse``: a page
    of hits would otherwise resolve each of its three URLs once per hit."""
    marker = 2**31 - 1  # an image id no route refuses, replaced by each hit's
    prefix, _, suffix = reverse(name, args=[marker]).partition(str(marker))
    return lambda image_id: f"{prefix}{int(image_id)}{suffix}"


def _results(request: HttpRequest, page: SearchPage) -> HttpResponse:
    """A page of results as the ``Results`` schema's JSON, rendered here rather than validated
    by ninja: its validation reads every field of every hit through ORM-compatible getters,
    about 1 ms of a cached search's 8, to check a dict built field by field from that schema
    (the tests check the answers against the OpenAPI schema)."""
    thumbnail_url = _url_maker("image-thumb")
    image_url = _url_maker("image-file")
    similar_url = _url_maker("api:image_similar")
    results = {
        "model": page.model_id,
        "k": page.k,
        "offset": page.offset,
        "next_offset": page.next_offset,
        "exact": page.exact,
        "indexed": page.coverage.indexed if page.coverage else None,
        "total": page.coverage.total if page.coverage else None,
        "sort": page.sort,
        "cutoff": None if page.cutoff is None else round(page.cutoff, 5),
        "fusion": page.fusion or None,
        "results": [
            {
                "id": hit.image.pk,
                "score": round(hit.score, 5),
                "thumbnail_url": thumbnail_url(hit.image.pk),
                "image_url": image_url(hit.image.pk),
                "similar_url": similar_url(hit.image.pk),
                "title": hit.image.title,
                "description": hit.image.description,
                "captions": list(hit.captions),
                "source": hit.image.source,
                "width": hit.image.width,
                "height": hit.image.height,
            }
            for hit in page.hits
        ],
    }
    return api.create_response(request, results, status=200)


# --- Endpoints ----------------------------------------------------------------------------


@api.get("/search", response={200: Results, **ERRORS}, summary="Search images by text")
def search_text(request: HttpRequest, params: Query[TextQuery]) -> HttpResponse:
    page = images_search_by_text(user=request.user, text=params.q, **params.page_args())
    return _results(request, page)


@api.post("/search/image", response={200: Results, **ERRORS}, summary="Search by an image")
def search_image(
    request: HttpRequest, image: File[UploadedFile], params: Query[PageQuery]
) -> HttpResponse:
    """Embeds the posted image on the fly (it is not stored) and returns the nearest images.

    The image is held to the upload limits: a size in bytes (413 above it), an image format
    the site accepts, and a number of pixels. Anonymous clients may run a limited number of
    image searches a minute per address (429 above it).
    """
    image_search_rate_check(request)
    page = images_search_by_image(user=request.user, file=image, **params.page_args())
    return _results(request, page)


@api.get(
    "/images/{image_id}/similar",
    response={200: Results, **ERRORS},
    url_name="image_similar",
    summary="Images similar to one you can see",
)
def image_similar(request: HttpRequest, image_id: int, params: Query[PageQuery]) -> HttpResponse:
    page = images_similar(user=request.user, image_id=image_id, **params.page_args())
    return _results(request, page)


@api.get("/models", response={200: list[ModelOut], **ERRORS}, summary="Models you can search with")
def models(request: HttpRequest) -> list[dict[str, Any]]:
    default = embedding_model_default()
    return [{"id": m, "default": m == default} for m in search_model_choices()]


@api.api_operation(
    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    "/{path:unknown}",
    auth=None,
    include_in_schema=False,
)
def unknown_path(request: HttpRequest, unknown: str) -> None:
    """Any other path under /api/ is a JSON 404, not the site's HTML page."""
    raise NotFound(f"no API endpoint at /api/{unknown}")
