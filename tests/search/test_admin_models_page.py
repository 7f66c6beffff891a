"""The embedding-models admin page as an operations view: per model done / pending / failed /
blocked with links to the images behind the counts, the backfill's rate and time left, and each
model's latest evaluation runs beside the published figures, read in one query."""

from __future__ import annotations

import re
from datetime import timedelta

import numpy as np
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from search.models import EvaluationRun
from search.selectors import evaluation_runs_latest
from tests.factories import ImageFactory, UserFactory
from workers.models import EmbeddingJob
from workers.services import embedding_model_enable, embeddings_store

pytestmark = pytest.mark.django_db
CLIP, ALIGN = "clip-vit-base-patch32", "align-base"
CHANGELIST = reverse("admin:workers_embeddingmodel_changelist")


@pytest.fixture
def admin(client: Client) -> Client:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def run(models: str, r1: float, days_ago: int, **fields) -> EvaluationRun:
    values = {
        "fusion": "", "split": "test", "gallery": "split", "n_images": 1000, "n_queries": 5000,
        "t2i_r1": r1, "t2i_r5": r1 + 20, "t2i_r10": r1 + 30, "i2t_r1": 0, "i2t_r5": 0,
        "i2t_r10": 0, "duration_seconds": 1.0,
    }  # fmt: skip
    created = EvaluationRun.objects.create(models=models, **{**values, **fields})
    # created_at is auto_now_add: set the date afterwards.
    EvaluationRun.objects.filter(pk=created.pk).update(
        created_at=timezone.now() - timedelta(days=days_ago)
    )
    return created


def section(response) -> str:
    content = response.content.decode()
    start = content.index('id="model-evaluations"')
    return content[start : content.index("</table>", start)]


def test_latest_runs_sit_beside_the_published_figures(admin: Client) -> None:
    embedding_model_enable(model_id=ALIGN)
    for days_ago, r1 in ((40, 50.5), (30, 55.5), (20, 57.5), (10, 58.2)):
        run(CLIP, r1, days_ago)
    run(ALIGN, 70.4, 5, split="val")
    run(f"{CLIP},{ALIGN}", 80.0, 1, fusion="rrf")  # a fusion is no single model's run

    table = section(admin.get(CHANGELIST))
    # Models in id order: align-base, then clip-vit-base-patch32.
    align_rows, clip_rows = table[: table.index(CLIP)], table[table.index(CLIP) :]
    # CLIP's published figure, and its three newest runs (the oldest is on the runs page).
    assert "58.8 / 83.6 / 90.0" in clip_rows
    assert "open_clip" in clip_rows
    assert re.findall(r"\d+\.\d / \d+\.\d / \d+\.\d", clip_rows)[1:] == [
        "58.2 / 78.2 / 88.2", "57.5 / 77.5 / 87.5", "55.5 / 75.5 / 85.5",
    ]  # fmt: skip
    assert "50.5" not in clip_rows
    assert "-0.6" in clip_rows  # 58.2 against the published 58.8
    assert "test / split" in clip_rows and "5000" in clip_rows and "1000" in clip_rows
    runs_link = reverse("admin:search_evaluationrun_changelist") + f"?models={CLIP}"
    assert f'<a href="{runs_link}">{CLIP}</a>' in table
    # ALIGN's weights have no published figure; its run is shown with its split.
    assert "none for these weights" in align_rows
    assert "70.4 / 90.4 / 100.4" in align_rows and "val / split" in align_rows
    assert "80.0" not in table


def test_a_model_without_runs_says_how_to_get_one(admin: Client) -> None:
    table = section(admin.get(CHANGELIST))
    assert f"manage.py evaluate --model {CLIP}" in table
    assert "58.8 / 83.6 / 90.0" in table


def test_one_query_reads_the_runs_of_every_model(admin: Client) -> None:
    embedding_model_enable(model_id=ALIGN)
    run(CLIP, 58.0, 2)
    run(ALIGN, 70.0, 1)
    with CaptureQueriesContext(connection) as queries:
        assert admin.get(CHANGELIST).status_code == 200
    reads = [q["sql"] for q in queries if "search_evaluationrun" in q["sql"]]
    assert len(reads) == 1

    latest = evaluation_runs_latest(model_ids=[CLIP, ALIGN, "siglip-base-patch16-224"])
    assert {model: [r.t2i_r1 for r in runs] for model, runs in latest.items()} == {
        CLIP: [58.0],
        ALIGN: [70.0],
    }


def test_counts_link_to_the_images_behind_them_and_backfill_shows_its_rate(
    admin: Client,
) -> None:
    images = ImageFactory.create_batch(4, dataset=True)
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images[:2]], vectors=np.ones((2, 512)))
    EmbeddingJob.objects.create(image=images[2], model_id=CLIP, status="failed", error="bad")
    content = admin.get(CHANGELIST).content.decode()
    images_list = reverse("admin:gallery_image_changelist")
    assert f'<a href="{images_list}?embedding={CLIP}%3Adone">2</a>' in content
    assert f'<a href="{images_list}?embedding={CLIP}%3Afailed">1</a>' in content
    # Two stored in the last ten minutes, one image left: 0.2 a minute, about 5 minutes.
    assert "50.0%, 0.2 images/min, about 5 min left" in content

    failed = admin.get(images_list, {"embedding": f"{CLIP}:failed"})
    assert [i.pk for i in failed.context["cl"].result_list] == [images[2].pk]


def test_a_model_that_cannot_load_shows_why_instead_of_time_left(admin: Client) -> None:
    from workers.services import embedding_model_mark_unavailable

    images = ImageFactory.create_batch(4, dataset=True)
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images[:3]], vectors=np.ones((3, 512)))
    embedding_model_mark_unavailable(model_id=CLIP, reason="no weights at /models/clip")
    content = admin.get(CHANGELIST).content.decode()
    assert "75.0%, model unavailable: no weights at /models/clip" in content
    assert "left" not in content.split("75.0%")[1].split("</td>")[0]


def test_an_image_whose_re_embed_waits_is_not_counted_done(admin: Client) -> None:
    from workers.selectors import embedding_progress
    from workers.services import embedding_jobs_request

    images = ImageFactory.create_batch(2, dataset=True)
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=np.ones((2, 512)))
    # What staff's "re-embed" asks: a pending job beside the vector the image keeps.
    assert embedding_jobs_request(model_id=CLIP, image_ids=[images[0].pk]) == 1
    progress = embedding_progress(model_id=CLIP)
    assert (progress.done, progress.pending, progress.percent) == (1, 1, 50.0)
    content = admin.get(CHANGELIST).content.decode()
    images_list = reverse("admin:gallery_image_changelist")
    assert f'<a href="{images_list}?embedding={CLIP}%3Adone">1</a>' in content
    done = admin.get(images_list, {"embedding": f"{CLIP}:done"})
    assert [i.pk for i in done.context["cl"].result_list] == [images[1].pk]
