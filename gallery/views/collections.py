"""Collections: lists, pages, shared links, saving an image into one."""

from __future__ import annotations

from typing import cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from gallery.forms import (
    CollectionAddForm,
    CollectionCreateForm,
    CollectionDetailsForm,
    CollectionEditForm,
    CollectionItemMoveForm,
    CollectionItemNoteForm,
    form_error_message,
)
from gallery.models import Collection, CollectionItem
from gallery.selectors import (
    collection_covers,
    collection_get_viewable,
    collection_items_hidden,
    collection_items_visible,
    collections_of,
    collections_public,
)
from gallery.services.collections import (
    collection_create,
    collection_item_add,
    collection_item_move,
    collection_item_note_set,
    collection_item_remove,
    collection_save_into,
    collection_share_link_rotate,
    collection_update,
)
from gallery.templatetags.gallery_ui import image_name
from gallery.views._common import AuthenticatedHttpRequest, safe_next, visible_image
from kernel.db_routing import reads_from_replica
from kernel.errors import ApplicationError, InvalidInput


@login_required
def collection_picker(request: AuthenticatedHttpRequest, image_id: int) -> HttpResponse:
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


def _render_collections(request: AuthenticatedHttpRequest, *, status: int = 200) -> HttpResponse:
    collections = list(collections_of(user=request.user))
    covers = collection_covers(collections=collections)
    for collection in collections:
        # Read by the template only; the stubs know no such attribute on a model.
        collection.cover_ids = covers[collection.pk]  # type: ignore[attr-defined]
    return render(
        request,
        "gallery/collections.html",
        {"collections": collections},
        status=status,
    )


PUBLIC_COLLECTIONS_PAGE_SIZE = 48


@require_http_methods(["GET"])
@reads_from_replica
def collections_public_index(request: HttpRequest) -> HttpResponse:
    """Everyone's public collections, a page at a time; covers show only public images."""
    paginator = Paginator(collections_public(), PUBLIC_COLLECTIONS_PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    collections = list(page.object_list)
    covers = collection_covers(collections=collections, public_only=True)
    for collection in collections:
        # Read by the template only; the stubs know no such attribute on a model.
        collection.cover_ids = covers[collection.pk]  # type: ignore[attr-defined]
    return render(
        request, "gallery/collections_public.html", {"collections": collections, "page": page}
    )


@login_required
@require_http_methods(["GET", "POST"])
def collections_index(request: AuthenticatedHttpRequest) -> HttpResponse:
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


def _collection_context(
    request: HttpRequest, collection: Collection, **extra: object
) -> dict[str, object]:
    """What the collection page and its in-place parts (htmx) render from."""
    items = list(collection_items_visible(collection=collection, user=request.user))
    is_owner = request.user.is_authenticated and collection.owner_id == request.user.pk
    return {
        "collection": collection,
        "items": items,
        "is_owner": is_owner,
        # The owner is told which items a shared link or the public list leaves out.
        "hidden": list(collection_items_hidden(collection=collection)) if is_owner else [],
        "visibilities": Collection.Visibility.choices,
        **extra,
    }


def _render_collection(
    request: HttpRequest,
    collection: Collection | None,
    *,
    status: int = 200,
    details_form: CollectionDetailsForm | None = None,
    refused_note: tuple[int, str, str] | None = None,
) -> HttpResponse:
    if collection is None:
        raise Http404("No such collection.")
    context = _collection_context(
        request,
        collection,
        share_url=_share_url(request, collection),
        details_form=details_form or _details_form(collection),
        editing=details_form is not None,
    )
    if refused_note is not None:
        # Without JavaScript a refused note comes back in its box with the reason, not lost.
        image_id, text, error = refused_note
        for item in cast(list[CollectionItem], context["items"]):
            if item.image_id == image_id:
                item.note = text
                # Read by the template only; the stubs know no such attribute on a model.
                item.note_error = error  # type: ignore[attr-defined]
    return render(request, "gallery/collection.html", context, status=status)


def _share_url(request: HttpRequest, collection: Collection) -> str:
    return request.build_absolute_uri(reverse("collection-shared", args=[collection.share_token]))


def _details_form(collection: Collection) -> CollectionDetailsForm:
    return CollectionDetailsForm(
        initial={"name": collection.name, "description": collection.description}
    )


def _owned_collection(request: AuthenticatedHttpRequest, collection_id: int) -> Collection:
    """One of the signed-in user's collections; anyone else's is the 404 of a missing one."""
    collection = collections_of(user=request.user).filter(pk=collection_id).first()
    if collection is None:
        raise Http404("No such collection.")
    return collection


@reads_from_replica
def collection_detail(request: HttpRequest, collection_id: int) -> HttpResponse:
    collection = collection_get_viewable(user=request.user, collection_id=collection_id)
    return _render_collection(request, collection)


@reads_from_replica
def collection_shared(request: HttpRequest, share_token: str) -> HttpResponse:
    collection = collection_get_viewable(user=request.user, share_token=share_token)
    return _render_collection(request, collection)


@login_required
@require_http_methods(["POST"])
def collection_add(request: AuthenticatedHttpRequest) -> HttpResponse:
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
        item = collection_save_into(
            user=request.user,
            collection_id=data["collection_id"],
            new_name=data["new_name"],
            save=lambda collection_id: collection_item_add(
                user=request.user,
                collection_id=collection_id,
                image_id=data["image_id"],
                query=data["query"],
            ),
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
def collection_edit(request: AuthenticatedHttpRequest, collection_id: int) -> HttpResponse:
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


@login_required
@require_http_methods(["POST"])
def collection_share_rotate(request: AuthenticatedHttpRequest, collection_id: int) -> HttpResponse:
    """The owner replaces the collection's share link; the old link stops working."""
    try:
        collection = collection_share_link_rotate(user=request.user, collection_id=collection_id)
    except ApplicationError as exc:
        raise Http404("No such collection.") from exc
    message = "New link made: the old one no longer opens this collection."
    if not request.headers.get("HX-Request"):
        messages.success(request, message)
        return redirect("collection", collection_id=collection_id)
    context = {
        "collection": collection,
        "share_url": _share_url(request, collection),
        "share_message": message,
    }
    return render(request, "gallery/_collection_share.html", context)


@login_required
@require_http_methods(["POST"])
def collection_details(request: AuthenticatedHttpRequest, collection_id: int) -> HttpResponse:
    """The owner renames the collection or changes its description."""
    collection = _owned_collection(request, collection_id)
    form = CollectionDetailsForm(request.POST)
    status, error = 400, ""
    if form.is_valid():
        try:
            collection = collection_update(
                user=request.user, collection_id=collection_id, **form.cleaned_data
            )
            status = 200
        except ApplicationError as exc:
            status, error = exc.status, exc.message
    else:
        error = form_error_message(form)
    if not request.headers.get("HX-Request"):
        if status == 200:
            messages.success(request, "Saved the name and description.")
            return redirect("collection", collection_id=collection_id)
        messages.error(request, error)
        return _render_collection(request, collection, status=status, details_form=form)
    context = {
        "collection": collection,
        "is_owner": True,
        "details_form": form if status != 200 else _details_form(collection),
        "editing": status != 200,
        "saved": status == 200,
        "error": error,
    }
    return render(request, "gallery/_collection_header.html", context, status=status)


@login_required
@require_http_methods(["POST"])
def collection_item_note(
    request: AuthenticatedHttpRequest, collection_id: int, image_id: int
) -> HttpResponse:
    """The owner's note on one item: in place with htmx, else POST and redirect."""
    collection = _owned_collection(request, collection_id)
    form = CollectionItemNoteForm(request.POST)
    text = str(request.POST.get("note", ""))
    try:
        if not form.is_valid():
            raise InvalidInput(form_error_message(form))
        item = collection_item_note_set(
            user=request.user,
            collection_id=collection_id,
            image_id=image_id,
            note=form.cleaned_data["note"],
        )
    except ApplicationError as exc:
        if exc.status == 404:
            raise Http404("No such image in this collection.") from exc
        if not request.headers.get("HX-Request"):
            messages.error(request, exc.message)
            return _render_collection(
                request, collection, status=exc.status, refused_note=(image_id, text, exc.message)
            )
        # The refused text stays in the box, with the reason; the stored note is unchanged.
        refused = CollectionItem(collection=collection, image_id=image_id, note=text)
        context = {"collection": collection, "item": refused, "error": exc.message}
        return render(request, "gallery/_collection_item_note.html", context, status=exc.status)
    if not request.headers.get("HX-Request"):
        messages.success(request, f"Saved the note on {image_name(item.image)}.")
        return redirect(reverse("collection", args=[collection_id]) + f"#item-{image_id}")
    context = {"collection": collection, "item": item, "saved": True}
    return render(request, "gallery/_collection_item_note.html", context)


def _items_answer(
    request: HttpRequest,
    collection: Collection,
    message: str,
    *,
    status: int = 200,
    anchor: int | None = None,
    focus: int | None = None,
) -> HttpResponse:
    """After a move or a removal: htmx gets the items again (in their new order) and the
    message in the page's status line; a plain form gets a redirect back with the message."""
    if not request.headers.get("HX-Request"):
        (messages.success if status == 200 else messages.error)(request, message)
        fragment = f"#item-{anchor}" if anchor else ""
        return redirect(reverse("collection", args=[collection.pk]) + fragment)
    context = _collection_context(request, collection, status_message=message, focus=focus)
    return render(request, "gallery/_collection_items.html", context, status=status)


@login_required
@require_http_methods(["POST"])
def collection_item_move_view(
    request: AuthenticatedHttpRequest, collection_id: int, image_id: int
) -> HttpResponse:
    """Move an item one place earlier or later in the owner's order."""
    collection = _owned_collection(request, collection_id)
    form = CollectionItemMoveForm(request.POST)
    if not form.is_valid():
        return _items_answer(request, collection, form_error_message(form), status=400)
    try:
        move = collection_item_move(
            user=request.user,
            collection_id=collection_id,
            image_id=image_id,
            direction=form.cleaned_data["direction"],
            expected_index=form.cleaned_data["index"],
        )
    except ApplicationError as exc:
        if exc.status == 404:
            raise Http404("No such image in this collection.") from exc
        return _items_answer(request, collection, exc.message, status=exc.status)
    if move.moved:
        message = f"Moved to place {move.index} of {move.total}."
    elif form.cleaned_data["index"] not in (None, move.index):
        message = "The order had changed meanwhile; this is the order now."
    else:
        message = f"Already {'first' if move.index == 1 else 'last'}."
    return _items_answer(request, collection, message, anchor=image_id)


@login_required
@require_http_methods(["POST"])
def collection_item_remove_view(
    request: AuthenticatedHttpRequest, collection_id: int, image_id: int
) -> HttpResponse:
    """Take an image out of the collection (the image itself stays). Repeating it is harmless."""
    collection = _owned_collection(request, collection_id)
    shown = list(collection_items_visible(collection=collection, user=request.user))
    names = {item.image_id: image_name(item.image) for item in shown}
    removed = collection_item_remove(
        user=request.user, collection_id=collection_id, image_id=image_id
    )
    if not removed:
        return _items_answer(request, collection, "That image is no longer in this collection.")
    # Focus moves on to the next card (the one before, for the last), not to the page's top.
    ids = list(names)
    rest = [i for i in ids if i != image_id]
    after = ids.index(image_id) if image_id in ids else 0
    focus = rest[min(after, len(rest) - 1)] if rest else None
    name = names.get(image_id, "The image")
    return _items_answer(request, collection, f"Removed {name} from this collection.", focus=focus)
