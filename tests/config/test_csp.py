"""The Content-Security-Policy: every response carries it, and the pages people use run under it
in headless Chromium without a single violation (no inline script or style left, htmx's
indicator style included), /api/docs (Swagger UI, served from the site) too."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.test import Client
from PIL import Image as PILImage
from playwright.sync_api import Page, expect

from gallery.models import Collection, CollectionItem, Image
from tests.factories import PASSWORD, ImageFactory, UserFactory
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db(transaction=True)

CLIP = "clip-vit-base-patch32"


@pytest.fixture
def site(tiny_models) -> dict:
    """Public data-set images embedded for search, one upload, a shared collection."""
    images = Image.objects.bulk_create(ImageFactory.build_batch(3, dataset=True, file="x.jpg"))
    owner = UserFactory(is_staff=True, is_superuser=True)
    mine = ImageFactory(owner=owner)
    ids = [i.pk for i in [*images, mine]]
    embeddings_store(
        model_id=CLIP, image_ids=ids, vectors=np.random.default_rng(1).normal(size=(4, 512))
    )
    collection = Collection.objects.create(owner=owner, name="trip", visibility="unlisted")
    CollectionItem.objects.create(collection=collection, image=images[0])
    return {"owner": owner, "image": images[0], "collection": collection}


def test_every_page_sends_the_policy(client: Client) -> None:
    policy = client.get("/")["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert "frame-ancestors 'none'" in policy
    assert client.get("/api/docs")["Content-Security-Policy"] == policy


def watch_violations(page: Page) -> list[str]:
    """Every CSP violation the page reports, from the console and from the DOM event."""
    seen: list[str] = []
    page.on(
        "console",
        lambda message: (
            seen.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => console.error("
        "'Content Security Policy violation event: ' + e.violatedDirective + ' ' + "
        "e.blockedURI + ' ' + (e.sourceFile || '') + ':' + e.lineNumber));"
    )
    return seen


def query_png() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (40, 40), (200, 20, 20)).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_pages_run_without_violations(live_server, page: Page, site: dict, tmp_path) -> None:
    violations = watch_violations(page)
    base = live_server.url
    image, collection = site["image"], site["collection"]

    # Anonymous: home, search results with their htmx "more" and save buttons, an image page,
    # a shared collection, the admin's sign-in, the API docs, an error page.
    for path in (
        "/",
        "/search/?q=dog&k=2",
        f"/images/{image.pk}/",
        f"/c/{collection.share_token}/",
        "/admin/login/",
        "/no/such/page/",
    ):
        page.goto(base + path)
        page.wait_for_load_state("networkidle")
    page.goto(base + "/api/docs")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    page.wait_for_load_state("networkidle")

    # Signed in: more results through htmx (its indicator class toggles), the upload page with
    # a preview (blob:), search by image (data: preview), the collection page, the admin's
    # pages (the site's own admin templates among them).
    page.goto(base + "/accounts/login/")
    page.fill("#id_username", site["owner"].username)
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.goto(base + "/search/?q=dog&k=1")
    page.get_by_role("link", name="More results").click()
    expect(page.locator(".result")).to_have_count(2)
    page.locator(".result").first.hover()
    page.locator(".result button[title='Save to a collection']").first.click()
    expect(page.locator(".picker")).to_be_visible()
    page.locator(".picker [data-close]").click()
    expect(page.locator(".picker")).to_have_count(0)

    photo = tmp_path / "red.png"
    photo.write_bytes(query_png())
    page.goto(base + "/upload/")
    page.set_input_files("#id_file", str(photo))
    expect(page.locator("#upload-rows li")).to_have_count(1)
    page.goto(base + "/search/")
    page.set_input_files("#top-image", str(photo))  # the search bar's image button sends it
    page.wait_for_url("**/search/image/?key=*")
    expect(page.locator("img.query-preview")).to_be_visible()
    page.goto(base + f"/collections/{collection.pk}/")
    page.wait_for_load_state("networkidle")
    for path in ("/admin/", "/admin/gallery/image/", "/admin/workers/embeddingmodel/"):
        page.goto(base + path)
        page.wait_for_load_state("networkidle")

    assert violations == [], "\n".join(violations)
