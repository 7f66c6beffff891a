"""The embedding index's models move here from search/ (Django's state only).

Their tables, indexes, constraints and rows stay exactly as search's migrations made them
(``db_table`` keeps the names): ``SeparateDatabaseAndState`` creates the models in workers'
state without any SQL, and search 0007 then deletes them from search's state, also without
SQL. The content types are renamed to workers', so permissions granted on them are kept.
"""

import django.db.models.deletion
import pgvector.django.vector
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

MOVED = ("embeddingjob", "embeddingmodel", "imageembedding")


def _content_types_move(
    apps: StateApps, schema_editor: BaseDatabaseSchemaEditor, *, source: str, target: str
) -> None:
    content_types = apps.get_model("contenttypes", "ContentType").objects.using(
        schema_editor.connection.alias
    )
    taken = set(content_types.filter(app_label=target).values_list("model", flat=True))
    content_types.filter(app_label=source, model__in=set(MOVED) - taken).update(app_label=target)


def content_types_follow(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    _content_types_move(apps, schema_editor, source="search", target="workers")


def content_types_return(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    _content_types_move(apps, schema_editor, source="workers", target="search")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("gallery", "0005_image_file_size"),
        ("search", "0006_query_image_cache"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="EmbeddingModel",
                    fields=[
                        ("model_id", models.CharField(max_length=64, primary_key=True, serialize=False)),
                        ("enabled", models.BooleanField(default=True)),
                        ("is_default", models.BooleanField(default=False)),
                        ("unavailable_reason", models.TextField(blank=True)),
                        ("unavailable_since", models.DateTimeField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                    ],
                    options={
                        "db_table": "search_embeddingmodel",
                        "ordering": ["model_id"],
                        "constraints": [
                            models.UniqueConstraint(condition=models.Q(("is_default", True)), fields=("is_default",), name="embedding_model_single_default"),
                            models.CheckConstraint(condition=models.Q(("is_default", False), ("enabled", True), _connector="OR"), name="embedding_model_default_is_enabled"),
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="EmbeddingJob",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("model_id", models.CharField(max_length=64)),
                        ("status", models.CharField(choices=[("pending", "Pending"), ("done", "Done"), ("failed", "Failed")], default="pending", max_length=16)),
                        ("error", models.TextField(blank=True)),
                        ("attempts", models.PositiveIntegerField(default=0)),
                        ("enqueued_at", models.DateTimeField(blank=True, null=True)),
                        ("started_at", models.DateTimeField(blank=True, null=True)),
                        ("lease_until", models.DateTimeField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        ("image", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="embedding_jobs", to="gallery.image")),
                    ],
                    options={
                        "db_table": "search_embeddingjob",
                        "indexes": [models.Index(fields=["model_id", "status"], name="search_embe_model_i_5324fb_idx")],
                        "constraints": [models.UniqueConstraint(fields=("image", "model_id"), name="embedding_job_unique")],
                    },
                ),
                migrations.CreateModel(
                    name="ImageEmbedding",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("model_id", models.CharField(max_length=64)),
                        ("vector", pgvector.django.vector.VectorField(help_text="L2-normalised; dimension fixed per model by its index.")),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("image", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="embeddings", to="gallery.image")),
                    ],
                    options={
                        "db_table": "search_imageembedding",
                        "indexes": [models.Index(fields=["model_id"], name="search_imag_model_i_37f26e_idx")],
                        "constraints": [models.UniqueConstraint(fields=("image", "model_id"), name="embedding_unique_per_model")],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_follow, content_types_return, elidable=False),
    ]
