"""Recall@K, median and mean rank, pgvector ranking and fusion, each checked against answers
known by construction or computed independently in plain numpy; then manage.py evaluate end to
end with the tiny models (their numbers are meaningless, the pipeline is the real one)."""

from __future__ import annotations

import io
import statistics

import numpy as np
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from gallery.models import Caption, Image
from search.evaluation import (
    embeddings_matrix,
    rank_summary,
    ranks_from_scores,
    ranks_numpy,
    text_to_image_ranks_ann,
    text_to_image_ranks_exact,
)
from search.models import EvaluationRun
from tests.factories import ImageFactory, evaluate
from workers.encoder_cache import encoder_for
from workers.models import EmbeddingModel, ImageEmbedding
from workers.pipeline import images_embed_batch
from workers.services import embedding_model_enable, embeddings_store

pytestmark = pytest.mark.django_db
CLIP, ALIGN = "clip-vit-base-patch32", "align-base"


def dataset_images(n: int, split: str = "test") -> list[Image]:
    """Flickr30k rows without files: the ranking reads vectors only."""
    images = ImageFactory.build_batch(n, dataset=True, file="x.jpg", split=split)
    return Image.objects.bulk_create(images)


def basis(n: int, dim: int) -> np.ndarray:
    return np.eye(n, dim, dtype=np.float32)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def plain_ranks(scores: np.ndarray, right: list[list[int]]) -> list[int]:
    """The definition, one query at a time: 1 + candidates scoring above the best right one."""
    ranks = []
    for row, answers in zip(scores.tolist(), right, strict=True):
        best = max(row[a] for a in answers)
        ranks.append(1 + sum(1 for score in row if score > best))
    return ranks


# --- Metrics on ranks known by construction ----------------------------------------------------

# Rank wanted for each query; query i asks for image i % 12.
WANTED = [1, 1, 1, 2, 3, 5, 6, 10, 11, 12, 1, 4, 7, 1, 2]


def queries_with_ranks(gallery: np.ndarray, wanted: list[int]) -> tuple[np.ndarray, list[int]]:
    """Query vectors that put their image at exactly the wanted rank among orthonormal images:
    the r-1 images ahead get larger weights than the target, every other image weight 0."""
    n = len(gallery)
    queries, targets = [], []
    for i, rank in enumerate(wanted):
        target = i % n
        ahead = [(target + 1 + j) % n for j in range(rank - 1)]
        q = np.zeros(gallery.shape[1])
        for p, image in enumerate(ahead):
            q += (1.0 - 0.05 * p) * gallery[image]
        q += (1.0 - 0.05 * (rank - 1) - 0.02) * gallery[target]
        queries.append(q)
        targets.append(target)
    return unit(np.array(queries)), targets


def test_recall_median_and_mean_rank_of_known_ranks() -> None:
    summary = rank_summary(np.array(WANTED))
    n = len(WANTED)
    assert summary.n == n
    assert summary.r1 == pytest.approx(100 * sum(r <= 1 for r in WANTED) / n)  # 5 of 15
    assert summary.r5 == pytest.approx(100 * sum(r <= 5 for r in WANTED) / n)
    assert summary.r10 == pytest.approx(100 * sum(r <= 10 for r in WANTED) / n)
    assert summary.median_rank == statistics.median(WANTED) == 3
    assert summary.mean_rank == pytest.approx(statistics.mean(WANTED))


def test_misses_beyond_k_count_as_misses_and_leave_mean_unknown() -> None:
    summary = rank_summary(np.array([1, 2, np.inf, np.inf, 3]))
    assert (summary.r1, summary.r10) == (20.0, 60.0)
    assert summary.median_rank == 3.0
    assert summary.mean_rank is None
    assert rank_summary(np.array([1, np.inf, np.inf])).median_rank is None


def test_pgvector_exact_ranks_are_the_constructed_ones() -> None:
    images = dataset_images(12)
    gallery = basis(12, 512)
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=gallery)
    queries, targets = queries_with_ranks(gallery, WANTED)
    target_ids = np.array([images[t].pk for t in targets])

    ranks = text_to_image_ranks_exact(
        model_id=CLIP,
        queries=queries,
        target_image_ids=target_ids,
        gallery_image_ids=np.array([i.pk for i in images]),
        batch_size=4,  # several statements
    )

    assert ranks.tolist() == WANTED


def test_pgvector_exact_ranks_equal_an_independent_numpy_computation() -> None:
    rng = np.random.default_rng(7)
    images = dataset_images(40)
    gallery = unit(rng.normal(size=(40, 512)))
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=gallery)
    targets = rng.integers(0, 40, size=200)
    queries = unit(gallery[targets] + 15.0 * rng.normal(size=(200, 512)) / np.sqrt(512))

    ranks = text_to_image_ranks_exact(
        model_id=CLIP,
        queries=queries,
        target_image_ids=np.array([images[t].pk for t in targets]),
        gallery_image_ids=np.array([i.pk for i in images]),
        batch_size=64,
    )

    expected = plain_ranks(queries.astype(np.float64) @ gallery.T.astype(np.float64),
                           [[t] for t in targets])  # fmt: skip
    assert ranks.tolist() == expected
    assert len(set(expected)) > 5  # the case is not trivial
    assert (
        ranks_numpy(
            queries=[queries],
            candidates=[
                embeddings_matrix(model_id=CLIP, image_ids=np.array([i.pk for i in images]))
            ],
            query_keys=np.array([images[t].pk for t in targets]),
            candidate_keys=np.array([i.pk for i in images]),
        ).tolist()
        == expected
    )


def test_only_the_gallery_is_ranked() -> None:
    test_images, train_images = dataset_images(3), dataset_images(3, split="train")
    gallery = basis(6, 512)
    embeddings_store(
        model_id=CLIP, image_ids=[i.pk for i in test_images + train_images], vectors=gallery
    )
    # Closest to a train image, then to its test image: rank 1 within the test gallery.
    query = unit((gallery[3] + 0.5 * gallery[0])[None, :])
    ranks = text_to_image_ranks_exact(
        model_id=CLIP,
        queries=query,
        target_image_ids=np.array([test_images[0].pk]),
        gallery_image_ids=np.array([i.pk for i in test_images]),
    )
    assert ranks.tolist() == [1]


def test_hnsw_ranks_use_the_index_and_match_exact_within_k(fresh_embedding_files) -> None:
    images = dataset_images(12)
    others = dataset_images(5, split="train")
    gallery = basis(17, 512)
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images + others], vectors=gallery)
    queries, targets = queries_with_ranks(gallery[:12], WANTED)

    found = text_to_image_ranks_ann(
        model_id=CLIP,
        queries=queries,
        target_image_ids=np.array([images[t].pk for t in targets]),
        split="test",
        k=10,
    )

    assert found.plan_uses_index
    # On 17 rows the index search is exhaustive: exactly the wanted ranks, misses past k.
    assert found.ranks.tolist() == [r if r <= 10 else np.inf for r in WANTED]


def test_image_to_text_counts_the_best_of_the_five_captions() -> None:
    # 3 image queries x 15 captions; image i owns captions 5i..5i+4.
    rng = np.random.default_rng(3)
    scores = rng.uniform(0, 1, size=(3, 15))
    scores[0, 2] = 2.0  # image 0: one of its captions is the best match -> rank 1
    scores[1, :] = np.linspace(1, 0, 15)  # image 1: captions 5..9 sit at ranks 6..10 -> 6
    scores[2, 10:15] = -1.0  # image 2: all its captions last -> 11
    owners = np.repeat([100, 200, 300], 5)

    ranks = ranks_from_scores(scores, query_keys=np.array([100, 200, 300]), candidate_keys=owners)

    assert ranks.tolist() == [1, 6, 11]
    assert ranks.tolist() == plain_ranks(
        scores, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], list(range(10, 15))]
    )


# --- Fusion ------------------------------------------------------------------------------------


def vectors_with_similarities(similarities: list[float], dim: int) -> np.ndarray:
    """Unit vectors whose cosine with e_0 (the query) is exactly each given similarity."""
    rows = np.zeros((len(similarities), dim))
    for i, s in enumerate(similarities):
        rows[i, 0] = s
        rows[i, 1 + i] = np.sqrt(1 - s * s)
    return rows.astype(np.float32)


def test_fusion_ranks_right_what_each_model_alone_ranks_second() -> None:
    # Image 0 is the answer. CLIP prefers image 1 (which ALIGN ranks last), ALIGN prefers image 9
    # (which CLIP ranks last); both put the answer second.
    clip_sims = [0.85, 0.90, 0.30, 0.28, 0.26, 0.24, 0.22, 0.20, 0.18, 0.00]
    align_sims = [0.60, 0.00, 0.20, 0.19, 0.18, 0.17, 0.16, 0.15, 0.14, 0.70]
    images = dataset_images(10)
    ids = np.array([i.pk for i in images])
    embeddings_store(
        model_id=CLIP, image_ids=ids.tolist(), vectors=vectors_with_similarities(clip_sims, 512)
    )
    embeddings_store(
        model_id=ALIGN, image_ids=ids.tolist(), vectors=vectors_with_similarities(align_sims, 640)
    )
    query = {CLIP: basis(1, 512), ALIGN: basis(1, 640)}
    target = ids[:1]

    for model_id in (CLIP, ALIGN):
        alone = text_to_image_ranks_exact(
            model_id=model_id, queries=query[model_id], target_image_ids=target,
            gallery_image_ids=ids,
        )  # fmt: skip
        assert alone.tolist() == [2], model_id

    # Fusion reads each model's gallery vectors from PostgreSQL once, then ranks in numpy.
    stored = [embeddings_matrix(model_id=m, image_ids=ids) for m in (CLIP, ALIGN)]
    for fusion in ("zsum", "rrf"):
        fused = ranks_numpy(
            queries=[query[CLIP], query[ALIGN]],
            candidates=stored,
            query_keys=target,
            candidate_keys=ids,
            fusion=fusion,
        )
        assert fused.tolist() == [1], fusion


# --- manage.py evaluate, end to end with the tiny models ---------------------------------------


def independent_ranks(model_id: str, images: list[Image], all_images: list[Image]):
    """Text->image and image->text ranks straight from the encoder and the stored vectors."""
    captions = list(Caption.objects.filter(image__in=images).order_by("image_id", "position"))
    gallery_captions = list(
        Caption.objects.filter(image__in=all_images).order_by("image_id", "position")
    )
    encoder = encoder_for(model_id)
    texts = encoder.embed_texts([c.text for c in gallery_captions]).astype(np.float64)
    vectors = {
        e.image_id: np.asarray(e.vector, dtype=np.float64)
        for e in ImageEmbedding.objects.filter(model_id=model_id)
    }
    gallery = sorted(i.pk for i in all_images)
    t2i_scores = np.array([[t @ vectors[g] for g in gallery] for t in texts])
    query_rows = [k for k, c in enumerate(gallery_captions) if c.image_id in {i.pk for i in images}]
    t2i = plain_ranks(
        t2i_scores[query_rows], [[gallery.index(gallery_captions[k].image_id)] for k in query_rows]
    )
    owners = [c.image_id for c in gallery_captions]
    query_images = sorted(i.pk for i in images)
    i2t_scores = np.array([[vectors[i] @ t for t in texts] for i in query_images])
    i2t = plain_ranks(
        i2t_scores, [[k for k, o in enumerate(owners) if o == i] for i in query_images]
    )
    assert len(t2i) == len(captions)
    return t2i, i2t


def assert_run_matches(run: EvaluationRun, t2i: list[int], i2t: list[int]) -> None:
    for prefix, ranks in (("t2i", t2i), ("i2t", i2t)):
        for k in (1, 5, 10):
            expected = 100 * sum(r <= k for r in ranks) / len(ranks)
            assert getattr(run, f"{prefix}_r{k}") == pytest.approx(expected), (prefix, k)
        assert getattr(run, f"{prefix}_median_rank") == pytest.approx(statistics.median(ranks))
        assert getattr(run, f"{prefix}_mean_rank") == pytest.approx(statistics.mean(ranks))


def test_evaluate_prints_and_saves_numbers_equal_to_an_independent_computation(
    tiny_models, flickr_test_split
) -> None:
    test_images, train_images = flickr_test_split
    call_command("embed", "--model", CLIP, "--sync", "--missing", stdout=io.StringIO())

    out = evaluate("--model", CLIP)

    run = EvaluationRun.objects.get()
    assert (run.models, run.fusion, run.split, run.gallery, run.mode) == (
        CLIP, "", "test", "split", "exact",
    )  # fmt: skip
    assert (run.n_images, run.n_queries) == (4, 20)
    assert_run_matches(run, *independent_ranks(CLIP, test_images, test_images))
    assert "4 images, 20 caption queries" in out
    assert "CLIP ViT-B/32 (OpenAI weights)" in out and "58.8 / 83.6 / 90.0" in out
    assert f"open_clip's retrieval results table (its own measurement); same weights: {CLIP}" in out
    assert "ALIGN EfficientNet-L2 + BERT-Large" in out and "ALIGN paper (Jia et al. 2021)" in out
    assert "Not comparable to the papers' 1K test: 4 images, not 1,000; 20 captions" in out
    assert "Comparable to the papers" not in out
    assert "truncated to 77 tokens" in out
    assert "equal an independent numpy computation for 20 of 20 queries" in out
    assert "saved 1 runs" in out


def test_evaluate_over_all_images(tiny_models, flickr_test_split) -> None:
    test_images, train_images = flickr_test_split
    call_command("embed", "--model", CLIP, "--sync", "--missing", stdout=io.StringIO())

    evaluate("--model", CLIP, "--gallery", "all")

    run = EvaluationRun.objects.get()
    assert (run.gallery, run.n_images, run.n_queries) == ("all", 6, 20)
    assert_run_matches(run, *independent_ranks(CLIP, test_images, test_images + train_images))


def test_evaluate_through_the_hnsw_index(tiny_models, flickr_test_split) -> None:
    call_command("embed", "--model", CLIP, "--sync", "--missing", stdout=io.StringIO())
    evaluate("--model", CLIP, "--no-save")
    exact = evaluate("--model", CLIP)

    out = evaluate("--model", CLIP, "--ann")

    assert "did not use the HNSW index" not in out
    assert "through the HNSW index (top 10" in out
    exact_run, ann_run = EvaluationRun.objects.order_by("id")
    assert ann_run.mode == "ann"
    # 4 images: the index search is exhaustive, so it finds what the exact scan finds.
    assert (ann_run.t2i_r1, ann_run.t2i_r5) == (exact_run.t2i_r1, exact_run.t2i_r5)
    assert ann_run.t2i_median_rank == exact_run.t2i_median_rank
    assert "saved 1 runs" in exact


def test_evaluate_fusion_reports_each_model_and_each_fusion(tiny_models, flickr_test_split) -> None:
    test_images, _ = flickr_test_split
    ids = [i.pk for i in test_images]
    images_embed_batch(model_id=CLIP, image_ids=ids)
    images_embed_batch(model_id=ALIGN, image_ids=ids)

    out = evaluate("--model", CLIP, "--fuse", ALIGN, "--fusion", "both")

    runs = {(r.models, r.fusion) for r in EvaluationRun.objects.all()}
    both = f"{CLIP},{ALIGN}"
    assert runs == {(CLIP, ""), (ALIGN, ""), (both, "zsum"), (both, "rrf")}
    assert f"zsum({CLIP}+{ALIGN})" in out and f"rrf({CLIP}+{ALIGN})" in out
    assert "fusions: computed in numpy" in out


def test_missing_embeddings_say_which_model_and_how_to_make_them(
    tiny_models, flickr_test_split
) -> None:
    with pytest.raises(CommandError) as error:
        evaluate("--model", CLIP)
    message = str(error.value)
    assert f"{CLIP}: 4 of the 4 images" in message
    assert f"manage.py embed --model {CLIP} --missing --sync" in message
    assert "import_embeddings" in message
    assert not EvaluationRun.objects.exists()


@pytest.mark.parametrize("state", ["disabled", "no-row"])
def test_missing_embeddings_of_a_model_not_enabled_name_steps_that_work(
    tiny_models, flickr_test_split, state
) -> None:
    # `embed` refuses a model that is not enabled: the hint must say to enable it first, in a
    # way that works for this model (settings never re-enable one disabled in the admin).
    models = EmbeddingModel.objects.filter(model_id=CLIP)
    if state == "disabled":
        models.update(enabled=False, is_default=False)
    else:
        models.delete()
    with pytest.raises(CommandError) as error:
        evaluate("--model", CLIP)
    message = str(error.value)
    assert "`embed` refuses it: enable it in the admin (Embedding models" in message
    assert ("EMBEDDING_MODELS" in message) == (state == "no-row")
    with pytest.raises(CommandError, match="is not enabled; enable it in the admin"):
        call_command("embed", "--model", CLIP, "--sync", "--missing", stdout=io.StringIO())

    # Doing what it says, then the command it names, works.
    if state == "disabled":
        embedding_model_enable(model_id=CLIP)
    else:
        assert CLIP in settings.EMBEDDING_MODELS
        call_command("migrate", "--verbosity", "0")
    call_command("embed", "--model", CLIP, "--sync", "--missing", stdout=io.StringIO())
    assert "4 images" in evaluate("--model", CLIP, "--no-save")


def test_no_data_set_says_to_import_it() -> None:
    with pytest.raises(CommandError, match="import_flickr30k"):
        evaluate("--model", CLIP)


def test_siglip_caption_vectors_stored_before_lowercasing_are_encoded_again(
    settings, tmp_path
) -> None:
    # A vector stored under the hash of the cased text was made from the cased text: reusing
    # it would keep an evaluation's SigLIP captions uncased. Keyed by the text as the model
    # reads it, it no longer matches.
    import hashlib

    from search.evaluation import caption_vectors
    from search.evaluation.run import encoder_variant
    from search.models import CaptionEmbedding
    from tests.tiny_models import build_tiny_siglip

    siglip = "siglip-base-patch16-224"
    settings.EMBEDDING_MODEL_SOURCES = {siglip: str(build_tiny_siglip(tmp_path / "siglip"))}
    settings.EMBEDDING_DEVICE = "cpu"
    caption = Caption.objects.create(image=ImageFactory(dataset=True), text="A Dog on a Beach")
    stale = np.zeros(768, dtype=np.float32)
    stale[0] = 1.0
    encoder = encoder_for(siglip)
    CaptionEmbedding.objects.create(
        caption=caption, model_id=siglip, encoder=encoder_variant(encoder), vector=stale,
        text_sha256=hashlib.sha256(caption.text.encode()).hexdigest(),
    )  # fmt: skip
    ids = np.array([caption.pk])

    first = caption_vectors(model_id=siglip, caption_ids=ids, texts=[caption.text])
    again = caption_vectors(model_id=siglip, caption_ids=ids, texts=[caption.text])

    assert (first.encoded, first.reused, again.encoded, again.reused) == (1, 0, 0, 1)
    expected = encoder.embed_texts(["a dog on a beach"])
    np.testing.assert_allclose(first.vectors, expected, atol=1e-6)
    np.testing.assert_allclose(again.vectors, expected, atol=1e-6)
