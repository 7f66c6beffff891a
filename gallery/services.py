"""Writes for images: uploads and thumbnails."""

from __future__ import annotations

import hashlib
from pathlib import Path

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from PIL import Image as PILImage
from PIL import ImageOps

from gallery.models import Image
from workers.encoders import ImageDecodeError, open_image
from workers.pipeline import image_enqueue_embedding

THUMBNAIL_SIZES = (128, 256, 512)


def image_thumbnail_path(*, image: Image, size: int) -> Path:
    """The path of a JPEG thumbnail no larger than ``size`` px, made once and kept on disk."""
    if size not in THUMBNAIL_SIZES:
        raise ValueError(f"thumbnail size must be one of {THUMBNAIL_SIZES}")
    path = Path(settings.MEDIA_ROOT) / "thumbs" / str(size) / f"{image.sha256}.jpg"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with image.file.open("rb") as source, PILImage.open(source) as picture:
        thumb = ImageOps.exif_transpose(picture).convert("RGB")
        thumb.thumbnail((size, size))
        # Write to a temporary name and rename, so a concurrent reader never sees half a file.
        partial = path.with_suffix(f".{id(thumb)}.part")
        thumb.save(partial, "JPEG", quality=85)
        partial.replace(path)
    return path


class UploadRejected(ValueError):
    """An upload we refuse, with a message meant for the person who sent it."""


ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}


def image_upload(
    *, owner: AbstractBaseUser, file: UploadedFile, visibility: str = Image.Visibility.PRIVATE
) -> Image:
    """Store an uploaded image for ``owner`` and queue its embedding once committed.

    Refuses files over UPLOAD_MAX_BYTES or UPLOAD_MAX_PIXELS and anything that does not decode
    completely, with a readable reason; nothing is stored then. Uploading the same bytes again
    returns the image already stored.
    """
    if file.size is not None and file.size > settings.UPLOAD_MAX_BYTES:
        raise UploadRejected(
            f"{file.name} is {file.size / 1e6:.1f} MB; the limit is "
            f"{settings.UPLOAD_MAX_BYTES / 1e6:.0f} MB"
        )
    digest = hashlib.sha256()
    for chunk in file.chunks():
        digest.update(chunk)
    sha256 = digest.hexdigest()
    existing = Image.objects.filter(source=Image.Source.UPLOAD, owner=owner, sha256=sha256).first()
    if existing is not None:
        return existing

    try:
        file.seek(0)
        with PILImage.open(file) as probe:
            image_format = probe.format or ""
    except (PILImage.UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UploadRejected(f"{file.name} is not an image we can read") from exc
    if image_format not in ALLOWED_FORMATS:
        raise UploadRejected(f"{file.name}: {image_format} images are not supported")
    try:
        file.seek(0)
        decoded = open_image(file, max_pixels=settings.UPLOAD_MAX_PIXELS)
    except ImageDecodeError as exc:
        raise UploadRejected(f"{file.name}: {exc}") from exc
    file.seek(0)

    image = Image(
        source=Image.Source.UPLOAD,
        owner=owner,
        visibility=visibility,
        sha256=sha256,
        original_filename=Path(file.name or "upload").name[:255],
        width=decoded.width,
        height=decoded.height,
    )
    with transaction.atomic():
        image.file.save(f"upload.{image_format.lower()}", file, save=False)
        try:
            with transaction.atomic():
                image.save()
        except IntegrityError:
            # The same person sent the same bytes twice at once: keep the first.
            return Image.objects.get(source=Image.Source.UPLOAD, owner=owner, sha256=sha256)
        image_enqueue_embedding(image_id=image.pk)
    return image
