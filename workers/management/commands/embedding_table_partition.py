"""manage.py embedding_table_partition [--batch N] [--pause SECONDS] [--lock-timeout 5s]"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers.partition_move import table_partition_online
from workers.partitions import PartitionMoveRefused


class Command(BaseCommand):
    help = (
        "Move the embedding table to a partition per model online (docs/partition-by-model.md): "
        "a partitioned copy kept current by a trigger, the rows copied in batches, each model's "
        "HNSW index built CONCURRENTLY on its partition, then a swap of a moment under the "
        "table's lock. Uploads and searches go on throughout. For a table above "
        "EMBEDDING_PARTITION_IN_PLACE_MAX_ROWS, which migrate does not move in place; run "
        "migrate afterwards. Safe to run again after a failure."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch", type=int, default=10_000, help="rows copied a transaction")
        parser.add_argument(
            "--lock-timeout", default="5s", help="how long the swap waits for the table's lock "
            "before trying again (PostgreSQL units)",
        )  # fmt: skip
        parser.add_argument(
            "--pause", type=float, default=0.0,
            help="seconds to wait between batches, to spare a busy database",
        )  # fmt: skip
        parser.add_argument("--database", default="default")

    def handle(self, *args: object, **options: object) -> None:
        if settings.DATABASE_PGBOUNCER == "transaction":
            # Session advisory lock, statements outside a transaction (CREATE INDEX
            # CONCURRENTLY): a transaction pooler would spread them over server connections.
            raise CommandError(
                "DATABASE_PGBOUNCER=transaction: run this with DATABASE_URL straight to "
                "PostgreSQL and DATABASE_PGBOUNCER unset."
            )
        try:
            moved = table_partition_online(
                using=str(options["database"]),
                batch=int(options["batch"]),  # type: ignore[call-overload]
                pause=float(options["pause"]),  # type: ignore[arg-type]
                lock_timeout=str(options["lock_timeout"]),
                say=lambda text: self.stdout.write(text),
            )
        except PartitionMoveRefused as exc:
            raise CommandError(str(exc)) from exc
        if not moved:
            self.stdout.write("the embedding table is already partitioned: nothing to do")
