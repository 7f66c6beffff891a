"""The query-image store's table (settings.CACHES["query_images"], a DatabaseCache), made here
so that ``migrate`` is the only set-up step: the DDL is what ``createcachetable`` prints for it
(``manage.py createcachetable search_query_image_cache --dry-run``)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("search", "0005_caption_embedding_run_lang")]

    operations = [
        migrations.RunSQL(
            sql=[
                """
                CREATE TABLE "search_query_image_cache" (
                    "cache_key" varchar(255) NOT NULL PRIMARY KEY,
                    "value" text NOT NULL,
                    "expires" timestamp with time zone NOT NULL
                )
                """,
                'CREATE INDEX "search_query_image_cache_expires" '
                'ON "search_query_image_cache" ("expires")',
            ],
            reverse_sql='DROP TABLE "search_query_image_cache"',
        )
    ]
