"""The optional int8 CPU path: dynamically quantised Linear layers (torch) or MatMuls (ONNX)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoders import EncoderError, clear_encoder_cache, load_encoder
from tests.tiny_models import build_tiny_clip

MODEL_ID = "clip-vit-base-patch32"
TEXTS = ["a photo of the cat", "a red car on the beach", "dog", "blue tree"]

# Lowest cosine between int8 and float32 embeddings of the same inputs. Measured on the tiny
# model (minimum over the inputs here): images 0.9998, texts 0.9993; asserted with margin. The
# full-size ViT-B/32 figures come from bench/embed_throughput.py (see bench/README.md).
MIN_COSINE = 0.998


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(autouse=True)
def fresh_encoder_cache():
    clear_encoder_cache()
    yield
    clear_encoder_cache()


def photo_like_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    images = []
    for width, height in [(32, 32), (48, 40), (20, 64), (64, 48)]:
        y, x = np.mgrid[0:height, 0:width]
        gradient = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
        pixels = np.clip(gradient + rng.normal(0, 25, gradient.shape), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels, "RGB"))
    return images


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize(("method", "inputs"), [("embed_images", None), ("embed_texts", TEXTS)])
def test_int8_embeddings_stay_close_to_float32(tiny_clip, method, inputs, backend):
    inputs = inputs or photo_like_images()
    full = load_encoder(MODEL_ID, source=str(tiny_clip), device="cpu", backend=backend)
    int8 = load_encoder(
        MODEL_ID, source=str(tiny_clip), device="cpu", dtype="int8", backend=backend
    )

    expected = getattr(full, method)(inputs)
    got = getattr(int8, method)(inputs)

    assert int8 is not full
    assert int8.backend == full.backend == backend
    assert int8.quantization == "int8-dynamic"
    assert got.dtype == np.float32
    assert got.shape == expected.shape == (len(inputs), int8.dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(got * expected, axis=1)
    assert cosines.min() > MIN_COSINE
    # The int8 model really computed something else (the bound above is not trivially met).
    assert np.abs(got - expected).max() > 1e-6


def test_int8_without_a_device_runs_on_cpu_even_when_a_gpu_exists(tiny_clip, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    encoder = load_encoder(MODEL_ID, source=str(tiny_clip), dtype="qint8")

    assert encoder.device == "cpu"
    assert encoder.embed_images(photo_like_images()[:1]).shape == (1, encoder.dim)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_int8_on_a_gpu_is_refused_before_loading(tmp_path, monkeypatch, device):
    # Pretend the GPU is there, so the refusal is about int8 and not about a missing device;
    # the source does not exist, so reaching the loader would raise WeightsUnavailableError.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)

    with pytest.raises(EncoderError, match="int8.*CPU only") as raised:
        load_encoder(MODEL_ID, source=str(tmp_path / "missing"), device=device, dtype="int8")

    assert f"{device!r}" in str(raised.value)
