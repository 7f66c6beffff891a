# Keyword search's words stored in the rows (gallery.models.search_words_field): ts_rank then
# reads them instead of parsing each match's text again. The GIN indexes move onto the columns
# (same names, same words). Adding a stored generated column rewrites the table under a lock
# that blocks reads and writes: measured at 31,783 images and 158,915 captions in bench/README.md
# ("Keyword words stored"); plan the upgrade of a much larger site for it.

import django.contrib.postgres.indexes
import django.contrib.postgres.search
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0009_image_taken_at'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='caption',
            name='caption_words',
        ),
        migrations.RemoveIndex(
            model_name='image',
            name='image_words',
        ),
        migrations.AddField(
            model_name='caption',
            name='search_words',
            field=models.GeneratedField(db_persist=True, expression=django.contrib.postgres.search.SearchVector('text', config='simple'), output_field=django.contrib.postgres.search.SearchVectorField()),
        ),
        migrations.AddField(
            model_name='image',
            name='search_words',
            field=models.GeneratedField(db_persist=True, expression=django.contrib.postgres.search.SearchVector('title', 'description', 'original_filename', config='simple'), output_field=django.contrib.postgres.search.SearchVectorField()),
        ),
        migrations.AddIndex(
            model_name='caption',
            index=django.contrib.postgres.indexes.GinIndex(fields=['search_words'], name='caption_words'),
        ),
        migrations.AddIndex(
            model_name='image',
            index=django.contrib.postgres.indexes.GinIndex(fields=['search_words'], name='image_words'),
        ),
        # The new columns' statistics now, not at autovacuum's next turn: the keyword side
        # reads its common words from them (search.hybrid.common_words).
        migrations.RunSQL(
            'ANALYZE "gallery_image" ("search_words"), "gallery_caption" ("search_words")',
            migrations.RunSQL.noop,
        ),
    ]
