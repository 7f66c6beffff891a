"""The query encoder's precision: int8 by default on the CPU where the int8 check against
float32 passes for the installed weights, float32 where it fails, and the choice in the admin.

The weights are a tiny CLIP (tests/tiny_models.py) loaded through the product's loader; the
check is the real one (ONNX export, dynamic int8, cosine on the probe set), and a failing check
is forced by raising the bar it is judged against, as a worse-quantising model would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from django.urls import reverse

from encoders import clear_encoder_cache
from encoders import onnx as onnx_backend
from encoders.onnx_export import INT8_PROBE
from search import query_encoder
from tests.factories import UserFactory
from tests.tiny_models import build_tiny_clip
from workers.services import embedding_model_enable

CLIP = "clip-vit-base-patch32"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("precision") / "clip")


@pytest.fixture
def cpu_default(settings, clip_dir: Path):
    """The settings a CPU site starts with: SEARCH_QUERY_DTYPE and EMBEDDING_DTYPE unset."""
    settings.EMBEDDING_MODEL_SOURCES = {CLIP: str(clip_dir)}
    settings.EMBEDDING_DEVICE = "cpu"
    settings.EMBEDDING_BACKEND = "auto"
    settings.EMBEDDING_DTYPE = ""
    settings.SEARCH_QUERY_DTYPE = ""
    fresh()
    yield settings
    fresh()


def fresh() -> None:
    clear_encoder_cache()
    query_encoder.load_failures_forget()
    query_encoder._cached_text_vector.cache_clear()


def test_int8_is_the_default_on_the_cpu_when_its_check_passes(cpu_default):
    encoder = query_encoder.query_encoder_for(CLIP)

    assert encoder.backend == "onnx"
    assert encoder.quantization == "int8-dynamic"
    # The check is recorded beside the export it judges, on today's probe set.
    recorded = json.loads((encoder.export_dir / "meta.json").read_text())["int8"]
    assert recorded["probe"] == INT8_PROBE
    assert recorded["min_cosine"] >= onnx_backend.MIN_INT8_COSINE
    assert encoder.int8_min_cosine == recorded["min_cosine"]
    precision = query_encoder.query_precision(CLIP)
    assert precision is not None
    assert (precision.dtype, precision.backend) == ("int8", "onnx")
    assert "passed" in precision.reason
    # Searches really encode with it: the vector is int8's, close to float32's but not equal.
    got = query_encoder.text_embedding(model_id=CLIP, text="a dog on the beach")
    fp32 = query_encoder.encoder_for(CLIP, dtype="float32").embed_texts(["a dog on the beach"])[0]
    assert float(got @ fp32) >= onnx_backend.MIN_INT8_COSINE
    assert np.abs(got - fp32).max() > 1e-6


def test_float32_when_the_int8_check_fails(cpu_default, monkeypatch):
    # A bar no quantised model reaches: what weights that quantise badly would meet.
    monkeypatch.setattr(onnx_backend, "MIN_INT8_COSINE", 1.01)

    with pytest.warns(RuntimeWarning, match="below the cosine 1.01 rule"):
        encoder = query_encoder.query_encoder_for(CLIP)

    assert encoder.quantization is None
    got = query_encoder.text_embedding(model_id=CLIP, text="a dog on the beach")
    fp32 = query_encoder.encoder_for(CLIP, dtype="float32").embed_texts(["a dog on the beach"])[0]
    np.testing.assert_allclose(got, fp32, atol=1e-6)
    precision = query_encoder.query_precision(CLIP)
    assert precision is not None
    assert precision.dtype == "float32"
    assert "failed" in precision.reason and "1.01" in precision.reason


def test_float32_when_asked(cpu_default):
    cpu_default.SEARCH_QUERY_DTYPE = "float32"

    encoder = query_encoder.query_encoder_for(CLIP)

    assert encoder.quantization is None
    precision = query_encoder.query_precision(CLIP)
    assert precision is not None
    assert precision.dtype == "float32"
    assert precision.reason == "SEARCH_QUERY_DTYPE=float32"


@pytest.mark.django_db
def test_the_admin_shows_the_query_encoders_precision(cpu_default, client):
    embedding_model_enable(model_id=CLIP)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    changelist = reverse("admin:workers_embeddingmodel_changelist")

    before = client.get(changelist).content.decode()
    query_encoder.query_encoder_for(CLIP)
    after = client.get(changelist).content.decode()

    assert "not loaded in this process yet" in before
    assert "int8 (onnx): int8 check: lowest cosine to float32 0.99" in after
