"""Reads for the evaluation: the split's captions and images, and stored vectors as matrices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import connection
from django.db.models import Count, QuerySet

from encoders import model_spec
from gallery.flickr30k import KARPATHY_SPLIT_SIZES, karpathy_split_difference
from gallery.models import Caption, Image
from search.models import CaptionEmbedding
from workers.models import ImageEmbedding
from workers.selectors import embedding_model_enable_hint, embedding_models_enabled

GALLERIES = ("split", "all")


class EvaluationError(ValueError):
    """The evaluation cannot run as asked; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class EvaluationSet:
    """The queries and candidates of one evaluation, in a fixed order (image id, position).

    ``caption_*`` are the text->image queries (the split's captions in ``lang``);
    ``gallery_image_ids`` the images they are ranked over; ``gallery_caption_*`` the captions
    image->text ranks over, the split's own with ``gallery="split"`` and every image's (in
    ``lang``) with ``gallery="all"``.
    """

    split: str
    gallery: str
    lang: str
    image_ids: np.ndarray
    caption_texts: list[str]
    caption_image_ids: np.ndarray
    gallery_image_ids: np.ndarray
    gallery_caption_ids: np.ndarray
    gallery_caption_texts: list[str]
    gallery_caption_image_ids: np.ndarray

    @property
    def query_caption_positions(self) -> np.ndarray:
        """Where each query caption sits among the gallery's captions."""
        if self.gallery == "split":
            return np.arange(len(self.caption_texts))
        return np.flatnonzero(np.isin(self.gallery_caption_image_ids, self.image_ids))


def _captions(images: QuerySet[Image], lang: str) -> list[tuple[int, int, str]]:
    return list(
        Caption.objects.filter(image__in=images, lang=lang)
        .order_by("image_id", "position")
        .values_list("id", "image_id", "text")
    )


def evaluation_set_load(*, split: str, gallery: str, lang: str = "en") -> EvaluationSet:
    if gallery not in GALLERIES:
        raise EvaluationError(f"gallery must be one of {', '.join(GALLERIES)}, not {gallery!r}")
    dataset = Image.objects.filter(source=Image.Source.FLICKR30K)
    # Only images with captions in ``lang`` are queries: without one there is no right answer.
    rows = _captions(dataset.filter(split=split), lang)
    if not rows:
        if Caption.objects.filter(image__in=dataset.filter(split=split)).exists():
            raise EvaluationError(
                f"no {lang!r} captions in Flickr30k split {split!r}; add them with "
                f"manage.py import_captions --lang {lang} FILE"
            )
        raise EvaluationError(
            f"no Flickr30k images with captions in split {split!r}; import the data set first "
            f"(manage.py import_flickr30k --csv flickr_annotations_30k.csv --images DIR)"
        )
    caption_image_ids = np.array([image_id for _, image_id, _ in rows], dtype=np.int64)
    image_ids = np.unique(caption_image_ids)
    everything = rows if gallery == "split" else _captions(dataset, lang)
    if gallery == "split":
        gallery_image_ids = image_ids
    else:
        gallery_image_ids = np.array(sorted(dataset.values_list("id", flat=True)), dtype=np.int64)
    return EvaluationSet(
        split=split,
        gallery=gallery,
        lang=lang,
        image_ids=image_ids,
        caption_texts=[text for _, _, text in rows],
        caption_image_ids=caption_image_ids,
        gallery_image_ids=gallery_image_ids,
        gallery_caption_ids=np.array([pk for pk, _, _ in everything], dtype=np.int64),
        gallery_caption_texts=[text for _, _, text in everything],
        gallery_caption_image_ids=np.array([i for _, i, _ in everything], dtype=np.int64),
    )


def flickr30k_split_sizes() -> dict[str, int]:
    """Imported Flickr30k images per split."""
    counts = dict.fromkeys(KARPATHY_SPLIT_SIZES, 0)
    for split, n in (
        Image.objects.filter(source=Image.Source.FLICKR30K)
        .order_by()
        .values_list("split")
        .annotate(n=Count("id"))
    ):
        counts[split] = n
    return counts


def split_sizes_note() -> str | None:
    """A warning when the imported splits are not Karpathy's, else None."""
    return karpathy_split_difference(flickr30k_split_sizes())


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


def _vectors_read(sql: str, params: Sequence[str | list[Any]], dim: int) -> dict[int, np.ndarray]:
    # pgvector's binary form (int16 dim, int16 unused, then big-endian float4s), parsed by
    # numpy: exact, and far cheaper than text or a Python float per component.
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {
            key: np.frombuffer(bytes(data), dtype=">f4", count=dim, offset=4)
            for key, data in cursor.fetchall()
        }


def embeddings_matrix(*, model_id: str, image_ids: np.ndarray) -> np.ndarray:
    """The stored vectors of ``image_ids`` (rows in that order) as a float32 matrix."""
    dim = model_spec(model_id).dim
    matrix = np.full((len(image_ids), dim), np.nan, dtype=np.float32)
    row_of = {int(image_id): row for row, image_id in enumerate(image_ids)}
    found = _vectors_read(
        f"SELECT image_id, vector_send(vector) FROM {ImageEmbedding._meta.db_table} "
        f"WHERE model_id = %s AND image_id = ANY(%s)",
        [model_id, list(row_of)],
        dim,
    )
    for image_id, vector in found.items():
        matrix[row_of[image_id]] = vector
    if np.isnan(matrix[:, 0]).any():
        missing = int(np.isnan(matrix[:, 0]).sum())
        raise EvaluationError(missing_message(model_id, missing, len(image_ids)))
    return matrix


def caption_embeddings_stored(
    *, model_id: str, encoder: str, caption_ids: np.ndarray, text_hashes: Sequence[str]
) -> dict[int, np.ndarray]:
    """Stored vectors of those captions whose stored text hash is still ``text_hashes[i]``
    (a caption edited since, or embedded with another prompt, is not among them)."""
    dim = model_spec(model_id).dim
    found: dict[int, np.ndarray] = {}
    table = CaptionEmbedding._meta.db_table
    for start in range(0, len(caption_ids), 50_000):
        ids = [int(i) for i in caption_ids[start : start + 50_000]]
        hashes = list(text_hashes[start : start + 50_000])
        found.update(
            _vectors_read(
                f"SELECT e.caption_id, vector_send(e.vector) FROM {table} e "
                f"JOIN unnest(%s::bigint[], %s::text[]) AS w(caption_id, text_sha256) "
                f"ON w.caption_id = e.caption_id AND w.text_sha256 = e.text_sha256 "
                f"WHERE e.model_id = %s AND e.encoder = %s",
                [ids, hashes, model_id, encoder],
                dim,
            )
        )
    return found


def missing_message(model_id: str, missing: int, total: int) -> str:
    """Which images lack ``model_id``'s vectors and commands that make them as things stand:
    ``embed`` refuses a model that is not enabled, ``import_embeddings`` does not."""
    embed = f"`manage.py embed --model {model_id} --missing --sync` (or queue them without --sync)"
    if model_id not in embedding_models_enabled():
        embed = (
            f"{embed} once the model is enabled ({model_id} is not, and `embed` refuses it: "
            f"{embedding_model_enable_hint(model_id=model_id)})"
        )
    return (
        f"{model_id}: {missing} of the {total} images to evaluate have no embedding. Make them "
        f"with {embed}, or load published vectors with `manage.py import_embeddings --model "
        f"{model_id} --embeddings image_embeddings.npy --filenames image_filenames.npy`"
    )
