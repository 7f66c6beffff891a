"""Template helpers for showing images and collections."""

from __future__ import annotations

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
    if image.title:
        return image.title
    captions = image.captions.all()
    if captions and captions[0].text:
        return captions[0].text
    return image.original_filename or UNTITLED
