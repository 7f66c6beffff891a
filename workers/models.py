"""Image embeddings for every registered model, and the embedding state of each image.

One table holds the vectors of all models, in an un-dimensioned ``vector`` column,
``PARTITION BY LIST (model_id)`` with a partition per registered model
(``workers.partitions``, docs/partition-by-model.md) and one expression HNSW index on each
partition::

    CREATE INDEX ... ON search_imageembedding_clip_vit_base_patch32
    USING hnsw ((vector::halfvec(512)) halfvec_cosine_ops)

(half-precision copies in the index, half its size; search ranks the index's candidates again
on the full-precision column, see ``search.ranking.embeddings_ranked``).

Why one (partitioned) table rather than a model class per model: enabling a model (or adding
SigLIP) needs no migration or model class; status, backfill and fusion queries stay one join;
and a search naming its model prunes to that model's partition and index. Partitions rather
than partial indexes on one heap: one model's index build no longer stops VACUUM of every
other model's rows, and a model's embeddings are dropped by emptying its partition. The
database's primary key is ``(id, model_id)`` (a partitioned table's keys must hold the
partition key); Django's state keeps ``id`` as the primary key (workers 0005). The index's
cast to ``halfvec(dim)`` also makes PostgreSQL itself reject a vector of the wrong dimension
for its model (the services check first, to give a readable error). ``workers.indexes``
creates the indexes from the registry after every migrate while a model's rows are few, and
builds the big ones online (``embedding_index_build``).

The tables keep the names they had when these models lived in search/ (``db_table``): moving
them here changed Django's state only (search 0007 and workers 0001), no table or index.
"""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
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
    # Every image up to this id has a job for the model: the sweep looks for images without
    # one only above it, so its cost follows the newest images, not the whole table
    # (workers.services.embedding_jobs_create_missing). 0 until the first sweep after enabling.
    jobs_cursor = models.BigIntegerField(default=0)
    # Fused search asks whether the model has embedded every image (nothing remaining, as
    # workers.selectors.embedding_progress counts) on every request: that count is recorded here
    # once it comes out complete, for the images up to complete_through_image_id, and holds
    # while no newer image exists, no job is pending and completeness_version is unchanged
    # (search.model_choice reads all three in its one statement). Enabling or disabling the
    # model bumps the version (workers.services.embedding_completeness_forget).
    embeddings_complete = models.BooleanField(default=False, editable=False)
    complete_through_image_id = models.BigIntegerField(default=0, editable=False)
    completeness_version = models.BigIntegerField(default=0, editable=False)
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
    # Which delivery of a batch holds the job (one token per run of a task): a second delivery
    # of the same message, or another message holding the image, skips it while the lease lasts.
    lease_owner = models.CharField(max_length=64, blank=True)
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


class Worker(models.Model):
    """One embedding worker process and what it can do, from its own checks at start.

    Written by the worker itself (``workers.heartbeat``) at start and every
    WORKER_HEARTBEAT_SECONDS; a row not seen within WORKER_STALE_SECONDS belongs to a dead
    worker and is pruned. A model is unavailable to the site only when no live worker can load
    it (``workers.services.embedding_model_mark_unavailable``).
    """

    name = models.CharField(max_length=255, help_text="Celery's node name, e.g. celery@gpu-1.")
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    device = models.CharField(max_length=32, help_text="EMBEDDING_DEVICE of the worker.")
    batch_size = models.PositiveIntegerField()
    models_loaded = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    # model id -> why this worker could not load it
    models_failed = models.JSONField(default=dict, blank=True)
    embedded = models.PositiveBigIntegerField(default=0, help_text="Images since start.")
    batches = models.PositiveBigIntegerField(default=0, help_text="Model calls since start.")
    # Why the worker cannot reach the image storage ("" when it can): it takes no batches then.
    storage_error = models.TextField(blank=True)
    # The embedding queues it consumes (one per model it loaded, none while storage is away).
    queues = ArrayField(models.CharField(max_length=128), default=list, blank=True)
    rate_per_minute = models.FloatField(default=0.0)
    started_at = models.DateTimeField()
    # From the database's clock (now()), like every comparison with it.
    last_seen = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["name", "pid"]
        constraints = [
            models.UniqueConstraint(fields=["hostname", "pid"], name="worker_unique_process")
        ]

    def __str__(self) -> str:
        return f"{self.name} (pid {self.pid})"
