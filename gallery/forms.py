"""Input checks for gallery requests: uploaded image files (uploads, and query images under a
lower pixel limit) and the upload form."""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.base_user import BaseUserManager
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from PIL import Image as PILImage

from encoders import ImageDecodeError, decode_image, open_image
from gallery.models import ApiToken, Collection, CollectionItem, Image
from gallery.selectors import user_email_taken
from kernel.errors import InvalidInput, TooLarge


class UploadRejected(InvalidInput):
    """An upload we refuse, with a message meant for the person who sent it."""


class UploadTooLarge(UploadRejected, TooLarge):
    """An upload over UPLOAD_MAX_BYTES (HTTP 413 where it reaches the API)."""


ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}

# Images are decoded no smaller than this on their shorter side: twice the largest input of
# any model (384 px), so the model's own resize sees what it would see from the original.
DECODE_MIN_SIDE = 768


@dataclass(frozen=True)
class DecodedImage:
    image: PILImage.Image  # EXIF-oriented RGB, reduced towards DECODE_MIN_SIDE
    format: str  # PIL's name for the file format, one of ALLOWED_FORMATS
    width: int  # of the whole image, upright
    height: int


def image_file_size_check(*, file: UploadedFile, label: str) -> None:
    """Refuse a file over UPLOAD_MAX_BYTES before any of it is hashed or decoded."""
    if file.size is not None and file.size > settings.UPLOAD_MAX_BYTES:
        raise UploadTooLarge(
            f"{label} is {file.size / 1e6:.1f} MB; the limit is "
            f"{settings.UPLOAD_MAX_BYTES / 1e6:.0f} MB"
        )


def image_file_decode(*, file: UploadedFile, label: str) -> DecodedImage:
    """Check and fully decode an uploaded image file within the upload limits.

    UPLOAD_MAX_BYTES, an allowed format, and UPLOAD_MAX_PIXELS read from the header before the
    pixels are decoded. Every byte is decoded (a truncated file is refused), but the picture is
    kept only at DECODE_MIN_SIDE: a full-size RGB copy of an 80-megapixel upload is 320 MB.
    ``label`` names the file in the messages ("holiday.jpg"). Raises ``UploadRejected``
    (``UploadTooLarge`` for bytes) with a readable reason.
    """
    image_format, _, _ = _image_file_header_check(file=file, label=label)
    try:
        file.seek(0)
        decoded = decode_image(
            file, max_pixels=settings.UPLOAD_MAX_PIXELS, min_side=DECODE_MIN_SIDE
        )
    except ImageDecodeError as exc:
        raise UploadRejected(f"{label}: {exc}") from exc
    finally:
        file.seek(0)
    return DecodedImage(decoded.image, image_format, decoded.width, decoded.height)


def image_query_decode(*, file: UploadedFile, label: str) -> PILImage.Image:
    """Check and decode a query image (search by image) at the size the models need.

    The upload limits hold, and a lower pixel limit, QUERY_IMAGE_MAX_PIXELS, for every image
    that cannot be decoded at reduced scale: only a single-scan JPEG can (libjpeg scales it by
    1/8 while decoding, in a few rows of memory). Everything else (PNG, TIFF, GIF, WebP, BMP, a
    progressive JPEG, whose every coefficient is held at once) is decoded whole first, at up to
    4 bytes a pixel (6 for a progressive JPEG's coefficients, ~15 for WebP; these two decode
    slowest and get a quarter of the limit), so a 12 KB 1-bit PNG of 80 megapixels would cost
    a request ~1 GB and seconds of CPU. Refused from the header, before any pixel is decoded,
    with a message saying what to send instead.
    """
    image_format, width, height = _image_file_header_check(file=file, label=label)
    kind = image_format
    if image_format == "JPEG":
        kind = "JPEG" if _jpeg_single_scan(file) else "progressive JPEG"
    limit = settings.QUERY_IMAGE_MAX_PIXELS
    # A quarter for the slow ones: libwebp decodes into a buffer of its own that Pillow copies
    # (~15 bytes a pixel), and every scan of a progressive JPEG re-reads all its coefficients.
    if kind in ("WEBP", "progressive JPEG"):
        limit //= 4
    if kind != "JPEG" and width * height > limit:
        raise UploadRejected(
            f"{label}: image too large to search with: {width}x{height} is "
            f"{width * height / 1e6:.1f} megapixels and the limit is {limit / 1e6:.1f} "
            f"for {kind} (a smaller copy finds the same matches)"
        )
    try:
        file.seek(0)
        return open_image(file, max_pixels=settings.UPLOAD_MAX_PIXELS, min_side=DECODE_MIN_SIDE)
    except ImageDecodeError as exc:
        raise UploadRejected(f"{label}: {exc}") from exc
    finally:
        file.seek(0)


def _image_file_header_check(*, file: UploadedFile, label: str) -> tuple[str, int, int]:
    """The format and size from ``file``'s header, within the upload limits."""
    image_file_size_check(file=file, label=label)
    try:
        file.seek(0)
        # PIL raises DecompressionBombError (not an OSError) on open for images far above its
        # own limit: that is the same "too large" refusal as ours below, not a server error.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(file) as probe:
                image_format = probe.format or ""
                width, height = probe.size
    except PILImage.DecompressionBombError as exc:
        raise UploadRejected(f"{label}: image too large: {exc}") from exc
    except (PILImage.UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UploadRejected(f"{label} is not an image we can read") from exc
    finally:
        file.seek(0)
    if image_format not in ALLOWED_FORMATS:
        raise UploadRejected(f"{label}: {image_format} images are not supported")
    if width * height > settings.UPLOAD_MAX_PIXELS:
        raise UploadRejected(f"{label}: image too large: {width}x{height}")
    return image_format, width, height


_JPEG_PROGRESSIVE_FRAMES = {0xC2, 0xC6, 0xCA, 0xCE}  # SOF markers of progressive frames
_JPEG_FRAMES = {0xC0, 0xC1, 0xC3, 0xC5, 0xC7, 0xC9, 0xCB, 0xCD, 0xCF} | _JPEG_PROGRESSIVE_FRAMES


def _jpeg_single_scan(file: UploadedFile) -> bool:
    """Whether the JPEG is one interleaved sequential scan, which libjpeg decodes row by row.

    Otherwise (progressive, or a first scan without every component) libjpeg keeps all the
    coefficients of the image until the last scan: 2 bytes each, up to 6 bytes a pixel, even
    when it outputs at 1/8 scale. Read from the markers before the first scan (a few KB).
    """
    file.seek(0)
    try:
        if file.read(2) != b"\xff\xd8":
            return False
        components = 0
        while True:
            marker = file.read(2)
            while marker[:1] == b"\xff" and marker[1:] == b"\xff":  # fill bytes
                marker = marker[1:] + file.read(1)
            if len(marker) < 2 or marker[0] != 0xFF:
                return False
            (length,) = struct.unpack(">H", file.read(2))
            segment = file.read(length - 2)
            if len(segment) != length - 2:
                return False
            if marker[1] in _JPEG_FRAMES:
                if marker[1] in _JPEG_PROGRESSIVE_FRAMES or components:
                    return False  # progressive, or a second frame (hierarchical)
                components = segment[5]
            elif marker[1] == 0xDA:  # the first scan: how many components it interleaves
                return components > 0 and segment[0] == components
    except (struct.error, IndexError):
        return False
    finally:
        file.seek(0)


class UploadForm(forms.Form):
    file = forms.FileField(label="Image")
    visibility = forms.ChoiceField(
        choices=Image.Visibility.choices,
        initial=Image.Visibility.PRIVATE,
        help_text=(
            "Private images are seen and searched by you alone on this site; the site's "
            "administrators can open them in its admin pages."
        ),
    )


# --- Collections and tokens: every POST is parsed by a form, so bad input is a 400 with a
# message (a NUL byte, a number that is not one, an unknown visibility), never a 500.

_DB_INT_MAX = 2**31 - 1  # ids are PostgreSQL integers


def _id_field(*, required: bool = True) -> forms.IntegerField:
    return forms.IntegerField(required=required, min_value=1, max_value=_DB_INT_MAX)


class CollectionCreateForm(forms.Form):
    name = forms.CharField(max_length=Collection._meta.get_field("name").max_length)
    description = forms.CharField(required=False, max_length=5000)
    visibility = forms.ChoiceField(choices=Collection.Visibility.choices, required=False)

    def clean_visibility(self) -> str:
        return self.cleaned_data.get("visibility") or Collection.Visibility.PRIVATE


class CollectionEditForm(forms.Form):
    remove = _id_field(required=False)
    visibility = forms.ChoiceField(choices=Collection.Visibility.choices, required=False)


class _CollectionTargetForm(forms.Form):
    """An existing collection or a new one by name, and the query that found the images."""

    missing_target = "choose a collection"
    collection_id = _id_field(required=False)
    new_name = forms.CharField(
        required=False, max_length=Collection._meta.get_field("name").max_length
    )
    query = forms.CharField(
        required=False, max_length=CollectionItem._meta.get_field("query").max_length
    )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if not self.errors and not data.get("new_name") and data.get("collection_id") is None:
            raise forms.ValidationError(self.missing_target)
        return data


class CollectionAddForm(_CollectionTargetForm):
    """Save one search result into an existing collection or into a new one by name."""

    image_id = _id_field()


class ImageIdsField(forms.Field):
    """Repeated ``image_id`` values (selection mode), each a positive database id."""

    widget = forms.MultipleHiddenInput

    def to_python(self, value: object) -> list[int]:
        values = value if isinstance(value, list | tuple) else [value] if value else []
        ids = []
        for raw in values:
            try:
                number = int(str(raw))
            except ValueError:
                raise forms.ValidationError(f"{str(raw)[:20]!r} is not an image id") from None
            if not 1 <= number <= _DB_INT_MAX:
                raise forms.ValidationError(f"{number} is not an image id")
            ids.append(number)
        return ids

    def validate(self, value: list[int]) -> None:
        if not value:
            raise forms.ValidationError("select at least one image")


class SelectionDeleteForm(forms.Form):
    image_id = ImageIdsField()


class SelectionSaveForm(_CollectionTargetForm):
    """Save the selected images into an existing collection or into a new one by name."""

    missing_target = "choose a collection or name a new one"
    image_id = ImageIdsField()


class TokenCreateForm(forms.Form):
    name = forms.CharField(required=False, max_length=ApiToken._meta.get_field("name").max_length)


class TokenRevokeForm(forms.Form):
    revoke = _id_field()


def form_error_message(form: forms.Form) -> str:
    """The first error of a bound, invalid form as one line for a message."""
    field, errors = next(iter(form.errors.items()))
    text = " ".join(str(error) for error in errors)
    return text if field == "__all__" else f"{field.replace('_', ' ')}: {text}"


class ImageVisibilityForm(forms.Form):
    visibility = forms.ChoiceField(choices=Image.Visibility.choices)


class ImageDetailsForm(forms.Form):
    """The owner's title and description of an image; both may be cleared."""

    title = forms.CharField(
        required=False,
        max_length=Image._meta.get_field("title").max_length,
        help_text="Shown as the image's name and read out as its description by screen readers.",
    )
    description = forms.CharField(
        required=False,
        max_length=Image._meta.get_field("description").max_length,
        widget=forms.Textarea(attrs={"rows": 4}),
    )


class CollectionDetailsForm(forms.Form):
    name = forms.CharField(max_length=Collection._meta.get_field("name").max_length)
    description = forms.CharField(
        required=False, max_length=5000, widget=forms.Textarea(attrs={"rows": 3})
    )


class CollectionItemNoteForm(forms.Form):
    note = forms.CharField(
        required=False,
        max_length=CollectionItem._meta.get_field("note").max_length,
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class CollectionItemMoveForm(forms.Form):
    direction = forms.ChoiceField(choices=[("earlier", "earlier"), ("later", "later")])
    # The 1-based place the page showed, so a resent form moves nothing twice.
    index = _id_field(required=False)


class BrowseForm(forms.Form):
    """The browse page's query string: which images, and which page of them."""

    show = forms.ChoiceField(
        required=False, choices=[(v, v) for v in ("all", "mine", "dataset", "public")]
    )
    page = forms.IntegerField(required=False, min_value=1, max_value=100_000)
    # Pages 1..pages at once: the address "Older images" leaves behind, so back, reload or a
    # copied link show everything that was on screen. Bounded: one page is 60 rows.
    pages = forms.IntegerField(required=False, min_value=1, max_value=50)


# --- Accounts


class SignupForm(UserCreationForm):
    """Sign-up with an optional e-mail address: without one, a forgotten password cannot be
    reset (no mail says so either way)."""

    email = forms.EmailField(
        required=False,
        max_length=254,
        help_text="Optional: where a password-reset link is sent; shown to no one else.",
    )

    class Meta(UserCreationForm.Meta):
        fields = ("username", "email")

    def clean_email(self) -> str:
        email = BaseUserManager.normalize_email(self.cleaned_data.get("email") or "")
        if email and user_email_taken(email=email):
            raise forms.ValidationError("Another account uses that e-mail address.")
        return email


class EmailChangeForm(forms.Form):
    """A new e-mail address (empty removes it), confirmed with the current password: whoever
    sets the address can reset the password, so a borrowed session alone must not."""

    email = forms.EmailField(required=False, max_length=254, label="E-mail address")
    password = forms.CharField(
        label="Current password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        if not self.user.check_password(password):
            raise forms.ValidationError("That is not your current password.")
        return password
