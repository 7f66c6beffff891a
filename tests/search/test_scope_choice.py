"""How a filtered search chooses exact or the index (search.ranking.search_scope): by the
planner's estimate, counting (bounded) only when the estimate says few, so a broad filter never
counts its rows; and whatever the estimate says, a page holds k results (a wrong estimate costs
time, not results)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test.utils import CaptureQueriesContext

from gallery.models import Image
from search import ranking
from search.ranking import SearchFilters, SearchRequest, images_search_by_vector
from tests.search.test_search import CLIP, clustered, dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def dated(tiny_models) -> list[Image]:
    """300 public images: 280 taken in 2019, 20 in July 2023."""
    images, _ = dataset(300)
    Image.objects.filter(pk__in=[i.pk for i in images[:280]]).update(
        taken_at=datetime(2019, 5, 1, tzinfo=UTC)
    )
    Image.objects.filter(pk__in=[i.pk for i in images[280:]]).update(
        taken_at=datetime(2023, 7, 10, tzinfo=UTC)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE gallery_image")
        cursor.execute("ANALYZE search_imageembedding")
    return images


IN_2019 = SearchFilters(
    taken_after=datetime(2019, 1, 1, tzinfo=UTC), taken_before=datetime(2020, 1, 1, tzinfo=UTC)
)
JULY_2023 = SearchFilters(
    taken_after=datetime(2023, 7, 1, tzinfo=UTC), taken_before=datetime(2023, 8, 1, tzinfo=UTC)
)


def search(filters: SearchFilters, k: int = 10):
    with CaptureQueriesContext(connection) as queries:
        page = images_search_by_vector(
            user=AnonymousUser(), model_id=CLIP, vector=clustered(1, seed=3)[0],
            search=SearchRequest(k=k, filters=filters),
        )  # fmt: skip
    sqls = [q["sql"] for q in queries.captured_queries]
    return page, sqls


def counts(sqls: list[str]) -> int:
    return sum("COUNT(*)" in sql.upper() for sql in sqls)


def test_a_broad_filter_goes_to_the_index_without_counting(dated, monkeypatch) -> None:
    monkeypatch.setattr(ranking, "EXACT_SEARCH_MAX_ROWS", 100)
    page, sqls = search(IN_2019)
    assert any(sql.startswith("EXPLAIN") for sql in sqls), "decided by the estimate"
    assert counts(sqls) == 0, sqls
    assert not page.exact and len(page.hits) == 10


def test_a_selective_filter_is_counted_bounded_and_ranked_exactly(dated, monkeypatch) -> None:
    monkeypatch.setattr(ranking, "EXACT_SEARCH_MAX_ROWS", 100)
    page, sqls = search(JULY_2023)
    assert counts(sqls) == 1 and any("LIMIT 101" in sql for sql in sqls), sqls
    assert page.exact and len(page.hits) == 10
    july = {i.pk for i in dated[280:]}
    assert {hit.image.pk for hit in page.hits} <= july


def test_a_wrong_estimate_still_gives_k_results(dated, monkeypatch) -> None:
    july = {i.pk for i in dated[280:]}
    # Told "many" for the 20 photos of July 2023: the index, whose page then comes back
    # short or not, and k results either way.
    monkeypatch.setattr(ranking, "_row_estimate", lambda queryset: 1e9)
    page, sqls = search(JULY_2023, k=15)
    assert counts(sqls) == 0
    assert len(page.hits) == 15 and {hit.image.pk for hit in page.hits} <= july
    scores = [hit.score for hit in page.hits]
    assert scores == sorted(scores, reverse=True)
    # All 20 when asked for more than there are (the index leaves the page short: exact).
    page, _ = search(JULY_2023, k=30)
    assert {hit.image.pk for hit in page.hits} == july and page.exact
    # Told "few" for the 280 of 2019: the bounded count says otherwise, so the index.
    monkeypatch.setattr(ranking, "EXACT_SEARCH_MAX_ROWS", 100)
    monkeypatch.setattr(ranking, "_row_estimate", lambda queryset: 1.0)
    page, sqls = search(IN_2019)
    assert counts(sqls) == 1 and not page.exact and len(page.hits) == 10


def test_the_estimate_is_the_planners(dated) -> None:

    def estimate(filters: SearchFilters) -> float:
        images = ranking.filtered_images(user=AnonymousUser(), filters=filters)
        return ranking._row_estimate(images)

    assert estimate(JULY_2023) < 100 < estimate(IN_2019)
    assert np.isfinite(estimate(SearchFilters()))
