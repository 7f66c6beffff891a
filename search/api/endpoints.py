"""The JSON API's endpoints (django-ninja): text and image search, similar images, models.
OpenAPI at /api/openapi.json, interactive docs at /api/docs.

Endpoints parse their input, call one selector and render; ``search.selectors`` holds the
searches the pages run too. Every error is JSON ``{"error": message}`` with its HTTP status
(``search.api.errors``).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import File, Query
from ninja.files import UploadedFile

from gallery.selectors import collection_get_viewable
from kernel.db_routing import replica_call
from kernel.errors import NotFound
from search.api.app import api
from search.api.rendering import results_json
from search.api.schemas import (
    ERRORS,
    CombinedQuery,
    ModelOut,
    PageQuery,
    RegionQuery,
    Results,
    SavedSearchQuery,
    TextQuery,
    text_search_request,
)
from search.model_choice import search_model_choices
from search.ranking import SearchPage
from search.rate_limits import image_search_rate_check
from search.selectors import (
    Region,
    images_search_by_image,
    images_search_by_text,
    images_search_combined,
    images_similar,
)
from search.smart import smart_collection_page
from workers.selectors import embedding_model_default


def _results(request: HttpRequest, page: SearchPage) -> HttpResponse:
    return api.create_response(request, results_json(page), status=200)


@api.get("/search", response={200: Results, **ERRORS}, summary="Search images by text")
def search_text(request: HttpRequest, params: Query[TextQuery]) -> HttpResponse:
    # Read from a replica; ninja reads the endpoint's signature, so no view decorator here.
    """The words are read for dates, places, exact words and negatives (``parsed`` in the
    answer says how); the structured parameters add to what the words say."""
    search = text_search_request(params)
    page = replica_call(
        lambda: images_search_by_text(
            user=request.user,
            text=params.q,
            model_id=params.model,
            search=search,
            exclude=params.exclude,
        )  # fmt: skip
    )
    return _results(request, page)


@api.post("/search/image", response={200: Results, **ERRORS}, summary="Search by an image")
def search_image(
    request: HttpRequest, image: File[UploadedFile], params: Query[CombinedQuery]
) -> HttpResponse:
    """Embeds the posted image on the fly (it is not stored) and returns the nearest images.

    The image is held to the upload limits: a size in bytes (413 above it), an image format
    the site accepts, and a number of pixels. Anonymous clients may run a limited number of
    image searches a minute per address (429 above it). With ``q`` the words and the image
    make one query vector (``text_weight``), and the words are read as in /api/search.
    """
    image_search_rate_check(request)
    if params.q is not None and params.q.strip():
        page = images_search_combined(
            user=request.user, text=params.q, file=image, text_weight=params.text_weight,
            model_id=params.model, search=params.search_request(), exclude=params.exclude,
        )  # fmt: skip
    else:
        page = images_search_by_image(
            user=request.user, file=image, model_id=params.model, search=params.search_request()
        )
    return _results(request, page)


@api.get(
    "/images/{image_id}/region",
    response={200: Results, **ERRORS},
    url_name="image_region",
    summary="Search by a region of an image you can see, with words if you like",
)
def image_region(request: HttpRequest, image_id: int, params: Query[RegionQuery]) -> HttpResponse:
    """The rectangle (fractions of the image's width and height; the whole image by default)
    is cut from the stored image and embedded on the fly; with ``q`` the words and the region
    make one query vector. The image itself is left out of its results. Limited like image
    searches (429)."""
    image_search_rate_check(request)
    region = Region(image_id, params.left, params.top, params.right, params.bottom)
    page = images_search_combined(
        user=request.user, text=params.q, region=region, text_weight=params.text_weight,
        model_id=params.model, search=params.search_request(), exclude=params.exclude,
    )  # fmt: skip
    return _results(request, page)


@api.get(
    "/images/{image_id}/similar",
    response={200: Results, **ERRORS},
    url_name="image_similar",
    summary="Images similar to one you can see",
)
def image_similar(request: HttpRequest, image_id: int, params: Query[PageQuery]) -> HttpResponse:
    page = replica_call(
        lambda: images_similar(
            user=request.user,
            image_id=image_id,
            model_id=params.model,
            search=params.search_request(),
        )  # fmt: skip
    )
    return _results(request, page)


@api.get(
    "/collections/{collection_id}/matches",
    response={200: Results, **ERRORS},
    url_name="collection_matches",
    summary="What a saved search (smart collection) lists now",
)
def collection_matches(
    request: HttpRequest, collection_id: int, params: Query[SavedSearchQuery]
) -> HttpResponse:
    """The owner's pinned items, then the saved search's live matches minus the images the
    owner hid, each only if you may see it. A collection shared by link needs its ``token``."""
    token = params.token or None
    collection = collection_get_viewable(
        user=request.user, collection_id=None if token else collection_id, share_token=token
    )
    if collection is None or collection.pk != collection_id or not collection.smart_query:
        raise NotFound("no such saved search")
    page = replica_call(
        lambda: smart_collection_page(
            user=request.user, collection=collection, k=params.k, offset=params.offset
        )
    )
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
