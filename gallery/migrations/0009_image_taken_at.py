# Taken-date ranges in searches (search.query_parser dates, the API's taken_after/before).

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0008_collection_smart'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name='image',
            index=models.Index(condition=models.Q(('taken_at__isnull', False)), fields=['taken_at'], name='image_taken_at'),
        ),
    ]
