"""Creating an API token in Chromium: the token is shown once in a box with a Copy button that
works from the keyboard and says "Copied"; a reload neither shows it again nor makes another."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, expect

from gallery.models import ApiToken
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_create_copy_and_reload(live_server, browser: Browser) -> None:
    user = UserFactory()
    url = live_server.url
    context = browser.new_context(viewport={"width": 390, "height": 844})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page = context.new_page()
    page.goto(f"{url}/accounts/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/")

    page.goto(f"{url}/accounts/tokens/")
    page.get_by_label("Name").fill("laptop script")
    page.get_by_role("button", name="Create token").click()
    page.wait_for_url(f"{url}/accounts/tokens/")  # redirected: a GET, not the POST's answer
    token = page.locator("#new-token").inner_text()
    assert ApiToken.objects.get(user=user).key_hash == ApiToken.hash(token)

    # From the keyboard: focus the button, press Enter; the clipboard then holds the token.
    copy = page.locator("button[data-copy-text]")
    expect(copy).to_have_accessible_name("Copy")
    copy.focus()
    page.keyboard.press("Enter")
    expect(copy).to_have_text("Copied")
    expect(page.get_by_role("status").filter(has_text="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == token

    page.reload()
    expect(page.locator("#new-token")).to_have_count(0)
    assert token not in page.content()
    expect(page.locator("tbody tr")).to_have_count(1)
    assert ApiToken.objects.filter(user=user).count() == 1

    # Revoking redirects too: a reload after it re-sends nothing.
    page.get_by_role("button", name="Revoke laptop script").click()
    page.wait_for_url(f"{url}/accounts/tokens/")
    expect(page.get_by_text("Token revoked.")).to_be_visible()
    page.reload()
    expect(page.get_by_text("No tokens yet.")).to_be_visible()
    assert not ApiToken.objects.filter(user=user).exists()
    context.close()
