"""A saved search's owner pins and hides results from the page's cards: plain forms that post
(with CSRF) and come back to the page, sent in the background by app.js. Only the owner gets
the buttons, and only the owner's posts change anything."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse
from playwright.sync_api import Browser, expect

from gallery.models import Collection, CollectionItem
from tests.clients import browser_sign_in
from tests.factories import PASSWORD, ImageFactory, UserFactory
from tests.gallery.test_pages_layout import SIZES, check
from tests.search.test_smart_collections import saved  # noqa: F401 (fixture)


def page_of(client: Client, collection: Collection, **params) -> tuple[list[int], str]:
    response = client.get(reverse("search-saved", args=[collection.pk]), params)
    assert response.status_code == 200, response.content
    return [hit.image.pk for hit in response.context["page"].hits], response.content.decode()


def pin_url(collection: Collection, image_id: int) -> str:
    return reverse("search-saved-pin", args=[collection.pk, image_id])


def hide_url(collection: Collection, image_id: int) -> str:
    return reverse("search-saved-hide", args=[collection.pk, image_id])


@pytest.mark.django_db
def test_the_owner_pins_and_hides_without_javascript(
    saved: tuple,  # noqa: F811
) -> None:
    owner, collection, dated = saved
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    listed, html = page_of(client, collection)
    assert set(listed) == {i.pk for i in dated}
    assert f'action="{pin_url(collection, dated[2].pk)}"' in html
    assert f'action="{hide_url(collection, dated[0].pk)}"' in html
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    # Without the form's CSRF token nothing changes.
    assert client.post(pin_url(collection, dated[2].pk), {"pinned": "1"}).status_code == 403
    assert not collection.items.exists()

    answer = client.post(
        pin_url(collection, dated[2].pk), {"pinned": "1", "csrfmiddlewaretoken": token}
    )
    assert answer.status_code == 302 and answer["Location"] == reverse(
        "search-saved", args=[collection.pk]
    )
    answer = client.post(
        hide_url(collection, dated[0].pk), {"hidden": "1", "csrfmiddlewaretoken": token}
    )
    assert answer.status_code == 302
    listed, html = page_of(client, collection)
    assert listed == [dated[2].pk, dated[1].pk], "pinned first, the hidden one gone"
    assert 'class="result pinned"' in html and 'aria-pressed="true"' in html
    assert "Hidden (<span data-smart-hidden-count>1</span>)" in html
    # The Hidden list's "Show again" is the only form left for the hidden image.
    assert f'action="{hide_url(collection, dated[0].pk)}"' in html and "Show again" in html

    # Show it again from the Hidden list; unpin the pinned one.
    client.post(hide_url(collection, dated[0].pk), {"hidden": "0", "csrfmiddlewaretoken": token})
    client.post(pin_url(collection, dated[2].pk), {"pinned": "0", "csrfmiddlewaretoken": token})
    collection.refresh_from_db()
    assert collection.smart_hidden == [] and not collection.items.exists()
    listed, html = page_of(client, collection)
    assert set(listed) == {i.pk for i in dated} and 'class="result pinned"' not in html


@pytest.mark.django_db
def test_pinning_a_hidden_image_shows_it_and_the_script_gets_json(
    client: Client,
    saved: tuple,  # noqa: F811
) -> None:
    owner, collection, dated = saved
    client.force_login(owner)
    json = {"HTTP_ACCEPT": "application/json"}
    answer = client.post(hide_url(collection, dated[1].pk), **json)
    assert answer.status_code == 200 and answer.json() == {"image_id": dated[1].pk, "hidden": True}
    answer = client.post(pin_url(collection, dated[1].pk), {"pinned": "1"}, **json)
    assert answer.json() == {"image_id": dated[1].pk, "pinned": True}
    collection.refresh_from_db()
    assert collection.smart_hidden == []
    assert page_of(client, collection)[0][0] == dated[1].pk
    # An image the owner may not see cannot be pinned (it would show on their page).
    private = ImageFactory(owner=UserFactory())
    answer = client.post(pin_url(collection, private.pk), **json)
    assert answer.status_code == 404 and "error" in answer.json()
    assert not collection.items.filter(image=private).exists()


@pytest.mark.django_db
def test_viewers_get_no_controls_and_cannot_pin_or_hide(
    client: Client,
    saved: tuple,  # noqa: F811
) -> None:
    owner, collection, dated = saved
    Collection.objects.filter(pk=collection.pk).update(visibility="unlisted")
    collection.refresh_from_db()
    other = UserFactory()
    for who in (None, other):
        client.logout()
        if who:
            client.force_login(who)
        listed, html = page_of(client, collection, token=collection.share_token)
        assert set(listed) == {i.pk for i in dated}
        assert "data-smart" not in html and "smart-hidden" not in html
        assert "/pin/" not in html and "/hide/" not in html
        for url in (pin_url(collection, dated[0].pk), hide_url(collection, dated[0].pk)):
            answer = client.post(f"{url}?token={collection.share_token}")
            if who is None:
                assert answer.status_code == 302 and "/accounts/login/" in answer["Location"]
            else:
                assert answer.status_code == 404
    collection.refresh_from_db()
    assert collection.smart_hidden == [] and not CollectionItem.objects.exists()
    # Another user's own collection of the same id does not exist; their saved search is theirs.
    client.force_login(other)
    assert client.post(pin_url(collection, dated[0].pk), {"pinned": "0"}).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_the_owner_hides_one_and_pins_another_in_the_browser(
    saved: tuple,  # noqa: F811
    live_server,
    browser: Browser,
) -> None:
    owner, collection, dated = saved
    owner.set_password(PASSWORD)
    owner.save()
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    browser_sign_in(page, live_server.url, owner.username)
    page.goto(f"{live_server.url}{reverse('search-saved', args=[collection.pk])}")
    cards = page.locator(".grid.results figure.result")
    expect(cards).to_have_count(3)
    order = [int(i) for i in cards.evaluate_all("cs => cs.map(c => c.dataset.imageId)")]
    first, last = order[0], order[-1]
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    # Keyboard: tab into the first card's controls and press Hide.
    hide = cards.first.get_by_role("button", name="Hide")
    hide.focus()
    page.keyboard.press("Enter")
    expect(cards).to_have_count(2)
    expect(page.locator(f".result[data-image-id='{first}']")).to_have_count(0)
    expect(page.locator("#smart-hidden summary")).to_have_text("Hidden (1)")
    expect(page.get_by_role("status").filter(has_text="Hidden")).to_be_visible()

    # Pin the last card: it moves to the top, marked pinned.
    last_card = page.locator(f".result[data-image-id='{last}']")
    last_card.hover()
    last_card.get_by_role("button", name="Pin").click()
    expect(cards.first).to_have_attribute("data-image-id", str(last))
    expect(cards.first.get_by_role("button", name="Pin")).to_have_attribute("aria-pressed", "true")
    expect(cards.first.locator(".pin-badge")).to_have_text("pinned")
    assert navigations == [], "pin and hide answer without a reload"
    collection.refresh_from_db()
    assert collection.smart_hidden == [first]
    assert list(collection.items.values_list("image_id", flat=True)) == [last]

    # The page as it now is, at every size: fits the screen, no serious axe findings.
    page.reload()
    expect(cards.first).to_have_attribute("data-image-id", str(last))
    expect(cards).to_have_count(2)
    page.locator("#smart-hidden summary").click()
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        for size, (width, height) in SIZES.items():
            page.set_viewport_size({"width": width, "height": height})
            cards.first.hover()  # its pin and hide buttons shown
            check(page, f"saved-search-owner-{scheme}", size)

    # Undo from the Hidden list: the image is back among the matches.
    page.get_by_role("button", name=re.compile(r"^Show .* again$")).click()
    expect(page.locator("#smart-hidden")).to_be_hidden()
    page.reload()
    expect(cards).to_have_count(3)
    context.close()
