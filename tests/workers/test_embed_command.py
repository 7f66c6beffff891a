"""manage.py embed: synchronous runs with a summary, queuing, and clear errors."""

from __future__ import annotations

import io

import pytest
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command

from tests.factories import ImageFactory
from workers.models import EmbeddingJob, ImageEmbedding

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("embed", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_sync_embeds_and_summarises_failures_with_reasons(tiny_models) -> None:
    ImageFactory.create_batch(3, dataset=True)
    broken = ImageFactory(dataset=True, file=None)
    broken.file.save("broken.jpg", ContentFile(b"junk"), save=True)
    out = run("--model", CLIP, "--sync", "--missing", "--batch-size", "2")
    assert f"{CLIP}: embedded 3, skipped 0, failed 1" in out
    assert "1 x cannot identify image file" in out
    assert ImageEmbedding.objects.count() == 3

    again = run("--model", CLIP, "--sync", "--missing")
    assert "embedded 1, skipped 0, failed 1" not in again  # nothing new to do but the failed one
    assert ImageEmbedding.objects.count() == 3


def test_sync_without_missing_re_embeds_everything(tiny_models) -> None:
    ImageFactory.create_batch(2, dataset=True)
    run("--model", CLIP, "--sync", "--missing")
    out = run("--model", CLIP, "--sync")
    assert "embedded 2, skipped 0, failed 0" in out
    assert ImageEmbedding.objects.count() == 2


def test_queue_mode_marks_jobs_queued(tiny_models, django_capture_on_commit_callbacks) -> None:
    ImageFactory.create_batch(5, dataset=True)
    with django_capture_on_commit_callbacks() as callbacks:
        out = run("--model", CLIP, "--missing", "--batch-size", "2")
    assert "queued 3 batches" in out and len(callbacks) == 1
    assert EmbeddingJob.objects.filter(enqueued_at__isnull=False).count() == 5


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(CommandError, match="clip-vit-large-patch14"):
        run("--model", "clip-vit-huge", "--sync")


def test_model_not_enabled_says_how_to_enable_it() -> None:
    with pytest.raises(CommandError, match="not enabled"):
        run("--model", "align-base", "--sync")


def test_missing_weights_name_the_model(settings, tmp_path) -> None:
    settings.EMBEDDING_MODEL_SOURCES = {CLIP: str(tmp_path / "nowhere")}
    ImageFactory(dataset=True)
    with pytest.raises(CommandError, match=f"{CLIP}.*EMBEDDING_MODEL_SOURCES"):
        run("--model", CLIP, "--sync")
