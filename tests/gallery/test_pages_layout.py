"""Every page in headless Chromium at a desktop and a phone size: no horizontal scroll, and
axe-core finds no serious or critical accessibility violations.

Set SCREENSHOT_DIR to keep a PNG of each page and size (git-ignored artifacts; a few current
ones are committed under docs/ for the README).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser

from gallery.models import Collection, Image
from tests.factories import (
    PASSWORD,
    CollectionFactory,
    CollectionItemFactory,
    ImageFactory,
    UserFactory,
    jpeg_bytes,
)
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db(transaction=True)

# 360 px: the narrowest phones in use (the issue asks for "usable at 360 px wide").
SIZES = {"desktop": (1280, 800), "phone": (390, 844), "small-phone": (360, 740)}
CLIP = "clip-vit-base-patch32"
AXE = Axe()
TAKEN_DAYS = [datetime(2025, 6, 14, 8, tzinfo=UTC), datetime(2025, 6, 7, 9, tzinfo=UTC),
              datetime(2024, 12, 25, 10, tzinfo=UTC)]  # fmt: skip


@pytest.fixture
def site(live_server, tiny_models) -> dict:
    """A user with uploads, data-set photos with captions and embeddings, and a shared
    collection holding one of the user's private images."""
    owner = UserFactory(username="alice")
    colours = [(200, 60, 40), (40, 140, 200), (60, 180, 90), (220, 190, 40), (120, 70, 160)]
    photos = []
    for index, colour in enumerate(colours * 2):
        image = ImageFactory(
            dataset=True,
            content=jpeg_bytes(color=colour, size=(160 + 40 * (index % 3), 120)),
            original_filename=f"flickr{index}.jpg",
            # Taken on three different days, two or three photos a day, and some not known
            # (those fall back to their upload time: today): browse shows day headers.
            taken_at=None if index % 4 == 3 else TAKEN_DAYS[index % 3] + timedelta(hours=index),
        )
        image.captions.create(text=f"a photo of scene number {index} at the beach", position=0)
        photos.append(image)
    mine = ImageFactory(
        owner=owner, original_filename="my-dog.jpg", taken_at=TAKEN_DAYS[0], taken_offset=120,
        camera_make="Canon", camera_model="Canon EOS R6",
    )  # fmt: skip
    shared = CollectionFactory(owner=owner, name="Beach trip", visibility="unlisted")
    CollectionItemFactory(collection=shared, image=mine, query="dog")
    CollectionItemFactory(collection=shared, image=photos[0], query="beach")
    sunsets = CollectionFactory(owner=UserFactory(), name="Sunsets", visibility="public")
    for photo in photos[1:4]:
        CollectionItemFactory(collection=sunsets, image=photo)
    ids = [image.pk for image in [*photos, mine]]
    vectors = np.random.default_rng(3).normal(size=(len(ids), 512))
    embeddings_store(model_id=CLIP, image_ids=ids, vectors=vectors)
    return {"owner": owner, "photos": photos, "mine": mine, "collection": shared}


def sign_in(page, url: str) -> None:
    page.goto(f"{url}/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{url}/")


def check(page, name: str, size: str) -> None:
    page.wait_for_load_state("networkidle")
    width = page.evaluate("document.documentElement.scrollWidth")
    inner = page.evaluate("window.innerWidth")
    assert width <= inner, f"{name} at {size}: {width}px wide in a {inner}px window"
    violations = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in AXE.run(page).response["violations"]
        if v["impact"] in {"serious", "critical"}
    ]
    assert not violations, f"{name} at {size}: " + "; ".join(violations)
    if os.environ.get("SCREENSHOT_DIR"):
        folder = Path(os.environ["SCREENSHOT_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"{name}-{size}.png"))


@pytest.mark.parametrize("size", SIZES)
def test_every_page_fits_the_screen_and_passes_axe(
    site: dict, live_server, browser: Browser, size: str, tmp_path: Path
) -> None:
    width, height = SIZES[size]
    for scheme in ("light", "dark"):
        context = browser.new_context(
            viewport={"width": width, "height": height}, color_scheme=scheme
        )
        page = context.new_page()
        url = live_server.url
        suffix = "" if scheme == "light" else "-dark"
        anonymous = {
            "home-anonymous": "/",
            "login": "/accounts/login/",
            "signup": "/accounts/signup/",
            "shared-collection": f"/c/{site['collection'].share_token}/",
            "search-empty": "/search/",
            "public-collections": "/collections/public/",
            "password-reset": "/accounts/password_reset/",
            "password-reset-done": "/accounts/password_reset/done/",
            "password-reset-bad-link": "/accounts/reset/MQ/no-such-token/",
        }
        for name, path in anonymous.items():
            page.goto(url + path)
            check(page, name + suffix, size)
        sign_in(page, url)
        first = site["photos"][0].pk
        pages = {
            "home": "/",
            "search": "/search/?q=a+dog+on+the+beach",
            "search-date": "/search/?q=a+dog+on+the+beach&sort=date",
            "similar": f"/search/similar/{first}/",
            "image": f"/images/{site['mine'].pk}/",
            "image-dataset": f"/images/{first}/",
            "upload": "/upload/",
            "collections": "/collections/",
            "public-collections-signed-in": "/collections/public/",
            "collection": f"/collections/{site['collection'].pk}/",
            "tokens": "/accounts/tokens/",
            "account": "/accounts/",
            "password-change": "/accounts/password_change/",
        }
        for name, path in pages.items():
            page.goto(url + path)
            check(page, name + suffix, size)
        # The account menu open, and a result's save picker open.
        page.goto(url + "/search/?q=a+dog+on+the+beach")
        page.locator("details.menu summary").click()
        check(page, "menu-open" + suffix, size)
        page.keyboard.press("Escape")
        page.locator("figure.result").first.hover()
        page.locator("figure.result").first.get_by_role("button", name="Save").click()
        page.locator(".picker").wait_for()
        check(page, "search-picker" + suffix, size)
        # Search by image (the search bar's camera button) lands on a results page with the
        # query image's preview.
        probe = tmp_path / "probe.jpg"
        probe.write_bytes(jpeg_bytes(color=(200, 60, 40), size=(80, 60)))
        page.set_input_files("#top-image", str(probe))
        page.locator("img.query-preview").wait_for()
        check(page, "search-image" + suffix, size)
        context.close()
    assert Image.objects.count() == 11 and Collection.objects.count() == 2


@pytest.fixture
def staff(site: dict) -> dict:
    """A superuser, a second model enabled with evaluation runs beside the published figures,
    and a model that cannot load: the admin pages as an operator meets them."""
    from search.models import EvaluationRun
    from workers.services import embedding_model_enable, embedding_model_mark_unavailable

    admin_user = UserFactory(username="operator", is_staff=True, is_superuser=True)
    embedding_model_enable(model_id="align-base")
    embedding_model_mark_unavailable(model_id="align-base", reason="no weights at /models/align")
    for models, r1 in ((CLIP, 58.2), ("align-base", 70.4)):
        EvaluationRun.objects.create(
            models=models, fusion="", split="test", gallery="split", n_images=1000,
            n_queries=5000, t2i_r1=r1, t2i_r5=r1 + 20, t2i_r10=r1 + 30, i2t_r1=0, i2t_r5=0,
            i2t_r10=0, duration_seconds=1.0,
        )  # fmt: skip
    return {"user": admin_user}


@pytest.mark.parametrize("size", SIZES)
def test_the_admin_and_the_api_docs_fit_the_screen_and_pass_axe(
    site: dict, staff: dict, live_server, browser: Browser, size: str
) -> None:
    width, height = SIZES[size]
    url = live_server.url
    pages = {
        "admin": "/admin/",
        "admin-images": "/admin/gallery/image/",
        "admin-image": f"/admin/gallery/image/{site['mine'].pk}/change/",
        "admin-models": "/admin/workers/embeddingmodel/",
        "admin-collections": "/admin/gallery/collection/",
    }
    for scheme in ("light", "dark"):
        context = browser.new_context(
            viewport={"width": width, "height": height}, color_scheme=scheme
        )
        page = context.new_page()
        suffix = "" if scheme == "light" else "-dark"
        page.goto(f"{url}/api/docs")
        page.locator(".swagger-ui .opblock").first.wait_for()
        # One operation opened too: its parameters and "Try it out" are what people read.
        page.locator(".opblock-summary").first.click()
        page.locator(".opblock-body").first.wait_for()
        # Its deep link is in the address though the link inside the button lost its href.
        assert "#/default/" in page.url
        check(page, "api-docs" + suffix, size)
        back = page.get_by_role("link", name="Back to the site")
        assert back.get_attribute("href") == "/"

        page.goto(f"{url}/admin/login/")
        check(page, "admin-login" + suffix, size)
        page.fill("#id_username", "operator")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"{url}/admin/")
        assert page.locator("#site-name").inner_text() == "Image search administration"
        for name, path in pages.items():
            page.goto(url + path)
            check(page, name + suffix, size)
        # The model that cannot load is named as written, not capitalised by the admin.
        page.goto(url + pages["admin-models"])
        assert "align-base is not available" in page.locator(".messagelist").inner_text()
        context.close()
