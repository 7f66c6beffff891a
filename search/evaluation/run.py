"""One evaluation run: what it reads, encodes and ranks, the report, and saving it.

Writes live here too (caption embeddings, ``EvaluationRun`` rows): they belong to the
evaluation, and keeping them out of ``workers.services`` keeps the index free of this one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from tqdm import tqdm

from encoders import model_spec
from search.evaluation.data import (
    EvaluationError,
    caption_embeddings_stored,
    embeddings_matrix,
    embeddings_missing_count,
    evaluation_set_load,
    missing_message,
    split_sizes_note,
)
from search.evaluation.metrics import FUSIONS, KS, RankSummary, rank_summary, ranks_numpy
from search.evaluation.negatives import negative_check
from search.evaluation.ranking import text_to_image_ranks_ann, text_to_image_ranks_exact
from search.models import CaptionEmbedding, EvaluationRun
from workers.encoder_cache import encoder_for

# The papers' 1K test: Karpathy's 1,000 test images with their 5,000 captions.
PAPERS_IMAGES, PAPERS_CAPTIONS = 1_000, 5_000


# --- Caption embeddings: encoded once per model, then read back ---------------------------------


def encoder_variant(encoder: object) -> str:
    """The encoder's numerics ("float32", "float16", "int8"): vectors differ between them."""
    quantization = getattr(encoder, "quantization", None)
    if quantization:
        return str(quantization)
    return str(getattr(encoder, "dtype", "")).removeprefix("torch.")


def texts_embed(
    *, model_id: str, texts: Sequence[str], prompt: str = "", batch_size: int = 256
) -> np.ndarray:
    """Embed ``texts`` with search's encoder (stripped as search strips a query)."""
    return _encode(model_id, [prompt + text.strip() for text in texts], batch_size)


def _encode(model_id: str, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    encoder = encoder_for(model_id)
    parts = [
        encoder.embed_texts(list(texts[start : start + batch_size]))
        for start in tqdm(
            range(0, len(texts), batch_size), desc=f"{model_id} texts", unit="batch", leave=False
        )
    ]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype=np.float32)


def caption_embeddings_store(
    *,
    model_id: str,
    encoder: str,
    caption_ids: Sequence[int],
    text_hashes: Sequence[str],
    vectors: np.ndarray,
) -> None:
    """Keep caption vectors for the next run (a caption already stored keeps its row)."""
    rows = [
        CaptionEmbedding(
            caption_id=int(caption_id),
            model_id=model_id,
            encoder=encoder,
            text_sha256=text_hash,
            vector=vector,
        )
        for caption_id, text_hash, vector in zip(caption_ids, text_hashes, vectors, strict=True)
    ]
    CaptionEmbedding.objects.bulk_create(rows, ignore_conflicts=True, batch_size=2000)


@dataclass(frozen=True)
class CaptionVectors:
    vectors: np.ndarray
    encoded: int  # captions run through the encoder this time
    reused: int  # captions read back from PostgreSQL


def caption_vectors(
    *, model_id: str, caption_ids: np.ndarray, texts: Sequence[str], prompt: str = ""
) -> CaptionVectors:
    """Each caption's vector under ``model_id``: stored ones read back, the rest encoded (each
    distinct text once) and stored, so a second evaluation encodes no caption."""
    encoder = encoder_for(model_id)
    variant = encoder_variant(encoder)
    embedded = [prompt + text.strip() for text in texts]
    # Hashed as the model reads it (SigLIP's lowercased): a vector stored before the encoder
    # prepared texts this way does not match, and the caption is encoded again.
    read_as = getattr(encoder, "texts_prepared", list)(embedded)
    hashes = [hashlib.sha256(text.encode()).hexdigest() for text in read_as]
    stored = caption_embeddings_stored(
        model_id=model_id, encoder=variant, caption_ids=caption_ids, text_hashes=hashes
    )
    matrix = np.empty((len(texts), model_spec(model_id).dim), dtype=np.float32)
    todo: list[int] = []
    for row, caption_id in enumerate(caption_ids):
        vector = stored.get(int(caption_id))
        if vector is None:
            todo.append(row)
        else:
            matrix[row] = vector
    if todo:
        # One encoding per distinct text: also makes equal captions equal vectors (a batch's
        # padding could otherwise nudge them apart), so they tie exactly as they should.
        distinct = list(dict.fromkeys(embedded[row] for row in todo))
        encoded = _encode(model_id, distinct)
        row_of = {text: n for n, text in enumerate(distinct)}
        new = encoded[[row_of[embedded[row]] for row in todo]]
        matrix[todo] = new
        caption_embeddings_store(
            model_id=model_id,
            encoder=variant,
            caption_ids=[int(caption_ids[row]) for row in todo],
            text_hashes=[hashes[row] for row in todo],
            vectors=new,
        )
    return CaptionVectors(matrix, encoded=len(todo), reused=len(texts) - len(todo))


# --- The evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SystemResult:
    """One row of the report: a model (``fusion`` empty) or a fusion of ``model_ids``."""

    model_ids: tuple[str, ...]
    fusion: str
    mode: str  # "exact" or "ann" (how text->image was ranked)
    text_to_image: RankSummary
    image_to_text: RankSummary
    duration_seconds: float

    @property
    def label(self) -> str:
        return f"{self.fusion}({'+'.join(self.model_ids)})" if self.fusion else self.model_ids[0]


@dataclass
class EvaluationReport:
    split: str
    gallery: str
    prompt: str
    lang: str
    n_images: int  # images ranked by text->image (the gallery)
    n_queries: int  # caption queries
    n_image_queries: int
    n_caption_candidates: int
    results: list[SystemResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ann_k: int | None = None

    def differences_from_papers(self) -> list[str]:
        """How this setting differs from the papers' 1K test; empty when it is that test."""
        differences = []
        if self.split != "test":
            differences.append(f"the {self.split} split, not test")
        if self.gallery != "split":
            differences.append(f"a gallery of all {self.n_images:,} images, not the split's")
        if self.n_image_queries != PAPERS_IMAGES:
            differences.append(f"{self.n_image_queries:,} images, not {PAPERS_IMAGES:,}")
        if self.n_queries != PAPERS_CAPTIONS:
            differences.append(f"{self.n_queries:,} captions, not {PAPERS_CAPTIONS:,}")
        if self.lang != "en":
            differences.append(f"{self.lang!r} captions, not the original English ones")
        if self.ann_k is not None:
            differences.append("text->image through the HNSW index, not an exact ranking")
        return differences


def evaluate(
    *,
    model_ids: Sequence[str],
    split: str = "test",
    gallery: str = "split",
    ann: bool = False,
    ann_k: int = max(KS),
    fusions: Sequence[str] = (),
    prompt: str = "",
    lang: str = "en",
) -> EvaluationReport:
    """Evaluate each of ``model_ids`` and, when there are several, each of ``fusions``.

    Raises ``EvaluationError`` before any work when a model lacks embeddings for images to be
    ranked, and ``encoders.EncoderError`` when a model's text encoder cannot load.
    """
    model_ids = list(dict.fromkeys(model_ids))
    for model_id in model_ids:
        model_spec(model_id)
    unknown = [f for f in fusions if f not in FUSIONS]
    if unknown:
        raise EvaluationError(f"unknown fusion {unknown[0]!r}; use one of {', '.join(FUSIONS)}")
    if fusions and len(model_ids) < 2:
        raise EvaluationError("fusion needs at least two models")
    data = evaluation_set_load(split=split, gallery=gallery, lang=lang)
    for model_id in model_ids:
        missing = embeddings_missing_count(model_id=model_id, image_ids=data.gallery_image_ids)
        if missing:
            raise EvaluationError(missing_message(model_id, missing, len(data.gallery_image_ids)))

    report = EvaluationReport(
        split=split,
        gallery=gallery,
        prompt=prompt,
        lang=lang,
        n_images=len(data.gallery_image_ids),
        n_queries=len(data.caption_texts),
        n_image_queries=len(data.image_ids),
        n_caption_candidates=len(data.gallery_caption_texts),
        ann_k=ann_k if ann else None,
    )
    image_rows = np.searchsorted(data.gallery_image_ids, data.image_ids)
    query_captions = data.query_caption_positions
    text_vectors: list[np.ndarray] = []  # per model: every gallery caption
    image_vectors: list[np.ndarray] = []  # per model: every gallery image
    for model_id in model_ids:
        started = time.perf_counter()
        captions = caption_vectors(
            model_id=model_id,
            caption_ids=data.gallery_caption_ids,
            texts=data.gallery_caption_texts,
            prompt=prompt,
        )
        texts = captions.vectors
        report.notes.append(
            f"{model_id}: {captions.reused} caption embeddings read back from PostgreSQL, "
            f"{captions.encoded} encoded now (and stored for the next run)"
        )
        images = embeddings_matrix(model_id=model_id, image_ids=data.gallery_image_ids)
        text_vectors.append(texts)
        image_vectors.append(images)
        queries = texts[query_captions]
        if ann:
            found = text_to_image_ranks_ann(
                model_id=model_id,
                queries=queries,
                target_image_ids=data.caption_image_ids,
                split=split if gallery == "split" else None,
                k=ann_k,
            )
            t2i_ranks = found.ranks
            if not found.plan_uses_index:
                report.notes.append(
                    f"{model_id}: WARNING: PostgreSQL did not use the HNSW index for these "
                    f"queries, so its 'ann' figures are not the index's"
                )
        else:
            t2i_ranks = text_to_image_ranks_exact(
                model_id=model_id,
                queries=queries,
                target_image_ids=data.caption_image_ids,
                gallery_image_ids=data.gallery_image_ids,
            )
            checked = ranks_numpy(
                queries=[queries],
                candidates=[images],
                query_keys=data.caption_image_ids,
                candidate_keys=data.gallery_image_ids,
            )
            agree = int((checked == t2i_ranks).sum())
            report.notes.append(
                f"{model_id}: pgvector's exact ranks equal an independent numpy computation for "
                f"{agree} of {len(t2i_ranks)} queries (any difference is float rounding of "
                f"near-ties)"
            )
        caption_rows = np.searchsorted(data.gallery_image_ids, data.caption_image_ids)
        check = negative_check(
            queries=queries,
            query_image_rows=caption_rows,
            images=images,
            weight=settings.SEARCH_NEGATIVE_WEIGHT,
        )
        report.notes.append(check.describe(model_id))
        i2t_ranks = ranks_numpy(
            queries=[images[image_rows]],
            candidates=[texts],
            query_keys=data.image_ids,
            candidate_keys=data.gallery_caption_image_ids,
        )
        report.results.append(
            SystemResult(
                model_ids=(model_id,),
                fusion="",
                mode="ann" if ann else "exact",
                text_to_image=rank_summary(t2i_ranks),
                image_to_text=rank_summary(i2t_ranks),
                duration_seconds=time.perf_counter() - started,
            )
        )
    for fusion in fusions:
        started = time.perf_counter()
        t2i_ranks = ranks_numpy(
            queries=[texts[query_captions] for texts in text_vectors],
            candidates=image_vectors,
            query_keys=data.caption_image_ids,
            candidate_keys=data.gallery_image_ids,
            fusion=fusion,
        )
        i2t_ranks = ranks_numpy(
            queries=[images[image_rows] for images in image_vectors],
            candidates=text_vectors,
            query_keys=data.image_ids,
            candidate_keys=data.gallery_caption_image_ids,
            fusion=fusion,
        )
        report.results.append(
            SystemResult(
                model_ids=tuple(model_ids),
                fusion=fusion,
                mode="exact",
                text_to_image=rank_summary(t2i_ranks),
                image_to_text=rank_summary(i2t_ranks),
                duration_seconds=time.perf_counter() - started,
            )
        )
    report.notes[:0] = _protocol_notes(report, model_ids, ann=ann, fused=bool(fusions))
    return report


def _protocol_notes(
    report: EvaluationReport, model_ids: Sequence[str], *, ann: bool, fused: bool
) -> list[str]:
    notes = [
        "hybrid (keyword + meaning) ranking is never used here: the queries are Flickr30k "
        "captions, which are also stored as the images' own captions, so matching their words "
        "would find each answer by its own text",
        f"queries: all {report.n_queries} {report.lang!r} captions of the "
        f"{report.n_image_queries} {report.split} images, each its own text->image query; "
        + (f"prefixed with {report.prompt!r}" if report.prompt else "no prompt prefix")
        + " (the CLIP paper reports prefixing 'a photo of'; --prompt 'a photo of ' does that)",
    ]
    for model_id in model_ids:
        encoder = encoder_for(model_id)
        tokens = getattr(encoder, "max_text_tokens", None)
        notes.append(
            f"{model_id}: texts by search's encoder ({encoder!r}), truncated to {tokens} tokens "
            f"(captions embedded once per model and encoder, then reused); "
            f"image vectors as stored (the pipeline runs the model's processor: resize and "
            f"centre crop, after EXIF orientation, which the papers' loaders do not apply)"
        )
    if ann:
        notes.append(
            f"text->image through the HNSW index (top {report.ann_k}, the site's query): an "
            f"answer not in the top {report.ann_k} is a miss, so mean rank is known only when "
            f"nothing was missed and median rank only when at most {report.ann_k}"
            + (
                "; the index holds every image of the model and the split is a filter on it, "
                "as search's filters are (pgvector iterative scan), so the figures include what "
                "filtering costs"
                if report.gallery == "split"
                else ""
            )
        )
    else:
        notes.append("text->image ranked in PostgreSQL with pgvector <=>, exact (full scan)")
    notes.append(
        f"image->text: {report.n_image_queries} image queries over {report.n_caption_candidates}"
        f" captions, computed in numpy over the caption vectors (an exact full product)"
    )
    if fused:
        notes.append(
            "fusions: computed in numpy, exactly, over each model's vectors read from "
            "PostgreSQL once (a fused score is not one pgvector ORDER BY)"
        )
    notes.append(
        "rank = 1 + candidates strictly more similar than the best right answer: exact ties "
        "count for the query, in every path (SQL, HNSW, numpy, both fusions)"
    )
    sizes = split_sizes_note()
    if sizes:
        notes.append(sizes)
    return notes


def evaluation_runs_record(*, report: EvaluationReport) -> list[EvaluationRun]:
    """Save one ``EvaluationRun`` per system of ``report`` (the admin lists them)."""
    runs = [
        EvaluationRun(
            models=",".join(result.model_ids),
            fusion=result.fusion,
            split=report.split,
            gallery=report.gallery,
            mode=result.mode,
            prompt=report.prompt,
            lang=report.lang,
            n_images=report.n_images,
            n_queries=report.n_queries,
            t2i_r1=result.text_to_image.r1,
            t2i_r5=result.text_to_image.r5,
            t2i_r10=result.text_to_image.r10,
            t2i_median_rank=result.text_to_image.median_rank,
            t2i_mean_rank=result.text_to_image.mean_rank,
            i2t_r1=result.image_to_text.r1,
            i2t_r5=result.image_to_text.r5,
            i2t_r10=result.image_to_text.r10,
            i2t_median_rank=result.image_to_text.median_rank,
            i2t_mean_rank=result.image_to_text.mean_rank,
            duration_seconds=result.duration_seconds,
        )
        for result in report.results
    ]
    return EvaluationRun.objects.bulk_create(runs)
