"""Evaluation runs and the caption vectors they reuse; image embeddings and their state live in
``workers.models`` (the embedding index)."""

from __future__ import annotations

from django.db import models
from pgvector.django import VectorField


class EvaluationRun(models.Model):
    """One measured system (a model, or a fusion of models) on the Flickr30k retrieval task.

    Recalls are percentages. Ranks are 1-based; in ``ann`` mode only the top ``k`` of the HNSW
    index is known, so text->image median/mean ranks stay empty unless the median is within it.
    """

    class Mode(models.TextChoices):
        EXACT = "exact", "Exact (full scan)"
        ANN = "ann", "HNSW index"

    fusion = models.CharField(max_length=16, blank=True, help_text="zsum or rrf when fused.")
    split = models.CharField(max_length=8)
    gallery = models.CharField(max_length=8, help_text="split: that split's images; all: all.")
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.EXACT)
    prompt = models.CharField(max_length=100, blank=True, help_text="Prefix added to captions.")
    lang = models.CharField(max_length=16, default="en", help_text="Language of the captions.")
    n_images = models.PositiveIntegerField(help_text="Images in the gallery ranked.")
    n_queries = models.PositiveIntegerField(help_text="Caption queries (text->image).")
    t2i_r1 = models.FloatField()
    t2i_r5 = models.FloatField()
    t2i_r10 = models.FloatField()
    t2i_median_rank = models.FloatField(null=True, blank=True)
    t2i_mean_rank = models.FloatField(null=True, blank=True)
    i2t_r1 = models.FloatField()
    i2t_r5 = models.FloatField()
    i2t_r10 = models.FloatField()
    i2t_median_rank = models.FloatField(null=True, blank=True)
    i2t_mean_rank = models.FloatField(null=True, blank=True)
    duration_seconds = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # Last, because from here on the name ``models`` in this class body is this field, not
    # django.db.models.
    models = models.CharField(max_length=255, help_text="Model id, or fused ids comma-joined.")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        system = f"{self.fusion}({self.models})" if self.fusion else self.models
        return f"{system} on {self.split}/{self.gallery} ({self.mode}): R@1 {self.t2i_r1:.1f}"


class CaptionEmbedding(models.Model):
    """A caption's text embedding under one model, kept so evaluations encode each caption once.

    The same one-table design as ``ImageEmbedding`` (an un-dimensioned ``vector``, rows of every
    model side by side), without an HNSW index: the evaluation reads a model's caption vectors
    whole and ranks them exactly. A row is only reused for the text it was made from
    (``text_sha256`` of the prompt and caption as embedded) and the same encoder numerics
    (``encoder``: float32, float16, int8...), so an edited caption, another prompt or a
    quantised encoder gets vectors of its own.
    """

    caption = models.ForeignKey(
        "gallery.Caption", on_delete=models.CASCADE, related_name="embeddings"
    )
    model_id = models.CharField(max_length=64)
    encoder = models.CharField(max_length=32)
    text_sha256 = models.CharField(max_length=64)
    vector = VectorField(help_text="L2-normalised; dimension is the model's.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["caption", "model_id", "encoder", "text_sha256"],
                name="caption_embedding_unique",
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_id} embedding of caption {self.caption_id}"
