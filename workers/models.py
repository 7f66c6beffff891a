"""Image embeddings for every registered model, and the embedding state of each image.

One table holds the vectors of all models, in an un-dimensioned ``vector`` column, with one
partial expression HNSW index per model::

    CREATE INDEX ... USING hnsw ((vector::halfvec(512)) halfvec_cosine_ops)
    WHERE model_id = 'clip-vit-base-patch32'

(half-precision copies in the index, half its size; search ranks the index's candidates again
on the full-precision column, see ``search.ranking.embeddings_ranked``).

Why one table rather than one per model: enabling a model (or adding SigLIP) needs no new
table, migration or model class; status, backfill and fusion queries stay one join; and the
partial index keeps each model's ANN search as fast as a table of its own. The index's cast to
``halfvec(dim)`` also makes PostgreSQL itself reject a vector of the wrong dimension for its
model (the services check first, to give a readable error).
``workers.indexes`` creates the indexes from the registry after every migrate while a model's
rows are few, and builds the big ones online (``embedding_index_build``).

The tables keep the names they had when these models lived in search/ (``db_table``): moving
them here changed Django's state only (search 0007 and workers 0001), no table or index.
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
        db_table = "search_imageembedding"
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
        db_table = "search_embeddingmodel"
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
        db_table = "search_embeddingjob"
        constraints = [
            models.UniqueConstraint(fields=["image", "model_id"], name="embedding_job_unique")
        ]
        indexes = [models.Index(fields=["model_id", "status"])]

    def __str__(self) -> str:
        return f"{self.model_id} / image {self.image_id}: {self.status}"
