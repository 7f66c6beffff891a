"""Writes for images: thumbnails (uploads and collections come with their issues)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from PIL import Image as PILImage
from PIL import ImageOps

from gallery.models import Image

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
