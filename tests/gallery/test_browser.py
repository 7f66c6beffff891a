"""The flows people use, in headless Chromium against a live server and the test database."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from gallery.models import Image
from search.models import EmbeddingJob
from tests.factories import jpeg_bytes

pytestmark = pytest.mark.django_db(transaction=True)


def test_sign_up_upload_and_keep_it_private(live_server, page: Page, tmp_path: Path) -> None:
    photo = tmp_path / "my-dog.jpg"
    photo.write_bytes(jpeg_bytes(color=(30, 120, 200), size=(120, 90)))
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_bytes(b"shopping list: eggs, milk")

    page.goto(f"{live_server.url}/accounts/signup/")
    page.fill("#id_username", "alice")
    page.fill("#id_password1", "a-long-passphrase-9")
    page.fill("#id_password2", "a-long-passphrase-9")
    page.click("main button[type=submit]")
    expect(page.locator("header")).to_contain_text("alice")

    page.get_by_role("link", name="Upload", exact=True).click()
    page.set_input_files("#id_file", str(not_a_photo))
    page.click("main button[type=submit]")
    expect(page.locator("[role=alert]")).to_contain_text("not an image we can read")

    page.set_input_files("#id_file", str(photo))
    page.click("main button[type=submit]")
    expect(page.locator(".messages")).to_contain_text("Uploaded my-dog.jpg")
    thumbnail = page.locator("img[alt='my-dog.jpg']")
    expect(thumbnail).to_be_visible()
    # The thumbnail really loaded (a broken image has naturalWidth 0).
    page.wait_for_function("document.querySelector(\"img[alt='my-dog.jpg']\").naturalWidth > 0")

    image = Image.objects.get()
    assert (image.owner.username, image.visibility) == ("alice", "private")
    assert EmbeddingJob.objects.filter(image=image).exists()

    page.get_by_role("button", name="Log out").click()
    page.goto(live_server.url)
    expect(page.locator("img[alt='my-dog.jpg']")).to_have_count(0)
    response = page.goto(f"{live_server.url}/images/{image.pk}/thumb")
    assert response is not None and response.status == 404
    expect(page).to_have_title(re.compile(".*"))
