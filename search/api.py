"""The JSON API (django-ninja): text and image search, similar images, models. OpenAPI at
/api/openapi.json, interactive docs at /api/docs."""

from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest
from django.urls import reverse
from ninja import File, NinjaAPI, Query, Schema
from ninja.errors import AuthenticationError, ValidationError
from ninja.files import UploadedFile
from ninja.security import APIKeyHeader, HttpBearer, django_auth

from encoders import ImageDecodeError, open_image
from gallery.selectors import api_token_find, image_get_visible
from gallery.services import api_token_mark_used
from search import encoding
from search.selectors import (
    SearchError,
    SearchFilters,
    SearchPage,
    embedding_model_default,
    image_embedding_stored,
    images_search_by_vector,
    search_model_resolve,
    search_models_available,
    search_validate_text,
)


def _token_user(request: HttpRequest, raw: str):
    token = api_token_find(raw=raw)
    if token is None:
        # A wrong token is an error, not a silent fall-back to anonymous results.
        raise AuthenticationError(401, "invalid API token")
    api_token_mark_used(token=token)
    request.user = token.user
    return token.user


class TokenBearer(HttpBearer):
    """``Authorization: Bearer <token>`` with a personal API token."""

    def authenticate(self, request: HttpRequest, token: str):
        return _token_user(request, token)


class TokenHeader(APIKeyHeader):
    param_name = "X-API-Token"

    def authenticate(self, request: HttpRequest, key: str | None):
        return _token_user(request, key) if key else None


class Anonymous:
    """Lets a request through without credentials; it then sees public images only."""

    def __call__(self, request: HttpRequest):
        return True


# Session (browser), then token, then anonymous: credentials only widen what one sees.
AUTH = [django_auth, TokenBearer(), TokenHeader(), Anonymous()]

api = NinjaAPI(
    title="Image search API",
    version="1",
    description='Search images with natural-language text. Errors are JSON: {"error": msg}.',
    urls_namespace="api",
    auth=AUTH,
)


@api.exception_handler(SearchError)
def search_error(request: HttpRequest, exc: SearchError):
    return api.create_response(request, {"error": str(exc)}, status=exc.status)


@api.exception_handler(ValidationError)
def validation_error(request: HttpRequest, exc: ValidationError):
    details = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'request'}: {e.get('msg')}"
        for e in exc.errors
    )
    return api.create_response(request, {"error": details, "details": exc.errors}, status=400)


@api.exception_handler(AuthenticationError)
def authentication_error(request: HttpRequest, exc: AuthenticationError):
    return api.create_response(request, {"error": "invalid or missing credentials"}, status=401)


class Hit(Schema):
    id: int
    score: float
    thumbnail_url: str
    image_url: str
    similar_url: str
    captions: list[str]
    source: str
    width: int
    height: int


class Results(Schema):
    model: str
    k: int
    offset: int
    next_offset: int | None
    exact: bool
    results: list[Hit]


class ErrorOut(Schema):
    error: str


class ModelOut(Schema):
    id: str
    default: bool


class SearchQuery(Schema):
    q: str | None = None
    model: str | None = None
    k: int = 20
    offset: int = 0
    source: str | None = None
    collection: int | None = None
    uploaded_after: datetime | None = None
    uploaded_before: datetime | None = None
    min_score: float | None = None

    def filters(self) -> SearchFilters:
        return SearchFilters(
            source=self.source,
            collection_id=self.collection,
            uploaded_after=self.uploaded_after,
            uploaded_before=self.uploaded_before,
        )


ERRORS = {400: ErrorOut, 401: ErrorOut, 404: ErrorOut, 409: ErrorOut, 503: ErrorOut}


def _results(page: SearchPage) -> dict:
    return {
        "model": page.model_id,
        "k": page.k,
        "offset": page.offset,
        "next_offset": page.next_offset,
        "exact": page.exact,
        "results": [
            {
                "id": hit.image.pk,
                "score": round(hit.score, 5),
                "thumbnail_url": reverse("image-thumb", args=[hit.image.pk]),
                "image_url": reverse("image-file", args=[hit.image.pk]),
                "similar_url": reverse("api:image_similar", args=[hit.image.pk]),
                "captions": [c.text for c in hit.image.captions.all()],
                "source": hit.image.source,
                "width": hit.image.width,
                "height": hit.image.height,
            }
            for hit in page.hits
        ],
    }


@api.get("/search", response={200: Results, **ERRORS}, summary="Search images by text")
def search_text(request: HttpRequest, params: Query[SearchQuery]):
    text = search_validate_text(params.q)
    model_id = search_model_resolve(params.model)
    vector = encoding.text_embedding(model_id=model_id, text=text)
    page = images_search_by_vector(
        user=request.user, model_id=model_id, vector=vector, k=params.k, offset=params.offset,
        filters=params.filters(), min_score=params.min_score,
    )  # fmt: skip
    return _results(page)


@api.post("/search/image", response={200: Results, **ERRORS}, summary="Search by an image")
def search_image(request: HttpRequest, image: File[UploadedFile], params: Query[SearchQuery]):
    """Embeds the posted image on the fly (it is not stored) and returns the nearest images."""
    model_id = search_model_resolve(params.model)
    try:
        picture = open_image(image)
    except ImageDecodeError as exc:
        raise SearchError(f"the query image: {exc}") from exc
    vector = encoding.image_embedding(model_id=model_id, image=picture)
    page = images_search_by_vector(
        user=request.user, model_id=model_id, vector=vector, k=params.k, offset=params.offset,
        filters=params.filters(), min_score=params.min_score,
    )  # fmt: skip
    return _results(page)


@api.get(
    "/images/{image_id}/similar",
    response={200: Results, **ERRORS},
    url_name="image_similar",
    summary="Images similar to one you can see",
)
def image_similar(
    request: HttpRequest, image_id: int, model: str | None = None, k: int = 20, offset: int = 0
):
    if image_get_visible(user=request.user, image_id=image_id) is None:
        raise SearchError("no such image", 404)
    model_id = search_model_resolve(model)
    vector = image_embedding_stored(image_id=image_id, model_id=model_id)
    if vector is None:
        raise SearchError(f"image {image_id} has no {model_id} embedding yet", 409)
    page = images_search_by_vector(
        user=request.user, model_id=model_id, vector=vector, k=k, offset=offset,
        exclude_image_id=image_id,
    )  # fmt: skip
    return _results(page)


@api.get("/models", response=list[ModelOut], summary="Models you can search with")
def models(request: HttpRequest):
    default = embedding_model_default()
    return [{"id": m, "default": m == default} for m in search_models_available()]
