"""The online move of the flat embedding table to a partition per model
(``manage.py embedding_table_partition``, docs/partition-by-model.md): for a table too big for
workers 0005's in-place move, which would lock uploads and searches out for the whole copy."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import psycopg

from encoders.registry import MODELS, model_spec
from workers.indexes import (
    hnsw_build_memory,
    hnsw_build_memory_cap,
    hnsw_build_name,
    hnsw_index_name,
    index_ddl,
    own_connection,
)
from workers.partitions import (
    COLUMNS,
    NEW_SEQUENCE,
    NEW_TABLE,
    SEQUENCE,
    TABLE,
    PartitionMoveRefused,
    flat_layout,
    partition_name,
    quoted,
    sequence_follow,
    table_create_partitioned,
    table_is_partitioned,
)

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
                DELETE FROM "{NEW_TABLE}" WHERE id = OLD.id AND model_id = OLD.model_id;
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                DELETE FROM "{NEW_TABLE}" WHERE id = NEW.id AND model_id = NEW.model_id;
                INSERT INTO "{NEW_TABLE}" ({columns}) VALUES ({values});
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

    1. The partitioned copy (``NEW_TABLE``): a partition per registered model and per model in the
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

    def note(text: str) -> None:
        if say is not None:
            say(text)

    with own_connection(using) as conn, conn.cursor() as own_cursor:
        cursor: Any = own_cursor  # its rows are read as the statements' shapes say
        if table_is_partitioned(cursor):
            return False
        cursor.execute("SELECT pg_try_advisory_lock(hashtext('embedding table partition'))")
        if not cursor.fetchone()[0]:
            raise PartitionMoveRefused("another embedding_table_partition is running")
        constraints, indexes = flat_layout(cursor)
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [quoted(NEW_TABLE)])
        if not cursor.fetchone()[0]:
            cursor.execute(f'SELECT DISTINCT model_id FROM "{TABLE}"')
            model_ids = sorted(set(MODELS) | {row[0] for row in cursor.fetchall()})
            with conn.transaction():
                table_create_partitioned(
                    cursor, name=NEW_TABLE, sequence=NEW_SEQUENCE, model_ids=model_ids
                )
                cursor.execute(
                    f'ALTER TABLE "{NEW_TABLE}" ADD CONSTRAINT '
                    f'"{_temporary_name(TABLE + "_pkey")}" PRIMARY KEY (id, model_id)'
                )
                for constraint in constraints:
                    name = constraint.split('"')[1]
                    cursor.execute(
                        f'ALTER TABLE "{NEW_TABLE}" '
                        + constraint.replace(quoted(name), quoted(_temporary_name(name)), 1)
                    )
                for index in indexes:
                    # "CREATE INDEX name ON [schema.]table USING ...", as pg_get_indexdef
                    # writes it: the copy's temporary name, on the copy.
                    name = index.split()[2]
                    renamed = index.replace(f" {name} ", f" {quoted(_temporary_name(name))} ", 1)
                    cursor.execute(
                        re.sub(
                            rf' ON (\S+\.)?"?{TABLE}"? USING ',
                            lambda m: f' ON {m.group(1) or ""}"{NEW_TABLE}" USING ',
                            renamed,
                            count=1,
                        )
                    )
            note(f"created {NEW_TABLE} with partitions for {', '.join(model_ids)}")
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
                    f'copied AS (INSERT INTO "{NEW_TABLE}" ({columns}) SELECT {columns} FROM rows '
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
                [quoted(build)],
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
            statement, params = index_ddl(model_id=model_id, name=build, concurrently=True)
            cursor.execute(statement, params)
            note(f"built {model_id}'s index on its partition ({rows:,} rows)")
        # The swap, under the flat table's lock for a moment.
        while True:
            try:
                with conn.transaction():
                    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [lock_timeout])
                    cursor.execute(f'LOCK TABLE "{TABLE}" IN ACCESS EXCLUSIVE MODE')
                    cursor.execute(f'DROP TRIGGER "{_TRIGGER}" ON "{TABLE}"')
                    sequence_follow(cursor, sequence=NEW_SEQUENCE)
                    _swap_online(cursor, constraints=constraints, indexes=indexes)
                    cursor.execute(f'DROP FUNCTION "{_MIRROR_FUNCTION}"()')
                break
            except psycopg.errors.LockNotAvailable:
                note("the table is busy: trying the swap again")
        cursor.execute("SELECT pg_advisory_unlock(hashtext('embedding table partition'))")
    note(f"{TABLE} is partitioned by model")
    return True


def _swap_online(cursor: Any, *, constraints: list[str], indexes: list[str]) -> None:
    cursor.execute(f'DROP TABLE "{TABLE}"')
    cursor.execute(f'ALTER TABLE "{NEW_TABLE}" RENAME TO "{TABLE}"')
    cursor.execute(f'ALTER SEQUENCE "{NEW_SEQUENCE}" RENAME TO "{SEQUENCE}"')
    cursor.execute(f'ALTER SEQUENCE "{SEQUENCE}" OWNED BY "{TABLE}".id')
    names = [TABLE + "_pkey"] + [c.split('"')[1] for c in constraints]
    for name in names:
        cursor.execute(
            f'ALTER TABLE "{TABLE}" RENAME CONSTRAINT '
            f"{quoted(_temporary_name(name))} TO {quoted(name)}"
        )
    for index in indexes:
        name = index.split()[2].strip('"')
        cursor.execute(f"ALTER INDEX {quoted(_temporary_name(name))} RENAME TO {quoted(name)}")
    for model_id in MODELS:
        cursor.execute(
            f"ALTER INDEX IF EXISTS {quoted(hnsw_build_name(model_id))} "
            f"RENAME TO {quoted(hnsw_index_name(model_id))}"
        )
