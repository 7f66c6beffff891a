"""Decoding image files people send: uploads (checked and decoded whole within the upload
limits) and query images (search by image, under a lower pixel limit for what cannot be decoded
at reduced scale). Every refusal is an ``UploadRejected`` with a reason for the sender."""

from __future__ import annotations

import re
import struct
import warnings
from dataclasses import dataclass

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from PIL import Image as PILImage

from encoders import ImageDecodeError, decode_image, open_image
from kernel.errors import InvalidInput, TooLarge


class UploadRejected(InvalidInput):
    """An upload we refuse, with a message meant for the person who sent it."""


class UploadTooLarge(UploadRejected, TooLarge):
    """An upload over UPLOAD_MAX_BYTES (HTTP 413 where it reaches the API)."""


# HEIF is phones' HEIC (Pillow reads it through pillow-heif, registered in GalleryConfig).
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF"}
# What a browser shows as it is; the others are shown through a JPEG made from them.
BROWSER_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}
# Stored files are named by their format (``upload.<format>``; the data set's are .jpg).
_BROWSER_EXTENSIONS = {"jpeg", "jpg", "png", "webp", "gif", "bmp"}


def file_shown_by_browsers(name: str) -> bool:
    """Whether a stored image file (by its name) is one every browser shows as it is."""
    return name.rsplit(".", 1)[-1].lower() in _BROWSER_EXTENSIONS


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
        # Pillow's own words name its limit, not the site's, and call the file an attack.
        raise UploadRejected(f"{label}: image too large: {_pixels_over(exc)}") from exc
    except (PILImage.UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UploadRejected(f"{label} is not an image we can read") from exc
    finally:
        file.seek(0)
    if image_format not in ALLOWED_FORMATS:
        raise UploadRejected(f"{label}: {image_format} images are not supported")
    if width * height > settings.UPLOAD_MAX_PIXELS:
        raise UploadRejected(
            f"{label}: image too large: {width}x{height} is {width * height / 1e6:.1f} "
            f"megapixels and the limit is {settings.UPLOAD_MAX_PIXELS / 1e6:.1f}"
        )
    return image_format, width, height


def _pixels_over(error: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(error))
    limit = f"the limit is {settings.UPLOAD_MAX_PIXELS / 1e6:.1f}"
    if found is None:
        return f"far more megapixels than {limit}"
    return f"{int(found[1]) / 1e6:.1f} megapixels and {limit}"


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
