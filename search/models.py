"""Image embeddings for every registered model, and the embedding state of each image.

One table holds the vectors of all models, in an un-dimensioned ``vector`` column, with one
partial expression HNSW index per model::

    CREATE INDEX ... USING hnsw ((vector::halfvec(512)) halfvec_cosine_ops)
    WHERE model_id = 'clip-vit-base-patch32'

(half-precision copies in the index, half its size; search ranks the index's candidates again
on the full-precision column, see ``search.selectors.embeddings_ranked``).

Why one table rather than one per model: enabling a model (or adding SigLIP) needs no new
table, migration or model class; status, backfill and fusion queries stay one join; and the
partial index keeps each model's ANN search as fast as a table of its own. The index's cast to
``halfvec(dim)`` also makes PostgreSQL itself reject a vector of the wrong dimension for its
model (the services check first, to give a readable error).
``search.indexes.embedding_indexes_ensure`` creates the indexes from the registry after every
migrate.
"""

from __future__ import annotations

from django.db import models
from pgvector.django import VectorField

from gallery.models import Image


class ImageEmbedding(models.Model):
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="embeddings")
    model_id = models.CharField(max_length=64)
    vector = VectorField(help_text="L2-normalised; dimension fixed per model by its index.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["image", "model_id"], name="embedding_unique_per_model")
        ]
        indexes = [models.Index(fields=["model_id"])]

    def __str__(self) -> str:
        return f"{self.model_id} embedding of image {self.image_id}"


class EmbeddingModel(models.Model):
    """Runtime state of a registered model: enabled for embedding, and which one search uses.

    Rows are created from the EMBEDDING_MODELS setting on migrate (never re-enabled once staff
    disabled them); after that staff switch models here without a restart.
    """

    model_id = models.CharField(max_length=64, primary_key=True)
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False)
    # Set when a worker could not load the model (missing weights, no GPU, ...): search and
    # uploads say so plainly, and the sweep sends one probe batch per interval instead of the
    # whole backlog until a load succeeds again.
    unavailable_reason = models.TextField(blank=True)
    unavailable_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=models.Q(is_default=True),
                name="embedding_model_single_default",
            ),
            models.CheckConstraint(
                condition=models.Q(is_default=False) | models.Q(enabled=True),
                name="embedding_model_default_is_enabled",
            ),
        ]

    def __str__(self) -> str:
        return self.model_id


class EmbeddingJob(models.Model):
    """Where one image stands with one model: pending, done, or failed with a reason."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="embedding_jobs")
    model_id = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # When a batch holding this image was last queued; the sweep re-queues pending jobs whose
    # batch has not run within the broker's visibility timeout (e.g. its worker died).
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # A worker holds the job while it runs and renews the lease batch by batch: a pending job
    # whose lease ran out lost its worker (killed, or the database went away mid-batch).
    started_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["image", "model_id"], name="embedding_job_unique")
        ]
        indexes = [models.Index(fields=["model_id", "status"])]

    def __str__(self) -> str:
        return f"{self.model_id} / image {self.image_id}: {self.status}"


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
