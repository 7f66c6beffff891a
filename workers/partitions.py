"""The embedding table's partitions: one per registered model (docs/partition-by-model.md).

``search_imageembedding`` is ``PARTITION BY LIST (model_id)``, each model's rows in a table of
their own with its own HNSW index (``workers.indexes``). There is no DEFAULT partition on
purpose: an embedding of a model without a partition fails loudly ("no partition of relation
... found for row") rather than landing in a heap that no index covers. Partitions follow the
model registry, created after every migrate and wherever a model's state row is made; a
model's embeddings are deleted by emptying its partition (TRUNCATE), not row by row.

The layout itself is made by workers 0005 (in place, for a small table:
``table_convert_in_place`` below) or by ``manage.py embedding_table_partition`` (online, for a
big one: ``workers.partition_move``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from django.db import connections
from psycopg import sql

from encoders.registry import MODELS

TABLE = "search_imageembedding"  # ImageEmbedding._meta.db_table (not imported: migrations use this)
_MAX_NAME = 63  # PostgreSQL's identifier length
# The in-place move's working names; never seen outside its transaction.
NEW_TABLE = TABLE + "_partitioned"
NEW_SEQUENCE = TABLE + "_partitioned_id_seq"
SEQUENCE = TABLE + "_id_seq"
# The columns, in the order Django created them (search 0001), as the partitioned table has them.
COLUMNS = ("id", "model_id", "vector", "created_at", "image_id")


def partition_name(model_id: str) -> str:
    """The table holding ``model_id``'s embeddings: the table's name and the id with every
    character outside [a-z0-9_] made "_" ("clip-vit-base-patch32" ->
    "search_imageembedding_clip_vit_base_patch32"); a hash of the id keeps a long one within 63
    characters, and unique. Always quoted where used (``psycopg.sql.Identifier``)."""
    slug = re.sub(r"[^a-z0-9_]", "_", model_id.lower())
    name = f"{TABLE}_{slug}"
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(model_id.encode()).hexdigest()[:8]
        name = f"{name[: _MAX_NAME - 9]}_{digest}"
    return name


def table_is_partitioned(cursor: Any) -> bool:
    cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
    row = cursor.fetchone()
    return bool(row) and row[0] == "p"


def partition_exists(cursor: Any, model_id: str) -> bool:
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [quoted(partition_name(model_id))])
    return bool(cursor.fetchone()[0])


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _create_partition(cursor: Any, model_id: str, *, parent: str = TABLE) -> None:
    cursor.execute(
        sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES IN ({})")
        .format(
            sql.Identifier(partition_name(model_id)), sql.Identifier(parent), sql.Literal(model_id)
        )
        .as_string(_psycopg_connection(cursor))
    )


def _psycopg_connection(cursor: Any) -> Any:
    """The psycopg connection under a Django or psycopg cursor (``sql.Composed`` needs one)."""
    inner = getattr(cursor, "cursor", cursor)  # Django's CursorWrapper holds psycopg's cursor
    return inner.connection


def partitions_ensure(*, using: str = "default", model_ids: Iterable[str] | None = None) -> None:
    """Create the partition of each registered model (or of ``model_ids``) that has none.
    Nothing before the table is partitioned (a database still at workers 0004)."""
    with connections[using].cursor() as cursor:
        if not table_is_partitioned(cursor):
            return
        for model_id in MODELS if model_ids is None else model_ids:
            if not partition_exists(cursor, model_id):
                _create_partition(cursor, model_id)


def partition_truncate(*, model_id: str, using: str = "default") -> int:
    """Delete every embedding of ``model_id`` at once by emptying its partition: no per-row
    WAL, no VACUUM, the disk given back at commit; the partition (and its index) stays, ready
    for the model's next embeddings. Returns the rows there were. Takes an ACCESS EXCLUSIVE
    lock on that partition only (other models' reads and writes go on); inside the caller's
    transaction, so it is undone with it."""
    with connections[using].cursor() as cursor:
        if not (table_is_partitioned(cursor) and partition_exists(cursor, model_id)):
            cursor.execute(f'DELETE FROM "{TABLE}" WHERE model_id = %s', [model_id])
            return int(cursor.rowcount)
        name = sql.Identifier(partition_name(model_id))
        conn = _psycopg_connection(cursor)
        cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(name).as_string(conn))
        rows = int(cursor.fetchone()[0])
        # The foreign key to the images is checked at commit (Django's DEFERRABLE INITIALLY
        # DEFERRED), and TRUNCATE refuses a table with such checks pending (rows written
        # earlier in this transaction): run them now, then defer the key again as declared.
        cursor.execute(
            "SELECT quote_ident(conname) FROM pg_constraint WHERE conrelid = %s::regclass "
            "AND contype = 'f' AND condeferred",
            [quoted(TABLE)],
        )
        deferred = ", ".join(row[0] for row in cursor.fetchall())
        if deferred:
            cursor.execute(f"SET CONSTRAINTS {deferred} IMMEDIATE")
        cursor.execute(sql.SQL("TRUNCATE {}").format(name).as_string(conn))
        if deferred:
            cursor.execute(f"SET CONSTRAINTS {deferred} DEFERRED")
    return rows


# --- The move from the flat table ---------------------------------------------------------


class PartitionMoveRefused(RuntimeError):
    """The move cannot run: the flat table is too big to lock for it, or another move runs."""


ONLINE_COMMAND = "python manage.py embedding_table_partition"


def flat_rows(cursor: Any, *, at_most: int) -> int:
    cursor.execute(f'SELECT count(*) FROM (SELECT 1 FROM "{TABLE}" LIMIT {int(at_most)}) AS r')
    return int(cursor.fetchone()[0])


def flat_layout(cursor: Any) -> tuple[list[str], list[str]]:
    """The flat table's constraints other than its primary key, as ``ADD CONSTRAINT`` clauses,
    and its b-tree indexes other than the constraints' and the HNSW ones, as their DDL (the
    HNSW indexes are built again per partition: a partition's needs no WHERE)."""
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = to_regclass(%s) AND contype IN ('u', 'f', 'c', 'x') ORDER BY conname",
        [TABLE],
    )
    constraints = [f"ADD CONSTRAINT {quoted(name)} {definition}" for name, definition in cursor]
    cursor.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
        "WHERE i.indrelid = to_regclass(%s) AND a.amname = 'btree' "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)",
        [TABLE],
    )
    indexes = [definition for _, definition in cursor]
    return constraints, indexes


def table_create_partitioned(
    cursor: Any, *, name: str, sequence: str, model_ids: Iterable[str]
) -> None:
    """An empty partitioned copy of the embedding table's columns under ``name``, with a
    partition of each of ``model_ids`` and ids drawn from the plain sequence ``sequence``
    (a partitioned table's identity column needs PostgreSQL 17; a sequence works from 12)."""
    cursor.execute(f'CREATE SEQUENCE IF NOT EXISTS "{sequence}" AS bigint')
    cursor.execute(
        f'CREATE TABLE "{name}" ('
        f"id bigint NOT NULL DEFAULT nextval('\"{sequence}\"'::regclass), "
        "model_id varchar(64) NOT NULL, vector vector NOT NULL, "
        "created_at timestamp with time zone NOT NULL, image_id bigint NOT NULL"
        ") PARTITION BY LIST (model_id)"
    )
    for model_id in model_ids:
        _create_partition(cursor, model_id, parent=name)


def sequence_follow(cursor: Any, *, sequence: str) -> None:
    """Set ``sequence`` to go on from the flat table's id sequence (or its highest id)."""
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [TABLE])
    (old,) = cursor.fetchone()
    cursor.execute(f'SELECT coalesce(max(id), 0) FROM "{TABLE}"')
    (highest,) = cursor.fetchone()
    if old:
        cursor.execute(f"SELECT last_value, is_called FROM {old}")
        last, called = cursor.fetchone()
        highest = max(highest, last if called else last - 1)
    cursor.execute(
        "SELECT setval(%s::regclass, %s, %s)", [quoted(sequence), max(highest, 1), highest > 0]
    )


def table_swap(cursor: Any, *, constraints: list[str], indexes: list[str]) -> None:
    """Drop the flat table and give the partitioned one (``NEW_TABLE``) its name, its sequence, its
    primary key with the partition key in it, and the flat one's other constraints and
    b-tree indexes, under their own names (on each partition too)."""
    cursor.execute(f'DROP TABLE "{TABLE}"')
    cursor.execute(f'ALTER TABLE "{NEW_TABLE}" RENAME TO "{TABLE}"')
    cursor.execute(f'ALTER SEQUENCE "{NEW_SEQUENCE}" RENAME TO "{SEQUENCE}"')
    cursor.execute(f'ALTER SEQUENCE "{SEQUENCE}" OWNED BY "{TABLE}".id')
    # A partitioned table's unique constraints must hold the partition key.
    cursor.execute(
        f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{TABLE}_pkey" PRIMARY KEY (id, model_id)'
    )
    for constraint in constraints:
        cursor.execute(f'ALTER TABLE "{TABLE}" {constraint}')
    for index in indexes:
        cursor.execute(index)


def table_convert_in_place(cursor: Any, *, max_rows: int) -> bool:
    """Make the flat embedding table partitioned, inside the caller's transaction: lock it,
    create the partitioned table with a partition per registered model and per model found in
    its rows, copy the rows, swap the names, carry the id sequence on. Refuses
    (``PartitionMoveRefused``) above ``max_rows`` rows, which would lock the table too long: the
    online command does those. Returns False when the table is already partitioned."""
    if table_is_partitioned(cursor):
        return False
    cursor.execute(f'LOCK TABLE "{TABLE}" IN ACCESS EXCLUSIVE MODE')
    rows = flat_rows(cursor, at_most=max_rows + 1)
    if rows > max_rows:
        raise PartitionMoveRefused(
            f"{TABLE} holds more than EMBEDDING_PARTITION_IN_PLACE_MAX_ROWS={max_rows} "
            f"embeddings: moving them in place would lock uploads and searches out for the "
            f"whole copy. Partition it online first with `{ONLINE_COMMAND}` (searches and "
            f"uploads go on), then run migrate again."
        )
    cursor.execute(f'SELECT DISTINCT model_id FROM "{TABLE}"')
    model_ids = sorted(set(MODELS) | {row[0] for row in cursor.fetchall()})
    constraints, indexes = flat_layout(cursor)
    table_create_partitioned(cursor, name=NEW_TABLE, sequence=NEW_SEQUENCE, model_ids=model_ids)
    columns = ", ".join(COLUMNS)
    cursor.execute(f'INSERT INTO "{NEW_TABLE}" ({columns}) SELECT {columns} FROM "{TABLE}"')
    sequence_follow(cursor, sequence=NEW_SEQUENCE)
    table_swap(cursor, constraints=constraints, indexes=indexes)
    return True
