"""Text queries are searched in Unicode NFC, as captions are stored: the page and the API give
a query typed decomposed (NFD, as some keyboards and macOS file names send it) the same vector
and results as the composed one, and count its length in composed characters."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from django.test import Client

from search import query_encoder
from search.selectors import MAX_QUERY_CHARS
from tests.factories import ImageFactory
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
NFC = "một con chó trên bãi biển"
NFD = unicodedata.normalize("NFD", NFC)


@pytest.fixture
def encoded_texts(tiny_models, monkeypatch) -> list[str]:
    """Three searchable images; returns the texts the query encoder is asked to embed."""
    images = ImageFactory.create_batch(3, dataset=True)
    vectors = np.random.default_rng(3).normal(size=(3, 512))
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=vectors)
    seen: list[str] = []
    real = query_encoder.text_embedding

    def recording(*, model_id: str, text: str) -> np.ndarray:
        seen.append(text)
        return real(model_id=model_id, text=text)

    monkeypatch.setattr(query_encoder, "text_embedding", recording)
    return seen


def test_api_searches_a_decomposed_query_as_the_composed_one(
    client: Client, encoded_texts: list[str]
) -> None:
    assert NFD != NFC
    composed = client.get("/api/search", {"q": NFC})
    decomposed = client.get("/api/search", {"q": NFD})
    assert composed.status_code == decomposed.status_code == 200, decomposed.content[:300]
    assert encoded_texts == [NFC, NFC]
    assert decomposed.json()["results"] == composed.json()["results"]


def test_page_searches_a_decomposed_query_as_the_composed_one(
    client: Client, encoded_texts: list[str]
) -> None:
    response = client.get("/search/", {"q": NFD})
    assert response.status_code == 200
    assert encoded_texts == [NFC]


def test_the_length_limit_counts_composed_characters(
    client: Client, encoded_texts: list[str]
) -> None:
    # Each "ệ" is three code points decomposed: over the limit in NFD, well within it in NFC.
    query = "ệ" * (MAX_QUERY_CHARS // 2)
    assert len(unicodedata.normalize("NFD", query)) > MAX_QUERY_CHARS
    response = client.get("/api/search", {"q": unicodedata.normalize("NFD", query)})
    assert response.status_code == 200, response.content[:300]
    assert encoded_texts == [query]
