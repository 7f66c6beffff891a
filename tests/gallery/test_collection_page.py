"""The collection page for its owner: notes, removing, reordering and renaming in place (htmx)
or by plain forms; everyone else gets 404 and changes nothing; a shared link stays read-only."""

from __future__ import annotations

import re
import threading

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from playwright.sync_api import Browser, Page, expect

from gallery.models import Collection, CollectionItem, Image
from gallery.services.collections import collection_item_move, collection_item_note_set
from kernel.errors import InvalidInput, NotFound
from tests.clients import signed_in
from tests.factories import CollectionFactory, CollectionItemFactory, ImageFactory, UserFactory
from tests.gallery.test_pages_layout import check, sign_in

pytestmark = pytest.mark.django_db
HX = {"HTTP_HX_REQUEST": "true"}


def url(name: str, collection: Collection, image: Image | None = None) -> str:
    args = [collection.pk] if image is None else [collection.pk, image.pk]
    return reverse(name, args=args)


def shown_order(client: Client, collection: Collection) -> list[int]:
    """The image ids in the order the collection page shows them."""
    html = client.get(url("collection", collection)).content.decode()
    return [int(i) for i in _ids(html)]


def _ids(html: str) -> list[str]:
    return re.findall(r'<figure class="result" id="item-\d+" data-image-id="(\d+)"', html)


@pytest.fixture
def album(db) -> dict:
    """Alice's collection of three images, shown newest first until she reorders them."""
    owner = UserFactory(username="alice")
    collection = CollectionFactory(owner=owner, name="Album", visibility="unlisted")
    first, second, third = (ImageFactory(dataset=True) for _ in range(3))
    for image, query in ((first, "a red door"), (second, ""), (third, "snow")):
        CollectionItemFactory(collection=collection, image=image, query=query)
    # Two items in someone else's collection, which nothing here may touch.
    bob = UserFactory(username="bob")
    bobs = CollectionFactory(owner=bob, name="Bob's")
    for image in (first, second):
        CollectionItemFactory(collection=bobs, image=image, note="bob's note")
    return {
        "owner": owner,
        "collection": collection,
        "images": [third, second, first],  # as shown: newest first
        "bob": bob,
        "bobs": bobs,
    }


def bobs_state(album: dict) -> list[tuple[int, int, str]]:
    return list(album["bobs"].items.order_by("id").values_list("image_id", "position", "note"))


# --- Notes ------------------------------------------------------------------------------------


def test_owner_writes_a_note_in_place_and_without_javascript(album) -> None:
    collection, (third, second, _) = album["collection"], album["images"]
    client = signed_in(album["owner"])

    swapped = client.post(
        url("collection-item-note", collection, third), {"note": "  Taken in Oslo.  "}, **HX
    )
    html = swapped.content.decode()
    assert swapped.status_code == 200 and "<html" not in html
    assert 'role="status">Note saved' in html and ">Taken in Oslo.</textarea>" in html
    assert CollectionItem.objects.get(collection=collection, image=third).note == "Taken in Oslo."

    plain = client.post(url("collection-item-note", collection, second), {"note": "Second"})
    assert plain.status_code == 302
    assert plain["Location"] == f"{url('collection', collection)}#item-{second.pk}"
    page = client.get(url("collection", collection)).content.decode()
    assert ">Second</textarea>" in page and ">Taken in Oslo.</textarea>" in page
    assert "Saved the note on" in page

    # Clearing a note is allowed.
    client.post(url("collection-item-note", collection, second), {"note": ""}, **HX)
    assert CollectionItem.objects.get(collection=collection, image=second).note == ""


def test_an_over_long_note_is_a_400_that_keeps_the_text_and_changes_nothing(album) -> None:
    collection, third = album["collection"], album["images"][0]
    client = signed_in(album["owner"])
    client.post(url("collection-item-note", collection, third), {"note": "kept"})
    too_long = "n" * 2001

    swapped = client.post(url("collection-item-note", collection, third), {"note": too_long}, **HX)
    html = swapped.content.decode()
    assert swapped.status_code == 400
    assert "at most 2000 characters (it has 2001)" in html and f">{too_long}</textarea>" in html
    assert 'aria-invalid="true"' in html

    plain = client.post(url("collection-item-note", collection, third), {"note": too_long})
    html = plain.content.decode()
    assert plain.status_code == 400 and "<html" in html
    assert "at most 2000 characters" in html and f">{too_long}</textarea>" in html

    assert CollectionItem.objects.get(collection=collection, image=third).note == "kept"
    with pytest.raises(InvalidInput, match="the note is 2001 characters; the limit is 2000"):
        collection_item_note_set(
            user=album["owner"], collection_id=collection.pk, image_id=third.pk, note=too_long
        )


# --- Removing ---------------------------------------------------------------------------------


def test_owner_removes_an_item_in_place_and_again_harmlessly(album) -> None:
    collection, (third, second, first) = album["collection"], album["images"]
    first.title = "The red door"
    first.save()
    client = signed_in(album["owner"])

    swapped = client.post(url("collection-item-remove", collection, first), **HX)
    html = swapped.content.decode()
    assert swapped.status_code == 200 and "<html" not in html
    assert _ids(html) == [str(third.pk), str(second.pk)]
    assert 'id="collection-status" hx-swap-oob="innerHTML"' in html
    assert "Removed The red door from this collection." in html
    # Focus goes on to a card that is still there (the one before, for the last).
    assert f'href="/images/{second.pk}/" autofocus' in html
    assert not collection.items.filter(image=first).exists()
    assert Image.objects.filter(pk=first.pk).exists()  # the image itself stays

    again = client.post(url("collection-item-remove", collection, first), **HX)
    assert again.status_code == 200 and "no longer in this collection" in again.content.decode()

    plain = client.post(url("collection-item-remove", collection, second))
    assert plain.status_code == 302
    assert "from this collection" in client.get(plain["Location"]).content.decode()
    assert shown_order(client, collection) == [third.pk]
    assert bobs_state(album) == [(first.pk, 0, "bob's note"), (second.pk, 0, "bob's note")]


# --- Moving -----------------------------------------------------------------------------------


def test_moves_persist_number_every_item_and_do_nothing_at_the_ends(album) -> None:
    collection, (third, second, first) = album["collection"], album["images"]
    client = signed_in(album["owner"])
    assert shown_order(client, collection) == [third.pk, second.pk, first.pk]
    move = url("collection-item-move", collection, first)

    swapped = client.post(move, {"direction": "earlier", "index": 3}, **HX)
    html = swapped.content.decode()
    assert swapped.status_code == 200 and "<html" not in html
    assert _ids(html) == [str(third.pk), str(first.pk), str(second.pk)]
    assert "Moved to place 2 of 3." in html
    # A reload shows the same order: it is stored, every item numbered from 1.
    assert shown_order(client, collection) == [third.pk, first.pk, second.pk]
    positions = dict(collection.items.values_list("image_id", "position"))
    assert positions == {third.pk: 1, first.pk: 2, second.pk: 3}

    # A plain form (no JavaScript) moves it too, and comes back to the item.
    plain = client.post(move, {"direction": "earlier", "index": 2})
    assert plain.status_code == 302 and plain["Location"].endswith(f"#item-{first.pk}")
    assert shown_order(client, collection) == [first.pk, third.pk, second.pk]

    # At either end a move does nothing.
    at_top = client.post(move, {"direction": "earlier", "index": 1}, **HX)
    assert at_top.status_code == 200 and "Already first." in at_top.content.decode()
    bottom = url("collection-item-move", collection, second)
    at_bottom = client.post(bottom, {"direction": "later", "index": 3}, **HX)
    assert "Already last." in at_bottom.content.decode()
    assert shown_order(client, collection) == [first.pk, third.pk, second.pk]

    # The same form sent twice (the page's place is out of date) moves it once.
    later = url("collection-item-move", collection, third)
    client.post(later, {"direction": "later", "index": 2}, **HX)
    resent = client.post(later, {"direction": "later", "index": 2}, **HX)
    assert "The order had changed meanwhile" in resent.content.decode()
    assert shown_order(client, collection) == [first.pk, second.pk, third.pk]
    assert sorted(collection.items.values_list("position", flat=True)) == [1, 2, 3]

    # A newly saved image comes first until the owner reorders again.
    newest = ImageFactory(dataset=True)
    CollectionItemFactory(collection=collection, image=newest)
    assert shown_order(client, collection) == [newest.pk, first.pk, second.pk, third.pk]
    # Bob's collection holds two of the same images and was never renumbered.
    assert bobs_state(album) == [(first.pk, 0, "bob's note"), (second.pk, 0, "bob's note")]


def test_a_bad_move_is_a_400_with_a_reason(album) -> None:
    collection, third = album["collection"], album["images"][0]
    client = signed_in(album["owner"])
    move = url("collection-item-move", collection, third)
    for data in ({"direction": "sideways"}, {}, {"direction": "later", "index": "x"}):
        response = client.post(move, data, **HX)
        assert response.status_code == 400, data
        assert "direction" in response.content.decode() or "index" in response.content.decode()
    assert set(collection.items.values_list("position", flat=True)) == {0}
    with pytest.raises(InvalidInput, match="direction must be one of earlier, later"):
        collection_item_move(
            user=album["owner"], collection_id=collection.pk, image_id=third.pk, direction="up"
        )


@pytest.mark.django_db(transaction=True)
def test_concurrent_moves_never_give_two_items_one_place() -> None:
    owner = UserFactory()
    collection = CollectionFactory(owner=owner)
    images = [ImageFactory(dataset=True) for _ in range(6)]
    for number, image in enumerate(images, start=1):
        # Already numbered, so each move rewrites only the two items it swaps: two moves that
        # read the same order and both wrote would leave two items on one place.
        CollectionItemFactory(collection=collection, image=image, position=number)
    errors: list[BaseException] = []

    def move(barrier: threading.Barrier, image: Image, direction: str) -> None:
        try:
            barrier.wait()
            collection_item_move(
                user=owner, collection_id=collection.pk, image_id=image.pk, direction=direction
            )
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    for _ in range(4):
        barrier = threading.Barrier(len(images))
        threads = [
            threading.Thread(target=move, args=(barrier, image, ("later", "earlier")[index % 2]))
            for index, image in enumerate(images)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        positions = sorted(collection.items.values_list("position", flat=True))
        assert positions == [1, 2, 3, 4, 5, 6]

    # The renumbering holds the collection's row lock, which is what serialises the moves.
    with CaptureQueriesContext(connection) as queries:
        collection_item_move(
            user=owner, collection_id=collection.pk, image_id=images[0].pk, direction="later"
        )
    assert any(
        'FROM "gallery_collection"' in q["sql"] and q["sql"].endswith("FOR UPDATE")
        for q in queries.captured_queries
    ), [q["sql"] for q in queries.captured_queries]


# --- The name and description ------------------------------------------------------------------


def test_owner_renames_the_collection_in_place_and_a_taken_name_is_refused(album) -> None:
    collection = album["collection"]
    CollectionFactory(owner=album["owner"], name="Taken")
    client = signed_in(album["owner"])
    page = client.get(url("collection", collection)).content.decode()
    assert "Edit name and description" in page

    swapped = client.post(
        url("collection-details", collection),
        {"name": "  Winter  ", "description": "Cold days.\nShort light."},
        **HX,
    )
    html = swapped.content.decode()
    assert swapped.status_code == 200 and "<h1>Winter</h1>" in html
    assert "Cold days.<br>Short light." in html and 'role="status">Saved.' in html
    collection.refresh_from_db()
    assert (collection.name, collection.description) == ("Winter", "Cold days.\nShort light.")

    taken = client.post(url("collection-details", collection), {"name": "Taken"}, **HX)
    assert taken.status_code == 409
    assert "you already have a collection called &#x27;Taken&#x27;" in taken.content.decode()
    assert "<h1>Winter</h1>" in taken.content.decode()
    empty = client.post(url("collection-details", collection), {"name": "  "})
    assert empty.status_code == 400 and "name: This field is required." in empty.content.decode()
    too_long = client.post(
        url("collection-details", collection), {"name": "ok", "description": "d" * 5001}
    )
    assert too_long.status_code == 400
    collection.refresh_from_db()
    assert (collection.name, collection.description) == ("Winter", "Cold days.\nShort light.")

    plain = client.post(url("collection-details", collection), {"name": "Spring"})
    assert plain.status_code == 302
    collection.refresh_from_db()
    assert (collection.name, collection.description) == ("Spring", "")


# --- Everyone else ----------------------------------------------------------------------------


def test_nobody_else_changes_a_collection_and_learns_nothing(album) -> None:
    collection, (third, second, first) = album["collection"], album["images"]
    owner, bob = album["owner"], album["bob"]
    CollectionItem.objects.filter(collection=collection, image=third).update(note="private note")
    before = list(collection.items.order_by("id").values_list("image_id", "position", "note"))
    posts = [
        (url("collection-item-note", collection, third), {"note": "bob was here"}),
        (url("collection-item-move", collection, first), {"direction": "earlier"}),
        (url("collection-item-remove", collection, second), {}),
        (url("collection-details", collection), {"name": "Bob's now"}),
    ]
    missing = Collection(pk=999_999)
    for target, data in posts:
        for headers in ({}, HX):
            assert signed_in(bob).post(target, data, **headers).status_code == 404, target
        assert Client().post(target, data).status_code == 302  # to the sign-in page
    # The same 404 as for a collection that does not exist.
    assert signed_in(bob).post(url("collection-details", missing), {"name": "x"}).status_code == 404
    # The owner cannot reach into Bob's collection either, by its id or through her own.
    alice = signed_in(owner)
    bobs = album["bobs"]
    assert alice.post(url("collection-item-remove", bobs, first), **HX).status_code == 404
    assert alice.post(url("collection-item-note", bobs, first), {"note": "x"}).status_code == 404
    move = url("collection-item-move", bobs, first)
    assert alice.post(move, {"direction": "later"}).status_code == 404
    outsider = ImageFactory(dataset=True)  # not in her collection
    assert (
        alice.post(url("collection-item-note", collection, outsider), {"note": "x"}).status_code
        == 404
    )
    with pytest.raises(NotFound):
        collection_item_move(
            user=bob, collection_id=collection.pk, image_id=first.pk, direction="later"
        )

    after = list(collection.items.order_by("id").values_list("image_id", "position", "note"))
    assert after == before
    collection.refresh_from_db()
    assert collection.name == "Album"
    assert bobs_state(album) == [(first.pk, 0, "bob's note"), (second.pk, 0, "bob's note")]


def test_the_shared_link_is_read_only_and_hides_private_images(album) -> None:
    collection, third = album["collection"], album["images"][0]
    owner = album["owner"]
    private = ImageFactory(owner=owner, title="Diary page")
    CollectionItemFactory(collection=collection, image=private, note="only mine")
    CollectionItem.objects.filter(collection=collection, image=third).update(note="Look closely")
    shared = reverse("collection-shared", args=[collection.share_token])

    for client in (Client(), signed_in(album["bob"])):
        html = client.get(shared).content.decode()
        assert "Look closely" in html and "Found by “snow”" in html
        assert f'data-image-id="{private.pk}"' not in html and "Diary page" not in html
        assert "only mine" not in html
        for control in ("<form", "Move earlier", "Remove", "Edit name and description"):
            assert control not in html.split('<main id="content">')[1], control

    # The owner sees every item, which ones others cannot see and why, and the controls.
    html = signed_in(owner).get(url("collection", collection)).content.decode()
    assert f'data-image-id="{private.pk}"' in html and ">private</span>" in html
    assert "1 of these images is private" in html
    assert html.count("Move earlier") == 4 and ">only mine</textarea>" in html


# --- In the browser ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_move_and_remove_without_a_reload_on_a_phone(live_server, browser: Browser) -> None:
    owner = UserFactory(username="alice")
    collection = CollectionFactory(owner=owner, name="Trip")
    images = [ImageFactory(owner=owner, title=f"Photo {n}") for n in (1, 2, 3)]
    for image in images:
        CollectionItemFactory(collection=collection, image=image, query=f"query {image.title}")
    third, second, first = images[2], images[1], images[0]  # shown newest first

    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    sign_in(page, live_server.url)
    page.goto(f"{live_server.url}/collections/{collection.pk}/")
    cards = page.locator("figure.result")
    expect(cards).to_have_count(3)
    check(page, "collection-owner", "phone")
    page.evaluate("window.notReloaded = 'still here'")

    def order() -> list[int]:
        return [int(i) for i in cards.evaluate_all("cs => cs.map(c => c.dataset.imageId)")]

    assert order() == [third.pk, second.pk, first.pk]
    # With the keyboard: focus the last card's "Move earlier" and press Enter.
    last = page.locator(f"#item-{first.pk}")
    last.get_by_role("button", name="Move earlier").focus()
    page.keyboard.press("Enter")
    status = page.locator("#collection-status")
    expect(status).to_have_text("Moved to place 2 of 3.")
    assert order() == [third.pk, first.pk, second.pk]
    # Focus stays on the button that was pressed, in the card's new place.
    assert page.evaluate("document.activeElement.id") == f"move-earlier-{first.pk}"

    page.locator(f"#item-{second.pk}").get_by_role("button", name="Remove").click()
    expect(status).to_have_text("Removed Photo 2 from this collection.")
    expect(cards).to_have_count(2)
    assert order() == [third.pk, first.pk]

    note = page.locator(f"#item-{third.pk}").get_by_label("Note")
    note.fill("The best one")
    page.locator(f"#item-{third.pk}").get_by_role("button", name="Save note").click()
    expect(page.locator(f"#item-{third.pk}").get_by_role("status")).to_have_text("Note saved")

    assert page.evaluate("window.notReloaded") == "still here"  # no navigation happened
    check(page, "collection-owner-after", "phone")
    assert list(collection.items.values_list("image_id", flat=True)) == [third.pk, first.pk]
    assert collection.items.get(image=third).note == "The best one"

    page.reload()
    assert order() == [third.pk, first.pk]
    context.close()


@pytest.mark.django_db(transaction=True)
def test_a_note_being_typed_survives_a_move_of_another_card(live_server, page: Page) -> None:
    owner = UserFactory(username="alice")
    collection = CollectionFactory(owner=owner, name="Trip")
    images = [ImageFactory(owner=owner, title=f"Photo {n}") for n in (1, 2, 3)]
    for image in images:
        CollectionItemFactory(collection=collection, image=image)
    third, second, first = images[2], images[1], images[0]  # shown newest first
    CollectionItem.objects.filter(collection=collection, image=second).update(note="stored")

    sign_in(page, live_server.url)
    page.goto(f"{live_server.url}/collections/{collection.pk}/")
    page.locator(f"#item-{third.pk}").get_by_label("Note").fill("half a thought")
    page.locator(f"#item-{second.pk}").get_by_label("Note").fill("stored, then edited")
    page.locator(f"#item-{first.pk}").get_by_role("button", name="Move earlier").click()
    expect(page.locator("#collection-status")).to_have_text("Moved to place 2 of 3.")
    # Redrawn in the new order, with both unsaved texts still in their boxes.
    expect(page.locator("figure.result").nth(1)).to_have_id(f"item-{first.pk}")
    expect(page.locator(f"#item-{third.pk}").get_by_label("Note")).to_have_value("half a thought")
    expect(page.locator(f"#item-{second.pk}").get_by_label("Note")).to_have_value(
        "stored, then edited"
    )
    # Unsaved still: nothing was stored by the move.
    assert collection.items.get(image=third).note == ""
    assert collection.items.get(image=second).note == "stored"
