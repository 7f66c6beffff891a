"""The written-out ranking statement (search/ranking_sql.py): the query vector one binary
parameter, the same ranking as the ORM's query, the model's index, and fused search's lists
in one statement whose cost in queries does not grow with the gallery."""

from __future__ import annotations

import re

import numpy as np
import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from gallery.models import Image
from gallery.services.images import image_delete
from search.ranking import (
    DATE_SORT_CANDIDATES,
    SearchFilters,
    SearchRequest,
    candidate_lists_nearest,
    candidates_nearest,
    images_search_by_vector,
    images_search_queryset,
    ranked_rows,
)
from search.ranking_sql import binding_cursor, ranking_execute, scope_sql
from tests.factories import ImageFactory, UserFactory
from tests.search.test_search import CLIP, clustered, dataset, uploads
from workers.index_scans import hnsw_scan_transaction
from workers.indexes import hnsw_index_name
from workers.models import EmbeddingModel
from workers.services import (
    embedding_jobs_request,
    embedding_model_disable,
    embedding_model_enable,
    embeddings_store,
)

pytestmark = pytest.mark.django_db
ANON = AnonymousUser()
ALIGN = "align-base"


def near(vector: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` unit vectors close to ``vector`` (planted nearest neighbours)."""
    rng = np.random.default_rng(seed)
    rows = vector[None, :] + 0.05 * rng.normal(size=(n, len(vector)))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def orm_page(user, vector, *, k: int, offset: int = 0, **scope) -> list[tuple[int, float]]:
    """The same page from the ORM's query (``images_search_queryset``), as searches ran it."""
    ranked, _ = images_search_queryset(
        user=user, model_id=CLIP, vector=vector, depth=offset + k + 1, **scope
    )
    rows = ranked_rows(ranked[offset : offset + k])
    return [(row.image_id, 1.0 - float(row.distance)) for row in rows]


def test_the_statement_ranks_exactly_as_the_orm_query(fresh_embedding_files) -> None:
    owner, stranger = UserFactory(), UserFactory()
    query = clustered(1, seed=3)[0]
    dataset(400)
    # Private uploads nearest to the query: the owner's must come first for the owner, and
    # neither owner's may reach anyone else.
    mine = uploads(owner, 15, near(query, 15, seed=1))
    theirs = uploads(stranger, 15, near(query, 15, seed=2))
    cases = [
        (ANON, {}),
        (owner, {}),
        (stranger, {"exclude_image_id": theirs[0].pk}),
        (owner, {"filters": SearchFilters(source="mine")}),
        (ANON, {"filters": SearchFilters(source="dataset")}),
    ]
    with CaptureQueriesContext(connection) as queries:
        for user, scope in cases:
            for offset in (0, 25):
                page = images_search_by_vector(
                    user=user, model_id=CLIP, vector=query,
                    search=SearchRequest(k=20, offset=offset, filters=scope.get("filters")),
                    exclude_image_id=scope.get("exclude_image_id"),
                )  # fmt: skip
                got = [(hit.image.pk, hit.score) for hit in page.hits]
                assert got == orm_page(user, query, k=20, offset=offset, **scope)
                assert all(hit.captions == () for hit in page.hits)  # dataset() has none
    anonymous = [pk for pk, _ in orm_page(ANON, query, k=20)]
    assert not {i.pk for i in mine + theirs} & set(anonymous)
    owners = [hit.image.pk for hit in images_search_by_vector(
        user=owner, model_id=CLIP, vector=query, search=SearchRequest(k=15)).hits]  # fmt: skip
    assert set(owners) == {i.pk for i in mine}
    # The vector went as one binary parameter: no 512-float literal in any ranking statement.
    ranking = [q["sql"] for q in queries.captured_queries if "image_id IN" in q["sql"]]
    assert ranking and all(len(sql) < 5000 and not re.search(r"'\[", sql) for sql in ranking)
    assert all("::vector" in sql for sql in ranking)


def test_the_statement_takes_its_candidates_from_the_models_index() -> None:
    images = ImageFactory.create_batch(3, dataset=True)
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=clustered(3))
    scope = Image.objects.filter(visibility=Image.Visibility.PUBLIC)
    with hnsw_scan_transaction() as alias, binding_cursor(alias) as cursor:
        # On 3 rows a sort is cheaper; with sorting priced out only the index gives the order,
        # and only if the statement repeats the partial index's expression and predicate.
        cursor.execute("SET LOCAL enable_sort = off")
        rows = "\n".join(
            row[0]
            for row in ranking_execute(
                cursor,
                model_id=CLIP,
                dim=512,
                vector=clustered(1, seed=1)[0],
                scope=scope_sql(scope, alias=alias),
                exact=False,
                candidates=40,
                limit=21,
                offset=0,
                hits=True,
                explain=True,
            )  # fmt: skip
        )
    # The parameter's value is shown in the plan: drop the 512 floats.
    plan = re.sub(r"'\[[^\]]*\]'", "'[...]'", rows)
    scan = f"Index Scan using {hnsw_index_name(CLIP)}"
    assert scan in plan, plan
    assert "Order By: ((vector)::halfvec(512) <=> '[...]'::halfvec(512))" in plan, plan
    # The candidates are an InitPlan (run once), above the rerank on the full vectors.
    assert 0 <= plan.find("InitPlan") < plan.index(scan), plan
    assert "Sort Key: ((e.vector <=> '[...]'::vector)), e.id" in plan, plan


def test_fused_lists_come_from_one_statement_in_each_models_order(fresh_embedding_files) -> None:
    images, vectors = dataset(60)
    query = clustered(1, seed=3)[0]
    expected = [pk for pk, _ in orm_page(ANON, query, k=60)]
    with CaptureQueriesContext(connection) as queries:
        lists, exact = candidate_lists_nearest(
            model_ids=[CLIP, CLIP], vectors=[query, query], depth=60,
            user=ANON, filters=None, exclude_image_id=None,
        )  # fmt: skip
    # From the index (the lists are full), in the order the exact ranking gives here.
    assert lists == [expected, expected] and not exact
    statements = [q["sql"] for q in queries.captured_queries if "UNION ALL" in q["sql"]]
    assert len(statements) == 1


@pytest.fixture
def fused_gallery(tiny_models, fresh_embedding_files):
    """Two complete models over a few public images (random unit vectors)."""
    embedding_model_enable(model_id=ALIGN)
    return add_images(6)


def add_images(n: int, *, models: tuple[str, ...] = (CLIP, ALIGN)) -> list[Image]:
    images = Image.objects.bulk_create(ImageFactory.build_batch(n, dataset=True, file="x.jpg"))
    rng = np.random.default_rng(len(images) + Image.objects.count())
    for model_id, dim in ((CLIP, 512), (ALIGN, 640)):
        if model_id in models:
            rows = rng.normal(size=(n, dim))
            embeddings_store(model_id=model_id, image_ids=[i.pk for i in images], vectors=rows)
    return images


def fused(client: Client) -> tuple[int, list[str]]:
    """A fused search's status and the SQL it ran."""
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/search", {"q": "a dog", "model": f"{CLIP}+{ALIGN}"})
    return response.status_code, [q["sql"] for q in queries.captured_queries]


def test_fused_search_costs_the_same_queries_whatever_the_number_of_images(
    client: Client, fused_gallery
) -> None:
    fused(client)  # the first one counts the models' progress once and records it
    status, small = fused(client)
    assert status == 200
    add_images(40)
    fused(client)  # 40 newer images: counted once more
    status, large = fused(client)
    assert status == 200
    assert len(large) == len(small)
    assert not any(re.search(r"\bCOUNT\(", sql, re.IGNORECASE) for sql in small + large)
    # Both models' lists are one statement; a gallery smaller than the lists' depth (this one)
    # leaves them short, and they are fetched again exactly, both in one statement again.
    assert sum("UNION ALL" in sql for sql in large) == 2


def test_fused_completeness_follows_embeddings_images_and_jobs(
    client: Client, fused_gallery
) -> None:
    assert fused(client)[0] == 200
    late = add_images(1, models=(CLIP,))[0]  # a new image only one model has embedded
    assert fused(client)[0] == 400
    embeddings_store(model_id=ALIGN, image_ids=[late.pk], vectors=np.ones((1, 640)))
    assert fused(client)[0] == 200

    owner = UserFactory()
    upload = ImageFactory(owner=owner)  # nothing embedded it yet
    assert fused(client)[0] == 400
    image_delete(user=owner, image_id=upload.pk)
    assert fused(client)[0] == 200

    embedding_jobs_request(model_id=ALIGN, image_ids=[late.pk])  # a re-embed waits
    assert fused(client)[0] == 400
    embeddings_store(model_id=ALIGN, image_ids=[late.pk], vectors=np.ones((1, 640)))
    assert fused(client)[0] == 200

    recorded = EmbeddingModel.objects.get(model_id=ALIGN)
    assert recorded.embeddings_complete
    embedding_model_disable(model_id=ALIGN)
    embedding_model_enable(model_id=ALIGN)
    again = EmbeddingModel.objects.get(model_id=ALIGN)
    assert not again.embeddings_complete
    assert again.completeness_version > recorded.completeness_version


def test_the_index_scan_runs_with_the_sites_ef_search_or_the_candidates_it_reads(
    settings, monkeypatch
) -> None:
    """HNSW_EF_SEARCH reaches the index statement's transaction (SET LOCAL with the iterative
    scan), raised to the candidates a deeper page reads; not for the date sort's candidates."""
    images = ImageFactory.create_batch(3, dataset=True)
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=clustered(3))
    seen: list[tuple[bool, str, str]] = []

    def showing(cursor, **statement):
        # What the ranking statement runs under, read on its own cursor and transaction.
        cursor.execute("SELECT current_setting('hnsw.ef_search'), "
                       "current_setting('hnsw.iterative_scan')")  # fmt: skip
        seen.append((statement["exact"], *cursor.fetchone()))
        return ranking_execute(cursor, **statement)

    monkeypatch.setattr("search.ranking.ranking_execute", showing)
    settings.HNSW_EF_SEARCH = 57
    vector = clustered(1, seed=1)[0]
    # k=2 of 3 images: the index fills the page. Offset 100 finds none and is asked again
    # without the index (the exact path, which sets no ef_search).
    for offset in (0, 100):
        images_search_by_vector(
            user=ANON, model_id=CLIP, vector=vector, search=SearchRequest(k=2, offset=offset)
        )
    # The date sort's DATE_SORT_CANDIDATES (500) keep the site's ef_search.
    candidates_nearest(
        model_id=CLIP, vector=vector, depth=DATE_SORT_CANDIDATES, user=ANON, filters=None,
        exclude_image_id=None,
    )  # fmt: skip
    index_scans = [(ef, iterative) for exact, ef, iterative in seen if not exact]
    # Page 1 reads 40 candidates (RERANK_CANDIDATES), fewer than 57; offset 100 reads 103.
    assert index_scans == [("57", "strict_order"), ("103", "strict_order"), ("57", "strict_order")]


def test_hits_images_are_read_with_their_captions_in_order() -> None:
    from gallery.models import Caption
    from search.ranking import images_with_captions

    first, second = ImageFactory.create_batch(2, dataset=True, title="a title")
    for position, text in ((1, "second caption"), (0, "first caption")):
        Caption.objects.create(image=first, text=text, position=position)
    found = images_with_captions([first.pk, second.pk, 10**9])
    assert set(found) == {first.pk, second.pk}  # an id that does not exist is left out
    assert found[first.pk].caption_texts == ["first caption", "second caption"]
    assert found[second.pk].caption_texts == []
    assert found[first.pk].title == "a title" and found[first.pk].file == first.file


def test_hybrids_vector_side_scans_as_deep_as_its_candidates(settings, monkeypatch) -> None:
    from search import hybrid

    images = ImageFactory.create_batch(3, dataset=True, title="harbour")
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=clustered(3))
    seen: list[str] = []
    run = hybrid.hybrid_execute

    def showing(cursor, **statement):
        cursor.execute("SELECT current_setting('hnsw.ef_search')")
        seen.append(cursor.fetchone()[0])
        return run(cursor, **statement)

    monkeypatch.setattr(hybrid, "hybrid_execute", showing)
    settings.HNSW_EF_SEARCH = 57
    hybrid.images_search_hybrid(
        user=ANON, model_id=CLIP, vector=clustered(1, seed=1)[0], words="harbour"
    )
    # One pass of the index's candidate list holds the side's HYBRID_CANDIDATES (a scan 300
    # deep took 14 ms so, against 25 by the iterative scan from 40; bench/README.md). Three
    # images: the index's short list is asked again exactly, which reads no index.
    assert seen[0] == str(hybrid.HYBRID_CANDIDATES)
