from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.core.paginator import Paginator
from django.db import transaction
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods
from django_ratelimit.decorators import ratelimit

from config.errors import ApplicationError
from config.views import error_response
from gallery.forms import (
    BrowseForm,
    CollectionAddForm,
    CollectionCreateForm,
    CollectionEditForm,
    ImageVisibilityForm,
    SelectionDeleteForm,
    SelectionSaveForm,
    TokenCreateForm,
    TokenRevokeForm,
    UploadForm,
    form_error_message,
)
from gallery.models import Collection, Image
from gallery.selectors import (
    api_tokens_of,
    collection_covers,
    collection_get_viewable,
    collection_items_hidden,
    collection_items_visible,
    collections_of,
    image_collections_visible,
    image_viewable_by,
    images_browse,
    images_visible_to,
)
from gallery.services import (
    THUMBNAIL_SIZES,
    api_token_create,
    api_token_revoke,
    collection_create,
    collection_item_add,
    collection_item_remove,
    collection_items_add,
    collection_update,
    image_delete,
    image_thumbnail_path,
    image_upload,
    image_visibility_set,
    images_delete,
)
from search.selectors import (
    embedding_model_default_unavailable,
    image_index_status,
    images_similar,
)

# One message for an image that does not exist and for one this user may not see, so that
# the answer never tells whether someone else's private image exists.
NO_SUCH_IMAGE = "No such image."


BROWSE_PAGE_SIZE = 60


def home(request: HttpRequest) -> HttpResponse:
    """Browse: the images this person may see, newest first, grouped by day, a page at a time
    (htmx appends the next page in place; without JS it is an ordinary link)."""
    form = BrowseForm(request.GET)
    data = form.cleaned_data if form.is_valid() else {}
    show = data.get("show") or "all"
    paginator = Paginator(images_browse(user=request.user, show=show), BROWSE_PAGE_SIZE)
    page = paginator.get_page(data.get("page") or 1)
    context = {
        "page": page, "show": show, "filters": _browse_filters(request),
        "selection_collections": selection_collections(request),
    }  # fmt: skip
    if request.headers.get("HX-Request"):
        return render(request, "gallery/_browse_page.html", context)
    return render(request, "gallery/home.html", context)


def _browse_filters(request: HttpRequest) -> list[tuple[str, str]]:
    filters = [("all", "Everything")]
    if request.user.is_authenticated:
        filters.append(("mine", "My images"))
    return [*filters, ("dataset", "Data set"), ("public", "Public")]


def image_detail(request: HttpRequest, image_id: int) -> HttpResponse:
    """The image large, its details and index status, similar images, owner controls."""
    image = _visible_image(request, image_id)
    is_owner = request.user.is_authenticated and image.owner_id == request.user.pk
    try:
        similar = images_similar(user=request.user, image_id=image.pk, k=12).hits
        similar_error = ""
    except ApplicationError as exc:
        similar, similar_error = [], exc.message
    visible = images_visible_to(user=request.user)
    context = {
        "image": image,
        "captions": list(image.captions.all()),
        "is_owner": is_owner,
        "status": image_index_status(image_id=image.pk),
        "collections": image_collections_visible(image=image, user=request.user),
        "similar": similar,
        "similar_error": similar_error,
        "visibilities": Image.Visibility.choices,
        # Previous / next in browse order (newest first), for the arrow keys.
        "newer": visible.filter(created_at__gt=image.created_at).order_by("created_at", "id")
        .values_list("pk", flat=True).first(),
        "older": visible.filter(created_at__lt=image.created_at).order_by("-created_at", "-id")
        .values_list("pk", flat=True).first(),
    }  # fmt: skip
    return render(request, "gallery/image.html", context)


def image_status(request: HttpRequest, image_id: int) -> JsonResponse:
    """Index status of one visible image, for the upload page's live rows."""
    image = _visible_image(request, image_id)
    states = image_index_status(image_id=image.pk)
    # The default model (first) decides the summary: that is the one searches use.
    head = states[0] if states else None
    return JsonResponse(
        {
            "id": image.pk,
            "state": head.state if head else "pending",
            "label": head.label if head else "waiting for a model",
            "reason": head.reason if head else "",
            "models": [
                {"model_id": s.model_id, "state": s.state, "reason": s.reason} for s in states
            ],
        }
    )


@login_required
@require_http_methods(["POST"])
def image_visibility(request: HttpRequest, image_id: int) -> HttpResponse:
    form = ImageVisibilityForm(request.POST)
    if not form.is_valid():
        messages.error(request, form_error_message(form))
        return redirect("image", image_id=image_id)
    try:
        image = image_visibility_set(
            user=request.user, image_id=image_id, visibility=form.cleaned_data["visibility"]
        )
    except ApplicationError as exc:
        return error_response(request, exc.status, "Not changed", exc.message)
    if request.headers.get("HX-Request"):
        context = {"image": image, "visibilities": Image.Visibility.choices, "changed": True}
        return render(request, "gallery/_visibility.html", context)
    messages.success(request, f"{image} is now {image.get_visibility_display().lower()}.")
    return redirect("image", image_id=image_id)


@login_required
@require_http_methods(["POST"])
def image_delete_view(request: HttpRequest, image_id: int) -> HttpResponse:
    name = str(_visible_image(request, image_id))
    try:
        image_delete(user=request.user, image_id=image_id)
    except ApplicationError as exc:
        return error_response(request, exc.status, "Not deleted", exc.message)
    messages.success(request, f"Deleted {name}.")
    if request.headers.get("HX-Request"):
        response = HttpResponse(status=204)
        response["HX-Redirect"] = reverse("home") + "?show=mine"
        return response
    return redirect(reverse("home") + "?show=mine")


@login_required
def collection_picker(request: HttpRequest, image_id: int) -> HttpResponse:
    """The small "save to a collection" picker a result's Save button opens (htmx)."""
    image = _visible_image(request, image_id)
    return render(
        request,
        "gallery/_picker.html",
        {
            "image": image,
            "collections": collections_of(user=request.user),
            "query": request.GET.get("query", "")[:1000],
        },
    )


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


def _upload_one(request: HttpRequest, form: UploadForm) -> tuple[Image | None, str]:
    """Store one validated upload; (the image, what to tell the person) or (None, why not)."""
    try:
        image = image_upload(
            owner=request.user,
            file=form.cleaned_data["file"],
            visibility=form.cleaned_data["visibility"],
        )
    except ApplicationError as exc:
        return None, exc.message
    if image.duplicate:
        return image, f"{image.original_filename} is already in your library."
    waiting_for = embedding_model_default_unavailable()
    if waiting_for:
        # Indexing cannot start until an admin provides the weights; say so rather than
        # promise progress that will not come.
        return image, (
            f"Stored {image.original_filename}; it will be searchable once model "
            f"{waiting_for} is available."
        )
    return image, f"Uploaded {image.original_filename}; it is being indexed."


@login_required
@require_http_methods(["GET", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    """Upload images. The page's script sends one file per request and asks for JSON (to show
    each file's progress and result); without the script, the form posts them all at once."""
    wants_json = "application/json" in request.headers.get("Accept", "")
    if request.method == "POST" and wants_json:
        form = UploadForm(request.POST, request.FILES)
        if not form.is_valid():
            return JsonResponse({"error": form_error_message(form)}, status=400)
        image, message = _upload_one(request, form)
        if image is None:
            return JsonResponse({"error": message}, status=400)
        return JsonResponse(
            {
                "id": image.pk,
                "duplicate": image.duplicate,
                "message": message,
                "url": reverse("image", args=[image.pk]),
                "status_url": reverse("image-status", args=[image.pk]),
            },
            status=200 if image.duplicate else 201,
        )
    form = UploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        files = request.FILES.getlist("file") or [form.cleaned_data["file"]]
        stored = 0
        for file in files:
            one = UploadForm(request.POST, {"file": file})
            image, message = _upload_one(request, one) if one.is_valid() else (None, "")
            if image is None:
                form.add_error("file", message or form_error_message(one))
                continue
            stored += 1
            (messages.info if image.duplicate else messages.success)(request, message)
        if stored and not form.errors:
            return redirect(reverse("home") + "?show=mine")
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


def selection_collections(request: HttpRequest) -> list[Collection]:
    """The signed-in user's collections, for the selection bar's "save to" menu."""
    return list(collections_of(user=request.user)) if request.user.is_authenticated else []


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
    return redirect(_safe_next(request) or "home")


@login_required
@require_http_methods(["POST"])
def selection_save(request: HttpRequest) -> HttpResponse:
    """Save the selected images into a collection (an existing one, or a new one by name):
    every image must be one the user can see, or nothing is saved."""
    form = SelectionSaveForm(request.POST)
    if not form.is_valid():
        return _selection_answer(request, status=400, error=form_error_message(form))
    data = form.cleaned_data
    try:
        # One transaction: a new collection is kept only if the images went into it.
        with transaction.atomic():
            collection_id = data["collection_id"]
            if data["new_name"]:
                collection_id = collection_create(owner=request.user, name=data["new_name"]).pk
            collection, added = collection_items_add(
                user=request.user,
                collection_id=collection_id,
                image_ids=data["image_id"],
                query=data["query"],
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
def selection_delete(request: HttpRequest) -> HttpResponse:
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


def _safe_next(request: HttpRequest) -> str | None:
    target = request.POST.get("next", "")
    allowed = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if target and allowed else None
