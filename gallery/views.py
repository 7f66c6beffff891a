from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.db import transaction
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods
from django_ratelimit.decorators import ratelimit

from config.errors import ApplicationError
from gallery.forms import (
    CollectionAddForm,
    CollectionCreateForm,
    CollectionEditForm,
    TokenCreateForm,
    TokenRevokeForm,
    UploadForm,
    form_error_message,
)
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


def image_file_response(image: Image) -> FileResponse:
    """The image's file, for a viewer already allowed to see it (the site's or the admin's)."""
    response = FileResponse(image.file.open("rb"))
    response["Cache-Control"] = "private, max-age=3600"
    return response


def image_thumbnail_response(image: Image, size: int) -> FileResponse:
    """A thumbnail of one of THUMBNAIL_SIZES, for a viewer already allowed to see the image."""
    if size not in THUMBNAIL_SIZES:
        raise Http404("No such thumbnail size.")
    response = FileResponse(open(image_thumbnail_path(image=image, size=size), "rb"))  # noqa: SIM115
    response["Content-Type"] = "image/jpeg"
    response["Cache-Control"] = "private, max-age=86400"
    return response


def image_file(request: HttpRequest, image_id: int) -> FileResponse:
    return image_file_response(_visible_image(request, image_id))


def image_thumbnail(request: HttpRequest, image_id: int, size: int = 256) -> FileResponse:
    if size not in THUMBNAIL_SIZES:
        raise Http404("No such thumbnail size.")
    return image_thumbnail_response(_visible_image(request, image_id), size)


def _signup_rate(group: str, request: HttpRequest) -> str:
    return settings.RATELIMIT_SIGNUP


def _token_create_rate(group: str, request: HttpRequest) -> str | None:
    # Creating tokens is limited; revoking them never is.
    return None if "revoke" in request.POST else settings.RATELIMIT_TOKEN_CREATE


@require_http_methods(["GET", "POST"])
@ratelimit(group="signup", key="ip", rate=_signup_rate, method="POST")
def signup(request: HttpRequest) -> HttpResponse:
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        # Named because django-axes adds a backend; it only watches sign-ins, never signs in.
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
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
@ratelimit(group="token-create", key="user", rate=_token_create_rate, method="POST")
def api_tokens(request: HttpRequest) -> HttpResponse:
    """List, create and revoke the signed-in user's API tokens; a new token is shown once."""
    new_token = None
    status = 200
    if request.method == "POST":
        if "revoke" in request.POST:
            revoke = TokenRevokeForm(request.POST)
            if revoke.is_valid():
                api_token_revoke(user=request.user, token_id=revoke.cleaned_data["revoke"])
                messages.success(request, "Token revoked.")
                return redirect("api-tokens")
            messages.error(request, form_error_message(revoke))
            status = 400
        else:
            create = TokenCreateForm(request.POST)
            if create.is_valid():
                name = create.cleaned_data["name"] or "API token"
                _, new_token = api_token_create(user=request.user, name=name)
            else:
                messages.error(request, form_error_message(create))
                status = 400
    return render(
        request,
        "gallery/api_tokens.html",
        {"tokens": api_tokens_of(user=request.user), "new_token": new_token},
        status=status,
    )


def _render_collections(request: HttpRequest, *, status: int = 200) -> HttpResponse:
    return render(
        request,
        "gallery/collections.html",
        {"collections": collections_of(user=request.user)},
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
        messages.error(request, exc.message)
        return _render_collections(request, status=exc.status)
    messages.success(request, f"Saved to {item.collection.name}.")
    return redirect(_safe_next(request) or "collections")


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


def _safe_next(request: HttpRequest) -> str | None:
    target = request.POST.get("next", "")
    allowed = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if target and allowed else None
