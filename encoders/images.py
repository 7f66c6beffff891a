"""Decoding image files into the RGB images the encoders take.

Decoding is where user uploads go wrong (not an image, truncated upload, decompression bomb), so
every such failure becomes one ``ImageDecodeError`` with a readable reason that a task can store
on the row and stop retrying.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import ExifTags, Image, UnidentifiedImageError

from .base import ImageDecodeError

DEFAULT_MAX_PIXELS = 80_000_000

# Modes Image.reduce averages correctly ("1", "P" and "PA" hold palette indices or bits).
_REDUCIBLE_MODES = {"L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F"}
# Rows of reduced output converted at once from the modes that are not.
_BAND_BLOCKS = 64

# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# White, because transparent pixels often hold black or garbage colour that would otherwise
# show through when alpha is dropped.
_ALPHA_BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class DecodedPicture:
    image: Image.Image  # RGB, upright, reduced when asked to
    width: int  # of the whole picture, upright, whatever ``image`` was reduced to
    height: int


def open_image(
    path_or_file: str | Path | IO[bytes],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> Image.Image:
    """``decode_image``'s picture alone."""
    return decode_image(path_or_file, max_pixels=max_pixels, min_side=min_side).image


def decode_image(
    path_or_file: str | Path | IO[bytes],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> DecodedPicture:
    """Open, fully decode, orient (EXIF) and convert an image to RGB.

    With ``min_side``, the image comes back smaller when it is at least twice that on its
    shorter side (or 16 times on its longer side): a JPEG is decoded at 1/2, 1/4 or 1/8 scale
    (``draft``), and what is still larger is box-averaged by an integer factor before it is
    rotated and converted, so neither the RGB copy nor anything after it is ever made at full
    size. The shorter side stays at least ``min_side`` unless the longer one is over 8 times
    that.

    Raises ``ImageDecodeError`` for anything that is not a decodable image within ``max_pixels``
    (None disables the size check). A missing or unreadable file raises the usual OSError: that
    is a storage problem, not a property of the image.
    """
    try:
        # PIL warns (and above twice its limit, raises) about huge images on open; the size
        # check below replaces that warning with an error of our own.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path_or_file)
        with image:
            width, height = image.size
            # Checked from the header, before load() allocates width * height pixels.
            if max_pixels is not None and width * height > max_pixels:
                raise ImageDecodeError(f"image too large: {width}x{height}")
            if min_side is not None and image.format == "JPEG":
                scale = _reduction(width, height, min_side)
                if scale >= 2:
                    image.draft(None, (int(width / scale), int(height / scale)))
            # Decode every byte now so a truncated or corrupt file fails here, not in a model.
            image.load()
            # Read before reducing: the reduced copy no longer carries a TIFF's own tags.
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            picture: Image.Image = image
            factor = int(_reduction(*picture.size, min_side)) if min_side is not None else 1
            if factor >= 2:
                picture = _reduced(picture, factor)
            transpose = _ORIENTATION_TRANSPOSE.get(orientation)
            if transpose is not None:
                picture = picture.transpose(transpose)
            rgb = to_rgb(picture)
            if orientation in (5, 6, 7, 8):  # a quarter turn
                width, height = height, width
            # Closing the file closes ``image`` too; hand back pixels of our own.
            return DecodedPicture(rgb.copy() if rgb is image else rgb, width, height)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("cannot identify image file (not an image, or unsupported)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from exc
    # PIL signals bad data with OSError ("image file is truncated"), SyntaxError (malformed
    # headers), ValueError and EOFError depending on the format plugin.
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise ImageDecodeError(f"cannot decode image: {reason}") from exc


def _reduction(width: int, height: int, min_side: int) -> float:
    """How much smaller than ``width`` x ``height`` the picture may be decoded: its shorter side
    down to ``min_side``, and its longer side at most 8 x ``min_side`` (a 16383 x 1525 strip
    needs no 100 MB copy: models crop or squash it to a square of at most 384 px anyway)."""
    return max(min(width, height) / min_side, max(width, height) / (8 * min_side))


def _reduced(image: Image.Image, factor: int) -> Image.Image:
    """``image`` box-averaged by ``factor``, in the smallest mode that averages correctly."""
    if image.mode in _REDUCIBLE_MODES:
        return image.reduce(factor)
    # Bits, palette indices and 16-bit pixels cannot be averaged as they are: converted a band
    # of rows at a time (RGBA keeps any transparency), so no converted copy is made at full size.
    mode = "L" if image.mode == "1" else "RGBA" if image.has_transparency_data else "RGB"
    width, height = image.size
    reduced = Image.new(mode, (-(-width // factor), -(-height // factor)))
    band = factor * _BAND_BLOCKS
    for top in range(0, height, band):
        rows = image.crop((0, top, width, min(top + band, height))).convert(mode)
        reduced.paste(rows.reduce(factor), (0, top // factor))
    return reduced


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as RGB, compositing any transparency onto white."""
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _ALPHA_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")
