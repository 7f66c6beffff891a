"""The embedding table becomes ``PARTITION BY LIST (model_id)``, a partition per model
(docs/partition-by-model.md), moved in place when it is small.

Up to EMBEDDING_PARTITION_IN_PLACE_MAX_ROWS embeddings (default 200,000) the rows are copied
here, under a lock on the table, into a partitioned table that then takes its name, its
constraints, its b-tree indexes and its id sequence; each model that had an HNSW index gets
its partition's one built again here (searches would otherwise scan every row). Above the
limit the migration refuses and names ``manage.py embedding_table_partition``, which moves a
big table online; a table it already moved is left alone here.

Django's state does not change: the model keeps ``id`` as its primary key (the database's is
``(id, model_id)``, as a partitioned table's must hold the partition key; nothing references
the table), and its unique constraint and index keep their names.

Reverse: a no-op. The partitioned table serves the previous code as it is (same name, same
columns, the same unique constraint), so going back to 0004 needs no move back.
"""

from django.conf import settings
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps


def partition(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    from encoders.registry import MODELS
    from workers.indexes import embedding_indexes_ensure, hnsw_index_name
    from workers.partitions import PartitionMoveRefused, table_convert_in_place

    connection = schema_editor.connection
    limit = int(getattr(settings, "EMBEDDING_PARTITION_IN_PLACE_MAX_ROWS", 200_000))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'search_imageembedding'"
        )
        had_index = {row[0] for row in cursor.fetchall()}
        try:
            moved = table_convert_in_place(cursor, max_rows=limit)
        except PartitionMoveRefused as exc:
            raise RuntimeError(str(exc)) from None
    if moved:
        rebuild = [m for m in sorted(MODELS) if hnsw_index_name(m) in had_index]
        if rebuild:
            embedding_indexes_ensure(using=connection.alias, model_ids=rebuild)


class Migration(migrations.Migration):
    dependencies = [("workers", "0004_embedding_model_completeness")]

    operations = [
        migrations.RunPython(partition, migrations.RunPython.noop, elidable=False),
    ]
