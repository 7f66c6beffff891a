"""evaluate's synthetic check of negative terms (search/evaluation/negatives.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.management import call_command

from search.evaluation.negatives import negative_check
from tests.factories import evaluate

CLIP = "clip-vit-base-patch32"


def test_excluding_a_caption_pushes_its_image_down() -> None:
    rng = np.random.default_rng(1)
    images = rng.normal(size=(50, 64))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    # Each image's caption is near it: a negative built from one pushes that image away.
    captions = images + 0.3 * rng.normal(size=images.shape)
    captions /= np.linalg.norm(captions, axis=1, keepdims=True)
    check = negative_check(
        queries=captions, query_image_rows=np.arange(50), images=images, weight=0.5, pairs=200
    )
    assert check.pairs == 200
    assert check.demoted / check.pairs > 0.9
    assert check.negative_median_after > check.negative_median_before
    assert check.own_median_after <= check.own_median_before + 1
    # No weight, no effect: nothing falls.
    none = negative_check(
        queries=captions, query_image_rows=np.arange(50), images=images, weight=0.0, pairs=200
    )
    assert none.demoted == 0


@pytest.mark.django_db
def test_evaluate_reports_the_negative_check(tiny_models, flickr_test_split) -> None:
    call_command("embed", "--model", CLIP, "--sync", "--missing", stdout=io.StringIO())
    out = evaluate("--model", CLIP, "--no-save")
    assert f"{CLIP}: negative terms (synthetic:" in out
    assert "w=0.5" in out
