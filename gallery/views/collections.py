"""Collections: lists, pages, shared links, saving an image into one."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from config.errors import ApplicationError
from gallery.forms import (
    CollectionAddForm,
    CollectionCreateForm,
    CollectionEditForm,
    form_error_message,
)
from gallery.models import Collection
from gallery.selectors import (
    collection_covers,
    collection_get_viewable,
    collection_items_hidden,
    collection_items_visible,
    collections_of,
)
from gallery.services import (
    collection_create,
    collection_item_add,
    collection_item_remove,
    collection_update,
)
from gallery.views._common import safe_next, visible_image


@login_required
def collection_picker(request: HttpRequest, image_id: int) -> HttpResponse:
    """The small "save to a collection" picker a result's Save button opens (htmx)."""
    image = visible_image(request, image_id)
    return render(
        request,
        "gallery/_picker.html",
        {
            "image": image,
            "collections": collections_of(user=request.user),
            "query": request.GET.get("query", "")[:1000],
        },
    )


def _render_collections(request: HttpRequest, *, status: int = 200) -> HttpResponse:
    collections = list(collections_of(user=request.user))
    covers = collection_covers(collections=collections)
    for collection in collections:
        collection.cover_ids = covers[collection.pk]
    return render(
        request,
        "gallery/collections.html",
        {"collections": collections},
        status=status,
    )


@login_required
@require_http_methods(["GET", "POST"])
def collections_index(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _render_collections(request)
    form = CollectionCreateForm(request.POST)
    if not form.is_valid():
        messages.error(request, form_error_message(form))
        return _render_collections(request, status=400)
    try:
        collection = collection_create(owner=request.user, **form.cleaned_data)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return _render_collections(request, status=exc.status)
    return redirect("collection", collection_id=collection.pk)


def _render_collection(
    request: HttpRequest, collection: Collection | None, *, status: int = 200
) -> HttpResponse:
    if collection is None:
        raise Http404("No such collection.")
    items = collection_items_visible(collection=collection, user=request.user)
    share_url = request.build_absolute_uri(
        reverse("collection-shared", args=[collection.share_token])
    )
    is_owner = request.user.is_authenticated and collection.owner_id == request.user.pk
    return render(
        request,
        "gallery/collection.html",
        {
            "collection": collection,
            "items": items,
            "is_owner": is_owner,
            # The owner is told which items a shared link or the public list leaves out.
            "hidden": list(collection_items_hidden(collection=collection)) if is_owner else [],
            "share_url": share_url,
            "visibilities": Collection.Visibility.choices,
        },
        status=status,
    )


def collection_detail(request: HttpRequest, collection_id: int) -> HttpResponse:
    collection = collection_get_viewable(user=request.user, collection_id=collection_id)
    return _render_collection(request, collection)


def collection_shared(request: HttpRequest, share_token: str) -> HttpResponse:
    collection = collection_get_viewable(user=request.user, share_token=share_token)
    return _render_collection(request, collection)


@login_required
@require_http_methods(["POST"])
def collection_add(request: HttpRequest) -> HttpResponse:
    """Save a search result into a collection (an existing one, or a new one by name)."""
    form = CollectionAddForm(request.POST)
    if not form.is_valid():
        if request.headers.get("HX-Request"):
            context = {"error": form_error_message(form)}
            return render(request, "gallery/_saved.html", context, status=400)
        messages.error(request, form_error_message(form))
        return _render_collections(request, status=400)
    data = form.cleaned_data
    try:
        # One transaction: a new collection is kept only if the image went into it.
        with transaction.atomic():
            collection_id = data["collection_id"]
            if data["new_name"]:
                collection_id = collection_create(owner=request.user, name=data["new_name"]).pk
            item = collection_item_add(
                user=request.user,
                collection_id=collection_id,
                image_id=data["image_id"],
                query=data["query"],
            )
    except ApplicationError as exc:
        if request.headers.get("HX-Request"):
            context = {"error": exc.message}
            return render(request, "gallery/_saved.html", context, status=exc.status)
        messages.error(request, exc.message)
        return _render_collections(request, status=exc.status)
    if request.headers.get("HX-Request"):
        return render(request, "gallery/_saved.html", {"item": item})
    messages.success(request, f"Saved to {item.collection.name}.")
    return redirect(safe_next(request) or "collections")


@login_required
@require_http_methods(["POST"])
def collection_edit(request: HttpRequest, collection_id: int) -> HttpResponse:
    collection = collections_of(user=request.user).filter(pk=collection_id).first()
    if collection is None:
        raise Http404("No such collection.")
    form = CollectionEditForm(request.POST)
    if not form.is_valid():
        messages.error(request, form_error_message(form))
        return _render_collection(request, collection, status=400)
    try:
        if form.cleaned_data["remove"] is not None:
            collection_item_remove(
                user=request.user,
                collection_id=collection_id,
                image_id=form.cleaned_data["remove"],
            )
        if form.cleaned_data["visibility"]:
            collection_update(
                user=request.user,
                collection_id=collection_id,
                visibility=form.cleaned_data["visibility"],
            )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return _render_collection(request, collection, status=exc.status)
    return redirect("collection", collection_id=collection_id)
