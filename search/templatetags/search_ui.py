"""Template helpers for the search bar every page carries."""

from __future__ import annotations

from django import template

from gallery.templatetags.gallery_ui import image_display_name
from search.model_choice import search_model_choices
from search.ranking import SearchHit
from search.selectors import MAX_QUERY_CHARS
from search.smart import SmartOwnerControls

register = template.Library()


@register.simple_tag
def search_models() -> list[str]:
    """The models the header's picker offers: enabled ones with embeddings, default first, then
    fused pairs ("A+B") of those whose embeddings are complete."""
    return search_model_choices()


@register.simple_tag
def query_max_chars() -> int:
    """The longest text query the server answers: the search field's ``maxlength``."""
    return MAX_QUERY_CHARS


@register.filter
def percent_of(score: float, best: float) -> int:
    """A score as a whole percentage of the query's best score (0 for anything at or below 0),
    which people read more easily than a raw cosine."""
    if best is None or best <= 0:
        return 0
    return max(0, min(100, round(100 * float(score) / float(best))))


@register.filter
def hit_name(hit: SearchHit) -> str:
    """What a search hit's image is called (see ``gallery_ui.image_name``), from the captions
    the search fetched with it."""
    return image_display_name(hit.image, first_caption=hit.captions[0] if hit.captions else "")


@register.filter
def pinned_in(image_id: int, smart: SmartOwnerControls | None) -> bool:
    """Whether the owner of the saved search on the page pinned this image (False for anyone
    else: they get no controls)."""
    return smart is not None and image_id in smart.pinned_ids
