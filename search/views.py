"""Search pages: parse the form, call one selector, render. The searches themselves, and every
message they give, are the API's too (``search.selectors``, ``search.ranking``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from gallery.selectors import collection_get_viewable, collections_of
from gallery.services.collections import (
    collection_smart_create,
    collection_smart_hide,
    collection_smart_pin,
)
from kernel.db_routing import reads_from_replica
from kernel.errors import ApplicationError, InvalidInput, NotFound
from kernel.params import int_param
from kernel.views import error_response
from search.forms import ImageQueryForm, SavedSearchForm, SearchForm
from search.model_choice import search_models_available
from search.query_images import QueryImage, query_image_recall, query_image_remember
from search.ranking import (
    MAX_K,
    MAX_OFFSET,
    SearchFilters,
    SearchPage,
    SearchRequest,
    images_search_by_vector,
)
from search.rate_limits import image_search_rate_check
from search.selectors import (
    image_query_embed,
    images_search_by_text,
    images_similar,
)
from search.smart import smart_collection_page, smart_owner_controls
from workers.models import EmbeddingModel
from workers.selectors import embedding_progress


def embedding_progress_json(request: HttpRequest) -> HttpResponse:
    """Per-model backfill progress for the admin and scripts (staff only: counts all uploads).

    An API URL, so JSON errors (401 signed out, 403 not staff) rather than a redirect to the
    admin's sign-in page.
    """
    if not request.user.is_authenticated:
        return error_response(request, 401, "Sign in", "sign in as staff to see this")
    if not request.user.is_staff:
        return error_response(request, 403, "Forbidden", "only staff may see this")
    models = [
        {
            **embedding_progress(model_id=state.model_id).as_dict(),
            "enabled": state.enabled,
            "default": state.is_default,
        }
        for state in EmbeddingModel.objects.all()
    ]
    return JsonResponse({"models": models})


# A search page's "run": one page of results; keyword overrides (k, offset) fetch another.
Run = Callable[..., SearchPage]


def _render_results(
    request: HttpRequest,
    form: SearchForm,
    run: Run,
    *,
    title: str = "Search",
    more_params: dict[str, str] | None = None,
    query_image: QueryImage | None = None,
    status: int = 200,
    extra: dict[str, object] | None = None,
) -> HttpResponse:
    """Render the search page with what ``run`` finds; an ``ApplicationError`` it raises is
    shown on the page with its HTTP status (the pages' one mapping of errors to HTTP).

    An htmx "load more" request gets only the next cards and the next "load more" button, and
    replaces the address with one that shows every result so far (``shown``): the back
    button, a reload or a copied link then bring back the whole list, not its first page.
    """
    partial = bool(request.headers.get("HX-Request"))
    context: dict[str, object] = {
        "form": form,
        "image_form": ImageQueryForm(),
        "title": title,
        "query_text": request.GET.get("q", ""),
        "query_model": request.GET.get("model", ""),
        "query_image": query_image,
        # A saved search's owner controls (search.smart.SmartOwnerControls); none elsewhere.
        "smart": None,
        **(extra or {}),
    }
    page_size = 0
    try:
        # A POST (search by image) answers with a redirect to its GET URL; never page it.
        shown = _shown(request) if request.method == "GET" and not partial else None
        first = run()
        page_size = first.k
        page = _results_up_to(run, first, shown) if shown else first
    except ApplicationError as exc:
        context["error"] = exc.message
        status = exc.status
    else:
        context["page"] = page
        context["best"] = _best_score(request, page)
        context["sort_links"] = _sort_links(request, page)
        context["chips"] = _chip_links(request, page)
        context["words_link"] = _words_link(request)
        if request.user.is_authenticated and not partial:
            # For the selection bar's "save to" menu.
            context["selection_collections"] = list(collections_of(user=request.user))
        if page.next_offset is not None:
            params = {**(more_params or {}), "model": page.model_id, "k": str(page_size)}
            params.update(offset=str(page.next_offset), best=f"{context['best']:.6f}")
            for name in ("source", "sort", "hybrid"):
                value = form.data.get(name) if form.is_bound else None
                if value:
                    params[name] = value
            context["more_url"] = f"{request.path}?{urlencode(params)}"
            # Without JavaScript the link opens the whole list so far plus the next page.
            context["more_page_url"] = _shown_url(request, page.next_offset + page_size)
    template = "search/_hits.html" if partial else "search/search.html"
    response = render(request, template, context, status=status)
    if partial and "page" in context:
        response["HX-Replace-Url"] = _shown_url(request, page.offset + len(page.hits))
    return response


def _shown(request: HttpRequest) -> int | None:
    """The ``shown`` parameter: list at least this many results from the page's offset."""
    raw = request.GET.get("shown", "")
    if not raw:
        return None
    return int_param(raw, name="shown", low=1, high=MAX_OFFSET + MAX_K)


def _results_up_to(run: Run, first: SearchPage, shown: int) -> SearchPage:
    """``first`` followed by the next pages (at most MAX_K results each) until ``shown``
    results are listed: exactly the cards "More results" had appended."""
    hits, last = list(first.hits), first
    while len(hits) < shown and last.next_offset is not None and last.hits:
        last = run(offset=first.offset + len(hits), k=min(MAX_K, shown - len(hits)))
        hits.extend(last.hits)
    # k is the number listed, so that next_offset is where "More results" goes on from.
    return dataclasses.replace(first, hits=hits, k=len(hits), has_more=last.has_more)


def _shown_url(request: HttpRequest, shown: int) -> str:
    """This search from its start with ``shown`` results listed (no offset, no carried best:
    the first page's best is the scale again)."""
    params = {k: v for k, v in request.GET.items() if k not in {"offset", "best", "shown"}}
    return f"{request.path}?{urlencode({**params, 'shown': str(shown)})}"


def _best_score(request: HttpRequest, page: SearchPage) -> float:
    """The query's best score: scores are shown relative to it. Later pages carry the first
    page's best in the URL, so their bars stay on the same scale."""
    try:
        best = float(request.GET.get("best", ""))
    except ValueError:
        best = None
    if best is None or not 0 < best <= 1:
        # In date order the best hit need not come first; the page says which it was.
        first = page.hits[0].score if page.hits else 1.0
        best = page.best if page.best is not None else first
    return best


def _sort_links(request: HttpRequest, page: SearchPage) -> list[tuple[str, str, bool]]:
    """(label, URL, current) for "Sort: relevance | newest": the same query from its start."""
    params = {k: v for k, v in request.GET.items() if k not in {"sort", "offset", "best", "shown"}}
    links = []
    for value, label in (("relevance", "relevance"), ("date", "newest")):
        query = urlencode({**params, "sort": value} if value != "relevance" else params)
        links.append((label, f"{request.path}?{query}", page.sort == value))
    return links


def _words_link(request: HttpRequest) -> tuple[str, bool]:
    """(URL, on) of the same search with "match words too" (hybrid ranking) switched."""
    on = request.GET.get("hybrid", "") not in ("", "0", "false")
    params = {
        k: v for k, v in request.GET.items() if k not in {"hybrid", "offset", "best", "shown"}
    }
    if not on:
        params["hybrid"] = "1"
    return f"{request.path}?{urlencode(params)}", on


CHIP_LABELS = {"date": "Taken", "place": "Place", "exclude": "Without", "must": "Exactly"}


def _chip_links(request: HttpRequest, page: SearchPage) -> list[dict[str, str]]:
    """The chips of how a text query was read, each with the URL of the same search without
    it (removing a chip re-runs the search from its start)."""
    parsed = page.parsed
    if parsed is None:
        return []
    params = {k: v for k, v in request.GET.items() if k not in {"q", "offset", "best", "shown"}}
    chips = []
    for chip in parsed.chips:
        rest = parsed.without(chip)
        url = f"{request.path}?{urlencode({**params, 'q': rest})}" if rest else request.path
        label = CHIP_LABELS[chip.kind]
        chips.append({"kind": chip.kind, "label": label, "text": chip.text, "value": chip.value,
                      "url": url})  # fmt: skip
    return chips


# What the form's fields are called in messages ("k: Ensure..." meant nothing to people).
FIELD_NAMES = {"k": "number of results", "min_score": "minimum score", "q": "query"}


def _page_args(form: SearchForm) -> tuple[str | None, SearchRequest]:
    """The model choice, and the paging, filter and order every search takes, from a validated
    form."""
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        raise InvalidInput(
            f"{FIELD_NAMES.get(field, field)}: {' '.join(str(error) for error in errors)}"
        )
    data = form.cleaned_data
    search = SearchRequest(
        k=20 if data.get("k") is None else data["k"],
        offset=data.get("offset") or 0,
        filters=SearchFilters(source=data.get("source") or None),
        min_score=data.get("min_score"),
        sort=data.get("sort") or "relevance",
        hybrid=bool(data.get("hybrid")),
    )
    return data.get("model") or None, search


def _paged(search: SearchRequest, page: dict[str, int]) -> SearchRequest:
    """``search`` with the page a run asks for instead (``k`` and ``offset``, when given)."""
    k, offset = page.get("k", search.k), page.get("offset", search.offset)
    return dataclasses.replace(search, k=k, offset=offset)


@reads_from_replica
def search_page(request: HttpRequest) -> HttpResponse:
    form = SearchForm(request.GET or None)
    if not request.GET.get("q"):
        return render(
            request,
            "search/search.html",
            {
                "form": SearchForm(),
                "image_form": ImageQueryForm(),
                "models": search_models_available(),
                "query_model": request.GET.get("model", ""),
            },
        )

    def run(**page: int) -> SearchPage:
        model_id, search = _page_args(form)
        return images_search_by_text(
            user=request.user, text=form.cleaned_data.get("q"), model_id=model_id,
            search=_paged(search, page),
        )  # fmt: skip

    return _render_results(request, form, run, more_params={"q": request.GET["q"]})


@require_http_methods(["GET", "POST"])
@reads_from_replica
def search_by_image_page(request: HttpRequest) -> HttpResponse:
    """POST: embed the query image, keep its embedding under a key and redirect to a GET URL
    that can be reloaded, shared and paged. GET: the results for a kept query image."""
    form = SearchForm(request.GET)
    if request.method == "GET":
        query = query_image_recall(key=request.GET.get("key", ""))

        def run_kept(**page: int) -> SearchPage:
            if query is None:
                raise NotFound(
                    "This image search has expired (they are kept for a day). "
                    "Choose the image again to search with it."
                )
            _, search = _page_args(form)  # the kept vector is its model's, whatever is asked
            return images_search_by_vector(
                user=request.user, model_id=query.model_id, vector=query.vector,
                search=_paged(search, page),
            )  # fmt: skip

        key = query.key if query else ""
        return _render_results(
            request, form, run_kept, title="Search by image", more_params={"key": key},
            query_image=query,
        )  # fmt: skip

    image_form = ImageQueryForm(request.POST, request.FILES)
    image_search_rate_check(request)
    kept: list[QueryImage] = []

    def run(**page: int) -> SearchPage:
        model_id, search = _page_args(form)
        if not image_form.is_valid():
            raise InvalidInput("choose an image file to search with")
        model_id, vector, picture = image_query_embed(
            file=image_form.cleaned_data["image"], model_id=model_id
        )
        query = query_image_remember(model_id=model_id, vector=list(vector), picture=picture)
        if query is not None:
            kept.append(query)
        return images_search_by_vector(
            user=request.user, model_id=model_id, vector=vector,
            search=_paged(search, page),
        )  # fmt: skip

    response = _render_results(request, form, run, title="Search by image")
    if kept and response.status_code == 200:
        # Results live at a GET URL (shareable, reloadable, back-button safe).
        params = {"key": kept[0].key, "model": kept[0].model_id}
        for name in ("source", "sort"):
            if request.GET.get(name):
                params[name] = request.GET[name]
        return redirect(f"{reverse('search-image')}?{urlencode(params)}", permanent=False)
    return response


@reads_from_replica
def similar_page(request: HttpRequest, image_id: int) -> HttpResponse:
    form = SearchForm(request.GET)

    def run(**page: int) -> SearchPage:
        model_id, search = _page_args(form)
        return images_similar(
            user=request.user, image_id=image_id, model_id=model_id,
            search=_paged(search, page),
        )  # fmt: skip

    return _render_results(request, form, run, title="Similar images")


# --- Saved searches (smart collections) ------------------------------------------------------


class _SignedInRequest(HttpRequest):
    """What a ``login_required`` view receives (an annotation only): a signed-in ``user``."""

    user: User


@reads_from_replica
def smart_collection_view(request: HttpRequest, collection_id: int) -> HttpResponse:
    """A saved search's page: what it matches now, as this viewer may see it. A collection
    shared by link is opened with its token (``?token=``)."""
    token = request.GET.get("token") or None
    collection = collection_get_viewable(
        user=request.user, collection_id=None if token else collection_id, share_token=token
    )
    if collection is None or collection.pk != collection_id or not collection.smart_query:
        return error_response(request, 404, "Not found", "no such saved search")
    form = SearchForm(request.GET)

    def run(**page: int) -> SearchPage:
        _, search = _page_args(form)
        paged = _paged(search, page)
        return smart_collection_page(
            user=request.user, collection=collection, k=paged.k, offset=paged.offset
        )

    # The pin and hide buttons (and the list of hidden images) are the owner's alone.
    extra: dict[str, object] = {
        "smart": smart_owner_controls(user=request.user, collection=collection)
    }
    return _render_results(
        request, form, run, title=collection.name, more_params={"token": token or ""}, extra=extra
    )


@login_required
@require_POST
def search_save(request: _SignedInRequest) -> HttpResponse:
    """Save the search on the page as a collection that keeps finding its matches."""
    form = SavedSearchForm(request.POST)
    try:
        if not form.is_valid():
            field, errors = next(iter(form.errors.items()))
            raise InvalidInput(f"{field}: {' '.join(str(e) for e in errors)}")
        data = form.cleaned_data
        collection = collection_smart_create(
            owner=request.user, name=data["name"], query=data["q"], model_id=data["model"] or "",
            source=data["source"] or "", hybrid=bool(data["hybrid"]),
            min_score=data["min_score"], visibility=data["visibility"] or "private",
        )  # fmt: skip
    except ApplicationError as exc:
        return error_response(request, exc.status, "Not saved", exc.message)
    return redirect("search-saved", collection_id=collection.pk)


def _smart_changed(
    request: HttpRequest, collection_id: int, change: Callable[[], None], answer: dict[str, object]
) -> HttpResponse:
    """Run an owner's change to a saved search; the page's script (asking for JSON) gets
    ``answer``, a plain form a redirect back to the page (post/redirect/get)."""
    try:
        change()
    except ApplicationError as exc:
        return error_response(request, exc.status, "Not changed", exc.message)
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse(answer)
    return redirect("search-saved", collection_id=collection_id)


@login_required
@require_POST
def smart_collection_hide(
    request: _SignedInRequest, collection_id: int, image_id: int
) -> HttpResponse:
    """The owner hides an image from a saved search's matches (``hidden=0`` shows it again)."""
    hidden = request.POST.get("hidden", "1") != "0"
    return _smart_changed(
        request, collection_id,
        lambda: collection_smart_hide(
            user=request.user, collection_id=collection_id, image_id=image_id, hidden=hidden
        ),
        {"image_id": image_id, "hidden": hidden},
    )  # fmt: skip


@login_required
@require_POST
def smart_collection_pin(
    request: _SignedInRequest, collection_id: int, image_id: int
) -> HttpResponse:
    """The owner pins an image to the top of a saved search (``pinned=0`` unpins it)."""
    pinned = request.POST.get("pinned", "1") != "0"
    return _smart_changed(
        request, collection_id,
        lambda: collection_smart_pin(
            user=request.user, collection_id=collection_id, image_id=image_id, pinned=pinned
        ),
        {"image_id": image_id, "pinned": pinned},
    )  # fmt: skip
