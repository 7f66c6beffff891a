""" "More results" keeps the address in step: the appended page replaces the URL with one that
lists every result so far (``shown``), so back, reload and a copied link show the same list.
Through the test client against the real database; the journey in Chromium is in
tests/gallery/test_journeys.py."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from django.test import Client

from tests.factories import ImageFactory, UserFactory
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
DIM = 512
QUERY = np.eye(DIM, dtype=np.float32)[0]
TOTAL = 130  # more than MAX_K (100), so a long list takes more than one query page


def scored(cosine: float, axis: int) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[0], vector[axis] = cosine, np.sqrt(1 - cosine**2)
    return vector


@pytest.fixture
def ranked(tiny_models, monkeypatch) -> dict:
    """TOTAL public photos in a known order (best first), and another user's private image
    that would rank first for its owner."""
    photos = [ImageFactory(dataset=True) for _ in range(TOTAL)]
    secret = ImageFactory(owner=UserFactory())
    vectors = np.stack([scored(0.9 - 0.005 * i, 1 + i) for i in range(TOTAL)] + [QUERY])
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in [*photos, secret]], vectors=vectors)
    monkeypatch.setattr("search.query_encoder.text_embedding", lambda **kwargs: QUERY)
    return {"order": [p.pk for p in photos], "secret": secret}


def cards(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<figure class="result" data-image-id="(\d+)"', html)]


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def more_link(html: str) -> tuple[str, str]:
    """(href, hx-get) of the "More results" link."""
    found = re.search(r'<a class="button" href="([^"]+)" hx-get="([^"]+)"[^>]*>More results', html)
    assert found, "no More results link"
    return found[1].replace("&amp;", "&"), found[2].replace("&amp;", "&")


def test_more_results_replaces_the_address_with_everything_shown(client: Client, ranked) -> None:
    first = client.get("/search/", {"q": "a kite"}).content.decode()
    assert cards(first) == ranked["order"][:20]
    plain, partial = more_link(first)
    assert query(partial)["offset"] == ["20"] and query(partial)["k"] == ["20"]
    # Without JavaScript the link opens the whole list so far plus the next page.
    assert query(plain)["shown"] == ["40"] and "offset" not in query(plain)

    more = client.get(partial, headers={"HX-Request": "true"})
    assert cards(more.content.decode()) == ranked["order"][20:40]
    address = more["HX-Replace-Url"]
    assert urlsplit(address).path == "/search/"
    assert query(address) == {"q": ["a kite"], "model": [CLIP], "k": ["20"], "shown": ["40"]}

    # That address lists the same 40, and "More results" goes on after them, 20 at a time.
    again = client.get(address).content.decode()
    assert cards(again) == ranked["order"][:40]
    _, partial = more_link(again)
    assert query(partial)["offset"] == ["40"] and query(partial)["k"] == ["20"]
    assert "shown" not in query(partial)
    # Changing the sort starts the list again.
    assert "shown=" not in again.split('aria-label="Sort"')[1].split("</nav>")[0]


def test_a_long_list_is_fetched_in_pages_and_stays_private(client: Client, ranked) -> None:
    everything = client.get("/search/", {"q": "a kite", "shown": TOTAL}).content.decode()
    assert cards(everything) == ranked["order"]
    assert ranked["secret"].pk not in cards(everything)
    assert "More results" not in everything
    owner = Client()
    owner.force_login(ranked["secret"].owner)
    theirs = owner.get("/search/", {"q": "a kite", "shown": 45}).content.decode()
    assert cards(theirs) == [ranked["secret"].pk, *ranked["order"][:44]]


@pytest.mark.parametrize("shown", ["abc", "0", "-3", "1101", "4.5"])
def test_a_bad_shown_is_a_400_with_the_reason(client: Client, ranked, shown: str) -> None:
    response = client.get("/search/", {"q": "a kite", "shown": shown})
    assert response.status_code == 400
    assert "shown must be a whole number between 1 and 1100" in response.content.decode()
