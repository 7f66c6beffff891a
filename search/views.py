"""Search pages: parse the form, call one selector, render. The searches themselves, and every
message they give, are the API's too (``search.selectors``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods
from django_ratelimit.core import is_ratelimited
from django_ratelimit.exceptions import Ratelimited

from config.errors import ApplicationError, InvalidInput
from config.views import error_response
from gallery.selectors import collections_of
from search.forms import ImageQueryForm, SearchForm
from search.models import EmbeddingModel
from search.selectors import (
    SearchFilters,
    SearchPage,
    embedding_progress,
    images_search_by_image,
    images_search_by_text,
    images_similar,
    search_models_available,
)


def _anonymous_image_search_rate(group: str, request: HttpRequest) -> str | None:
    # Signed-in users and token clients are accountable and bounded per process already
    # (search.selectors caps concurrent image queries); anonymous ones are limited per address.
    return None if request.user.is_authenticated else settings.RATELIMIT_ANONYMOUS_IMAGE_SEARCH


def image_search_rate_check(request: HttpRequest) -> None:
    """Count an image search; raise ``Ratelimited`` (429 on pages and API) over the limit.

    One counter for the page and the API, checked before the image is decoded. Called inside
    the endpoint rather than as a decorator so that django-ninja still reads the API
    endpoint's own signature.
    """
    if is_ratelimited(
        request,
        group="image-search",
        key="ip",
        rate=_anonymous_image_search_rate,
        increment=True,
    ):
        raise Ratelimited("too many image searches from this address; try again in a minute")


def embedding_progress_json(request: HttpRequest) -> HttpResponse:
    """Per-model backfill progress for the admin and scripts (staff only: counts all uploads).

    An API URL, so JSON errors (401 signed out, 403 not staff) rather than a redirect to the
    admin's sign-in page.
    """
    if not request.user.is_authenticated:
        return error_response(request, 401, "Sign in", "sign in as staff to see this")
    if not request.user.is_staff:
        return error_response(request, 403, "Forbidden", "only staff may see this")
    models = [
        {
            **embedding_progress(model_id=state.model_id).as_dict(),
            "enabled": state.enabled,
            "default": state.is_default,
        }
        for state in EmbeddingModel.objects.all()
    ]
    return JsonResponse({"models": models})


def _render_results(
    request: HttpRequest,
    form: SearchForm,
    run: Callable[[], SearchPage],
    *,
    title: str = "Search",
) -> HttpResponse:
    """Render the search page with what ``run`` finds; an ``ApplicationError`` it raises is
    shown on the page with its HTTP status (the pages' one mapping of errors to HTTP)."""
    context: dict[str, object] = {
        "form": form,
        "image_form": ImageQueryForm(),
        "models": search_models_available(),
        "title": title,
        "my_collections": collections_of(user=request.user)
        if request.user.is_authenticated
        else [],
    }
    status = 200
    try:
        context["page"] = run()
    except ApplicationError as exc:
        context["error"] = exc.message
        status = exc.status
    return render(request, "search/search.html", context, status=status)


def _page_args(form: SearchForm) -> dict[str, Any]:
    """The paging, model and filter arguments every search takes, from a validated form."""
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        raise InvalidInput(f"{field}: {' '.join(errors)}")
    data = form.cleaned_data
    return {
        "model_id": data.get("model") or None,
        "k": 20 if data.get("k") is None else data["k"],
        "offset": data.get("offset") or 0,
        "filters": SearchFilters(source=data.get("source") or None),
        "min_score": data.get("min_score"),
    }


def search_page(request: HttpRequest) -> HttpResponse:
    form = SearchForm(request.GET or None)
    if not request.GET.get("q"):
        return render(
            request,
            "search/search.html",
            {
                "form": SearchForm(),
                "image_form": ImageQueryForm(),
                "models": search_models_available(),
            },
        )

    def run() -> SearchPage:
        args = _page_args(form)
        return images_search_by_text(user=request.user, text=form.cleaned_data.get("q"), **args)

    return _render_results(request, form, run)


@require_http_methods(["POST"])
def search_by_image_page(request: HttpRequest) -> HttpResponse:
    form = SearchForm(request.GET)
    image_form = ImageQueryForm(request.POST, request.FILES)

    image_search_rate_check(request)

    def run() -> SearchPage:
        args = _page_args(form)
        if not image_form.is_valid():
            raise InvalidInput("choose an image file to search with")
        file = image_form.cleaned_data["image"]
        return images_search_by_image(user=request.user, file=file, **args)

    return _render_results(request, form, run, title="Search by image")


def similar_page(request: HttpRequest, image_id: int) -> HttpResponse:
    form = SearchForm(request.GET)

    def run() -> SearchPage:
        return images_similar(user=request.user, image_id=image_id, **_page_args(form))

    return _render_results(request, form, run, title="Similar images")
