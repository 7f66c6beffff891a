"""The owner's title and description of an image: edited on the image page (in place with htmx,
plain POST without it, over real HTTP with the CSRF check), refused to everyone else alike,
and used as the image's name and alt text wherever it is shown."""

from __future__ import annotations

import re

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from gallery.models import Image
from gallery.services.images import image_details_update
from kernel.errors import InvalidInput, NotFound
from tests.clients import HttpSession, signed_in
from tests.factories import CollectionFactory, CollectionItemFactory, ImageFactory, UserFactory
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
HX = {"HTTP_HX_REQUEST": "true"}


def details_url(image: Image) -> str:
    return reverse("image-details", args=[image.pk])


def test_owner_sets_title_and_description_and_the_page_shows_them() -> None:
    owner = UserFactory()
    image = ImageFactory(owner=owner, original_filename="IMG_0001.jpg")
    image.captions.create(text="a dog on a beach", position=0)
    client = signed_in(owner)

    page = client.get(reverse("image", args=[image.pk])).content.decode()
    assert "Edit title and description" in page and details_url(image) in page
    # No title yet: the first caption names it.
    assert re.search(r"<h1>a dog on a beach</h1>", page)

    response = client.post(
        details_url(image),
        {"title": "  Rex at Brighton  ", "description": "Summer 2024.\nHe loved the sea."},
    )
    assert response.status_code == 302 and response["Location"] == reverse("image", args=[image.pk])
    image.refresh_from_db()
    assert (image.title, image.description) == (
        "Rex at Brighton",
        "Summer 2024.\nHe loved the sea.",
    )

    page = client.get(reverse("image", args=[image.pk])).content.decode()
    assert "Saved the title and description." in page
    assert "<h1>Rex at Brighton</h1>" in page
    assert "Summer 2024.<br>He loved the sea." in page
    assert 'alt="Rex at Brighton"' in page
    assert "<title>Rex at Brighton · Image search</title>" in page
    # With a title set, every caption is listed under it, the first included.
    assert "<li>a dog on a beach</li>" in page

    # Clearing both goes back to the caption as the name.
    client.post(details_url(image), {"title": "", "description": ""})
    image.refresh_from_db()
    assert (image.title, image.description) == ("", "")


def test_htmx_save_swaps_the_details_in_place() -> None:
    owner = UserFactory()
    image = ImageFactory(owner=owner)
    response = signed_in(owner).post(
        details_url(image), {"title": "Harbour at dusk", "description": "Boats."}, **HX
    )
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert '<section id="image-details">' in html and "<h1>Harbour at dusk</h1>" in html
    assert 'role="status">Saved.' in html
    # The large image's alt text follows, swapped out of band.
    assert 'id="stage-image"' in html and 'hx-swap-oob="true"' in html
    assert 'alt="Harbour at dusk"' in html
    image.refresh_from_db()
    assert image.title == "Harbour at dusk"


def test_over_long_input_is_a_clear_400_and_changes_nothing() -> None:
    owner = UserFactory()
    image = ImageFactory(owner=owner, title="Kept", description="Kept too")
    client = signed_in(owner)

    plain = client.post(details_url(image), {"title": "t" * 201, "description": "new"})
    assert plain.status_code == 400
    html = plain.content.decode()
    assert "at most 200 characters" in html and "(it has 201)" in html
    # The page again, the form open with what was typed, so nothing typed is lost.
    assert '<details class="edit-details" open>' in html and "t" * 201 in html

    swapped = client.post(details_url(image), {"title": "New", "description": "d" * 5001}, **HX)
    assert swapped.status_code == 400
    assert "at most 5000 characters" in swapped.content.decode()
    assert "<h1>Kept</h1>" in swapped.content.decode()  # the stored title, not the refused one

    image.refresh_from_db()
    assert (image.title, image.description) == ("Kept", "Kept too")


def test_nobody_else_can_edit_and_the_refusal_leaks_nothing() -> None:
    owner, stranger = UserFactory(), UserFactory()
    private = ImageFactory(owner=owner, title="Mine")
    public = ImageFactory(owner=owner, visibility=Image.Visibility.PUBLIC, title="Also mine")
    photo = ImageFactory(dataset=True)
    form = {"title": "Hijacked", "description": "x"}

    missing = signed_in(stranger).post(reverse("image-details", args=[999_999]), form)
    assert missing.status_code == 404
    for image in (private, public, photo):
        refused = signed_in(stranger).post(details_url(image), form)
        # The same answer as for an id that does not exist: nothing tells a private one exists.
        assert (refused.status_code, refused.content) == (404, missing.content)
        assert signed_in(stranger).post(details_url(image), form, **HX).status_code == 404
    # A stranger sees the public image without the owner's form.
    page = signed_in(stranger).get(reverse("image", args=[public.pk])).content.decode()
    assert "Edit title and description" not in page and "<h1>Also mine</h1>" in page

    signed_out = Client().post(details_url(private), form)
    assert signed_out.status_code == 302 and "/accounts/login/" in signed_out["Location"]
    assert signed_in(owner).get(details_url(private)).status_code == 405  # POST only

    with pytest.raises(NotFound, match="no such image"):
        image_details_update(user=stranger, image_id=private.pk, title="x", description="")
    for image, title in ((private, "Mine"), (public, "Also mine"), (photo, "")):
        image.refresh_from_db()
        assert image.title == title and image.description == ""


def test_service_strips_and_bounds() -> None:
    owner = UserFactory()
    image = ImageFactory(owner=owner)
    saved = image_details_update(
        user=owner, image_id=image.pk, title="\t Title \n", description="  body  "
    )
    assert (saved.title, saved.description) == ("Title", "body")
    with pytest.raises(InvalidInput, match="the title is 201 characters; the limit is 200"):
        image_details_update(user=owner, image_id=image.pk, title="a" * 201, description="")
    image.refresh_from_db()
    assert image.title == "Title"


def test_the_title_is_the_alt_text_and_name_everywhere(tiny_models) -> None:
    owner = UserFactory()
    titled = ImageFactory(owner=owner, visibility="public", title="Lighthouse in fog")
    titled.captions.create(text="a white tower", position=0)
    captioned = ImageFactory(dataset=True)
    captioned.captions.create(text="two children on a swing", position=0)
    bare = ImageFactory(owner=owner, original_filename="scan.png")
    embeddings_store(
        model_id="clip-vit-base-patch32",
        image_ids=[titled.pk, captioned.pk, bare.pk],
        vectors=np.random.default_rng(7).normal(size=(3, 512)),
    )
    collection = CollectionFactory(owner=owner)
    for image in (titled, captioned, bare):
        CollectionItemFactory(collection=collection, image=image)
    client = signed_in(owner)

    pages = {
        "browse": client.get("/").content.decode(),
        "search": client.get("/search/", {"q": "anything"}).content.decode(),
        "collection": client.get(reverse("collection", args=[collection.pk])).content.decode(),
        "similar strip": client.get(reverse("image", args=[captioned.pk])).content.decode(),
    }
    for where, html in pages.items():
        assert 'alt="Lighthouse in fog"' in html, where
        assert 'alt="a white tower"' not in html, where  # the title wins over the caption
    for where in ("browse", "search", "collection"):
        assert 'alt="two children on a swing"' in pages[where], where
        assert 'alt="scan.png"' in pages[where], where
    assert 'aria-label="Select Lighthouse in fog"' in pages["browse"]

    # The API gives the title and description beside the captions.
    image_details_update(
        user=owner, image_id=titled.pk, title="Lighthouse in fog", description="Cold"
    )
    hits = client.get("/api/search", {"q": "anything", "k": 10}).json()["results"]
    by_id = {hit["id"]: hit for hit in hits}
    assert (by_id[titled.pk]["title"], by_id[titled.pk]["description"]) == (
        "Lighthouse in fog",
        "Cold",
    )
    assert by_id[captioned.pk]["title"] == "" and by_id[captioned.pk]["captions"]


# --- Over real HTTP, with the CSRF check on ----------------------------------------------


def test_edit_over_http_with_the_csrf_check(live_server, transactional_db) -> None:
    from tests.factories import PASSWORD

    owner = UserFactory()
    image = ImageFactory(owner=owner)
    browser = HttpSession(live_server.url)
    token = browser.csrf_token("/accounts/login/")
    status, path, _ = browser.open(
        "/accounts/login/",
        {"csrfmiddlewaretoken": token, "username": owner.username, "password": PASSWORD},
    )
    assert (status, path) == (200, "/")
    page = f"/images/{image.pk}/"
    url = f"/images/{image.pk}/details"

    # Without the token the POST is refused, so the check is really on.
    status, _, _ = browser.open(url, {"title": "No token"})
    assert status == 403
    image.refresh_from_db()
    assert image.title == ""

    token = browser.csrf_token(page)
    status, path, body = browser.open(
        url, {"csrfmiddlewaretoken": token, "title": "Over the wire", "description": "Via HTTP"}
    )
    assert (status, path) == (200, page)
    assert "<h1>Over the wire</h1>" in body and "Via HTTP" in body
    image.refresh_from_db()
    assert (image.title, image.description) == ("Over the wire", "Via HTTP")

    # The htmx form sends the token as a header, from the page's hx-headers.
    status, _, body = browser.open(
        url,
        {"title": "By header", "description": ""},
        headers={"X-CSRFToken": token, "HX-Request": "true"},
    )
    assert status == 200 and "<h1>By header</h1>" in body and "<html" not in body

    # Another signed-in user gets the 404 of a missing image.
    stranger = UserFactory()
    other = HttpSession(live_server.url)
    token = other.csrf_token("/accounts/login/")
    other.open(
        "/accounts/login/",
        {"csrfmiddlewaretoken": token, "username": stranger.username, "password": PASSWORD},
    )
    token = other.csrf_token("/")
    status, _, _ = other.open(url, {"csrfmiddlewaretoken": token, "title": "Mine now"})
    assert status == 404
    image.refresh_from_db()
    assert image.title == "By header"
