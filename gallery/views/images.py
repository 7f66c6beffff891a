"""One image: its page, status, owner controls, files and thumbnails; uploads."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.files.storage import FileSystemStorage, Storage
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
)
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.datastructures import MultiValueDict
from django.views.decorators.http import require_http_methods

from gallery import hooks
from gallery.forms import (
    ImageDetailsForm,
    ImageVisibilityForm,
    UploadForm,
    form_error_message,
)
from gallery.models import Image
from gallery.selectors import (
    image_browse_neighbours,
    image_collections_visible,
    image_get_owned,
)
from gallery.services.images import (
    THUMBNAIL_SIZES,
    image_delete,
    image_details_update,
    image_thumbnail_name,
    image_upload,
    image_visibility_set,
)
from gallery.storage import (
    StorageUnreachable,
    image_storage,
    stored_file_fetch,
    thumbnail_storage,
)
from gallery.views._common import NO_SUCH_IMAGE, AuthenticatedHttpRequest, visible_image
from kernel.db_routing import reads_from_replica
from kernel.errors import ApplicationError
from kernel.views import error_response

logger = logging.getLogger(__name__)


@reads_from_replica
def image_detail(request: HttpRequest, image_id: int) -> HttpResponse:
    """The image large, its details and index status, similar images, owner controls."""
    return _image_page(request, visible_image(request, image_id))


def _image_page(
    request: HttpRequest,
    image: Image,
    *,
    details_form: ImageDetailsForm | None = None,
    status: int = 200,
) -> HttpResponse:
    is_owner = request.user.is_authenticated and image.owner_id == request.user.pk
    try:
        similar = hooks.images_similar(user=request.user, image_id=image.pk, k=12)
        similar_error = ""
    except ApplicationError as exc:
        similar, similar_error = [], exc.message
    context = {
        "image": image,
        "captions": list(image.captions.all()),
        "is_owner": is_owner,
        "status": hooks.image_index().image_states(image.pk),
        "collections": image_collections_visible(image=image, user=request.user),
        "similar": similar,
        "similar_error": similar_error,
        "visibilities": Image.Visibility.choices,
        "details_form": details_form or _details_form(image),
        "editing": details_form is not None,  # refused: the form open again, with the reasons
        # Previous / next in browse order (newest first), for the arrow keys.
        "neighbours": image_browse_neighbours(user=request.user, image=image),
    }  # fmt: skip
    return render(request, "gallery/image.html", context, status=status)


def _details_form(image: Image) -> ImageDetailsForm:
    return ImageDetailsForm(initial={"title": image.title, "description": image.description})


def image_status(request: HttpRequest, image_id: int) -> JsonResponse:
    """Index status of one visible image, for the upload page's live rows."""
    image = visible_image(request, image_id)
    states = hooks.image_index().image_states(image.pk)
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
def image_visibility(request: AuthenticatedHttpRequest, image_id: int) -> HttpResponse:
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
def image_details(request: AuthenticatedHttpRequest, image_id: int) -> HttpResponse:
    """The owner sets the title and description: in place with htmx, else POST and redirect.
    Anyone else gets the 404 of a missing image."""
    image = image_get_owned(user=request.user, image_id=image_id)
    if image is None:
        raise Http404(NO_SUCH_IMAGE)
    form = ImageDetailsForm(request.POST)
    status = 400
    if form.is_valid():
        try:
            image = image_details_update(user=request.user, image_id=image_id, **form.cleaned_data)
        except ApplicationError as exc:
            form.add_error(None, exc.message)
            status = exc.status
        else:
            status = 200
    htmx = bool(request.headers.get("HX-Request"))
    if status == 200 and not htmx:
        messages.success(request, "Saved the title and description.")
        return redirect("image", image_id=image_id)
    if status != 200 and not htmx:
        return _image_page(request, image, details_form=form, status=status)
    context = {
        "image": image,
        "captions": list(image.captions.all()),
        "is_owner": True,
        # Refused: the form again, open, with the input and why; saved: the new heading.
        "details_form": form if status != 200 else _details_form(image),
        "editing": status != 200,
        "saved": status == 200,
    }
    return render(request, "gallery/_image_details.html", context, status=status)


@login_required
@require_http_methods(["POST"])
def image_delete_view(request: AuthenticatedHttpRequest, image_id: int) -> HttpResponse:
    name = str(visible_image(request, image_id))
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


def image_file_response(request: HttpRequest, image: Image) -> HttpResponseBase:
    """The image's file, for a viewer already allowed to see it (the site's or the admin's)."""
    return _stored_file_response(
        request, storage=image_storage(), name=image.file.name or "", max_age=3600
    )


def image_thumbnail_response(request: HttpRequest, image: Image, size: int) -> HttpResponseBase:
    """A thumbnail of one of THUMBNAIL_SIZES, for a viewer already allowed to see the image."""
    if size not in THUMBNAIL_SIZES:
        raise Http404("No such thumbnail size.")
    try:
        name = image_thumbnail_name(image=image, size=size)
    except StorageUnreachable as exc:
        return _storage_unreachable_response(request, exc)
    except FileNotFoundError as exc:
        raise Http404("The image's file is missing.") from exc
    return _stored_file_response(
        request,
        storage=thumbnail_storage(),
        name=name,
        max_age=86400,
        content_type="image/jpeg",
    )


def _stored_file_response(
    request: HttpRequest, *, storage: Storage, name: str, max_age: int, content_type: str = ""
) -> HttpResponseBase:
    # Only ever reached after the caller's permission check: a signed URL is as good as the
    # file for the few minutes it lives, so it is never issued before.
    if settings.IMAGE_FILES_SIGNED_URLS and not isinstance(storage, FileSystemStorage):
        redirect_response = HttpResponseRedirect(storage.url(name))
        redirect_response["Cache-Control"] = "private, no-store"
        return redirect_response
    try:
        handle = stored_file_fetch(name, storage=storage)
    except StorageUnreachable as exc:
        return _storage_unreachable_response(request, exc)
    except FileNotFoundError as exc:
        raise Http404("The image's file is missing.") from exc
    response = FileResponse(handle)
    if content_type:
        response["Content-Type"] = content_type
    response["Cache-Control"] = f"private, max-age={max_age}"
    return response


def _storage_unreachable_response(request: HttpRequest, exc: StorageUnreachable) -> HttpResponse:
    logger.warning("%s", exc)
    return error_response(
        request,
        503,
        "Image storage unavailable",
        "The image storage cannot be reached just now. Try again in a minute.",
    )


def image_file(request: HttpRequest, image_id: int) -> HttpResponseBase:
    return image_file_response(request, visible_image(request, image_id))


def image_thumbnail(request: HttpRequest, image_id: int, size: int = 256) -> HttpResponseBase:
    if size not in THUMBNAIL_SIZES:
        raise Http404("No such thumbnail size.")
    return image_thumbnail_response(request, visible_image(request, image_id), size)


def _upload_one(request: AuthenticatedHttpRequest, form: UploadForm) -> tuple[Image | None, str]:
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
    waiting_for = hooks.image_index().default_model_unavailable()
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
def upload(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Upload images. The page's script sends one file per request and asks for JSON (to show
    each file's progress and result); without the script, the form posts them all at once."""
    wants_json = "application/json" in request.headers.get("Accept", "")
    if request.method == "POST" and wants_json:
        sent = len(request.FILES.getlist("file"))
        if sent > 1:
            # This answer has room for one file's result: taking one and dropping the rest
            # silently would lose the others.
            return JsonResponse(
                {"error": f"send one file per request here ({sent} were sent); nothing was stored"},
                status=400,
            )
        form = UploadForm(request.POST, request.FILES)
        if not form.is_valid():
            return JsonResponse({"error": form_error_message(form)}, status=400)
        image, message = _upload_one(request, form)
        if image is None:
            return JsonResponse({"error": message}, status=400)
        if not image.duplicate:
            # The row's badge follows the index state live (indexing, waiting for the model,
            # indexed); a sentence about it here would contradict the badge once it changes.
            message = f"Uploaded {image.original_filename}"
        return JsonResponse(
            {
                "id": image.pk,
                "duplicate": image.duplicate,
                "message": message,
                "url": reverse("image", args=[image.pk]),
                "status_url": reverse("image-status", args=[image.pk]),
                # The row's preview for files the browser cannot show itself (HEIC).
                "thumbnail_url": reverse("image-thumb-size", args=[image.pk, 128]),
            },
            status=200 if image.duplicate else 201,
        )
    form = UploadForm(request.POST or None, request.FILES or None)
    errors: list[str] = []
    if request.method == "POST":
        files = request.FILES.getlist("file")
        form.is_valid()
        if not files:
            errors = ["Choose at least one photo to upload."]
        elif "visibility" in form.errors:
            errors = ["Visibility: " + " ".join(str(e) for e in form.errors["visibility"])]
        else:
            # Each file on its own: one bad file (empty, corrupt, too big) is named and the
            # others are stored, whichever place it had in the selection.
            stored = 0
            for file in files:
                one = UploadForm(request.POST, MultiValueDict({"file": [file]}))
                if one.is_valid():
                    image, message = _upload_one(request, one)
                else:
                    said = [str(error) for error in one.errors.get("file", [])]
                    image, message = None, " ".join(said) or form_error_message(one)
                if image is None:
                    errors.append(f"{file.name}: {message}")
                    continue
                stored += 1
                (messages.info if image.duplicate else messages.success)(request, message)
            if stored and not errors:
                return redirect(reverse("home") + "?show=mine")
            if stored:
                messages.info(request, f"Stored {stored} of {len(files)} files.")
        form = UploadForm(initial={"visibility": request.POST.get("visibility")})
    status = 400 if errors else 200
    # The limit in the words of the server's own refusal (gallery.decoding.image_file_size_check).
    limit = f"{settings.UPLOAD_MAX_BYTES / 1e6:.0f} MB"
    context = {
        "form": form,
        "errors": errors,
        "max_bytes": settings.UPLOAD_MAX_BYTES,
        "limit": limit,
    }
    return render(request, "gallery/upload.html", context, status=status)
