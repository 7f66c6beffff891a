"""Flickr30k retrieval evaluation: Recall@K, median and mean rank, and fusion of models.

Reads and computation only; ``search.services.evaluation_runs_record`` saves a report.

The protocol is the zero-shot one of the CLIP and ALIGN papers: every caption of every image
of the split is its own text->image query (Karpathy's 1K test: 1,000 images, 5,000 queries),
and each image is an image->text query whose answers are its own captions (a hit when any of
them is within the top K). Ranks are 1-based: 1 + the number of candidates strictly more
similar than the best right answer, so exact ties count in the query's favour.

Where each number comes from:

- text embeddings: the encoder search uses (``workers.loading.encoder_for``, its tokenizer
  truncating to the model's context, 77 tokens for CLIP), computed here, never stored;
- image embeddings: read from PostgreSQL, as stored by the pipeline or ``import_embeddings``;
- text->image of a single model: ranked in PostgreSQL with pgvector's ``<=>``, the operator
  search orders by; exactly (a full scan) by default, or with ``ann`` through the model's HNSW
  index via ``search.selectors.embeddings_ranked``, the selector search itself uses;
- image->text: in numpy over the caption embeddings in memory (texts are not in PostgreSQL);
- fusions: in numpy over each model's vectors read from PostgreSQL once, since a fused score is
  not one pgvector ORDER BY.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from django.db import connection, transaction
from tqdm import tqdm

from encoders import model_spec
from gallery.models import Caption, Image
from search.models import ImageEmbedding
from search.selectors import embeddings_ranked
from search.services import hnsw_index_name
from workers.loading import encoder_for

KS = (1, 5, 10)
GALLERIES = ("split", "all")
FUSIONS = ("zsum", "rrf")
# Reciprocal-rank fusion's constant, as in Cormack et al. (2009) and most systems since.
RRF_K = 60
# Largest query x candidate block scored at once in numpy (about 64 MB of float32 per model).
_BLOCK_CELLS = 1 << 24

# Published zero-shot text->image R@1/5/10 on the Flickr30k 1K test, shown beside ours.
PUBLISHED_TEXT_TO_IMAGE: tuple[tuple[str, float, float, float], ...] = (
    ("CLIP ViT-B/32", 58.8, 83.6, 90.0),
    ("CLIP ViT-L/14", 65.0, 87.2, 92.0),
    ("ALIGN (paper)", 75.7, 93.8, 96.8),
    ("original project CLIP (protocol unclear)", 60.08, 84.10, 90.96),
    ("original project ALIGN (protocol unclear)", 77.46, 93.57, 96.78),
)


class EvaluationError(ValueError):
    """The evaluation cannot run as asked; the message says what is missing and how to fix it."""


# --- Metrics (pure numpy) ----------------------------------------------------------------------


@dataclass(frozen=True)
class RankSummary:
    """Recall@1/5/10 in percent and the median and mean rank of ``n`` queries.

    A rank of ``inf`` is a query whose answer was not retrieved at all (beyond the top k of an
    index search): it counts as a miss, and makes the mean unknown (None), and the median too
    when more than half the queries missed.
    """

    n: int
    r1: float
    r5: float
    r10: float
    median_rank: float | None
    mean_rank: float | None


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Percentage of queries whose answer ranks within the top ``k``."""
    return 100.0 * float(np.mean(np.asarray(ranks) <= k)) if len(ranks) else 0.0


def rank_summary(ranks: np.ndarray) -> RankSummary:
    ranks = np.asarray(ranks, dtype=np.float64)
    if not len(ranks):
        raise ValueError("no ranks to summarise")
    median = float(np.median(ranks))
    mean = float(np.mean(ranks))
    r1, r5, r10 = (recall_at_k(ranks, k) for k in KS)
    return RankSummary(
        n=len(ranks),
        r1=r1,
        r5=r5,
        r10=r10,
        median_rank=median if np.isfinite(median) else None,
        mean_rank=mean if np.isfinite(mean) else None,
    )


def ranks_from_scores(
    scores: np.ndarray, *, query_keys: np.ndarray, candidate_keys: np.ndarray
) -> np.ndarray:
    """1-based rank of each query's best right answer among the candidates (columns).

    Query ``i``'s right answers are the candidates whose key equals ``query_keys[i]``: for
    text->image the key is the image id (one answer); for image->text, the image id each caption
    belongs to (five answers, the best one counts).
    """
    relevant = np.asarray(query_keys)[:, None] == np.asarray(candidate_keys)[None, :]
    if not relevant.any(axis=1).all():
        raise ValueError("a query has no right answer among the candidates")
    best = np.where(relevant, scores, -np.inf).max(axis=1)
    return 1 + (scores > best[:, None]).sum(axis=1)


def fuse_zsum(scores: Sequence[np.ndarray]) -> np.ndarray:
    """Per query, z-normalise each model's similarities over the candidates, then add them.

    Each model's cosine similarities live on their own scale (ALIGN's spread is not CLIP's);
    centring and scaling per query makes them comparable while keeping how far apart the
    candidates are, which rank fusion throws away.
    """
    total = np.zeros_like(scores[0], dtype=np.float64)
    for block in scores:
        block = block.astype(np.float64)
        spread = block.std(axis=1, keepdims=True)
        total += (block - block.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1.0)
    return total


def fuse_rrf(scores: Sequence[np.ndarray], *, k: int = RRF_K) -> np.ndarray:
    """Reciprocal-rank fusion: the sum over models of 1 / (k + the candidate's rank)."""
    total = np.zeros_like(scores[0], dtype=np.float64)
    positions = np.arange(1, scores[0].shape[1] + 1, dtype=np.float64)
    for block in scores:
        order = np.argsort(-block, axis=1, kind="stable")
        ranks = np.empty_like(positions, shape=block.shape)
        np.put_along_axis(ranks, order, np.broadcast_to(positions, block.shape), axis=1)
        total += 1.0 / (k + ranks)
    return total


_FUSE: dict[str, Callable[[Sequence[np.ndarray]], np.ndarray]] = {
    "zsum": fuse_zsum,
    "rrf": fuse_rrf,
}


def ranks_numpy(
    *,
    queries: Sequence[np.ndarray],
    candidates: Sequence[np.ndarray],
    query_keys: np.ndarray,
    candidate_keys: np.ndarray,
    fusion: str = "",
) -> np.ndarray:
    """Ranks by cosine similarity (rows are unit vectors), one model or a ``fusion`` of several.

    ``queries[m]`` and ``candidates[m]`` are model m's vectors; blocks of queries are scored at
    a time so memory stays bounded for a gallery of all 31,783 images or their captions.
    """
    if len(queries) != len(candidates) or not queries:
        raise ValueError("one query matrix and one candidate matrix per model")
    if len(queries) > 1 and fusion not in _FUSE:
        raise ValueError(f"fusing {len(queries)} models needs fusion in {FUSIONS}")
    n_queries, n_candidates = len(query_keys), len(candidate_keys)
    step = max(1, _BLOCK_CELLS // max(n_candidates, 1))
    ranks = np.empty(n_queries, dtype=np.int64)
    for start in range(0, n_queries, step):
        stop = min(start + step, n_queries)
        blocks = [q[start:stop] @ c.T for q, c in zip(queries, candidates, strict=True)]
        scores = blocks[0] if len(blocks) == 1 else _FUSE[fusion](blocks)
        ranks[start:stop] = ranks_from_scores(
            scores, query_keys=query_keys[start:stop], candidate_keys=candidate_keys
        )
    return ranks


# --- Reads ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationSet:
    """The queries and candidates of one evaluation, in a fixed order (image id, position).

    ``caption_*`` are the text->image queries (the split's captions); ``gallery_image_ids`` the
    images they are ranked over; ``gallery_caption_*`` the captions image->text ranks over,
    the split's own with ``gallery="split"`` and every image's with ``gallery="all"``.
    """

    split: str
    gallery: str
    image_ids: np.ndarray
    caption_texts: list[str]
    caption_image_ids: np.ndarray
    gallery_image_ids: np.ndarray
    gallery_caption_texts: list[str]
    gallery_caption_image_ids: np.ndarray

    @property
    def query_caption_positions(self) -> np.ndarray:
        """Where each query caption sits among the gallery's captions."""
        if self.gallery == "split":
            return np.arange(len(self.caption_texts))
        return np.flatnonzero(np.isin(self.gallery_caption_image_ids, self.image_ids))


def evaluation_set_load(*, split: str, gallery: str) -> EvaluationSet:
    if gallery not in GALLERIES:
        raise EvaluationError(f"gallery must be one of {', '.join(GALLERIES)}, not {gallery!r}")
    dataset = Image.objects.filter(source=Image.Source.FLICKR30K)
    images = dataset.filter(split=split)
    # Only images with captions are queries: an image without any has no right answer.
    rows = list(
        Caption.objects.filter(image__in=images)
        .order_by("image_id", "position")
        .values_list("image_id", "text")
    )
    if not rows:
        raise EvaluationError(
            f"no Flickr30k images with captions in split {split!r}; import the data set first "
            f"(manage.py import_flickr30k --csv flickr_annotations_30k.csv --images DIR)"
        )
    caption_image_ids = np.array([image_id for image_id, _ in rows], dtype=np.int64)
    caption_texts = [text for _, text in rows]
    image_ids = np.unique(caption_image_ids)
    if gallery == "split":
        gallery_image_ids = image_ids
        gallery_texts, gallery_caption_ids = caption_texts, caption_image_ids
    else:
        gallery_image_ids = np.array(sorted(dataset.values_list("id", flat=True)), dtype=np.int64)
        everything = list(
            Caption.objects.filter(image__in=dataset)
            .order_by("image_id", "position")
            .values_list("image_id", "text")
        )
        gallery_texts = [text for _, text in everything]
        gallery_caption_ids = np.array([image_id for image_id, _ in everything], dtype=np.int64)
    return EvaluationSet(
        split=split,
        gallery=gallery,
        image_ids=image_ids,
        caption_texts=caption_texts,
        caption_image_ids=caption_image_ids,
        gallery_image_ids=gallery_image_ids,
        gallery_caption_texts=gallery_texts,
        gallery_caption_image_ids=gallery_caption_ids,
    )


def embeddings_missing_count(*, model_id: str, image_ids: np.ndarray) -> int:
    """How many of ``image_ids`` have no embedding for ``model_id``."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {ImageEmbedding._meta.db_table} "
            f"WHERE model_id = %s AND image_id = ANY(%s)",
            [model_id, [int(i) for i in image_ids]],
        )
        (present,) = cursor.fetchone()
    return len(image_ids) - present


def embeddings_matrix(*, model_id: str, image_ids: np.ndarray) -> np.ndarray:
    """The stored vectors of ``image_ids`` (rows in that order) as a float32 matrix."""
    dim = model_spec(model_id).dim
    matrix = np.full((len(image_ids), dim), np.nan, dtype=np.float32)
    row_of = {int(image_id): row for row, image_id in enumerate(image_ids)}
    with connection.cursor() as cursor:
        # Text out, parsed by numpy: far cheaper than a Python float per component.
        cursor.execute(
            f"SELECT image_id, vector::text FROM {ImageEmbedding._meta.db_table} "
            f"WHERE model_id = %s AND image_id = ANY(%s)",
            [model_id, list(row_of)],
        )
        for image_id, text in cursor.fetchall():
            matrix[row_of[image_id]] = np.array(text[1:-1].split(","), dtype=np.float32)
    if np.isnan(matrix[:, 0]).any():
        missing = int(np.isnan(matrix[:, 0]).sum())
        raise EvaluationError(_missing_message(model_id, missing, len(image_ids)))
    return matrix


def texts_embed(
    *, model_id: str, texts: Sequence[str], prompt: str = "", batch_size: int = 256
) -> np.ndarray:
    """Embed ``texts`` with search's encoder (stripped as search strips a query)."""
    encoder = encoder_for(model_id)
    parts = []
    for start in tqdm(
        range(0, len(texts), batch_size), desc=f"{model_id} texts", unit="batch", leave=False
    ):
        chunk = [prompt + text.strip() for text in texts[start : start + batch_size]]
        parts.append(encoder.embed_texts(chunk))
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype=np.float32)


def _vector_literal(row: np.ndarray) -> str:
    # repr of each float32 widened to float64 is exact, so PostgreSQL parses the same values.
    return "[" + ",".join(map(repr, row.astype(np.float64).tolist())) + "]"


def text_to_image_ranks_exact(
    *,
    model_id: str,
    queries: np.ndarray,
    target_image_ids: np.ndarray,
    gallery_image_ids: np.ndarray,
    batch_size: int = 500,
) -> np.ndarray:
    """Each query's rank of its image, computed in PostgreSQL with pgvector's ``<=>``.

    rank = 1 + the number of gallery images whose cosine distance to the query is smaller than
    the right image's. One statement per ``batch_size`` queries: the gallery's vectors are cast
    to the model's ``vector(dim)`` once into a materialised CTE (the cast also un-TOASTs each
    2 KB vector once rather than once per query), then every (query, image) distance is a
    nested-loop comparison counted per query.
    """
    dim = model_spec(model_id).dim
    table = ImageEmbedding._meta.db_table
    gallery = [int(i) for i in gallery_image_ids]
    ranks = np.empty(len(queries), dtype=np.int64)
    sql = f"""
        WITH g AS MATERIALIZED (
            SELECT image_id, vector::vector({dim}) AS v FROM {table}
            WHERE model_id = %s AND image_id = ANY(%s)
        ), q AS MATERIALIZED (
            SELECT t.ord, t.txt::vector({dim}) AS v, t.target
            FROM unnest(%s::text[], %s::bigint[]) WITH ORDINALITY AS t(txt, target, ord)
        ), d AS MATERIALIZED (
            SELECT q.ord, q.v, q.v <=> g.v AS target_distance
            FROM q JOIN g ON g.image_id = q.target
        )
        SELECT d.ord, 1 + count(*) FILTER (WHERE (d.v <=> g.v) < d.target_distance)
        FROM d CROSS JOIN g GROUP BY d.ord
    """
    with connection.cursor() as cursor:
        for start in tqdm(
            range(0, len(queries), batch_size), desc=f"{model_id} ranks", unit="batch", leave=False
        ):
            block = queries[start : start + batch_size]
            targets = [int(i) for i in target_image_ids[start : start + batch_size]]
            cursor.execute(
                sql, [model_id, gallery, [_vector_literal(row) for row in block], targets]
            )
            found = dict(cursor.fetchall())
            if len(found) != len(block):
                raise EvaluationError(
                    f"{len(block) - len(found)} queries' images have no {model_id} embedding"
                )
            for offset in range(len(block)):
                ranks[start + offset] = found[offset + 1]
    return ranks


@dataclass(frozen=True)
class AnnRanks:
    ranks: np.ndarray  # float: inf where the answer was not within the top k
    k: int
    plan_uses_index: bool


def text_to_image_ranks_ann(
    *, model_id: str, queries: np.ndarray, target_image_ids: np.ndarray, split: str | None, k: int
) -> AnnRanks:
    """Each query's rank of its image among the top ``k`` that the HNSW index returns.

    The query is search's own (``embeddings_ranked`` restricted to the gallery's images, as
    search restricts to the visible ones), one statement per query, so the numbers are what
    search delivers, iterative index scans and ``hnsw.ef_search`` included. Sorting is priced
    out for these statements: on a small table PostgreSQL would rather scan and sort exactly,
    and then "ann" figures would silently be exact ones. The plan is checked all the same.
    """
    images = Image.objects.filter(source=Image.Source.FLICKR30K)
    if split is not None:
        images = images.filter(split=split)

    def top_k(vector: np.ndarray):
        ranked = embeddings_ranked(model_id=model_id, vector=vector.tolist(), exact=False)
        return ranked.filter(image__in=images).values_list("image_id", flat=True)[:k]

    ranks = np.full(len(queries), np.inf)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
        plan = top_k(queries[0]).explain() if len(queries) else ""
        for row, (vector, target) in enumerate(
            zip(tqdm(queries, desc=f"{model_id} hnsw", leave=False), target_image_ids, strict=True)
        ):
            found = list(top_k(vector))
            if int(target) in found:
                ranks[row] = found.index(int(target)) + 1
    return AnnRanks(ranks=ranks, k=k, plan_uses_index=hnsw_index_name(model_id) in plan)


def _missing_message(model_id: str, missing: int, total: int) -> str:
    return (
        f"{model_id}: {missing} of the {total} images to evaluate have no embedding. Make them "
        f"with `manage.py embed --model {model_id} --missing --sync` (or queue them without "
        f"--sync), or load published vectors with `manage.py import_embeddings --model "
        f"{model_id} --embeddings image_embeddings.npy --filenames image_filenames.npy`"
    )


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
    n_images: int  # images ranked by text->image (the gallery)
    n_queries: int  # caption queries
    n_image_queries: int
    n_caption_candidates: int
    results: list[SystemResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ann_k: int | None = None


def evaluate(
    *,
    model_ids: Sequence[str],
    split: str = "test",
    gallery: str = "split",
    ann: bool = False,
    ann_k: int = max(KS),
    fusions: Sequence[str] = (),
    prompt: str = "",
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
    data = evaluation_set_load(split=split, gallery=gallery)
    for model_id in model_ids:
        missing = embeddings_missing_count(model_id=model_id, image_ids=data.gallery_image_ids)
        if missing:
            raise EvaluationError(_missing_message(model_id, missing, len(data.gallery_image_ids)))

    report = EvaluationReport(
        split=split,
        gallery=gallery,
        prompt=prompt,
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
        texts = texts_embed(model_id=model_id, texts=data.gallery_caption_texts, prompt=prompt)
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
        f"queries: all {report.n_queries} captions of the {report.n_image_queries} "
        f"{report.split} images, each its own text->image query; "
        + (f"prefixed with {report.prompt!r}" if report.prompt else "no prompt prefix")
        + " (the CLIP paper reports prefixing 'a photo of'; --prompt 'a photo of ' does that)",
    ]
    for model_id in model_ids:
        encoder = encoder_for(model_id)
        tokens = getattr(encoder, "max_text_tokens", None)
        notes.append(
            f"{model_id}: texts by search's encoder ({encoder!r}), truncated to {tokens} tokens; "
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
        f" captions, computed in numpy (caption embeddings are not stored in PostgreSQL)"
    )
    if fused:
        notes.append(
            "fusions: computed in numpy, exactly, over each model's vectors read from "
            "PostgreSQL once (a fused score is not one pgvector ORDER BY)"
        )
    notes.append("rank = 1 + candidates strictly more similar than the best right answer")
    return notes
