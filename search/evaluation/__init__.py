"""Flickr30k retrieval evaluation: Recall@K, median and mean rank, and fusion of models.

The protocol is the zero-shot one of the CLIP and ALIGN papers: every caption of every image
of the split is its own text->image query (Karpathy's 1K test: 1,000 images, 5,000 queries),
and each image is an image->text query whose answers are its own captions (a hit when any of
them is within the top K). Ranks are 1-based: 1 + the number of candidates strictly more
similar than the best right answer, so exact ties count in the query's favour, in every path.

Where each number comes from:

- text embeddings: the encoder search uses (``workers.encoder_cache.encoder_for``, its tokenizer
  truncating to the model's context, 77 tokens for CLIP), computed once per caption, model and
  encoder and stored in PostgreSQL (``CaptionEmbedding``), then read back by later runs;
- image embeddings: read from PostgreSQL, as stored by the pipeline or ``import_embeddings``;
- text->image of a single model: ranked in PostgreSQL with pgvector's ``<=>``, the operator
  search orders by; exactly (a full scan) by default, or with ``ann`` through the model's HNSW
  index via ``search.ranking.embeddings_ranked``, the ranking search itself uses;
- image->text: in numpy over the caption vectors (one exact matrix product);
- fusions: in numpy over each model's vectors read from PostgreSQL once, since a fused score is
  not one pgvector ORDER BY.

The modules: ``metrics`` (ranks, recall, fusion; plain numpy), ``data`` (reads),
``ranking`` (ranks computed by PostgreSQL), ``run`` (one evaluation, and saving it),
``references`` (published figures and their sources).
"""

from search.evaluation.data import (
    GALLERIES,
    EvaluationError,
    EvaluationSet,
    embeddings_matrix,
    embeddings_missing_count,
    evaluation_set_load,
)
from search.evaluation.metrics import (
    KS,
    RankSummary,
    rank_summary,
    ranks_from_scores,
    ranks_numpy,
    recall_at_k,
)
from search.evaluation.ranking import (
    AnnRanks,
    text_to_image_ranks_ann,
    text_to_image_ranks_exact,
)
from search.evaluation.references import PUBLISHED_TEXT_TO_IMAGE, PublishedResult, published_for
from search.evaluation.run import (
    EvaluationReport,
    SystemResult,
    caption_vectors,
    evaluate,
    evaluation_runs_record,
    texts_embed,
)
from search.fusion import FUSIONS, RRF_K, fuse_rrf, fuse_zsum

__all__ = [
    "FUSIONS",
    "GALLERIES",
    "KS",
    "PUBLISHED_TEXT_TO_IMAGE",
    "RRF_K",
    "AnnRanks",
    "EvaluationError",
    "EvaluationReport",
    "EvaluationSet",
    "PublishedResult",
    "RankSummary",
    "SystemResult",
    "caption_vectors",
    "embeddings_matrix",
    "embeddings_missing_count",
    "evaluate",
    "evaluation_runs_record",
    "evaluation_set_load",
    "fuse_rrf",
    "fuse_zsum",
    "published_for",
    "rank_summary",
    "ranks_from_scores",
    "ranks_numpy",
    "recall_at_k",
    "text_to_image_ranks_ann",
    "text_to_image_ranks_exact",
    "texts_embed",
]
