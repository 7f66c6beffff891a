# Keyword search over title, description, file name and captions (search.hybrid): GIN indexes
# on their tsvectors, and pg_trgm (a contrib extension shipped with PostgreSQL, the embedded one
# included) for file names. Building a GIN index blocks writes to the table while it runs:
# seconds for a site of tens of thousands of images.

import django.contrib.postgres.indexes
import django.contrib.postgres.operations
import django.contrib.postgres.search
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gallery", "0006_image_taken_camera_place"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        django.contrib.postgres.operations.TrigramExtension(),
        migrations.AddIndex(
            model_name="caption",
            index=django.contrib.postgres.indexes.GinIndex(
                django.contrib.postgres.search.SearchVector("text", config="simple"),
                name="caption_words",
            ),
        ),
        migrations.AddIndex(
            model_name="image",
            index=django.contrib.postgres.indexes.GinIndex(
                django.contrib.postgres.search.SearchVector(
                    "title", "description", "original_filename", config="simple"
                ),
                name="image_words",
            ),
        ),
        migrations.AddIndex(
            model_name="image",
            index=django.contrib.postgres.indexes.GinIndex(
                fields=["original_filename"], name="image_name_trgm", opclasses=["gin_trgm_ops"]
            ),
        ),
        migrations.AddIndex(
            model_name="image",
            index=models.Index(
                condition=models.Q(("place_country", ""), _negated=True),
                fields=["place_country", "place_region", "place_city", "visibility", "owner"],
                name="image_places",
            ),
        ),
    ]
