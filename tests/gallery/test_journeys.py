"""Whole journeys people make, each one test in headless Chromium against a live server, the
test database and (for uploads) a real Celery worker on Redis with the tiny CLIP model.

``window.__noReload`` is set after a page loads; finding it again later proves the steps in
between happened in place (htmx or the page's script), not through a reload.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect

from gallery.models import Collection, Image
from tests.factories import PASSWORD, ImageFactory, UserFactory, jpeg_bytes
from tests.gallery.test_pages_layout import SIZES, sign_in
from tests.workers import test_celery_worker
from workers.models import ImageEmbedding
from workers.services import embeddings_store

# The real Celery worker fixture of the worker tests (a subprocess on the test Redis and DB).
start_worker = test_celery_worker.start_worker

pytestmark = pytest.mark.django_db(transaction=True)

CLIP = "clip-vit-base-patch32"
# How long a step may wait for the worker (it loads the model first); not a speed check.
WORKER_WAIT_MS = 180_000


def mark(page: Page) -> None:
    page.evaluate("window.__noReload = 1")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__noReload") == 1, "the page reloaded"


def test_sign_up_upload_search_save_share_and_delete(
    live_server, browser: Browser, start_worker, tmp_path: Path
) -> None:
    url = live_server.url
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page = context.new_page()

    # Sign up through the real form.
    page.goto(f"{url}/accounts/signup/")
    page.fill("#id_username", "alice")
    page.fill("#id_password1", "a-long-passphrase-9")
    page.fill("#id_password2", "a-long-passphrase-9")
    page.get_by_role("button", name="Create account").click()
    expect(page.locator("header")).to_contain_text("alice")

    # Three files at once; no worker runs yet, so the good ones are seen waiting first.
    files = {"beach.jpg": (220, 60, 40), "forest.jpg": (40, 160, 70)}
    for name, colour in files.items():
        (tmp_path / name).write_bytes(jpeg_bytes(color=colour, size=(160, 120)))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    page.locator("header").get_by_role("link", name="Upload").click()
    mark(page)
    page.set_input_files(
        "#id_file", [str(tmp_path / n) for n in ("beach.jpg", "broken.jpg", "forest.jpg")]
    )
    rows = page.locator("#upload-rows li")
    expect(rows).to_have_count(3)
    broken = rows.filter(has_text="broken.jpg")
    expect(broken.locator(".status.error")).to_contain_text("not an image we can read")
    expect(broken.locator(".badge")).to_have_count(0)
    for name in files:
        expect(rows.filter(has_text=name).locator(".badge.pending")).to_have_text("indexing…")
    # One line above the rows counts the batch.
    progress = page.locator("#upload-progress")
    expect(progress).to_have_text("0 of 2 indexed · 1 refused")
    images = {image.original_filename: image for image in Image.objects.all()}
    assert sorted(images) == sorted(files)  # nothing kept of the broken file

    # A real worker takes the queued jobs; the rows turn "indexed" by polling, no reload.
    worker = start_worker()
    for name in files:
        badge = rows.filter(has_text=name).locator(".badge")
        expect(badge).to_have_text("indexed", timeout=WORKER_WAIT_MS)
        expect(badge).to_have_class(re.compile(r"\bready\b"))
    expect(progress).to_have_text("2 of 2 indexed · 1 refused")
    expect(page.locator("#upload-rows li.done")).to_have_count(2)
    assert_not_reloaded(page)
    embedded = ImageEmbedding.objects.filter(model_id=CLIP).values_list("image_id", flat=True)
    assert sorted(embedded) == sorted(i.pk for i in images.values()), worker.log.read_text()
    beach, forest = images["beach.jpg"], images["forest.jpg"]

    # Search by text from the header's box; the two uploads are the results.
    page.fill("#top-q", "a red beach at sunset")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/search/\?q=a\+red\+beach"))
    results = page.locator("figure.result")
    expect(results).to_have_count(2)
    assert {int(r.get_attribute("data-image-id")) for r in results.all()} == {beach.pk, forest.pk}

    # Open a result; save it to a new collection with the picker, in place.
    page.locator(f"figure.result[data-image-id='{beach.pk}'] a.thumb").click()
    expect(page).to_have_url(f"{url}/images/{beach.pk}/")
    mark(page)
    page.get_by_role("button", name="Save to a collection").click()
    page.get_by_label("Save to a new collection").fill("Holiday")
    page.get_by_role("button", name="Create").click()
    expect(page.locator(".picker")).to_contain_text("Saved to Holiday")
    assert_not_reloaded(page)
    holiday = Collection.objects.get(owner__username="alice", name="Holiday")

    # The other upload: made public, then saved to the same (now existing) collection.
    page.goto(f"{url}/images/{forest.pk}/")
    mark(page)
    page.get_by_label("Visibility").select_option("public")
    expect(page.get_by_role("status").filter(has_text="now public")).to_be_visible()
    page.get_by_role("button", name="Save to a collection").click()
    # The collection last saved to comes first in the picker; one click saves there.
    choices = page.locator(".picker-list button")
    expect(choices.first).to_have_text(re.compile(r"^Holiday"))
    choices.first.click()
    expect(page.locator(".picker")).to_contain_text("Saved to Holiday")
    assert_not_reloaded(page)

    # Share it: unlisted, then copy its link.
    page.locator("details.menu summary").click()
    page.get_by_role("link", name="Collections", exact=True).click()
    page.get_by_role("link", name="Holiday").click()
    expect(page).to_have_url(f"{url}/collections/{holiday.pk}/")
    sharing = page.locator("form", has=page.get_by_label("Visibility"))
    sharing.get_by_label("Visibility").select_option("unlisted")
    sharing.get_by_role("button", name="Save", exact=True).click()
    share = page.locator("#share-link")
    expect(share).to_have_value(re.compile(r"/c/[\w-]+/$"))
    link = share.input_value()
    page.get_by_role("button", name="Copy link").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == link
    # The owner is told which items others will not see: the count, and a badge on each.
    expect(page.locator(".notice.warning")).to_contain_text("1 of these images is private")
    private_card = page.locator(f"figure.result[data-image-id='{beach.pk}']")
    public_card = page.locator(f"figure.result[data-image-id='{forest.pk}']")
    expect(private_card.locator(".badge")).to_contain_text("private")
    expect(public_card.locator(".badge")).to_have_count(0)

    # Someone signed out opens the link: the public item only.
    stranger = browser.new_context()
    other = stranger.new_page()
    other.goto(link)
    expect(other.locator("h1")).to_have_text("Holiday")
    expect(other.locator("figure.result")).to_have_count(1)
    expect(other.locator(f"figure.result[data-image-id='{forest.pk}']")).to_be_visible()
    expect(other.locator(f"figure.result[data-image-id='{beach.pk}']")).to_have_count(0)
    expect(other.locator("main")).not_to_contain_text("beach.jpg")
    expect(other.locator(".notice.warning, .badge")).to_have_count(0)
    assert other.request.get(f"{url}/images/{beach.pk}/file").status == 404
    stranger.close()

    # The owner deletes the private image from its page; its file is gone.
    private_card.locator("a.thumb").click()
    expect(page).to_have_url(f"{url}/images/{beach.pk}/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete", exact=True).click()
    expect(page.locator(".messages")).to_contain_text("Deleted beach.jpg")
    assert page.request.get(f"{url}/images/{beach.pk}/file").status == 404
    assert not Image.objects.filter(pk=beach.pk).exists()
    page.goto(f"{url}/collections/{holiday.pk}/")
    expect(page.locator("figure.result")).to_have_count(1)
    expect(page.locator(".notice.warning")).to_have_count(0)
    context.close()


@pytest.fixture
def photos(live_server, tiny_models) -> list[Image]:
    """45 data-set photos with embeddings: more than two pages of 20 results."""
    images = [
        ImageFactory(dataset=True, content=jpeg_bytes(color=(5 * i, 255 - 5 * i, 90)))
        for i in range(45)
    ]
    vectors = np.random.default_rng(11).normal(size=(len(images), 512))
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=vectors)
    UserFactory(username="alice")
    return images


def result_ids(page: Page) -> list[int]:
    return [int(i) for i in page.locator("figure.result").evaluate_all(
        "cards => cards.map(c => c.dataset.imageId)"
    )]  # fmt: skip


def test_search_by_image_save_load_more_open_and_come_back(
    photos: list[Image], live_server, page: Page, tmp_path: Path
) -> None:
    url = live_server.url
    sign_in(page, url)
    probe = tmp_path / "probe.jpg"
    probe.write_bytes(jpeg_bytes(color=(120, 130, 90), size=(90, 60)))

    page.goto(f"{url}/search/")
    page.set_input_files("#top-image", str(probe))  # picked with the search bar's camera button
    # The results live at a GET URL carrying the kept query's key.
    expect(page).to_have_url(re.compile(r"/search/image/\?key=[\w-]+"))
    expect(page.locator("img.query-preview")).to_be_visible()
    results = page.locator("figure.result")
    expect(results).to_have_count(20)

    # Save the best hit to a new collection, in place.
    mark(page)
    first = results.first
    saved_id = int(first.get_attribute("data-image-id"))
    first.hover()
    first.get_by_role("button", name="Save").click()
    first.get_by_label("Save to a new collection").fill("Look-alikes")
    first.get_by_role("button", name="Create").click()
    expect(first.locator(".picker")).to_contain_text("Saved to Look-alikes")
    saved = Collection.objects.get(owner__username="alice", name="Look-alikes")
    assert list(saved.items.values_list("image_id", flat=True)) == [saved_id]

    # More results appends the next 20 in place, and the address now says 40 are shown.
    page.get_by_role("link", name="More results").click()
    expect(results).to_have_count(40)
    assert_not_reloaded(page)
    expect(page).to_have_url(re.compile(r"[?&]shown=40\b"))
    listed = result_ids(page)
    assert len(set(listed)) == 40 and listed[0] == saved_id
    address = page.url

    # Open one of the appended results, then come back with the browser's back button.
    results.nth(30).locator("a.thumb").click()
    expect(page).to_have_url(f"{url}/images/{listed[30]}/")
    page.go_back()
    expect(page).to_have_url(address)
    expect(page.locator("img.query-preview")).to_be_visible()
    expect(results).to_have_count(40)
    assert result_ids(page) == listed
    # A reload (no page cache to help) shows the same 40, and paging goes on from there.
    page.reload()
    expect(results).to_have_count(40)
    assert result_ids(page) == listed
    page.get_by_role("link", name="More results").click()
    expect(results).to_have_count(45)
    expect(page.get_by_role("link", name="More results")).to_have_count(0)
    assert result_ids(page)[:40] == listed
    assert sorted(result_ids(page)) == sorted(i.pk for i in photos)


@pytest.mark.parametrize("size", SIZES)
def test_select_save_and_delete_without_javascript(
    live_server, tiny_models, browser: Browser, size: str
) -> None:
    owner = UserFactory(username="alice")
    dataset = [ImageFactory(dataset=True) for _ in range(3)]
    mine = [ImageFactory(owner=owner) for _ in range(3)]
    everything = [*dataset, *mine]
    vectors = np.random.default_rng(5).normal(size=(len(everything), 512))
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in everything], vectors=vectors)
    url = live_server.url
    width, height = SIZES[size]
    context = browser.new_context(
        java_script_enabled=False, viewport={"width": width, "height": height}
    )
    page = context.new_page()
    page.goto(f"{url}/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    expect(page.locator("header")).to_contain_text("alice")

    # Search, tick two results and save them to a new collection: a plain form post.
    page.goto(f"{url}/search/?q=a+photo")
    bar = page.locator("form#selection")
    expect(bar).to_be_visible()
    expect(bar.locator(".count")).to_have_text("With the ticked images:")
    expect(page.locator("main")).not_to_contain_text("{#")  # no template comment leaks
    boxes = page.locator("input[data-select]")
    expect(boxes).to_have_count(6)
    chosen = [int(boxes.nth(i).get_attribute("value")) for i in (1, 4)]
    boxes.nth(1).check()
    boxes.nth(4).check()
    # The plain form fits the screen (axe needs JavaScript; the enhanced bar's controls are
    # the same and tests/gallery/test_selection.py runs it on them).
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= page.evaluate("window.innerWidth")
    bar.get_by_label("New collection").fill("Chosen")
    bar.get_by_role("button", name="Save to collection").click()
    expect(page.locator(".messages")).to_contain_text("Saved 2 images to Chosen")
    expect(page).to_have_url(f"{url}/search/?q=a+photo")
    collection = Collection.objects.get(owner=owner, name="Chosen")
    assert sorted(collection.items.values_list("image_id", flat=True)) == sorted(chosen)
    page.goto(f"{url}/collections/{collection.pk}/")
    cards = page.locator("figure.result")
    assert sorted(int(c.get_attribute("data-image-id")) for c in cards.all()) == sorted(chosen)

    # Delete two of one's own uploads from "My images".
    page.goto(f"{url}/?show=mine")
    boxes = page.locator("input[data-select]")
    expect(boxes).to_have_count(3)
    doomed = [int(boxes.nth(i).get_attribute("value")) for i in (0, 2)]
    boxes.nth(0).check()
    boxes.nth(2).check()
    page.locator("form#selection").get_by_role("button", name="Delete").click()
    expect(page.locator(".messages")).to_contain_text("Deleted 2 images.")
    expect(page.locator("figure.result")).to_have_count(1)
    assert list(Image.objects.filter(owner=owner).values_list("pk", flat=True)) == [
        i.pk for i in mine if i.pk not in doomed
    ]

    # A selection holding a data-set photo is refused whole, with the reason.
    page.goto(f"{url}/?show=dataset")
    page.locator("input[data-select]").nth(0).check()
    page.locator("form#selection").get_by_role("button", name="Delete").click()
    expect(page.locator(".messages")).to_contain_text("no such image among your uploads")
    assert Image.objects.filter(source="flickr30k").count() == 3
    context.close()
