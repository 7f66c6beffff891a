"""Decoding image files into the RGB images the encoders take.

Decoding is where user uploads go wrong (not an image, truncated upload, decompression bomb), so
every such failure becomes one ``ImageDecodeError`` with a readable reason that a task can store
on the row and stop retrying.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

from .base import ImageDecodeError

DEFAULT_MAX_PIXELS = 80_000_000

# White, because transparent pixels often hold black or garbage colour that would otherwise
# show through when alpha is dropped.
_ALPHA_BACKGROUND = (255, 255, 255)


def open_image(
    path_or_file: str | Path | IO[bytes], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Open, fully decode, orient (EXIF) and convert an image to RGB.

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
            # Decode every byte now so a truncated or corrupt file fails here, not in a model.
            image.load()
            oriented = ImageOps.exif_transpose(image)
            return to_rgb(oriented)
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


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as RGB, compositing any transparency onto white."""
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _ALPHA_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")
