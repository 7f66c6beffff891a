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


def test_search_open_similar_and_save_to_a_collection(
    live_server, page: Page, tiny_models, django_user_model
) -> None:
    import numpy as np

    from search.services import embeddings_store
    from tests.factories import PASSWORD, ImageFactory, UserFactory

    images = ImageFactory.create_batch(5, dataset=True)
    for index, image in enumerate(images):
        image.captions.create(text=f"caption of photo {index}", position=0)
    vectors = np.random.default_rng(1).normal(size=(5, 512))
    embeddings_store(
        model_id="clip-vit-base-patch32", image_ids=[i.pk for i in images], vectors=vectors
    )
    user = UserFactory()

    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")

    page.get_by_role("link", name="Search", exact=True).click()
    page.fill("input[name=q]", "two dogs running on a beach")
    page.click("form.search-form button:has-text('Search')")
    results = page.locator("figure.result")
    expect(results).to_have_count(5)
    expect(results.first.locator(".score")).to_have_text(re.compile(r"^-?\d\.\d{3}$"))

    results.first.get_by_role("link", name="similar").click()
    expect(page.locator("h1")).to_have_text("Similar images")
    expect(page.locator("figure.result")).to_have_count(4)  # the image itself is excluded

    page.go_back()
    first = page.locator("figure.result").first
    saved_id = int(first.get_attribute("data-image-id"))
    first.locator("input[name=new_name]").fill("Beach trip")
    first.get_by_role("button", name="Save").click()
    expect(page.locator(".messages")).to_contain_text("Saved to Beach trip")

    page.get_by_role("link", name="Collections").click()
    page.get_by_role("link", name="Beach trip").click()
    expect(page.locator(f"figure.result[data-image-id='{saved_id}']")).to_be_visible()
    expect(page.locator("figcaption").first).to_contain_text("two dogs running on a beach")
