"""Browse: the home page grid."""

from __future__ import annotations

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

BROWSE_PAGE_SIZE = 60


def home(request: HttpRequest) -> HttpResponse:
    """Browse: the images this person may see, newest first, grouped by day, a page at a time
    (htmx appends the next page in place; without JS it is an ordinary link)."""
    form = BrowseForm(request.GET)
    data = form.cleaned_data if form.is_valid() else {}
    show = data.get("show") or "all"
    paginator = Paginator(images_browse(user=request.user, show=show), BROWSE_PAGE_SIZE)
    page = paginator.get_page(data.get("page") or 1)
    context = {
        "page": page, "show": show, "filters": _browse_filters(request),
        "selection_collections": selection_collections(request),
    }  # fmt: skip
    if request.headers.get("HX-Request"):
        return render(request, "gallery/_browse_page.html", context)
    return render(request, "gallery/home.html", context)


def _browse_filters(request: HttpRequest) -> list[tuple[str, str]]:
    filters = [("all", "Everything")]
    if request.user.is_authenticated:
        filters.append(("mine", "My images"))
    return [*filters, ("dataset", "Data set"), ("public", "Public")]
