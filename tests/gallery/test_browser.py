"""The flows people use, in headless Chromium against a live server and the test database."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from gallery.models import Image
from tests.factories import jpeg_bytes
from workers.models import EmbeddingJob

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

    page.locator("header").get_by_role("link", name="Upload").click()
    # Two files at once through the drop zone's input: one refused with its reason, one stored
    # and indexed (pending until a worker embeds it), each in its own row, no reload.
    page.set_input_files("#id_file", [str(not_a_photo), str(photo)])
    rows = page.locator("#upload-rows li")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="notes.jpg")).to_contain_text("not an image we can read")
    expect(rows.filter(has_text="my-dog.jpg")).to_contain_text("Uploaded my-dog.jpg")
    expect(rows.filter(has_text="my-dog.jpg").locator(".badge")).to_have_text(
        re.compile("indexing|indexed|waiting")
    )
    # The same file again is the image already there.
    page.set_input_files("#id_file", str(photo))
    expect(rows.nth(2)).to_contain_text("already in your library")

    page.goto(live_server.url)
    thumbnail = page.locator("img[alt='my-dog.jpg']")
    expect(thumbnail).to_be_visible()
    # The thumbnail really loaded (a broken image has naturalWidth 0).
    # (Polled from here: wait_for_function evaluates a string in the page, which the site's
    # Content-Security-Policy rightly refuses.)
    deadline = time.monotonic() + 30
    while thumbnail.evaluate("img => img.naturalWidth") == 0:
        assert time.monotonic() < deadline, "the thumbnail never loaded"
        time.sleep(0.1)

    image = Image.objects.get()
    assert (image.owner.username, image.visibility) == ("alice", "private")
    assert EmbeddingJob.objects.filter(image=image).exists()

    page.locator("details.menu summary").click()
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

    from tests.factories import PASSWORD, ImageFactory, UserFactory
    from workers.services import embeddings_store

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

    page.fill("input[name=q]", "two dogs running on a beach")
    page.keyboard.press("Enter")
    results = page.locator("figure.result")
    expect(results).to_have_count(5)
    # The score is a bar relative to the best hit, the cosine in its tooltip.
    expect(results.first.locator(".scorebar")).to_have_attribute("title", re.compile(r"^100% "))

    results.first.hover()
    results.first.get_by_role("link", name="similar").click()
    expect(page.locator("h1")).to_have_text("Similar images")
    expect(page.locator("figure.result")).to_have_count(4)  # the image itself is excluded

    page.go_back()
    first = page.locator("figure.result").first
    saved_id = int(first.get_attribute("data-image-id"))
    first.hover()
    first.get_by_role("button", name="Save").click()
    first.get_by_label("Save to a new collection").fill("Beach trip")
    first.get_by_role("button", name="Create").click()
    # Saved in place (htmx), no reload: the page keeps its results.
    expect(first.locator(".picker")).to_contain_text("Saved to Beach trip")
    expect(page.locator("figure.result")).to_have_count(5)

    page.locator("details.menu summary").click()
    page.get_by_role("link", name="Collections", exact=True).click()
    page.get_by_role("link", name="Beach trip").click()
    expect(page.locator(f"figure.result[data-image-id='{saved_id}']")).to_be_visible()
    expect(page.locator("figcaption").first).to_contain_text("two dogs running on a beach")

    # The image page; its owner-less data-set photo shows no delete button to this user.
    page.locator(f"figure.result[data-image-id='{saved_id}'] a.thumb").click()
    expect(page.locator("aside")).to_contain_text("Beach trip")
    expect(page.get_by_role("button", name="Delete")).to_have_count(0)


def test_owner_makes_an_image_public_then_deletes_it(live_server, page: Page) -> None:
    from tests.factories import PASSWORD, ImageFactory, UserFactory

    owner = UserFactory()
    image = ImageFactory(owner=owner, original_filename="cat.jpg")
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", owner.username)
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.goto(f"{live_server.url}/images/{image.pk}/")
    page.get_by_label("Visibility").select_option("public")
    expect(page.get_by_role("status").filter(has_text="now public")).to_be_visible()
    image.refresh_from_db()
    assert image.visibility == "public"
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page.locator(".messages")).to_contain_text("Deleted cat.jpg")
    assert not Image.objects.filter(pk=image.pk).exists()
    # Asked of the server (the browser may still hold its cached copy for a while).
    assert page.request.get(f"{live_server.url}/images/{image.pk}/file").status == 404
