"""Encoders: tiny CLIP/ALIGN/SigLIP/SigLIP 2 checkpoints loaded through the production loader.

On the CPU the loader's default backend is ONNX Runtime, so these compare that path with a
direct transformers call; test_onnx.py compares the two backends with each other.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from encoders import (
    MODELS,
    Encoder,
    EncoderError,
    ImageDecodeError,
    UnknownModelError,
    WeightsUnavailableError,
    clear_encoder_cache,
    load_encoder,
    model_spec,
    open_image,
)
from tests.tiny_models import (
    build_tiny_align,
    build_tiny_clip,
    build_tiny_siglip,
    build_tiny_siglip2,
    build_tiny_siglip2_fixed,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# family -> (registered model id, tiny model builder, transformers class for the direct call)
FAMILIES = {
    "clip": ("clip-vit-base-patch32", build_tiny_clip, transformers.CLIPModel),
    "align": ("align-base", build_tiny_align, transformers.AlignModel),
    "siglip": ("siglip-base-patch16-224", build_tiny_siglip, transformers.SiglipModel),
    "siglip2": ("siglip2-base-patch16-256", build_tiny_siglip2, transformers.Siglip2Model),
}

TEXTS = ["a photo of the cat", "a red car on the beach", "dog", ""]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: build(root / family) for family, (_, build, _) in FAMILIES.items()}


@pytest.fixture(autouse=True)
def fresh_encoder_cache():
    clear_encoder_cache()
    yield
    clear_encoder_cache()


def noise_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(32, 32), (48, 40), (20, 64)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in sizes
    ]


def normalised(features: torch.Tensor) -> np.ndarray:
    array = features.float().numpy()
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def direct_embeddings(family: str, directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """Embed noise_images() and TEXTS by calling transformers directly, as its docs show."""
    _, _, model_class = FAMILIES[family]
    model = model_class.from_pretrained(directory).eval()
    processor = transformers.AutoProcessor.from_pretrained(directory)
    padding = "max_length" if family.startswith("siglip") else True
    # SigLIP 2's processor also returns each image's patch mask and patch grid.
    image_inputs = processor(images=noise_images(), return_tensors="pt")
    text_inputs = processor(text=TEXTS, padding=padding, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        images = model.get_image_features(**image_inputs)
        texts = model.get_text_features(**text_inputs)
    return normalised(images.pooler_output), normalised(texts.pooler_output)


@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_match_a_direct_transformers_call(family, tiny_dirs):
    model_id = FAMILIES[family][0]
    encoder = load_encoder(model_id, source=str(tiny_dirs[family]), device="cpu")
    expected_images, expected_texts = direct_embeddings(family, tiny_dirs[family])

    images = encoder.embed_images(noise_images())
    texts = encoder.embed_texts(TEXTS)

    assert isinstance(encoder, Encoder)
    assert encoder.model_id == model_id
    assert encoder.dim == expected_images.shape[1] == expected_texts.shape[1]
    for got, expected in ((images, expected_images), (texts, expected_texts)):
        assert got.dtype == np.float32
        assert got.shape == expected.shape
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert np.abs(got - expected).max() <= 1e-5
    # Different inputs give different vectors (the comparison above is not trivially true).
    assert images[0] @ images[1] < 0.999
    assert texts[0] @ texts[1] < 0.999


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_batches_give_the_same_embeddings(family, tiny_dirs):
    encoder = load_encoder(FAMILIES[family][0], source=str(tiny_dirs[family]), device="cpu")

    whole = encoder.embed_images(noise_images())
    chunked = encoder.embed_images(noise_images(), max_batch=2)

    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    np.testing.assert_allclose(
        encoder.embed_texts(TEXTS, max_batch=3), encoder.embed_texts(TEXTS), atol=1e-5
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_texts_longer_than_the_context_are_truncated(family, tiny_dirs):
    encoder = load_encoder(FAMILIES[family][0], source=str(tiny_dirs[family]), device="cpu")
    prefix = "a photo of the cat " * 60  # ~240 tokens: far past CLIP's 77 and SigLIP's 64
    long_texts = [prefix + "on the beach", prefix + "under a red tree"]

    embeddings = encoder.embed_texts(long_texts)

    assert embeddings.shape == (2, encoder.dim)
    # Only the shared prefix fits in the context, so the different endings are cut off.
    np.testing.assert_allclose(embeddings[0], embeddings[1], atol=1e-6)
    assert embeddings[0] @ encoder.embed_texts(["a red car"])[0] < 0.999


CASED, LOWER = "A Red CAR on the Beach", "a red car on the beach"


@pytest.mark.parametrize("family", FAMILIES)
def test_siglip_families_read_texts_lowercased_as_trained_and_the_others_as_given(
    family, tiny_dirs
):
    encoder = load_encoder(FAMILIES[family][0], source=str(tiny_dirs[family]), device="cpu")
    lowercased = family.startswith("siglip")

    assert encoder.texts_prepared([CASED]) == [LOWER if lowercased else CASED]
    if lowercased:
        np.testing.assert_array_equal(
            encoder.text_inputs([CASED])["input_ids"], encoder.text_inputs([LOWER])["input_ids"]
        )


def test_siglip2_as_published_lowercases_what_its_gemma_tokenizer_keeps(tmp_path):
    # siglip2-base-patch16-256 ships as a SiglipModel with Gemma's tokenizer, which keeps case:
    # only the encoder's lowercasing gives the token ids of the lowercased text it was trained on.
    directory = build_tiny_siglip2_fixed(tmp_path / "siglip2-fixed")
    encoder = load_encoder(
        "siglip2-base-patch16-256", source=str(directory), device="cpu", backend="torch"
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)

    def ids(text: str) -> np.ndarray:
        return tokenizer(
            [text], padding="max_length", max_length=64, truncation=True, return_tensors="np"
        )["input_ids"]

    assert not np.array_equal(ids(CASED), ids(LOWER))  # the tokenizer alone keeps case
    np.testing.assert_array_equal(encoder.text_inputs([CASED])["input_ids"], ids(LOWER))
    np.testing.assert_allclose(
        encoder.embed_texts([CASED]), encoder.embed_texts([LOWER]), atol=1e-6
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_inputs_give_empty_arrays(family, tiny_dirs):
    encoder = load_encoder(FAMILIES[family][0], source=str(tiny_dirs[family]), device="cpu")

    for result in (encoder.embed_images([]), encoder.embed_texts([])):
        assert result.shape == (0, encoder.dim)
        assert result.dtype == np.float32


@pytest.mark.parametrize("family", FAMILIES)
def test_float16_weights_still_return_normalised_float32(family, tiny_dirs):
    # The CUDA default, run on CPU: inputs must be cast to the weights' dtype and the output
    # brought back to float32.
    source = str(tiny_dirs[family])
    full = load_encoder(FAMILIES[family][0], source=source, device="cpu")
    half = load_encoder(FAMILIES[family][0], source=source, device="cpu", dtype="float16")

    assert half.dtype == torch.float16
    for method, inputs in (("embed_images", noise_images()), ("embed_texts", TEXTS)):
        embeddings = getattr(half, method)(inputs)
        assert embeddings.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(embeddings, getattr(full, method)(inputs), atol=5e-3)


def test_images_of_any_mode_are_embedded_as_rgb(tiny_dirs):
    encoder = load_encoder("clip-vit-base-patch32", source=str(tiny_dirs["clip"]), device="cpu")
    rgb = noise_images()[0]
    gray = rgb.convert("L")

    embeddings = encoder.embed_images([rgb.convert("RGBA"), gray, rgb])

    np.testing.assert_allclose(embeddings[0], embeddings[2], atol=1e-6)  # opaque alpha: same
    np.testing.assert_allclose(
        embeddings[1], encoder.embed_images([gray.convert("RGB")])[0], atol=1e-6
    )


def test_encoder_is_loaded_once_per_process(tiny_dirs):
    source = str(tiny_dirs["clip"])

    first = load_encoder("clip-vit-base-patch32", source=source, device="cpu")

    assert load_encoder("clip-vit-base-patch32", source=source, device="cpu") is first
    # float32 is the CPU default, under any accepted spelling: the same cache entry.
    assert load_encoder("clip-vit-base-patch32", source=source, device="cpu", dtype="fp32") is first
    clear_encoder_cache()
    assert load_encoder("clip-vit-base-patch32", source=source, device="cpu") is not first


def test_unknown_model_id_lists_the_known_ones():
    with pytest.raises(UnknownModelError) as raised:
        load_encoder("clip-vit-huge", device="cpu")

    message = str(raised.value)
    assert "clip-vit-huge" in message
    for model_id in MODELS:
        assert model_id in message
    with pytest.raises(UnknownModelError):
        model_spec("clip-vit-huge")


def test_missing_local_directory_is_weights_unavailable(tmp_path):
    missing = tmp_path / "no-such-dir"

    with pytest.raises(WeightsUnavailableError) as raised:
        load_encoder("align-base", source=str(missing), device="cpu")

    message = str(raised.value)
    assert "align-base" in message
    assert str(missing) in message
    assert 'EMBEDDING_MODEL_SOURCES="align-base=' in message


def test_directory_without_a_model_is_weights_unavailable(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="clip-vit-base-patch32"):
        load_encoder("clip-vit-base-patch32", source=str(tmp_path), device="cpu")


def test_hub_id_while_offline_is_weights_unavailable(monkeypatch):
    # Set after transformers was imported: the loader must still honour it.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(WeightsUnavailableError) as raised:
        load_encoder("siglip-base-patch16-224", source="example-org/no-such-model", device="cpu")

    message = str(raised.value)
    assert "siglip-base-patch16-224" in message
    assert "example-org/no-such-model" in message
    assert "HF_HUB_OFFLINE" in message
    assert isinstance(raised.value.__cause__, (OSError, ValueError))


def test_checkpoint_of_another_family_is_refused(tiny_dirs):
    with pytest.raises(EncoderError, match="'clip'"):
        load_encoder("siglip-base-patch16-224", source=str(tiny_dirs["clip"]), device="cpu")


def test_failed_load_is_not_cached(tmp_path, tiny_dirs):
    import shutil

    source = tmp_path / "clip"
    with pytest.raises(WeightsUnavailableError):
        load_encoder("clip-vit-base-patch32", source=str(source), device="cpu")
    shutil.copytree(tiny_dirs["clip"], source)

    encoder = load_encoder("clip-vit-base-patch32", source=str(source), device="cpu")

    assert encoder.embed_texts(["a cat"]).shape == (1, encoder.dim)


@pytest.mark.parametrize(
    ("model_id", "hub_id", "dim", "family"),
    [
        ("clip-vit-base-patch32", "openai/clip-vit-base-patch32", 512, "clip"),
        ("clip-vit-large-patch14", "openai/clip-vit-large-patch14", 768, "clip"),
        ("align-base", "kakaobrain/align-base", 640, "align"),
        ("siglip-base-patch16-224", "google/siglip-base-patch16-224", 768, "siglip"),
        ("siglip2-base-patch16-256", "google/siglip2-base-patch16-256", 768, "siglip2"),
        ("siglip2-so400m-patch14-384", "google/siglip2-so400m-patch14-384", 1152, "siglip2"),
    ],
)
def test_registry_describes_the_published_models(model_id, hub_id, dim, family):
    spec = model_spec(model_id)

    assert (spec.model_id, spec.hub_id, spec.dim, spec.family) == (model_id, hub_id, dim, family)


def test_registry_import_does_not_load_torch():
    # Django imports the registry at start-up; torch/transformers cost seconds there.
    code = (
        "import sys, encoders, encoders.registry; "
        "print(sorted({'torch', 'transformers', 'django'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


# --- open_image ---------------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str, **save_args) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    buffer.seek(0)
    return buffer


def test_open_image_applies_exif_orientation(tmp_path):
    # Stored 40 wide x 20 high, red left half, blue right half; orientation 6 means "rotate 90
    # degrees clockwise to display", which puts the left half on top.
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", exif=exif.tobytes(), quality=95)

    image = open_image(path)

    assert image.mode == "RGB"
    assert image.size == (20, 40)
    red, green, blue = image.getpixel((10, 5))
    assert red > 200 and blue < 60
    red, green, blue = image.getpixel((10, 35))
    assert blue > 200 and red < 60


def test_open_image_rejects_bytes_that_are_not_an_image():
    noise = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()

    with pytest.raises(ImageDecodeError, match="cannot identify image file"):
        open_image(io.BytesIO(noise))


def test_open_image_rejects_a_truncated_jpeg():
    pixels = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(pixels, "RGB"), "JPEG", quality=95).getvalue()

    with pytest.raises(ImageDecodeError, match="truncated"):
        open_image(io.BytesIO(data[: len(data) * 2 // 3]))


def test_open_image_converts_to_rgb():
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    gray = Image.new("L", (8, 8), 77)
    palette = Image.new("P", (8, 8), 0)

    from_rgba = open_image(encoded(transparent, "PNG"))
    from_gray = open_image(encoded(gray, "PNG"))
    from_palette = open_image(encoded(palette, "GIF"))

    assert from_rgba.mode == from_gray.mode == from_palette.mode == "RGB"
    # Transparent pixels become white, not the black their colour channels hold.
    assert from_rgba.getpixel((0, 0)) == (255, 255, 255)
    assert from_gray.getpixel((3, 3)) == (77, 77, 77)


def test_open_image_rejects_images_over_the_pixel_limit():
    image = encoded(Image.new("RGB", (30, 20)), "PNG")

    with pytest.raises(ImageDecodeError, match="image too large: 30x20"):
        open_image(image, max_pixels=599)
    assert open_image(encoded(Image.new("RGB", (30, 20)), "PNG"), max_pixels=600).size == (30, 20)


def test_open_image_leaves_a_missing_file_to_the_caller(tmp_path):
    # A missing file is a storage problem to retry or report, not a corrupt image.
    with pytest.raises(FileNotFoundError):
        open_image(tmp_path / "missing.jpg")
