"""Selection mode: act on several images at once."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from gallery.forms import (
    SelectionDeleteForm,
    SelectionSaveForm,
    form_error_message,
)
from gallery.services.collections import collection_items_add, collection_save_into
from gallery.services.images import images_delete
from gallery.views._common import AuthenticatedHttpRequest, safe_next
from kernel.errors import ApplicationError


def _selection_answer(
    request: HttpRequest, *, status: int = 200, error: str = "", **answer: object
) -> HttpResponse:
    """JSON for the selection bar's script; without it, a message and back to the page."""
    if "application/json" in request.headers.get("Accept", ""):
        body = {"error": error} if error else answer
        return JsonResponse(body, status=status)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, str(answer["message"]))
    return redirect(safe_next(request) or "home")


@login_required
@require_http_methods(["POST"])
def selection_save(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Save the selected images into a collection (an existing one, or a new one by name):
    every image must be one the user can see, or nothing is saved."""
    form = SelectionSaveForm(request.POST)
    if not form.is_valid():
        return _selection_answer(request, status=400, error=form_error_message(form))
    data = form.cleaned_data
    try:
        collection, added = collection_save_into(
            user=request.user,
            collection_id=data["collection_id"],
            new_name=data["new_name"],
            save=lambda collection_id: collection_items_add(
                user=request.user,
                collection_id=collection_id,
                image_ids=data["image_id"],
                query=data["query"],
            ),
        )
    except ApplicationError as exc:
        return _selection_answer(request, status=exc.status, error=exc.message)
    count = len(data["image_id"])
    already = f" ({count - added} already there)" if added < count else ""
    return _selection_answer(
        request,
        message=f"Saved {count} image{'s' if count != 1 else ''} to {collection.name}{already}.",
        added=added,
        collection={
            "id": collection.pk,
            "name": collection.name,
            "url": reverse("collection", args=[collection.pk]),
        },
    )


@login_required
@require_http_methods(["POST"])
def selection_delete(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Delete the selected images: every one must be the user's upload, or none is deleted."""
    form = SelectionDeleteForm(request.POST)
    if not form.is_valid():
        return _selection_answer(request, status=400, error=form_error_message(form))
    try:
        deleted = images_delete(user=request.user, image_ids=form.cleaned_data["image_id"])
    except ApplicationError as exc:
        return _selection_answer(request, status=exc.status, error=exc.message)
    count = len(deleted)
    return _selection_answer(
        request, message=f"Deleted {count} image{'s' if count != 1 else ''}.", deleted=deleted
    )
