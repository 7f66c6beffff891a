"""The search page shows how the words were read as removable chips above the results; a
removed chip searches again without it (page through the test client, and in Chromium)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlparse

import pytest
from django.test import Client
from playwright.sync_api import Page, expect

from gallery.models import Image
from tests.factories import ImageFactory
from tests.search.test_search import clustered
from workers.services import embeddings_store

CLIP = "clip-vit-base-patch32"


def _gallery() -> tuple[list[Image], list[Image]]:
    hanoi = Image.objects.bulk_create(
        ImageFactory.build_batch(3, dataset=True, file="x.jpg", place_region="Hanoi",
                                 place_country="Vietnam", taken_at=datetime(2023, 7, 3, tzinfo=UTC))
    )  # fmt: skip
    others = Image.objects.bulk_create(ImageFactory.build_batch(5, dataset=True, file="x.jpg"))
    images = hanoi + others
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=clustered(8))
    return hanoi, others


@pytest.mark.django_db
def test_chips_and_their_removal_links(client: Client, tiny_models) -> None:
    hanoi, _ = _gallery()
    response = client.get("/search/", {"q": "street in Hanoi July 2023 -cars", "source": "dataset"})
    assert response.status_code == 200
    chips = response.context["chips"]
    assert [(c["kind"], c["text"]) for c in chips] == [
        ("place", "in Hanoi"), ("date", "July 2023"), ("exclude", "-cars"),
    ]  # fmt: skip
    assert {hit.image.pk for hit in response.context["page"].hits} == {i.pk for i in hanoi}
    removal = parse_qs(urlparse(chips[0]["url"]).query)
    assert removal["q"] == ["street July 2023 -cars"] and removal["source"] == ["dataset"]
    html = response.content.decode()
    assert 'aria-label="Remove place in Hanoi"' in html and 'class="chips"' in html
    # Without the place chip, every image is searched again.
    without = client.get(chips[0]["url"].replace("July+2023", "").replace("July%202023", ""))
    assert len(without.context["page"].hits) == 8


@pytest.mark.django_db(transaction=True)
def test_removing_a_chip_in_the_browser(live_server, page: Page, tiny_models) -> None:
    hanoi, _ = _gallery()
    page.goto(f"{live_server.url}/search/?q=street+in+Hanoi")
    chips = page.locator(".chips .chip")
    expect(chips).to_have_count(1)
    expect(chips.first).to_contain_text("in Hanoi")
    expect(page.locator(".grid.results figure.result")).to_have_count(len(hanoi))
    page.get_by_role("link", name="Remove place in Hanoi").click()
    expect(page.locator(".chips")).to_have_count(0)
    expect(page.locator(".grid.results figure.result")).to_have_count(8)
    assert parse_qs(urlparse(page.url).query)["q"] == ["street"]
