"""Hybrid search's one statement (search.ranking_sql.hybrid_execute, through
search.hybrid.hybrid_lists) against the five queries it replaced: on planted vectors, words and
metadata, for 60 queries under several scopes and both paths (index and exact), the same
images with the same cosines and keyword scores, so the same fused pages, ids and scores; and
its keyword side still reads the GIN indexes."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from django.contrib.auth.models import AnonymousUser
from pgvector.django import CosineDistance

from gallery.models import TEXT_SEARCH_CONFIG, Caption, Image
from search import hybrid
from search.fusion import RRF_K, fuse_rrf
from search.hybrid import hybrid_lists, images_search_hybrid, keyword_candidates
from search.ranking import SearchFilters, SearchRequest, candidates_nearest
from search.ranking_sql import _hybrid_statement, binding_cursor, keyword_expressions
from tests.factories import ImageFactory, UserFactory
from tests.search.test_search import unit
from workers.index_scans import hnsw_scan_transaction
from workers.models import ImageEmbedding
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
WORDS = ["harbour", "bridge", "market", "temple", "river", "tower", "night", "dawn"]


@pytest.fixture
def planted(tiny_models) -> dict:
    """160 public images and 20 private ones of one owner, in 8 clusters; titles, captions
    and file names from a small vocabulary; taken dates over 2020-2023 for most."""
    rng = np.random.default_rng(24)
    owner = UserFactory()
    public = Image.objects.bulk_create(ImageFactory.build_batch(160, dataset=True, file="x.jpg"))
    private = Image.objects.bulk_create(ImageFactory.build_batch(20, owner=owner, file="x.jpg"))
    images = [*public, *private]
    for n, image in enumerate(images):
        fields: dict = {}
        if n % 3 == 0:
            fields["title"] = f"{WORDS[n % 8]} {WORDS[(n // 8) % 8]}"
        if n % 5 == 0:
            fields["original_filename"] = f"{WORDS[(n // 5) % 8]}_{n}.jpg"
        if n % 4 != 0:
            fields["taken_at"] = datetime(2020 + n % 4, 1 + n % 12, 1, tzinfo=UTC)
        if fields:
            Image.objects.filter(pk=image.pk).update(**fields)
        if n % 2 == 0:
            Caption.objects.create(image=image, text=f"a {WORDS[(n // 2) % 8]} seen at {n}")
    centres = unit(rng.normal(size=(8, 512)))
    vectors = unit(centres[np.arange(len(images)) % 8] + 0.5 * unit(rng.normal(size=(180, 512))))
    # Leave a few without an embedding: a keyword match without one has no cosine.
    embedded = images[:-3]
    embeddings_store(
        model_id=CLIP, image_ids=[i.pk for i in embedded], vectors=vectors[: len(embedded)]
    )
    return {"owner": owner, "images": images, "centres": centres, "rng": rng}


def _reference_lists(*, user, vector, words, depth, filters, exclude_image_id):
    """What hybrid search ran before the one statement: the vector side, the keyword side,
    then the cosines of the keyword-only matches (the query vector as pgvector's text)."""
    by_vector, exact = candidates_nearest(
        model_id=CLIP, vector=vector, depth=depth, user=user, filters=filters,
        exclude_image_id=exclude_image_id,
    )  # fmt: skip
    by_words = keyword_candidates(
        user=user, filters=filters, words=words, depth=depth, exclude_image_id=exclude_image_id
    )
    missing = set(by_words) - by_vector.keys()
    if missing:
        rows = (
            ImageEmbedding.objects.filter(model_id=CLIP, image_id__in=missing)
            .annotate(distance=CosineDistance("vector", list(vector)))
            .values_list("image_id", "distance")
        )
        by_vector = {**by_vector, **{i: 1.0 - float(d) for i, d in rows}}
    return by_vector, by_words, exact


def _reference_page(by_vector, by_words, *, k):
    union = sorted(set(by_vector) | set(by_words))
    scores = [
        np.array([[by_vector.get(i, -np.inf) for i in union]], dtype=np.float64),
        np.array([[by_words.get(i, -np.inf) for i in union]], dtype=np.float64),
    ]
    fused = fuse_rrf(scores, unlisted_adds_nothing=True)[0] / (2 / (RRF_K + 1))
    order = sorted(range(len(union)), key=lambda j: (-fused[j], union[j]))[:k]
    return [union[j] for j in order], [float(fused[j]) for j in order]


def test_one_statement_returns_what_the_five_queries_did(planted, monkeypatch) -> None:
    rng, owner, images = planted["rng"], planted["owner"], planted["images"]
    scopes = [
        (AnonymousUser(), None, None),
        (owner, None, None),
        (owner, SearchFilters(source="mine"), None),
        (AnonymousUser(), SearchFilters(taken_after=datetime(2021, 1, 1, tzinfo=UTC)), None),
        (AnonymousUser(), None, images[7].pk),
        (AnonymousUser(), SearchFilters(must=("harbour",)), None),
    ]
    checked = {"index": 0, "exact": 0, "keyword-only": 0}
    for q in range(60):
        user, filters, exclude = scopes[q % len(scopes)]
        vector = unit(planted["centres"][q % 8] + 0.7 * rng.normal(size=512))
        # float64 query vectors, as the negative-term arithmetic returns them
        vector = vector.astype(np.float64) if q % 2 else vector
        words = " ".join(rng.choice([*WORDS, "nothing", "eiffel.jpg"], size=1 + q % 3))
        depth = (10, 30, 300)[q % 3]
        scope = {"user": user, "filters": filters, "exclude_image_id": exclude}
        got = hybrid_lists(model_id=CLIP, vector=vector, words=words, depth=depth, **scope)
        want = _reference_lists(vector=vector, words=words, depth=depth, **scope)
        assert got == want, (q, words, depth, filters)
        checked["exact" if got[2] else "index"] += 1
        checked["keyword-only"] += bool(set(got[1]) - set(candidates_nearest(
            model_id=CLIP, vector=vector, depth=depth, **scope)[0]))  # fmt: skip
        # The fused page: ids and scores, for the same lists.
        k = 7
        monkeypatch.setattr(hybrid, "HYBRID_CANDIDATES", depth)
        page = images_search_hybrid(
            user=user, model_id=CLIP, vector=vector, words=words,
            search=SearchRequest(k=k, filters=filters, hybrid=True), exclude_image_id=exclude,
        )  # fmt: skip
        ids, scores = _reference_page(want[0], want[1], k=k)
        assert [hit.image.pk for hit in page.hits] == ids
        assert [hit.score for hit in page.hits] == scores
    # Both paths and keyword-only matches were exercised, not just one.
    assert min(checked.values()) > 0, checked


def test_its_keyword_lists_can_use_the_gin_indexes(planted) -> None:
    """The statement's text-search expressions are the indexes' own (else PostgreSQL would
    compute every image's words on every hybrid search)."""
    image_words, caption_words, tsquery = keyword_expressions(TEXT_SEARCH_CONFIG)
    lists = {
        "image_words": f"SELECT i.id FROM gallery_image i WHERE {image_words} @@ ({tsquery})",
        "caption_words": f"SELECT t.id FROM gallery_caption t WHERE {caption_words} @@ ({tsquery})",
        "image_name_trgm": "SELECT id FROM gallery_image WHERE original_filename %% %(words)s",
    }
    with hnsw_scan_transaction() as alias, binding_cursor(alias) as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        for index, statement in lists.items():
            cursor.execute(
                f"EXPLAIN {statement}", {"any_word": "harbour or tower", "words": "x.jpg"}
            )
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert f"Bitmap Index Scan on {index}" in plan, plan
    # And those are the expressions the statement uses.
    statement = _hybrid_statement(dim=512, exact=False, scope="SELECT 1", config=TEXT_SEARCH_CONFIG)
    assert image_words in statement and caption_words in statement and tsquery in statement
