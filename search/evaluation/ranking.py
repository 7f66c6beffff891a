"""Text->image ranks computed by PostgreSQL: exactly with pgvector's ``<=>``, or through the
model's HNSW index with search's own query. Both follow the tie rule of ``metrics``: a query's
rank is 1 + the number of images strictly closer than its image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import connection, transaction
from django.db.models import QuerySet
from tqdm import tqdm

from encoders import model_spec
from gallery.models import Image
from search.evaluation.data import EvaluationError
from search.ranking import embeddings_ranked
from workers.indexes import hnsw_index_name
from workers.models import ImageEmbedding


def vector_literal(row: np.ndarray) -> str:
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
                sql, [model_id, gallery, [vector_literal(row) for row in block], targets]
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


def _target_distance(model_id: str, vector: np.ndarray, image_id: int) -> float | None:
    # The expression the search ranks its candidates by (the full vector's exact cosine), so
    # the value is bit for bit the one the search returns.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT vector <=> %s::vector "
            f"FROM {ImageEmbedding._meta.db_table} WHERE model_id = %s AND image_id = %s",
            [vector_literal(vector), model_id, image_id],
        )
        row = cursor.fetchone()
    return None if row is None else float(row[0])


def text_to_image_ranks_ann(
    *, model_id: str, queries: np.ndarray, target_image_ids: np.ndarray, split: str | None, k: int
) -> AnnRanks:
    """Each query's rank of its image among the top ``k`` that the HNSW index returns.

    The query is search's own (``embeddings_ranked`` restricted to the gallery's images, as
    search restricts to the visible ones: the halfvec index's nearest candidates ranked again
    exactly), one statement per query, so the numbers are what search delivers, iterative
    index scans, ``hnsw.ef_search`` and the rerank included. Sorting is priced
    out for these statements: on a small table PostgreSQL would rather scan and sort exactly,
    and then "ann" figures would silently be exact ones. The plan is checked all the same.

    Ties count for the query here too: the rank is 1 + the results strictly closer than the
    image, not its position among equally close ones; and an image left out of the top ``k``
    only because it ties with the ``k``-th result is found. An image the index missed while
    a farther one came back stays a miss: that is the index's approximation, measured.
    """
    images = Image.objects.filter(source=Image.Source.FLICKR30K)
    if split is not None:
        images = images.filter(split=split)

    def top_k(vector: np.ndarray) -> QuerySet[Any, tuple[int, float]]:
        ranked = embeddings_ranked(
            model_id=model_id, vector=vector.tolist(), exact=False, images=images, depth=k
        )
        return ranked.values_list("image_id", "distance")[:k]

    ranks = np.full(len(queries), np.inf)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
        plan = top_k(queries[0]).explain() if len(queries) else ""
        for row, (vector, target) in enumerate(
            zip(tqdm(queries, desc=f"{model_id} hnsw", leave=False), target_image_ids, strict=True)
        ):
            found = list(top_k(vector))
            distances = [distance for _, distance in found]
            target_distance = next((d for i, d in found if i == int(target)), None)
            if target_distance is None and len(found) == k:
                tied = _target_distance(model_id, vector, int(target))
                target_distance = tied if tied == distances[-1] else None
            if target_distance is not None:
                ranks[row] = 1 + sum(1 for d in distances if d < target_distance)
    return AnnRanks(ranks=ranks, k=k, plan_uses_index=hnsw_index_name(model_id) in plan)
