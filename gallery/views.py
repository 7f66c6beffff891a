from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods

from config.errors import ApplicationError
from gallery.forms import UploadForm
from gallery.models import Collection, Image
from gallery.selectors import (
    api_tokens_of,
    collection_get_viewable,
    collection_items_visible,
    collections_of,
    image_viewable_by,
    images_visible_to,
)
from gallery.services import (
    THUMBNAIL_SIZES,
    api_token_create,
    api_token_revoke,
    collection_create,
    collection_item_add,
    collection_item_remove,
    collection_update,
    image_thumbnail_path,
    image_upload,
)
from search.selectors import embedding_model_default_unavailable

# One message for an image that does not exist and for one this user may not see, so that
# the answer never tells whether someone else's private image exists.
NO_SUCH_IMAGE = "No such image."


def home(request: HttpRequest) -> HttpResponse:
    images = images_visible_to(user=request.user).order_by("-created_at", "-id")[:24]
    return render(request, "gallery/home.html", {"images": images})


def _visible_image(request: HttpRequest, image_id: int) -> Image:
    image = Image.objects.filter(pk=image_id).first()
    # 404, not 403: someone else's private image must not even be known to exist.
    if image is None or not image_viewable_by(image=image, user=request.user):
        raise Http404(NO_SUCH_IMAGE)
    return image


def image_file(request: HttpRequest, image_id: int) -> FileResponse:
    image = _visible_image(request, image_id)
    response = FileResponse(image.file.open("rb"))
    response["Cache-Control"] = "private, max-age=3600"
    return response


def image_thumbnail(request: HttpRequest, image_id: int, size: int = 256) -> FileResponse:
    if size not in THUMBNAIL_SIZES:
        raise Http404("No such thumbnail size.")
    image = _visible_image(request, image_id)
    response = FileResponse(open(image_thumbnail_path(image=image, size=size), "rb"))  # noqa: SIM115
    response["Content-Type"] = "image/jpeg"
    response["Cache-Control"] = "private, max-age=86400"
    return response


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user)
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


@login_required
@require_http_methods(["GET", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    form = UploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            image = image_upload(
                owner=request.user,
                file=form.cleaned_data["file"],
                visibility=form.cleaned_data["visibility"],
            )
        except ApplicationError as exc:
            form.add_error("file", exc.message)
        else:
            waiting_for = embedding_model_default_unavailable()
            if waiting_for:
                # Indexing cannot start until an admin provides the weights; say so rather
                # than promise progress that will not come.
                messages.warning(
                    request,
                    f"Stored {image.original_filename}; it will be searchable once model "
                    f"{waiting_for} is available.",
                )
            else:
                messages.success(
                    request, f"Uploaded {image.original_filename}; it is being indexed."
                )
            return redirect("home")
    status = 400 if form.errors else 200
    return render(request, "gallery/upload.html", {"form": form}, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def api_tokens(request: HttpRequest) -> HttpResponse:
    """List, create and revoke the signed-in user's API tokens; a new token is shown once."""
    new_token = None
    if request.method == "POST":
        if "revoke" in request.POST:
            api_token_revoke(user=request.user, token_id=int(request.POST["revoke"]))
            messages.success(request, "Token revoked.")
            return redirect("api-tokens")
        name = (request.POST.get("name") or "").strip() or "API token"
        _, new_token = api_token_create(user=request.user, name=name)
    return render(
        request,
        "gallery/api_tokens.html",
        {"tokens": api_tokens_of(user=request.user), "new_token": new_token},
    )


@login_required
@require_http_methods(["GET", "POST"])
def collections_index(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            collection = collection_create(
                owner=request.user,
                name=request.POST.get("name", ""),
                description=request.POST.get("description", ""),
                visibility=request.POST.get("visibility") or Collection.Visibility.PRIVATE,
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            return redirect("collection", collection_id=collection.pk)
    return render(
        request, "gallery/collections.html", {"collections": collections_of(user=request.user)}
    )


def _render_collection(request: HttpRequest, collection: Collection | None) -> HttpResponse:
    if collection is None:
        raise Http404("No such collection.")
    items = collection_items_visible(collection=collection, user=request.user)
    share_url = request.build_absolute_uri(
        reverse("collection-shared", args=[collection.share_token])
    )
    return render(
        request,
        "gallery/collection.html",
        {
            "collection": collection,
            "items": items,
            "is_owner": request.user.is_authenticated and collection.owner_id == request.user.pk,
            "share_url": share_url,
            "visibilities": Collection.Visibility.choices,
        },
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
    try:
        image_id = int(request.POST["image_id"])
        new_name = request.POST.get("new_name", "").strip()
        if new_name:
            collection_id = collection_create(owner=request.user, name=new_name).pk
        else:
            collection_id = int(request.POST["collection_id"])
        item = collection_item_add(
            user=request.user,
            collection_id=collection_id,
            image_id=image_id,
            query=request.POST.get("query", ""),
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    except (KeyError, ValueError):
        messages.error(request, "choose a collection")
    else:
        messages.success(request, f"Saved to {item.collection.name}.")
    return redirect(_safe_next(request) or "collections")


@login_required
@require_http_methods(["POST"])
def collection_edit(request: HttpRequest, collection_id: int) -> HttpResponse:
    try:
        if "remove" in request.POST:
            collection_item_remove(
                user=request.user, collection_id=collection_id, image_id=int(request.POST["remove"])
            )
        if "visibility" in request.POST:
            collection_update(
                user=request.user,
                collection_id=collection_id,
                visibility=request.POST["visibility"],
            )
    except ApplicationError as exc:
        raise Http404(exc.message) from exc
    return redirect("collection", collection_id=collection_id)


def _safe_next(request: HttpRequest) -> str | None:
    target = request.POST.get("next", "")
    allowed = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if target and allowed else None
