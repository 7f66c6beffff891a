"""Each web worker loads the enabled search models before it takes requests: also a model with
no embeddings yet (the first query after an import must not pay for the load), never one the
workers found unloadable."""

from __future__ import annotations

import logging

import pytest

from config import gunicorn
from workers.services import embedding_model_enable, embedding_model_mark_unavailable

pytestmark = pytest.mark.django_db
CLIP, ALIGN, SIGLIP = "clip-vit-base-patch32", "align-base", "siglip-base-patch16-224"
LARGE = "clip-vit-large-patch14"  # no weights here: a hub id that is not in the cache


class Worker:
    log = logging.getLogger("gunicorn-test")


def test_warm_up_loads_every_enabled_available_model_default_first(
    tiny_models, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    with django_capture_on_commit_callbacks():  # no backfill sweep sent
        embedding_model_enable(model_id=ALIGN)
        embedding_model_enable(model_id=SIGLIP)
        embedding_model_enable(model_id=LARGE)
    embedding_model_mark_unavailable(model_id=SIGLIP, reason="weights missing")
    warmed: list[str] = []
    monkeypatch.setattr(
        "search.query_encoder.warm_up", lambda *, model_ids: warmed.extend(model_ids)
    )

    gunicorn.post_worker_init(Worker())

    # Default first; none has an embedding yet. Not warmed: SigLIP (marked unloadable) and the
    # large CLIP, whose weights would first have to be downloaded.
    assert warmed == [CLIP, ALIGN]


def test_weights_on_disk_tells_local_and_cached_from_a_download(tiny_models, tmp_path) -> None:
    from encoders import weights_on_disk

    assert weights_on_disk(CLIP, str(tiny_models[CLIP]))
    assert not weights_on_disk(CLIP, str(tmp_path / "nothing-here"))
    assert not weights_on_disk(LARGE)  # openai/clip-vit-large-patch14, never downloaded here


def test_warm_up_really_loads_the_model(tiny_models) -> None:
    from encoders import clear_encoder_cache, loaded_model_ids

    clear_encoder_cache()
    gunicorn.post_worker_init(Worker())
    assert loaded_model_ids() == {CLIP}


def test_warm_up_runs_one_search_through_the_whole_stack(tiny_models, caplog) -> None:
    """The worker's first real search must not pay for the URL resolver, the API schema, the
    ORM's first queries or the index pages: one search runs before requests are taken."""
    import numpy as np
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.factories import ImageFactory
    from workers.services import embeddings_store

    image = ImageFactory(dataset=True)
    embeddings_store(model_id=CLIP, image_ids=[image.pk], vectors=np.ones((1, 512)))
    with (
        caplog.at_level(logging.INFO, logger="gunicorn-test"),
        CaptureQueriesContext(connection) as queries,
    ):
        gunicorn.post_worker_init(Worker())
    sql = [q["sql"] for q in queries]
    assert any("<=>" in s and "search_imageembedding" in s for s in sql), [s[:120] for s in sql]
    assert "request warm-up answered" not in caplog.text and "failed" not in caplog.text
