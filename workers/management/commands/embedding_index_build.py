"""manage.py embedding_index_build (--model M | --all) [--rebuild] [--poll SECONDS]"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from encoders import EncoderError, model_spec
from encoders.registry import MODELS
from workers.indexes import (
    IndexBuildProgress,
    IndexBuildRunning,
    embedding_index_build,
    embedding_index_states,
)


class Command(BaseCommand):
    help = (
        "Build a model's HNSW search index online (CREATE INDEX CONCURRENTLY: uploads and "
        "searches go on), printing its progress, then swap it in for the old one. Without "
        "--rebuild a model whose index is current only has its older indexes dropped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--model", help="a registered model id")
        which.add_argument(
            "--all", action="store_true", help="every registered model that needs a build"
        )
        parser.add_argument(
            "--rebuild", action="store_true", help="build again even if the index is current"
        )
        parser.add_argument(
            "--poll", type=float, default=5.0, help="seconds between progress lines"
        )
        parser.add_argument("--database", default="default")

    def handle(self, *args: object, **options: object) -> None:
        if settings.DATABASE_PGBOUNCER == "transaction":
            # A build sets maintenance_work_mem for its session, holds a session advisory lock
            # and runs outside a transaction: a transaction pooler would spread those over
            # server connections, so the memory setting is lost and the lock may be left held.
            raise CommandError(
                "DATABASE_PGBOUNCER=transaction: this connection goes through a transaction "
                "pooler, which an index build cannot use. Run the build with DATABASE_URL "
                "straight to PostgreSQL and DATABASE_PGBOUNCER unset (with docker compose: "
                "`docker compose exec -e DATABASE_PGBOUNCER= worker-cpu python manage.py "
                "embedding_index_build ...`, a worker's DATABASE_URL is direct), or queue it "
                "from the admin's Embedding models page."
            )
        using = str(options["database"])
        rebuild = bool(options["rebuild"])
        if options["all"]:
            model_ids = [
                state.model_id
                for state in embedding_index_states(using=using, model_ids=sorted(MODELS))
                if rebuild or state.status != "ready" or state.older
            ]
        else:
            model_id = str(options["model"])
            try:
                model_spec(model_id)
            except EncoderError as exc:
                raise CommandError(str(exc)) from exc
            model_ids = [model_id]
        poll = float(options["poll"])  # type: ignore[arg-type]
        for model_id in model_ids:
            self._build(model_id, using=using, rebuild=rebuild, poll=poll)
        if not model_ids:
            self.stdout.write("every model's search index is current")

    def _build(self, model_id: str, *, using: str, rebuild: bool, poll: float) -> None:
        def progress(reading: IndexBuildProgress) -> None:
            self.stdout.write(f"{model_id}: {reading}")
            self.stdout.flush()

        self.stdout.write(f"{model_id}: building its search index online")
        try:
            result = embedding_index_build(
                model_id=model_id, using=using, rebuild=rebuild, on_progress=progress,
                poll_seconds=poll,
            )  # fmt: skip
        except IndexBuildRunning as exc:
            raise CommandError(exc.message) from exc
        dropped = f"; dropped {', '.join(result.dropped)}" if result.dropped else ""
        if result.built:
            self.stdout.write(
                f"{model_id}: index built over {result.rows:,} embeddings in "
                f"{result.seconds:.1f} s (maintenance_work_mem "
                f"{result.maintenance_work_mem / 2**20:,.0f}MB) and swapped in{dropped}"
            )
        else:
            self.stdout.write(f"{model_id}: index already current{dropped}")
