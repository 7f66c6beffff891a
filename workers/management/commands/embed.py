"""manage.py embed --model M [--missing] [--batch-size N] [--sync] [--retry-failed]"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from encoders import EncoderError
from gallery.models import Image
from workers import pipeline, queueing
from workers.cli import model_argument_add, model_option
from workers.encoder_cache import encoder_for
from workers.models import ImageEmbedding
from workers.selectors import embedding_model_enable_hint, embedding_models_enabled


class Command(BaseCommand):
    help = (
        "Embed images with a model. Without --sync, queue batches for the Celery workers; with "
        "--sync, embed here with a progress bar. --missing embeds only images without an "
        "embedding for the model; without it every image is (re-)embedded."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        model_argument_add(parser)
        parser.add_argument("--missing", action="store_true", help="only images lacking one")
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--sync", action="store_true", help="embed in this process")
        parser.add_argument(
            "--retry-failed", action="store_true", help="also retry images that failed before"
        )

    def handle(self, *args: object, **options: object) -> None:
        model_id = model_option(options)
        if model_id not in embedding_models_enabled():
            raise CommandError(
                f"{model_id!r} is not enabled; {embedding_model_enable_hint(model_id=model_id)}, "
                f"then run this again"
            )
        batch_size = cast("int | None", options["batch_size"])
        if options["sync"]:
            self._embed_here(model_id, bool(options["missing"]), batch_size)
        else:
            self._enqueue(model_id, bool(options["missing"]), batch_size, options)

    def _enqueue(
        self, model_id: str, missing: bool, batch_size: int | None, options: dict[str, Any]
    ) -> None:
        if not missing:
            raise CommandError(
                "re-embedding every image runs in this process: add --sync (or --missing to "
                "queue only the images lacking an embedding)"
            )
        batches = queueing.embeddings_enqueue_missing(
            model_id=model_id,
            batch_size=batch_size,
            # Asked for by a person: queue every pending image now, even if queued before.
            requeue_after=timedelta(0),
            retry_failed=bool(options["retry_failed"]),
        )
        self.stdout.write(f"queued {batches} batches for {model_id}")

    def _embed_here(self, model_id: str, missing: bool, batch_size: int | None) -> None:
        try:
            encoder = encoder_for(model_id)
        except EncoderError as exc:
            raise CommandError(str(exc)) from exc
        batch_size = batch_size or 32
        wanted = Image.objects.order_by("id").values_list("id", flat=True)
        if missing:
            wanted = wanted.exclude(
                pk__in=ImageEmbedding.objects.filter(model_id=model_id).values("image_id")
            )
        ids: list[int] = list(wanted)
        total = pipeline.BatchResult()
        chunk = batch_size * 8  # several model batches per call keeps decoding ahead
        with tqdm(total=len(ids), unit="img", desc=model_id) as bar:
            for start in range(0, len(ids), chunk):
                part = ids[start : start + chunk]
                total.add(
                    pipeline.images_embed_batch(
                        model_id=model_id,
                        image_ids=part,
                        encoder=encoder,
                        batch_size=batch_size,
                        replace=not missing,
                    )
                )
                bar.update(len(part))
        self.stdout.write(
            f"{model_id}: embedded {total.embedded}, skipped {total.skipped}, "
            f"failed {len(total.failed)}"
        )
        reasons = Counter(total.failed.values())
        for reason, count in reasons.most_common(10):
            self.stdout.write(f"  {count} x {reason}")
