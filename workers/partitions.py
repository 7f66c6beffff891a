"""The embedding table's partitions: one per registered model (docs/partition-by-model.md).

``search_imageembedding`` is ``PARTITION BY LIST (model_id)``, each model's rows in a table of
their own with its own HNSW index (``workers.indexes``). There is no DEFAULT partition on
purpose: an embedding of a model without a partition fails loudly ("no partition of relation
... found for row") rather than landing in a heap that no index covers. Partitions follow the
model registry, created after every migrate and wherever a model's state row is made; a
model's embeddings are deleted by emptying its partition (TRUNCATE), not row by row.

The layout itself is made by workers 0005 (in place, for a small table) or by
``manage.py embedding_table_partition`` (online, for a big one): ``table_convert_in_place``
below is the in-place move, shared by both.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from django.db import connections
from psycopg import sql

from encoders.registry import MODELS, model_spec

TABLE = "search_imageembedding"  # ImageEmbedding._meta.db_table (not imported: migrations use this)
_MAX_NAME = 63  # PostgreSQL's identifier length
# The in-place move's working names; never seen outside its transaction.
_NEW = TABLE + "_partitioned"
_NEW_SEQUENCE = TABLE + "_partitioned_id_seq"
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
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [_quoted(partition_name(model_id))])
    return bool(cursor.fetchone()[0])


def _quoted(name: str) -> str:
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
            [_quoted(TABLE)],
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


def _flat_layout(cursor: Any) -> tuple[list[str], list[str]]:
    """The flat table's constraints other than its primary key, as ``ADD CONSTRAINT`` clauses,
    and its b-tree indexes other than the constraints' and the HNSW ones, as their DDL (the
    HNSW indexes are built again per partition: a partition's needs no WHERE)."""
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = to_regclass(%s) AND contype IN ('u', 'f', 'c', 'x') ORDER BY conname",
        [TABLE],
    )
    constraints = [f"ADD CONSTRAINT {_quoted(name)} {definition}" for name, definition in cursor]
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
        "SELECT setval(%s::regclass, %s, %s)", [_quoted(sequence), max(highest, 1), highest > 0]
    )


def table_swap(cursor: Any, *, constraints: list[str], indexes: list[str]) -> None:
    """Drop the flat table and give the partitioned one (``_NEW``) its name, its sequence, its
    primary key with the partition key in it, and the flat one's other constraints and
    b-tree indexes, under their own names (on each partition too)."""
    cursor.execute(f'DROP TABLE "{TABLE}"')
    cursor.execute(f'ALTER TABLE "{_NEW}" RENAME TO "{TABLE}"')
    cursor.execute(f'ALTER SEQUENCE "{_NEW_SEQUENCE}" RENAME TO "{SEQUENCE}"')
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
    constraints, indexes = _flat_layout(cursor)
    table_create_partitioned(cursor, name=_NEW, sequence=_NEW_SEQUENCE, model_ids=model_ids)
    columns = ", ".join(COLUMNS)
    cursor.execute(f'INSERT INTO "{_NEW}" ({columns}) SELECT {columns} FROM "{TABLE}"')
    sequence_follow(cursor, sequence=_NEW_SEQUENCE)
    table_swap(cursor, constraints=constraints, indexes=indexes)
    return True


# --- The online move (manage.py embedding_table_partition) ---------------------------------

_TRIGGER = "search_imageembedding_mirror"
_MIRROR_FUNCTION = "search_imageembedding_mirror_row"


def _temporary_name(name: str) -> str:
    """The name a constraint or index of the flat table has on the partitioned copy until the
    swap (the flat one still holds the real one): stable, so a rerun finds it."""
    return "tmp_" + hashlib.sha256(name.encode()).hexdigest()[:24]


def _mirror_sql() -> list[str]:
    """A trigger on the flat table repeating each write on the partitioned copy, in the same
    transaction: what the batched copy has passed is kept current, and what it has not reached
    is replaced by the copy's own (ON CONFLICT DO NOTHING) or already there."""
    columns = ", ".join(COLUMNS)
    values = ", ".join(f"NEW.{column}" for column in COLUMNS)
    return [
        f"""CREATE OR REPLACE FUNCTION "{_MIRROR_FUNCTION}"() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP IN ('UPDATE', 'DELETE') THEN
                DELETE FROM "{_NEW}" WHERE id = OLD.id AND model_id = OLD.model_id;
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                DELETE FROM "{_NEW}" WHERE id = NEW.id AND model_id = NEW.model_id;
                INSERT INTO "{_NEW}" ({columns}) VALUES ({values});
            END IF;
            RETURN NULL;
        END $$""",
        f'DROP TRIGGER IF EXISTS "{_TRIGGER}" ON "{TABLE}"',
        f'CREATE TRIGGER "{_TRIGGER}" AFTER INSERT OR UPDATE OR DELETE ON "{TABLE}" '
        f'FOR EACH ROW EXECUTE FUNCTION "{_MIRROR_FUNCTION}"()',
    ]


def table_partition_online(
    *,
    using: str = "default",
    batch: int = 10_000,
    pause: float = 0.0,
    say: Any = None,
    lock_timeout: str = "5s",
) -> bool:
    """Move the flat embedding table to a partitioned one without stopping uploads or
    searches; returns False when it already is partitioned.

    1. The partitioned copy (``_NEW``): a partition per registered model and per model in the
       rows, its keys and b-tree indexes under temporary names (empty: instant).
    2. A trigger on the flat table mirrors every write to the copy from then on.
    3. The rows are copied in batches by id, each its own short transaction (``FOR SHARE``
       waits for a write in flight on a row, so that a delete racing the copy is not undone).
    4. Each model's HNSW index is built CONCURRENTLY on its partition (searches use the flat
       table's partial indexes meanwhile).
    5. One short transaction, under the flat table's lock (retried while ``lock_timeout``
       runs out): the sequence carried on, the flat table dropped, the copy given its name,
       its constraints', indexes' and sequence's names.
    Run it again after a failure: each step checks what is there.
    """
    from workers.indexes import (
        _index_ddl,
        _own_connection,
        hnsw_build_memory,
        hnsw_build_memory_cap,
        hnsw_build_name,
    )

    def note(text: str) -> None:
        if say is not None:
            say(text)

    with _own_connection(using) as conn, conn.cursor() as cursor:
        if table_is_partitioned(cursor):
            return False
        cursor.execute("SELECT pg_try_advisory_lock(hashtext('embedding table partition'))")
        if not cursor.fetchone()[0]:
            raise PartitionMoveRefused("another embedding_table_partition is running")
        constraints, indexes = _flat_layout(cursor)
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [_quoted(_NEW)])
        if not cursor.fetchone()[0]:
            cursor.execute(f'SELECT DISTINCT model_id FROM "{TABLE}"')
            model_ids = sorted(set(MODELS) | {row[0] for row in cursor.fetchall()})
            with conn.transaction():
                table_create_partitioned(
                    cursor, name=_NEW, sequence=_NEW_SEQUENCE, model_ids=model_ids
                )
                cursor.execute(
                    f'ALTER TABLE "{_NEW}" ADD CONSTRAINT '
                    f'"{_temporary_name(TABLE + "_pkey")}" PRIMARY KEY (id, model_id)'
                )
                for constraint in constraints:
                    name = constraint.split('"')[1]
                    cursor.execute(
                        f'ALTER TABLE "{_NEW}" '
                        + constraint.replace(_quoted(name), _quoted(_temporary_name(name)), 1)
                    )
                for index in indexes:
                    name = index.split()[2]
                    cursor.execute(
                        index.replace(f" {name} ", f" {_quoted(_temporary_name(name))} ", 1)
                        .replace(f'ON public."{TABLE}" ', f'ON public."{_NEW}" ', 1)
                        .replace(f"ON public.{TABLE} ", f'ON public."{_NEW}" ', 1)
                    )
            note(f"created {_NEW} with partitions for {', '.join(model_ids)}")
        with conn.transaction():
            for statement in _mirror_sql():
                cursor.execute(statement)
        note("writes to the flat table are mirrored to the partitioned one")
        # Copy every row (a rerun's already there are skipped by the ON CONFLICT), by id.
        after, copied = 0, 0
        columns = ", ".join(COLUMNS)
        while True:
            with conn.transaction():
                cursor.execute(
                    f'WITH rows AS (SELECT {columns} FROM "{TABLE}" WHERE id > %s '
                    f"ORDER BY id LIMIT %s FOR SHARE), "
                    f'copied AS (INSERT INTO "{_NEW}" ({columns}) SELECT {columns} FROM rows '
                    f"ON CONFLICT DO NOTHING) SELECT max(id), count(*) FROM rows",
                    [after, batch],
                )
                last, count = cursor.fetchone()
            if not count:
                break
            after, copied = last, copied + count
            note(f"copied {copied:,} rows (up to id {after:,})")
            time.sleep(pause)
        # Each model's index, on its partition, without locking writes.
        for model_id in sorted(MODELS):
            build = hnsw_build_name(model_id)
            cursor.execute(
                "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)",
                [_quoted(build)],
            )
            row = cursor.fetchone()
            if row and row[0]:
                continue
            cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{build}"')  # a failed build's
            cursor.execute(f'SELECT count(*) FROM "{partition_name(model_id)}"')
            rows = int(cursor.fetchone()[0])
            memory = hnsw_build_memory(
                rows=rows, dim=model_spec(model_id).dim, cap=hnsw_build_memory_cap(cursor)
            )
            cursor.execute(
                "SELECT set_config('maintenance_work_mem', %s, false)", [f"{memory // 1024}kB"]
            )
            statement, params = _index_ddl(model_id=model_id, name=build, concurrently=True)
            cursor.execute(statement, params)
            note(f"built {model_id}'s index on its partition ({rows:,} rows)")
        # The swap, under the flat table's lock for a moment.
        while True:
            try:
                with conn.transaction():
                    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [lock_timeout])
                    cursor.execute(f'LOCK TABLE "{TABLE}" IN ACCESS EXCLUSIVE MODE')
                    cursor.execute(f'DROP TRIGGER "{_TRIGGER}" ON "{TABLE}"')
                    sequence_follow(cursor, sequence=_NEW_SEQUENCE)
                    _swap_online(cursor, constraints=constraints, indexes=indexes)
                    cursor.execute(f'DROP FUNCTION "{_MIRROR_FUNCTION}"()')
                break
            except psycopg.errors.LockNotAvailable:
                note("the table is busy: trying the swap again")
        cursor.execute("SELECT pg_advisory_unlock(hashtext('embedding table partition'))")
    note(f"{TABLE} is partitioned by model")
    return True


def _swap_online(cursor: Any, *, constraints: list[str], indexes: list[str]) -> None:
    from workers.indexes import hnsw_build_name, hnsw_index_name

    cursor.execute(f'DROP TABLE "{TABLE}"')
    cursor.execute(f'ALTER TABLE "{_NEW}" RENAME TO "{TABLE}"')
    cursor.execute(f'ALTER SEQUENCE "{_NEW_SEQUENCE}" RENAME TO "{SEQUENCE}"')
    cursor.execute(f'ALTER SEQUENCE "{SEQUENCE}" OWNED BY "{TABLE}".id')
    names = [TABLE + "_pkey"] + [c.split('"')[1] for c in constraints]
    for name in names:
        cursor.execute(
            f'ALTER TABLE "{TABLE}" RENAME CONSTRAINT '
            f"{_quoted(_temporary_name(name))} TO {_quoted(name)}"
        )
    for index in indexes:
        name = index.split()[2].strip('"')
        cursor.execute(f"ALTER INDEX {_quoted(_temporary_name(name))} RENAME TO {_quoted(name)}")
    for model_id in MODELS:
        cursor.execute(
            f"ALTER INDEX IF EXISTS {_quoted(hnsw_build_name(model_id))} "
            f"RENAME TO {_quoted(hnsw_index_name(model_id))}"
        )
