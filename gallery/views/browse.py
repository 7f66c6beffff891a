"""Browse: the home page grid."""

from __future__ import annotations

from urllib.parse import urlencode

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from gallery.forms import (
    BrowseForm,
)
from gallery.selectors import (
    images_browse,
)
from gallery.views._common import selection_collections
from kernel.db_routing import reads_from_replica

BROWSE_PAGE_SIZE = 60


@reads_from_replica
def home(request: HttpRequest) -> HttpResponse:
    """Browse: the images this person may see, newest first, grouped by day, a page at a time.

    htmx appends the next page in place and replaces the address with one that lists every page
    so far (``pages``), so back, reload and a copied link show the same grid; without JS
    "Older images" opens that address (everything so far plus the next page).
    """
    form = BrowseForm(request.GET)
    data = form.cleaned_data if form.is_valid() else {}
    show = data.get("show") or "all"
    images = images_browse(user=request.user, show=show)
    partial = bool(request.headers.get("HX-Request"))
    pages = data.get("pages") if not partial and not data.get("page") else None
    if pages:
        page = Paginator(images, BROWSE_PAGE_SIZE * pages).get_page(1)
        last = pages
    else:
        page = Paginator(images, BROWSE_PAGE_SIZE).get_page(data.get("page") or 1)
        last = page.number
    context = {
        "page": page, "show": show, "filters": _browse_filters(request),
        "next_page": last + 1 if page.has_next() else None,
        "selection_collections": selection_collections(request),
    }  # fmt: skip
    if partial:
        response = render(request, "gallery/_browse_page.html", context)
        response["HX-Replace-Url"] = f"{request.path}?{urlencode({'show': show, 'pages': last})}"
        return response
    return render(request, "gallery/home.html", context)


def _browse_filters(request: HttpRequest) -> list[tuple[str, str]]:
    filters = [("all", "Everything")]
    if request.user.is_authenticated:
        filters.append(("mine", "My images"))
    return [*filters, ("dataset", "Data set"), ("public", "Public")]
