"""Selection mode: save several images to a collection or delete several at once, one POST
each, every id checked (nobody saves or deletes another user's private image, all or none),
and the grid's checkboxes, shift-click range and bar in Chromium at both sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.test import Client
from playwright.sync_api import Browser, expect

from gallery.models import Collection, CollectionItem, Image
from tests.factories import CollectionFactory, ImageFactory, UserFactory
from tests.gallery.test_pages_layout import SIZES, check, sign_in
from workers.services import embeddings_store

JSON = {"Accept": "application/json"}
SAVE, DELETE = "/selection/save", "/selection/delete"


@pytest.fixture
def people(db) -> dict:
    owner, other = UserFactory(), UserFactory()
    clients = {"owner": Client(), "other": Client()}
    clients["owner"].force_login(owner)
    clients["other"].force_login(other)
    return {
        "owner": owner,
        "other": other,
        "clients": clients,
        "mine": [ImageFactory(owner=owner) for _ in range(3)],
        "theirs_private": ImageFactory(owner=other),
        "theirs_public": ImageFactory(owner=other, visibility="public"),
        "dataset": ImageFactory(dataset=True),
    }


def ids(*images: Image) -> dict[str, list[int]]:
    return {"image_id": [image.pk for image in images]}


@pytest.mark.django_db
def test_owner_deletes_several_uploads_in_one_post(
    people, django_capture_on_commit_callbacks
) -> None:
    first, second, kept = people["mine"]
    names = [first.file.name, second.file.name]
    with django_capture_on_commit_callbacks(execute=True):
        response = people["clients"]["owner"].post(DELETE, ids(first, second), headers=JSON)
    assert response.status_code == 200
    assert sorted(response.json()["deleted"]) == sorted([first.pk, second.pk])
    assert response.json()["message"] == "Deleted 2 images."
    assert list(Image.objects.filter(owner=people["owner"])) == [kept]
    assert not any(default_storage.exists(name) for name in names)


@pytest.mark.django_db
@pytest.mark.parametrize("intruder", ["theirs_private", "theirs_public", "dataset"])
def test_delete_refuses_the_whole_selection_if_one_image_is_not_the_users(
    people, intruder: str
) -> None:
    mine = people["mine"]
    response = people["clients"]["owner"].post(DELETE, ids(*mine, people[intruder]), headers=JSON)
    assert response.status_code == 404
    assert response.json() == {"error": "no such image among your uploads"}
    assert Image.objects.count() == 6  # nothing deleted, not even the user's own


@pytest.mark.django_db
def test_nobody_else_deletes_or_saves_a_private_image(people) -> None:
    private = people["mine"][0]
    other = people["clients"]["other"]
    theirs = CollectionFactory(owner=people["other"], name="loot")
    assert other.post(DELETE, ids(private), headers=JSON).status_code == 404
    saved = other.post(SAVE, {**ids(private), "collection_id": theirs.pk}, headers=JSON)
    assert saved.status_code == 404 and saved.json() == {"error": "no such image"}
    mixed = {**ids(people["theirs_public"], private), "new_name": "loot 2"}
    assert other.post(SAVE, mixed, headers=JSON).status_code == 404
    assert Image.objects.filter(pk=private.pk).exists()
    assert not CollectionItem.objects.filter(image=private).exists()
    assert not Collection.objects.filter(name="loot 2").exists()  # all or none
    anonymous = Client()
    for url in (SAVE, DELETE):
        response = anonymous.post(url, ids(private))
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert Image.objects.filter(pk=private.pk).exists()


@pytest.mark.django_db
def test_save_several_to_an_existing_or_a_new_collection(people) -> None:
    owner = people["clients"]["owner"]
    trip = CollectionFactory(owner=people["owner"], name="Trip")
    chosen = [*people["mine"][:2], people["theirs_public"], people["dataset"]]
    data = {**ids(*chosen), "collection_id": trip.pk, "query": "beach"}
    response = owner.post(SAVE, data, headers=JSON)
    assert response.status_code == 200
    assert response.json()["added"] == 4
    assert response.json()["collection"]["url"] == f"/collections/{trip.pk}/"
    assert set(trip.items.values_list("image_id", flat=True)) == {i.pk for i in chosen}
    assert set(trip.items.values_list("query", flat=True)) == {"beach"}
    again = owner.post(SAVE, {**ids(*chosen[:2]), "collection_id": trip.pk}, headers=JSON)
    assert again.json()["added"] == 0 and "already there" in again.json()["message"]
    new = owner.post(SAVE, {**ids(people["mine"][2]), "new_name": "Fresh"}, headers=JSON)
    fresh = Collection.objects.get(owner=people["owner"], name="Fresh")
    assert new.json()["collection"]["id"] == fresh.pk and fresh.items.count() == 1
    # Someone else's collection is no target, and without JS the answer is a redirect.
    stranger = CollectionFactory(owner=people["other"])
    refused = owner.post(SAVE, {**ids(chosen[0]), "collection_id": stranger.pk}, headers=JSON)
    assert refused.status_code == 404 and not stranger.items.exists()
    plain = owner.post(SAVE, {**ids(chosen[0]), "collection_id": trip.pk, "next": "/?show=mine"})
    assert plain.status_code == 302 and plain["Location"] == "/?show=mine"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "select at least one image"),
        ({"image_id": ["x1"]}, "is not an image id"),
        ({"image_id": ["0"]}, "is not an image id"),
        ({"image_id": ["1"]}, "choose a collection or name a new one"),
    ],
)
def test_bad_selections_are_a_400_with_a_reason(people, data: dict, message: str) -> None:
    response = people["clients"]["owner"].post(SAVE, data, headers=JSON)
    assert response.status_code == 400 and message in response.json()["error"]


# --- In the browser ---------------------------------------------------------------------------


@pytest.fixture
def grid(live_server, tiny_models) -> dict:
    owner = UserFactory(username="alice")
    photos = [ImageFactory(dataset=True) for _ in range(5)]
    mine = [ImageFactory(owner=owner) for _ in range(3)]
    everything = [*photos, *mine]
    vectors = np.random.default_rng(7).normal(size=(len(everything), 512))
    embeddings_store(
        model_id="clip-vit-base-patch32", image_ids=[i.pk for i in everything], vectors=vectors
    )
    CollectionFactory(owner=owner, name="Favourites")
    return {"owner": owner, "photos": photos, "mine": mine}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("size", SIZES)
def test_select_a_range_save_it_and_delete_own_images(
    grid, live_server, browser: Browser, size: str, tmp_path: Path
) -> None:
    width, height = SIZES[size]
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    url = live_server.url
    sign_in(page, url)

    page.goto(url + "/search/?q=a+photo&k=20")
    cards = page.locator("figure.result")
    bar = page.locator("[data-selection-bar]")
    expect(bar).to_be_hidden()
    boxes = page.locator("input[data-select]")
    # A target a finger can hit: WCAG 2.2's 24 x 24 CSS pixels at least.
    box = boxes.nth(0).bounding_box()
    assert box is not None and box["width"] >= 24 and box["height"] >= 24
    boxes.nth(0).check()
    boxes.nth(3).click(modifiers=["Shift"])  # the range 0..3
    expect(bar).to_be_visible()
    expect(bar.locator("[data-selection-count]")).to_have_text("4")
    assert [boxes.nth(i).is_checked() for i in range(5)] == [True, True, True, True, False]
    check(page, "search-selecting", size)
    chosen = [int(cards.nth(i).get_attribute("data-image-id")) for i in range(4)]
    bar.locator("input[name=new_name]").fill("Picked")
    bar.get_by_role("button", name="Save to collection").click()
    expect(bar.locator("[data-selection-message]")).to_contain_text("Saved 4 images to Picked")
    picked = Collection.objects.get(owner=grid["owner"], name="Picked")
    assert set(picked.items.values_list("image_id", flat=True)) == set(chosen)

    # Browse my images: Delete is offered for one's own, and the cards go in place.
    page.goto(url + "/?show=mine")
    page.locator("input[data-select]").nth(0).check()
    page.locator("input[data-select]").nth(1).click(modifiers=["Shift"])
    delete = bar.get_by_role("button", name="Delete")
    expect(delete).to_be_visible()
    check(page, "browse-selecting", size)
    page.once("dialog", lambda dialog: dialog.accept())
    delete.click()
    expect(bar.locator("[data-selection-message]")).to_have_text("Deleted 2 images.")
    expect(page.locator("figure.result")).to_have_count(1)
    assert Image.objects.filter(owner=grid["owner"]).count() == 1

    # A data-set photo in the selection: no Delete button.
    page.goto(url + "/?show=dataset")
    page.locator("input[data-select]").nth(0).check()
    expect(bar).to_be_visible()
    expect(bar.get_by_role("button", name="Delete")).to_be_hidden()
    page.keyboard.press("Escape")  # leaves selection mode
    expect(bar).to_be_hidden()
    assert not page.locator("input[data-select]").nth(0).is_checked()
    context.close()
