"""Template helpers for showing images and collections."""

from __future__ import annotations

from datetime import datetime

from django import template

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
    """When a card says its image is from: when the photo was taken where that is known (a
    ``taken_at`` the upload read from EXIF), else when it was uploaded."""
    taken = getattr(image, "taken_at", None)
    return taken or image.created_at
