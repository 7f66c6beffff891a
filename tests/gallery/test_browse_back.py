"""Browse in Chromium: after "Older images", back from an image page brings the whole grid back."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.factories import ImageFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_back_after_older_images_restores_every_page(live_server, page: Page) -> None:
    ImageFactory.create_batch(130, dataset=True)
    page.goto(live_server.url)
    cards = page.locator(".grid figure")
    expect(cards).to_have_count(60)
    page.get_by_role("link", name="Older images").click()
    expect(cards).to_have_count(120)
    page.wait_for_url("**/?show=all&pages=2")
    last_id = cards.nth(119).get_attribute("data-image-id")
    cards.nth(119).locator("a.thumb").click()
    page.wait_for_url(f"**/images/{last_id}/")
    page.go_back()
    expect(cards).to_have_count(120)
    assert cards.nth(119).get_attribute("data-image-id") == last_id
    page.get_by_role("link", name="Older images").click()
    expect(cards).to_have_count(130)
    expect(page.get_by_role("link", name="Older images")).to_have_count(0)
