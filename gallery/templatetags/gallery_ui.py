"""Template helpers for showing images and collections."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from django import template
from django.utils import timezone
from django.utils.dateformat import format as date_format

from gallery.decoding import file_shown_by_browsers
from gallery.exif import camera_name
from gallery.models import Image

register = template.Library()

UNTITLED = "Untitled image"


@register.filter
def image_name(image: Image) -> str:
    """What an image is called wherever it is shown and read out (its alt text): the owner's
    title, else its first caption, else its file name, else a generic name.

    Lists prefetch ``captions``; without the prefetch this costs one query per image.
    """
    captions = image.captions.all()
    return image_display_name(image, first_caption=captions[0].text if captions else "")


def image_display_name(image: Image, *, first_caption: str) -> str:
    """``image_name`` for an image whose first caption is already at hand (search hits)."""
    return image.title or first_caption or image.original_filename or UNTITLED


@register.filter
def image_when(image: Image) -> datetime:
    """When a card says its image is from: when the photo was taken where that is known (its
    EXIF, as the camera's clock showed it), else when it was uploaded (``Image.when``)."""
    return image.when


@register.filter
def day_label(day: date) -> str:
    """A day header: "Today", "Yesterday", else "Saturday, 14 June 2025"."""
    today = timezone.localdate()
    if day == today:
        return "Today"
    if day == today - timedelta(days=1):
        return "Yesterday"
    return date_format(day, "l, j F Y")


@register.filter
def image_camera(image: Image) -> str:
    """The camera that took the photo ("Canon EOS R6"), or "" when its EXIF did not say."""
    return camera_name(make=image.camera_make, model=image.camera_model)


@register.filter
def utc_offset(minutes: int | None) -> str:
    """ "UTC+02:00" for an offset in minutes east of UTC; "" when unknown."""
    if minutes is None:
        return ""
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours:02d}:{rest:02d}"


@register.filter
def shown_as_is(image: Image) -> bool:
    """Whether browsers show the image's own file (JPEG, PNG...), not a JPEG copy (HEIC, TIFF)."""
    return file_shown_by_browsers(image.file.name or "")
