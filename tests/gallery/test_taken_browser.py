"""When photos were taken, in headless Chromium: browse and date-sorted search list them by the
day they were taken under day headers; a HEIC photo from a phone becomes a visible, searchable
image (a real Celery worker embeds it with the tiny CLIP model)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Locator, Page, expect

from gallery.models import Image
from tests.clients import browser_sign_in
from tests.factories import ImageFactory, UserFactory, photo_bytes
from tests.gallery.test_pages_layout import SIZES, check
from tests.workers import test_celery_worker
from workers.models import ImageEmbedding
from workers.services import embeddings_store

start_worker = test_celery_worker.start_worker

pytestmark = pytest.mark.django_db(transaction=True)

CLIP = "clip-vit-base-patch32"
WORKER_WAIT_MS = 180_000  # the worker loads the model first; not a speed check


def loaded(image: Locator) -> None:
    """Wait until an <img> has really decoded (a broken one has naturalWidth 0). Polled here:
    the site's CSP refuses wait_for_function's evaluated strings."""
    deadline = time.monotonic() + 30
    while image.evaluate("img => img.naturalWidth") == 0:
        assert time.monotonic() < deadline, "the image never loaded"
        time.sleep(0.1)


def grouped(page: Page) -> list[tuple[str, list[int]]]:
    """(day header, the image ids under it) in page order, however the page nests them."""
    groups = page.evaluate(
        """() => {
          const groups = [];
          document.querySelectorAll("main .day-header, main figure[data-image-id]").forEach(el => {
            if (el.matches(".day-header")) groups.push([el.textContent.trim(), []]);
            else groups[groups.length - 1][1].push(Number(el.dataset.imageId));
          });
          return groups;
        }"""
    )
    return [(day, members) for day, members in groups]


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize("size", ["desktop", "small-phone"])
def test_browse_and_date_sorted_search_go_by_the_day_photos_were_taken(
    live_server, browser: Browser, tiny_models, size: str
) -> None:
    owner = UserFactory()
    yesterday = timezone.localtime() - timedelta(days=1)
    photos = {
        # Uploaded in this order, so upload order alone would list them backwards.
        "summer evening": ImageFactory(
            owner=owner, taken_at=at(2025, 6, 14, 21), taken_offset=120,  # 23:00 local
        ),
        "summer morning": ImageFactory(owner=owner, taken_at=at(2025, 6, 14, 7)),
        "new year": ImageFactory(owner=owner, taken_at=at(2025, 1, 1, 0, 5)),
        "christmas": ImageFactory(owner=owner, taken_at=at(2024, 12, 25, 10)),
        "late night": ImageFactory(
            owner=owner, taken_at=at(2025, 6, 15, 1), taken_offset=-300,  # 14 June, 20:00 local
        ),
        "yesterday": ImageFactory(owner=owner, taken_at=yesterday.replace(tzinfo=UTC)),
        "no exif": ImageFactory(owner=owner),  # only its upload time: today
    }  # fmt: skip
    for name, image in photos.items():
        Image.objects.filter(pk=image.pk).update(title=name)
    ids = {name: image.pk for name, image in photos.items()}
    # Equal vectors: every image matches the query equally, so "newest" lists them all.
    embeddings_store(model_id=CLIP, image_ids=list(ids.values()), vectors=np.ones((len(ids), 512)))
    expected = [
        ("Today", [ids["no exif"]]),
        ("Yesterday", [ids["yesterday"]]),
        # The late-night photo's instant is 15 June in UTC (so it sorts first), but its camera
        # said 14 June 20:00: it is listed under that day.
        ("Saturday, 14 June 2025", [ids[n] for n in ("late night", "summer evening", "summer morning")]),  # noqa: E501
        ("Wednesday, 1 January 2025", [ids["new year"]]),
        ("Wednesday, 25 December 2024", [ids["christmas"]]),
    ]  # fmt: skip

    width, height = SIZES[size]
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    url = live_server.url
    browser_sign_in(page, url, owner.username)
    page.goto(f"{url}/?show=mine")
    expect(page.locator("h2.day-header").first).to_have_text("Today")
    assert grouped(page) == expected
    check(page, "browse-by-taken-date", size)

    # The image page walks the same order with its arrows and says when and with what.
    page.locator(f"figure[data-image-id='{ids['late night']}'] a.thumb").click()
    details = page.locator("aside")
    expect(details).to_contain_text("Saturday, 14 June 2025, 20:00")
    expect(details).to_contain_text("UTC-05:00")
    page.get_by_role("link", name="Older →").click()
    expect(page).to_have_url(f"{url}/images/{ids['summer evening']}/")
    expect(page.locator("aside")).to_contain_text("Saturday, 14 June 2025, 23:00")

    # Search sorted by date: the same days, the same order, under the same headers.
    page.goto(f"{url}/search/?q=a+photo&sort=date")
    expect(page.locator("figure.result")).to_have_count(len(ids))
    assert grouped(page) == expected
    check(page, "search-by-taken-date", size)
    # By relevance there are no day headers.
    page.goto(f"{url}/search/?q=a+photo")
    expect(page.locator("figure.result")).to_have_count(len(ids))
    expect(page.locator(".day-header")).to_have_count(0)


def test_more_results_continue_a_day_without_repeating_its_header(live_server, page: Page) -> None:
    owner = UserFactory()
    # 70 photos over two days: browse pages hold 60, so the first day runs over the page.
    images = [
        ImageFactory(owner=owner, taken_at=at(2025, 6, 14, 12) - timedelta(minutes=n))
        for n in range(50)
    ] + [
        ImageFactory(owner=owner, taken_at=at(2025, 6, 13, 12) - timedelta(minutes=n))
        for n in range(20)
    ]
    browser_sign_in(page, live_server.url, owner.username)
    page.goto(f"{live_server.url}/?show=mine")
    page.evaluate("window.__noReload = 1")
    expect(page.locator("figure[data-image-id]")).to_have_count(60)
    page.get_by_role("link", name="Older images").click()
    expect(page.locator("figure[data-image-id]")).to_have_count(70)
    # The repeated header goes once htmx has settled the appended page, a moment after the
    # cards arrive: wait for it rather than read the page in between.
    expect(page.locator("main .day-header")).to_have_count(2)
    assert page.evaluate("window.__noReload") == 1
    groups = grouped(page)
    assert [day for day, _ in groups] == ["Saturday, 14 June 2025", "Friday, 13 June 2025"]
    assert [len(members) for _, members in groups] == [50, 20]
    assert [i for _, members in groups for i in members] == [image.pk for image in images]


def test_a_heic_photo_from_a_phone_becomes_a_visible_searchable_image(
    live_server, browser: Browser, start_worker, tmp_path: Path
) -> None:
    owner = UserFactory()
    photo = tmp_path / "IMG_4242.HEIC"
    photo.write_bytes(
        photo_bytes(
            image_format="HEIF", taken="2025:06:14 10:30:00", offset="+02:00",
            make="Apple", model="iPhone 15 Pro", color=(230, 120, 30), size=(160, 120),
        )
    )  # fmt: skip
    url = live_server.url
    page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    browser_sign_in(page, url, owner.username)
    page.goto(f"{url}/upload/")
    accept = page.locator("#id_file").get_attribute("accept") or ""
    assert ".heic" in accept and ".heif" in accept
    worker = start_worker()
    page.set_input_files("#id_file", str(photo))
    row = page.locator("#upload-rows li").filter(has_text="IMG_4242.HEIC")
    expect(row).to_contain_text("Uploaded IMG_4242.HEIC")
    expect(row.locator(".badge")).to_have_text("indexed", timeout=WORKER_WAIT_MS)
    # The row's preview: the browser cannot show the HEIC itself, the server's JPEG it can.
    loaded(row.locator("img"))

    image = Image.objects.get(owner=owner)
    assert image.file.name.endswith(".heif")
    assert image.taken_offset == 120 and image.camera_model == "iPhone 15 Pro"
    assert ImageEmbedding.objects.filter(image=image, model_id=CLIP).exists(), (
        worker.log.read_text()
    )

    # Visible: its thumbnail in the grid and the large picture on its page are real pictures.
    page.goto(f"{url}/?show=mine")
    expect(page.locator("h2.day-header")).to_have_text(["Saturday, 14 June 2025"])
    loaded(page.locator(f"figure[data-image-id='{image.pk}'] img"))
    page.locator(f"figure[data-image-id='{image.pk}'] a.thumb").click()
    stage = page.locator("#stage-image")
    loaded(stage)
    assert stage.evaluate("img => img.naturalWidth") == 160
    expect(page.locator("aside")).to_contain_text("Apple iPhone 15 Pro")
    expect(page.locator("aside")).to_contain_text("Saturday, 14 June 2025, 10:30")

    # Searchable: a text search finds it.
    page.fill("#top-q", "an orange photo")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/search/\?q=an\+orange\+photo"))
    expect(page.locator(f"figure.result[data-image-id='{image.pk}']")).to_be_visible()
