"""Input checks the gallery's services share: free text within a bound, a selection of image
ids, a visibility among a model's choices."""

from __future__ import annotations

from collections.abc import Sequence

from django.db.models import TextChoices

from kernel.errors import InvalidInput

# Selection mode acts on at most this many images per request: a few pages of results.
SELECTION_MAX = 500


def text_bounded(value: str, *, label: str, limit: int) -> str:
    """``value`` without surrounding whitespace, refused (not cut) when over ``limit``: a cut
    would silently lose the end of what the person wrote."""
    value = value.strip()
    if "\x00" in value:
        raise InvalidInput(f"the {label} contains a NUL character")
    if len(value) > limit:
        raise InvalidInput(f"the {label} is {len(value)} characters; the limit is {limit}")
    return value


def selection_ids(image_ids: Sequence[int]) -> list[int]:
    """The selected ids once each, in order; refused when none or over SELECTION_MAX."""
    ids = list(dict.fromkeys(image_ids))
    if not ids:
        raise InvalidInput("select at least one image")
    if len(ids) > SELECTION_MAX:
        raise InvalidInput(f"{len(ids)} images are selected; at most {SELECTION_MAX} at once")
    return ids


def visibility_check(visibility: str, *, choices: type[TextChoices]) -> None:
    """Refuse a ``visibility`` that is not one of ``choices`` (an image's or a collection's)."""
    if visibility not in choices.values:
        raise InvalidInput(f"visibility must be one of {', '.join(choices.values)}")
