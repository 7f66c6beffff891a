"""Names as long as the site lets people make them, on the narrowest phone: a 150-character
username, a collection and a file name of hundreds of characters wrap or are cut, never widen
the page or push the top bar's buttons off the screen; and the keyboard's first stop, the skip
link, can be seen when it is focused."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from tests.clients import browser_sign_in
from tests.factories import (
    CollectionFactory,
    CollectionItemFactory,
    ImageFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db(transaction=True)

WIDTH, HEIGHT = 360, 740
LONG_USERNAME = "a" * 75 + "b" * 75  # Django's limit
LONG_WORD = "Sommerferienerinnerungsfotosammlung" * 6  # no place a line may break


def inside_the_screen(page: Page, selector: str) -> bool:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not shown"
    return box["x"] >= 0 and box["x"] + box["width"] <= WIDTH


def test_long_names_fit_a_360px_screen(live_server, page: Page) -> None:
    owner = UserFactory(username=LONG_USERNAME)
    image = ImageFactory(owner=owner, original_filename=f"{LONG_WORD}.jpg", title=LONG_WORD[:200])
    collection = CollectionFactory(owner=owner, name=LONG_WORD[:120], description=LONG_WORD)
    CollectionItemFactory(collection=collection, image=image, query=LONG_WORD[:200])
    page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    browser_sign_in(page, live_server.url, LONG_USERNAME)

    for path in ["/", f"/images/{image.pk}/", "/collections/", f"/collections/{collection.pk}/",
                 "/accounts/", "/upload/"]:  # fmt: skip
        page.goto(live_server.url + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= WIDTH, f"{path}: {width}px wide in a {WIDTH}px window"
        assert inside_the_screen(page, "nav.actions a[href='/upload/']"), path
        assert inside_the_screen(page, "details.menu > summary"), path

    # Cut, not lost: the whole name is the summary's title, and the menu still opens.
    summary = page.locator("details.menu > summary")
    assert summary.get_attribute("title") == LONG_USERNAME
    summary.click()
    assert page.locator(".menu-items a[href='/accounts/']").is_visible()


def test_the_skip_link_is_seen_when_the_keyboard_reaches_it(live_server, page: Page) -> None:
    page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    ImageFactory(dataset=True)
    page.goto(live_server.url + "/")
    skip = page.locator("a.skip-link")
    hidden = skip.bounding_box()
    assert hidden is not None and hidden["width"] <= 1

    page.keyboard.press("Tab")

    assert page.evaluate("document.activeElement.className") == "skip-link"
    shown = skip.bounding_box()
    assert shown is not None and shown["width"] > 50 and shown["height"] > 20
    assert shown["x"] >= 0 and shown["x"] + shown["width"] <= WIDTH and shown["y"] >= 0
    page.keyboard.press("Enter")
    assert page.url.endswith("#content")
    # The next Tab goes on from the main content, past the top bar's search and buttons.
    page.keyboard.press("Tab")
    assert page.evaluate("!!document.activeElement.closest('main')")
