"""The permission matrix: every route of the URL conf, opened by an anonymous visitor, the owner
of a private image and a private collection, another user, and staff. Routes come from
``get_resolver()``, so a new route fails here until its row is added below."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest
from django.contrib.contenttypes.models import ContentType
from django.db.models import Model
from django.test import Client
from django.urls import URLResolver, get_resolver, reverse

from gallery.models import Collection, CollectionItem, Image
from search.models import EvaluationRun
from tests.factories import CaptionFactory, ImageFactory, UserFactory
from workers.models import EmbeddingJob
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
ROLES = ("anonymous", "owner", "other", "staff")
LOGIN = 302  # a redirect to a sign-in page

# GET status per role (anonymous, owner, other, staff) for every route outside the admin, with
# the private image and private collection as arguments.
EXPECTED: dict[str, tuple[int, int, int, int]] = {
    "home": (200, 200, 200, 200),
    "health": (200, 200, 200, 200),  # database and cache reached (tests/config/test_cache.py)
    # Every part reached; /metrics answers loopback (the test client's address) or a token
    # (tests/workers/test_healthz_metrics.py).
    "healthz": (200, 200, 200, 200),
    "metrics": (200, 200, 200, 200),
    "/favicon.ico": (301, 301, 301, 301),  # to the static icon
    "image": (404, 200, 404, 404),
    "image-status": (404, 200, 404, 404),
    "image-visibility": (LOGIN, 405, 405, 405),  # POST only, by the owner (test_image_page.py)
    "image-delete": (LOGIN, 405, 405, 405),
    "image-details": (LOGIN, 405, 405, 405),  # POST only, by the owner (test_image_details.py)
    "collection-picker": (LOGIN, 200, 404, 404),  # nobody else may save a private image
    "image-file": (404, 200, 404, 404),
    "image-thumb": (404, 200, 404, 404),
    "image-thumb-size": (404, 200, 404, 404),
    "upload": (LOGIN, 200, 200, 200),
    "signup": (200, 200, 200, 200),
    "account": (LOGIN, 200, 200, 200),  # each user's own things (tests/gallery/test_account.py)
    "api-tokens": (LOGIN, 200, 200, 200),
    "collections": (LOGIN, 200, 200, 200),
    "collections-public": (200, 200, 200, 200),  # only public images (test_collections_public)
    "collection-add": (LOGIN, 405, 405, 405),
    "collection": (404, 200, 404, 404),
    "collection-edit": (LOGIN, 405, 405, 405),
    # POST only, by the collection's owner; anyone else 404 (test_collection_page.py)
    "collection-details": (LOGIN, 405, 405, 405),
    "collection-item-note": (LOGIN, 405, 405, 405),
    "collection-item-move": (LOGIN, 405, 405, 405),
    "collection-item-remove": (LOGIN, 405, 405, 405),
    "collection-share-rotate": (LOGIN, 405, 405, 405),  # POST only (test_share_links.py)
    "collection-shared": (404, 404, 404, 404),  # a private collection's link opens nothing
    "selection-save": (LOGIN, 405, 405, 405),  # POST only, every id checked (test_selection.py)
    "selection-delete": (LOGIN, 405, 405, 405),
    "search": (200, 200, 200, 200),
    "search-image": (404, 404, 404, 404),  # GET shows a stored result by its key; none given
    "similar": (404, 200, 404, 404),
    "login": (200, 200, 200, 200),
    "logout": (405, 405, 405, 405),
    "password_change": (LOGIN, 200, 200, 200),
    "password_change_done": (LOGIN, 200, 200, 200),
    "password_reset": (200, 200, 200, 200),
    "password_reset_done": (200, 200, 200, 200),
    "password_reset_confirm": (200, 200, 200, 200),  # "invalid link"
    "password_reset_complete": (200, 200, 200, 200),
    "embedding-progress": (401, 403, 403, 200),
    "admin-replicas": (LOGIN, LOGIN, LOGIN, 200),  # the admin's sign-in page for non-staff
    "api:openapi-json": (200, 200, 200, 200),
    "api:openapi-view": (200, 200, 200, 200),
    "api:api-root": (404, 404, 404, 404),
    "api:search_text": (200, 200, 200, 200),
    "api:search_image": (405, 405, 405, 405),
    "api:image_similar": (404, 200, 404, 404),
    "api:image_region": (404, 200, 404, 404),  # a region of an image one may see
    # Saved searches: the matrix's private collection is not one, so 404 for everyone
    # (tests/search/test_smart_collections.py opens real ones).
    "api:collection_matches": (404, 404, 404, 404),
    "search-saved": (404, 404, 404, 404),
    "search-save": (LOGIN, 405, 405, 405),
    "search-saved-hide": (LOGIN, 405, 405, 405),
    "search-saved-pin": (LOGIN, 405, 405, 405),  # POST only (test_smart_collection_controls.py)
    "api:models": (200, 200, 200, 200),
    "api:unknown_path": (404, 404, 404, 404),
}
QUERY = {"search": "?q=dog", "api:search_text": "?q=dog"}


def routes(patterns=None, namespace: str = "", prefix: str = "") -> Iterator[tuple[str, str, list]]:
    """(key, name, argument names) of every route: the key is the namespaced name, or "/path"
    for an unnamed route."""
    for key, name, arguments, _ in routes_with_models(patterns, namespace, prefix):
        yield key, name, arguments


def routes_with_models(
    patterns=None, namespace: str = "", prefix: str = ""
) -> Iterator[tuple[str, str, list, type[Model] | None]]:
    """``routes()`` plus the model of each ModelAdmin page (None elsewhere): the admin hangs
    its ModelAdmin on every view it wraps."""
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(entry, URLResolver):
            inner = f"{entry.namespace}:" if entry.namespace else namespace
            yield from routes_with_models(entry.url_patterns, inner, prefix + str(entry.pattern))
        else:
            arguments = list(entry.pattern.regex.groupindex)
            model_admin = getattr(entry.callback, "model_admin", None)
            model = model_admin.model if model_admin is not None else None
            if entry.name:
                yield f"{namespace}{entry.name}", f"{namespace}{entry.name}", arguments, model
            else:
                yield f"{namespace}/{prefix}{entry.pattern}", "", arguments, model


@pytest.fixture
def world(tiny_models) -> dict:
    owner = UserFactory()
    private = ImageFactory(owner=owner)
    public = ImageFactory(dataset=True)
    embeddings_store(
        model_id="clip-vit-base-patch32",
        image_ids=[private.pk, public.pk],
        vectors=np.random.default_rng(5).normal(size=(2, 512)),
    )
    hidden = Collection.objects.create(owner=owner, name="mine")
    shown = Collection.objects.create(owner=owner, name="shown", visibility="public")
    for collection in (hidden, shown):
        CollectionItem.objects.create(collection=collection, image=private)
        CollectionItem.objects.create(collection=collection, image=public)
    clients = {role: Client() for role in ROLES}
    clients["owner"].force_login(owner)
    clients["other"].force_login(UserFactory())
    clients["staff"].force_login(UserFactory(is_staff=True, is_superuser=True))
    arguments = {
        "image_id": private.pk,
        "size": 128,
        "collection_id": hidden.pk,
        "share_token": hidden.share_token,
        "object_id": str(private.pk),
        "id": owner.pk,
        "app_label": "gallery",
        "content_type_id": ContentType.objects.get_for_model(Image).pk,
        "uidb64": "MQ",
        "token": "set-password",
        "unknown": "no/such/endpoint",
    }
    return {"clients": clients, "private": private, "shown": shown, "arguments": arguments}


def url_of(key: str, name: str, names: list, arguments: dict) -> str:
    if not name:
        if key.startswith("admin:"):
            return "/admin/no-such-page/"  # the admin's catch-all
        assert not names, f"{key}: name this route so the matrix can give its arguments"
        return key
    missing = [n for n in names if n not in arguments]
    assert not missing, f"{key}: no test value for {missing}; add one to the matrix"
    return reverse(name, kwargs={n: arguments[n] for n in names}) + QUERY.get(key, "")


def test_every_route_is_in_the_matrix() -> None:
    site = {key for key, _, _ in routes() if not key.startswith("admin:")}
    assert site == set(EXPECTED), (
        f"routes without a row: {sorted(site - set(EXPECTED))}; "
        f"rows without a route: {sorted(set(EXPECTED) - site)}"
    )


def test_each_role_gets_what_the_matrix_says(world) -> None:
    wrong = []
    for key, name, names in routes():
        if key.startswith("admin:"):
            continue
        url = url_of(key, name, names, world["arguments"])
        for role, expected in zip(ROLES, EXPECTED[key], strict=True):
            status = world["clients"][role].get(url).status_code
            if status != expected:
                wrong.append(f"{role} GET {url}: {status}, expected {expected}")
    assert not wrong, "\n".join(wrong)


# What staff (a superuser) get from each admin page, by the kind of page.
ADMIN_PAGES = {
    "admin:index": 200,
    "admin:app_list": 200,
    "admin:jsi18n": 200,
    "admin:password_change": 200,
    "admin:password_change_done": 200,
    "admin:login": 302,  # staff already signed in are sent on to the index
    "admin:logout": 405,  # POST only
    "admin:autocomplete": 403,  # a bare request names no model and field to complete
    "admin:view_on_site": 404,  # an image has no get_absolute_url
    "admin:auth_user_password_change": 200,  # the owner's, set by staff
    # Any image's file and thumbnail, the private one here too (gallery/admin.py).
    "admin:gallery_image_file": 200,
    "admin:gallery_image_thumb": 200,
    # The embedding models page's index-build progress, as JSON (tests/workers/
    # test_index_progress.py).
    "admin:workers_embeddingmodel_index_progress": 200,
}
# Rows that no form makes: runs come from the evaluate command, workers' from their own
# heartbeats, and django-axes' records from sign-ins.
NO_ADDING = {"EvaluationRun", "Worker", "AccessAttempt", "AccessLog", "AccessFailureLog"}


def staff_status(key: str, model: type[Model] | None, row: Model | None) -> int:
    """The status staff get from the admin page ``key`` (of ``model``, opened on ``row``: None
    when the model has no rows, and the page is given an id that names none)."""
    if key in ADMIN_PAGES:
        return ADMIN_PAGES[key]
    if key.startswith("admin:/"):
        return 404  # url_of opens the admin's catch-all for every unnamed page
    assert model is not None, f"{key}: add the page to ADMIN_PAGES"
    page = key.rsplit("_", 1)[1]
    if page == "changelist":
        return 200
    if page == "add":
        return 403 if model.__name__ in NO_ADDING else 200
    assert page in ("change", "history", "delete"), f"{key}: which status does staff get?"
    if row is None:
        return 302  # back to the admin's index, saying the row does not exist
    if page == "delete" and getattr(row, "is_default", False):
        return 403  # the default embedding model cannot be deleted
    return 200


def test_the_admin_is_for_staff_only(world) -> None:
    private = world["private"]
    # A row of every model of this site's own, so their change pages open on something.
    CaptionFactory(image=private)
    EmbeddingJob.objects.get_or_create(image=private, model_id="clip-vit-base-patch32")
    EvaluationRun.objects.create(
        models="clip-vit-base-patch32", split="test", gallery="split", n_images=1, n_queries=5,
        t2i_r1=0, t2i_r5=0, t2i_r10=0, i2t_r1=0, i2t_r5=0, i2t_r10=0, duration_seconds=1,
    )  # fmt: skip
    wrong = []
    pages = [route for route in routes_with_models() if route[0].startswith("admin:")]
    assert len(pages) > 40
    for key, name, names, model in pages:
        row = model.objects.order_by("pk").first() if model is not None else None
        arguments = dict(world["arguments"])
        if "object_id" in names and model is not None:
            arguments["object_id"] = str(row.pk) if row is not None else "0"
        url = url_of(key, name, names, arguments)
        for role in ("anonymous", "owner", "other"):
            response = world["clients"][role].get(url)
            if key == "admin:login":
                ok = response.status_code == 200
            elif key == "admin:logout":  # the admin sends whoever is not staff to its index
                ok = response.status_code == 302 and response["Location"] == reverse("admin:index")
            else:
                ok = response.status_code == 302 and "/admin/login/" in response["Location"]
            if not ok:
                wrong.append(f"{role} GET {url}: {response.status_code}")
        status = world["clients"]["staff"].get(url).status_code
        expected = staff_status(key, model, row)
        if status != expected:
            wrong.append(f"staff GET {url} ({key}): {status}, expected {expected}")
    assert not wrong, "\n".join(wrong)


def test_lists_show_a_private_image_to_its_owner_alone(world) -> None:
    private, shown = world["private"], world["shown"]
    thumb = reverse("image-thumb", args=[private.pk])
    pages = ["/", "/search/?q=dog", reverse("collection", args=[shown.pk]),
             reverse("collection-shared", args=[shown.share_token])]  # fmt: skip
    for role, client in world["clients"].items():
        for page in pages:
            content = client.get(page).content.decode()
            assert (thumb in content) == (role == "owner"), (role, page)
        found = {hit["id"] for hit in client.get("/api/search?q=dog&k=10").json()["results"]}
        assert (private.pk in found) == (role == "owner"), role


def test_parsed_searches_show_a_private_image_to_its_owner_alone(world) -> None:
    """Every form of query (dates, places, negatives, exact words, the structured form):
    another user's private image never shows, and its place is no place to others."""
    private, public = world["private"], Image.objects.get(source="flickr30k")
    taken = datetime(2023, 5, 4, tzinfo=UTC)
    Image.objects.filter(pk=private.pk).update(
        taken_at=taken, place_city="Huế", place_country="Vietnam", title="dog"
    )
    Image.objects.filter(pk=public.pk).update(taken_at=taken, title="dog")
    queries = [
        {"q": "dog 2023"}, {"q": "dog in Huế"}, {"q": "dog -cat"}, {"q": '"dog" park'},
        {"q": "dog", "taken_after": "2023-01-01", "place": "Huế", "exclude": "cat"},
        {"q": "dog", "must": "dog", "owner": private.owner.username},
    ]  # fmt: skip
    for role, client in world["clients"].items():
        for params in queries:
            answer = client.get("/api/search", {**params, "k": 10}).json()
            found = {hit["id"] for hit in answer["results"]}
            assert (private.pk in found) == (role == "owner"), (role, params)
        chips = client.get("/api/search", {"q": "dog in Huế"}).json()["parsed"]["chips"]
        assert bool(chips) == (role == "owner"), role
