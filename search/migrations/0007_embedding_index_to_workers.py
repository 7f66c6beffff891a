"""EmbeddingModel, ImageEmbedding and EmbeddingJob now live in workers/ (workers 0001): they
leave search's state only; their tables and rows stay where they are."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("search", "0006_query_image_cache"),
        ("workers", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="EmbeddingJob"),
                migrations.DeleteModel(name="EmbeddingModel"),
                migrations.DeleteModel(name="ImageEmbedding"),
            ],
            database_operations=[],
        )
    ]
