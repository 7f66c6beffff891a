from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from encoders import ImageDecodeError, open_image
from gallery.selectors import collections_of, image_get_visible
from search import encoding
from search.forms import ImageQueryForm, SearchForm
from search.models import EmbeddingModel
from search.selectors import (
    SearchError,
    SearchFilters,
    embedding_progress,
    image_embedding_stored,
    images_search_by_vector,
    search_model_resolve,
    search_models_available,
    search_validate_text,
)


@staff_member_required
def embedding_progress_json(request: HttpRequest) -> JsonResponse:
    """Per-model backfill progress for the admin and scripts (staff only: counts all uploads)."""
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
    request: HttpRequest, form: SearchForm, run, *, title: str = "Search", status: int = 200
) -> HttpResponse:
    """Render the search page; ``run`` returns a SearchPage or raises SearchError."""
    context: dict[str, object] = {
        "form": form,
        "image_form": ImageQueryForm(),
        "models": search_models_available(),
        "title": title,
        "my_collections": collections_of(user=request.user)
        if request.user.is_authenticated
        else [],
    }
    try:
        context["page"] = run()
    except SearchError as exc:
        context["error"] = str(exc)
        status = exc.status
    return render(request, "search/search.html", context, status=status)


def _page_args(form: SearchForm) -> dict[str, object]:
    data = form.cleaned_data
    return {
        "k": data.get("k") or 20,
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
    if not form.is_valid():
        return _render_results(request, form, _form_error(form))

    def run():
        text = search_validate_text(form.cleaned_data["q"])
        model_id = search_model_resolve(form.cleaned_data.get("model"))
        vector = encoding.text_embedding(model_id=model_id, text=text)
        return images_search_by_vector(
            user=request.user, model_id=model_id, vector=vector, **_page_args(form)
        )

    return _render_results(request, form, run)


@require_http_methods(["POST"])
def search_by_image_page(request: HttpRequest) -> HttpResponse:
    form = SearchForm(request.GET)
    form.is_valid()  # every field is optional; bad values fall back to defaults
    image_form = ImageQueryForm(request.POST, request.FILES)

    def run():
        if not image_form.is_valid():
            raise SearchError("choose an image file to search with")
        model_id = search_model_resolve(form.cleaned_data.get("model"))
        try:
            picture = open_image(image_form.cleaned_data["image"])
        except ImageDecodeError as exc:
            raise SearchError(f"the query image: {exc}") from exc
        vector = encoding.image_embedding(model_id=model_id, image=picture)
        return images_search_by_vector(
            user=request.user, model_id=model_id, vector=vector, **_page_args(form)
        )

    return _render_results(request, form, run, title="Search by image")


def similar_page(request: HttpRequest, image_id: int) -> HttpResponse:
    form = SearchForm(request.GET)
    form.is_valid()  # every field is optional; bad values fall back to defaults

    def run():
        if image_get_visible(user=request.user, image_id=image_id) is None:
            raise SearchError("no such image", 404)
        model_id = search_model_resolve(form.cleaned_data.get("model"))
        vector = image_embedding_stored(image_id=image_id, model_id=model_id)
        if vector is None:
            raise SearchError("this image is not indexed yet; try again in a minute", 409)
        return images_search_by_vector(
            user=request.user, model_id=model_id, vector=vector, exclude_image_id=image_id,
            **_page_args(form),
        )  # fmt: skip

    return _render_results(request, form, run, title="Similar images")


def _form_error(form: SearchForm):
    def run():
        field, errors = next(iter(form.errors.items()))
        raise SearchError(f"{field}: {' '.join(errors)}")

    return run
