"""Fused search ("A+B") beside one model: the database and fusion work of a search, per query.

A second model, align-base (640-d), gets synthetic vectors for the same images: the same
cluster of each image as the data set's (same seed, so the two models agree on which images
are alike, as real models roughly do), other centres and noise. Then, for the same queries:

- one model: ``images_search_by_vector`` (clip-vit-base-patch32, k = API_K), the API's work;
- fused: ``images_search_fused`` (both models' top FUSION_CANDIDATES through their HNSW
  indexes in one statement, each candidate ranked by its place in each list, RRF), the same k;
- the check a fused request runs first: ``models_choose("A+B")`` (both complete: one
  statement once the completeness is recorded, which the first call does);
- agreement of the fused top k with RRF computed exactly in numpy over the whole gallery
  (``search.fusion.fuse_rrf``), the ranking fused search approximates with top lists.

``--fusion-sweep`` repeats fused search at other depths and ef_search; ``--fusion-ivf`` reads
the lists from IVFFlat indexes instead of HNSW (built and used in a transaction that is rolled
back), beside one model and fused search as it is, measured just before.

Query encoding is not included: a fused text query runs both models' text encoders (see the
end-to-end figures and bench/query_encoder.py for one encoder's cost).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench import _harness
from bench._search.common import (
    API_K,
    DIM,
    MODEL_ID,
    WARM_UP_QUERIES,
    MachineWatch,
    Measured,
    server_cpu_seconds,
)
from bench._search.data import LOAD_CHUNK, NOISE, Dataset
from bench._search.ranking import recall_at, timed_queries

SECOND_MODEL = "align-base"
SECOND_DIM = 640


def second_model_ensure(dataset: Dataset, args: argparse.Namespace) -> tuple[np.ndarray, str]:
    """The second model's vectors for every image (stored by COPY unless already there, its
    HNSW index built after the load), and a note on what was done."""
    from django.db import connection

    from workers.indexes import embedding_indexes_ensure
    from workers.models import EmbeddingModel, ImageEmbedding

    EmbeddingModel.objects.update_or_create(model_id=MODEL_ID, defaults={"enabled": True})
    EmbeddingModel.objects.filter(is_default=True).exclude(model_id=MODEL_ID).update(
        is_default=False
    )
    EmbeddingModel.objects.filter(model_id=MODEL_ID).update(is_default=True)
    EmbeddingModel.objects.update_or_create(model_id=SECOND_MODEL, defaults={"enabled": True})

    matrix = np.concatenate(
        list(
            _harness.clustered_unit_vectors(
                dataset.size, clusters=dataset.clusters, seed=args.seed, noise=NOISE, stream=1,
                chunk=LOAD_CHUNK, dim=SECOND_DIM,
            )
        )
    )  # fmt: skip
    stored = ImageEmbedding.objects.filter(model_id=SECOND_MODEL).count()
    if stored == dataset.size:
        return matrix, f"{SECOND_MODEL}: {stored:,} stored rows reused"
    ImageEmbedding.objects.filter(model_id=SECOND_MODEL).delete()
    started = time.perf_counter()
    _harness.fake_embeddings_copy(model_id=SECOND_MODEL, chunks=[matrix])
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM (ANALYZE) {ImageEmbedding._meta.db_table}")
        embedding_indexes_ensure(model_ids=[SECOND_MODEL])
    note = f"{SECOND_MODEL}: {dataset.size:,} rows + HNSW in {time.perf_counter() - started:.0f} s"
    return matrix, note


def fused_benchmark(dataset: Dataset, args: argparse.Namespace, data_dir: Path) -> None:
    from django.contrib.auth.models import AnonymousUser

    from search.fusion import FUSION_CANDIDATES, SEARCH_FUSION, fuse_rrf, images_search_fused
    from search.model_choice import models_choose
    from search.ranking import SearchRequest, images_search_by_vector

    watch = MachineWatch(data_dir)
    second, note = second_model_ensure(dataset, args)
    second_queries = next(
        _harness.clustered_unit_vectors(
            len(dataset.queries), clusters=dataset.clusters, seed=args.seed, noise=NOISE,
            stream=2, chunk=len(dataset.queries), dim=SECOND_DIM,
        )
    )  # fmt: skip
    print(f"  {note}", flush=True)
    anonymous = AnonymousUser()
    fused_choice = f"{MODEL_ID}+{SECOND_MODEL}"
    # Queries by position, so the fused search gets each model's vector of the same query.
    positions = np.arange(len(dataset.queries))

    def one(i: int) -> list[int]:
        page = images_search_by_vector(
            user=anonymous,
            model_id=MODEL_ID,
            vector=dataset.queries[i],
            search=SearchRequest(k=API_K),
        )
        return [hit.image.pk for hit in page.hits]

    def fused(i: int) -> list[int]:
        page = images_search_fused(
            user=anonymous,
            model_ids=(MODEL_ID, SECOND_MODEL),
            vectors=(dataset.queries[i], second_queries[i]),
            search=SearchRequest(k=API_K),
        )
        return [hit.image.pk for hit in page.hits]

    def resolve(i: int) -> list[int]:
        models_choose(fused_choice)
        return []

    rows = []
    seconds, _ = timed_queries(positions, one)
    rows.append(Measured(f"one model ({MODEL_ID}), k={API_K}", seconds))
    seconds, fused_ids = timed_queries(positions, fused)
    rows.append(Measured(f"fused {SEARCH_FUSION} ({FUSION_CANDIDATES} candidates each)", seconds))
    seconds, _ = timed_queries(positions, resolve)
    rows.append(Measured('models_choose("A+B"): both complete?', seconds))

    # The same fusion over every image, in numpy: what the top lists approximate.
    exact_ids = []
    for i in positions[WARM_UP_QUERIES:]:
        scores = [
            (dataset.matrix @ dataset.queries[i])[None, :],
            (second @ second_queries[i])[None, :],
        ]
        total = fuse_rrf(scores)[0]
        order = np.lexsort((np.arange(len(total)), -total))[:API_K]
        exact_ids.append([int(i) + 1 for i in order])  # row i is image id i + 1
    rows[1].recall = recall_at(fused_ids, exact_ids, API_K)

    sweep = []
    for pair in filter(None, args.fusion_sweep.split(",")):
        candidates, ef_search = (int(part) for part in pair.split(":"))
        sweep.append(fusion_variant(candidates, ef_search, fused, positions, exact_ids, data_dir))
    for pair in filter(None, args.fusion_ivf.split(",")):
        lists, probes = (int(part) for part in pair.split(":"))
        sweep.append(ivf_variant(lists, probes, one, fused, positions, exact_ids, data_dir))

    print(
        f"\nFused vs one model, N={dataset.size:,} per model, {len(rows[0].seconds)} queries "
        f"(database + fusion, no query encoding); recall@{API_K} of fused against RRF over "
        "the whole gallery"
    )
    header = f"{'search':<56}{'p50 ms':>9}{'p95 ms':>9}{'recall':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        recall = "" if row.recall is None else f"{row.recall:.3f}"
        print(f"{row.label:<56}{row.pct(50):>9.2f}{row.pct(95):>9.2f}{recall:>9}")
    for line in sweep:
        print(line)
    watch.report("fused")


def cpu_per_search(
    run, positions, data_dir: Path
) -> tuple[list[float], list[list[int]], float, float]:
    """``timed_queries`` of ``run``, with the CPU milliseconds per search (warm-up queries
    included) of this process and of the bench's PostgreSQL."""
    database_before, web_before = server_cpu_seconds(data_dir)[1], time.process_time()
    seconds, ids = timed_queries(positions, run)
    web = (time.process_time() - web_before) * 1000 / len(positions)
    database = (server_cpu_seconds(data_dir)[1] - database_before) * 1000 / len(positions)
    return seconds, ids, web, database


def fusion_variant(
    candidates: int, ef_search: int, fused, positions, exact_ids, data_dir: Path
) -> str:
    """One row of ``--fusion-sweep``: fused search with FUSION_CANDIDATES and FUSION_EF_SEARCH
    set so, its agreement with whole-gallery RRF and its CPU per search (this process, and the
    bench's PostgreSQL)."""
    from search import fusion

    saved = fusion.FUSION_CANDIDATES, fusion.FUSION_EF_SEARCH
    fusion.FUSION_CANDIDATES, fusion.FUSION_EF_SEARCH = candidates, ef_search
    try:
        seconds, ids, web, database = cpu_per_search(fused, positions, data_dir)
    finally:
        fusion.FUSION_CANDIDATES, fusion.FUSION_EF_SEARCH = saved
    row = Measured("", seconds)
    return (
        f"  sweep: {candidates} candidates, ef_search {ef_search}: agreement "
        f"{recall_at(ids, exact_ids, API_K):.3f}, p50 / p95 {row.pct(50):.1f} / "
        f"{row.pct(95):.1f} ms, CPU per search: this process {web:.2f} ms + PostgreSQL "
        f"{database:.2f} ms (warm-up queries included)"
    )


def ivf_variant(lists: int, probes: int, one, fused, positions, exact_ids, data_dir: Path) -> str:
    """One row of ``--fusion-ivf``: fused search as the product runs it (FUSION_CANDIDATES
    deep) with each model's list read from an IVFFlat index (halfvec, cosine: the HNSW
    index's expression and operator, ``lists`` lists, ``probes`` probed, pgvector's relaxed
    iterative scan) in place of its HNSW index, in one transaction that is rolled back (the
    IVFFlat indexes built in it, the HNSW ones dropped in it). Beside it, in the same
    conditions just before, one model's search (HNSW) and fused search as it is."""
    from django.db import connection, transaction

    from workers.indexes import hnsw_index_name
    from workers.partitions import partition_name

    _, _, one_web, one_database = cpu_per_search(one, positions, data_dir)
    _, ids, hnsw_web, hnsw_database = cpu_per_search(fused, positions, data_dir)
    hnsw_agreement = recall_at(ids, exact_ids, API_K)
    with transaction.atomic():
        with connection.cursor() as cursor:
            for model_id, dim in ((MODEL_ID, DIM), (SECOND_MODEL, SECOND_DIM)):
                cursor.execute(
                    f'CREATE INDEX ON "{partition_name(model_id)}" USING ivfflat '
                    f"((vector::halfvec({dim})) halfvec_cosine_ops) WITH (lists = {lists})"
                )
                cursor.execute(f'DROP INDEX "{hnsw_index_name(model_id)}"')
            cursor.execute(
                "SELECT set_config('ivfflat.probes', %s, true), "
                "set_config('ivfflat.iterative_scan', 'relaxed_order', true)",
                [str(probes)],
            )
        seconds, ids, web, database = cpu_per_search(fused, positions, data_dir)
        transaction.set_rollback(True)
    row = Measured("", seconds)
    return (
        f"  IVFFlat lists {lists}, probes {probes}: agreement "
        f"{recall_at(ids, exact_ids, API_K):.3f}, p50 / p95 {row.pct(50):.1f} / "
        f"{row.pct(95):.1f} ms, CPU per search {web:.2f} + {database:.2f} ms; just before, "
        f"HNSW fused {hnsw_agreement:.3f} at {hnsw_web:.2f} + {hnsw_database:.2f} ms, one model "
        f"{one_web:.2f} + {one_database:.2f} ms (this process + PostgreSQL, warm-up included)"
    )
