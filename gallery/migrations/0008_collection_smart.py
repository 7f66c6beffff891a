# Saved searches as collections (search.smart): the query, model, filters and cut-off, and the
# images the owner hid from its matches.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0007_image_caption_words'),
    ]

    operations = [
        migrations.AddField(
            model_name='collection',
            name='smart_filters',
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name='collection',
            name='smart_hidden',
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name='collection',
            name='smart_min_score',
            field=models.FloatField(blank=True, help_text='Cosine cut-off.', null=True),
        ),
        migrations.AddField(
            model_name='collection',
            name='smart_model',
            field=models.CharField(blank=True, db_default='', default='', max_length=64),
        ),
        migrations.AddField(
            model_name='collection',
            name='smart_query',
            field=models.CharField(blank=True, db_default='', default='', max_length=1000),
        ),
    ]
