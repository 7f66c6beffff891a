"""The ONNX Runtime backend: same embeddings as torch, exported once, torch when it cannot run."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from encoders import EncoderError, clear_encoder_cache, hf, load_encoder, onnx_export
from encoders import onnx as onnx_backend
from encoders.hf import HFEncoder
from tests.encoders.test_encoders import FAMILIES, TEXTS, noise_images
from tests.tiny_models import build_tiny_clip

# The bound for float32 ONNX vs torch on the same inputs (measured ~1e-7 on tiny models).
MAX_DIFFERENCE = 1e-4


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: build(root / family) for family, (_, build, _) in FAMILIES.items()}


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "onnx-cache"


@pytest.fixture(autouse=True)
def fresh_encoder_cache():
    clear_encoder_cache()
    yield
    clear_encoder_cache()


def load(family: str, source: Path, **kwargs):
    return load_encoder(FAMILIES[family][0], source=str(source), device="cpu", **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_embeddings_match_torch(family, tiny_dirs, cache_dir):
    onnx = load(family, tiny_dirs[family], backend="onnx", onnx_cache_dir=cache_dir)
    torch_encoder = load(family, tiny_dirs[family], backend="torch")

    assert onnx.backend == "onnx"
    assert torch_encoder.backend == "torch"
    assert onnx.dim == torch_encoder.dim
    # Batch sizes and text lengths other than the traced ones: a frozen shape would show here.
    for method, inputs in (
        ("embed_images", noise_images()),
        ("embed_images", noise_images()[:1]),
        ("embed_texts", TEXTS),
        ("embed_texts", ["a photo of the cat on the beach under a red tree " * 3]),
    ):
        got = getattr(onnx, method)(inputs)
        expected = getattr(torch_encoder, method)(inputs)
        assert got.dtype == np.float32
        assert got.shape == expected.shape == (len(inputs), onnx.dim)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert np.abs(got - expected).max() <= MAX_DIFFERENCE


def test_auto_backend_is_onnx_on_cpu_and_torch_elsewhere(tiny_dirs, cache_dir):
    source = tiny_dirs["clip"]

    assert load("clip", source, onnx_cache_dir=cache_dir).backend == "onnx"
    assert load("clip", source, backend="auto", onnx_cache_dir=cache_dir).backend == "onnx"
    assert load("clip", source, backend="torch").backend == "torch"
    # CPU float16 is a torch-only configuration (and so is CUDA, which the GPU workers use).
    assert load("clip", source, dtype="float16").backend == "torch"
    with pytest.warns(RuntimeWarning, match="ONNX backend runs on the CPU"):
        assert load("clip", source, backend="onnx", dtype="float16").backend == "torch"
    with pytest.raises(EncoderError, match="unknown backend 'tensorrt'"):
        load("clip", source, backend="tensorrt")


def test_encoder_for_follows_the_backend_setting(tiny_dirs, settings):
    from workers.encoder_cache import encoder_for

    settings.EMBEDDING_MODEL_SOURCES = {"clip-vit-base-patch32": str(tiny_dirs["clip"])}
    settings.EMBEDDING_DEVICE = "cpu"
    settings.EMBEDDING_DTYPE = ""

    settings.EMBEDDING_BACKEND = "torch"
    assert encoder_for("clip-vit-base-patch32").backend == "torch"
    settings.EMBEDDING_BACKEND = "onnx"
    settings.EMBEDDING_ONNX_THREADS = 2
    assert encoder_for("clip-vit-base-patch32").backend == "onnx"


def test_export_is_reused_by_a_later_load(tiny_dirs, cache_dir, monkeypatch):
    first = load("clip", tiny_dirs["clip"], onnx_cache_dir=cache_dir)
    expected = first.embed_texts(TEXTS)
    clear_encoder_cache()

    # A later process: neither the exporter nor the torch weights may be touched.
    def refuse(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export_towers", refuse)
    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained", refuse)
    second = load("clip", tiny_dirs["clip"], onnx_cache_dir=cache_dir)

    assert second is not first
    assert second.export_dir == first.export_dir
    np.testing.assert_array_equal(second.embed_texts(TEXTS), expected)


def test_changed_weights_are_exported_again(tmp_path, cache_dir):
    source = build_tiny_clip(tmp_path / "clip")
    before = load("clip", source, onnx_cache_dir=cache_dir)
    old_texts = before.embed_texts(TEXTS)
    # Fine-tuned weights saved over the old ones, in the same directory.
    model = transformers.CLIPModel.from_pretrained(source)
    with torch.no_grad():
        model.text_projection.weight.mul_(-1.0)
    model.save_pretrained(source)
    clear_encoder_cache()

    after = load("clip", source, onnx_cache_dir=cache_dir)
    reference = load("clip", source, backend="torch")

    assert after.export_dir != before.export_dir
    assert np.abs(after.embed_texts(TEXTS) - reference.embed_texts(TEXTS)).max() <= MAX_DIFFERENCE
    np.testing.assert_allclose(after.embed_texts(TEXTS), -old_texts, atol=MAX_DIFFERENCE)


def test_missing_onnxruntime_falls_back_to_torch_with_a_warning(tiny_dirs, cache_dir, monkeypatch):
    # A None entry in sys.modules makes `import onnxruntime` raise ImportError, as if the
    # package were not installed.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)

    with pytest.warns(RuntimeWarning, match="ONNX Runtime backend unavailable.*onnxruntime"):
        encoder = load("clip", tiny_dirs["clip"], onnx_cache_dir=cache_dir)

    assert isinstance(encoder, HFEncoder)
    assert encoder.backend == "torch"
    assert encoder.embed_texts(TEXTS).shape == (len(TEXTS), encoder.dim)
    assert not cache_dir.exists() or not any(cache_dir.glob("*/meta.json"))


def test_a_failing_export_falls_back_to_torch_with_a_warning(tiny_dirs, cache_dir, monkeypatch):
    def broken_exporter(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::something' is not supported")

    monkeypatch.setattr(torch.onnx, "export", broken_exporter)

    with pytest.warns(RuntimeWarning, match="aten::something"):
        encoder = load("siglip", tiny_dirs["siglip"], onnx_cache_dir=cache_dir)

    assert encoder.backend == "torch"
    assert encoder.embed_images(noise_images()).shape == (3, encoder.dim)
    # Nothing half-written is left to be taken for an export later.
    assert not any(cache_dir.glob("*/meta.json"))


def test_int8_onnx_is_kept_under_the_cosine_rule_and_cached(tiny_dirs, cache_dir, monkeypatch):
    full = load("clip", tiny_dirs["clip"], onnx_cache_dir=cache_dir)
    int8 = load("clip", tiny_dirs["clip"], dtype="int8", onnx_cache_dir=cache_dir)

    assert int8.backend == "onnx"
    assert int8.quantization == "int8-dynamic"
    assert (int8.export_dir / "text.int8.onnx").exists()
    for method, inputs in (("embed_images", noise_images()), ("embed_texts", TEXTS)):
        got, expected = getattr(int8, method)(inputs), getattr(full, method)(inputs)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert np.sum(got * expected, axis=1).min() >= onnx_backend.MIN_INT8_COSINE
        assert np.abs(got - expected).max() > 1e-6  # really quantised
    clear_encoder_cache()
    monkeypatch.setattr(onnx_export, "quantize_int8", None)  # not quantised or checked again
    again = load("clip", tiny_dirs["clip"], dtype="int8", onnx_cache_dir=cache_dir)
    assert again.quantization == "int8-dynamic"


def test_int8_onnx_below_the_cosine_rule_stays_float32(tiny_dirs, cache_dir, monkeypatch):
    monkeypatch.setattr(onnx_backend, "MIN_INT8_COSINE", 1.01)  # a rule nothing can meet

    with pytest.warns(RuntimeWarning, match="below the cosine"):
        encoder = load("align", tiny_dirs["align"], dtype="int8", onnx_cache_dir=cache_dir)

    assert encoder.backend == "onnx"
    assert encoder.quantization is None


def test_siglip2_embeds_a_query_in_any_script(tiny_dirs, cache_dir):
    # Gemma's byte fallback: a Vietnamese query is tokenised without <unk> and embedded on its
    # own, not collapsed onto other unknown-word queries.
    encoder = load("siglip2", tiny_dirs["siglip2"], onnx_cache_dir=cache_dir)
    queries = ["con chó trên bãi biển", "chiếc xe màu đỏ", "a photo of the cat"]

    embeddings = encoder.embed_texts(queries)

    unknown = transformers.AutoTokenizer.from_pretrained(tiny_dirs["siglip2"]).unk_token_id
    assert unknown not in encoder.text_inputs(queries)["input_ids"]
    assert embeddings[0] @ embeddings[1] < 0.999


def test_loading_one_model_does_not_block_another(tiny_dirs, cache_dir, monkeypatch):
    loaded = load("clip", tiny_dirs["clip"], onnx_cache_dir=cache_dir)
    started, release = threading.Event(), threading.Event()
    real_checkpoint = hf.hf_checkpoint

    def slow_checkpoint(spec, *, source):  # the first step of a load, under the model's lock
        if spec.model_id == "align-base":
            started.set()
            release.wait(timeout=30)
        return real_checkpoint(spec, source=source)

    monkeypatch.setattr(hf, "hf_checkpoint", slow_checkpoint)
    slow = threading.Thread(
        target=lambda: load("align", tiny_dirs["align"], onnx_cache_dir=cache_dir)
    )
    slow.start()
    try:
        assert started.wait(timeout=30)
        # While align loads: the loaded model is returned at once, and another model loads.
        assert load("clip", tiny_dirs["clip"], onnx_cache_dir=cache_dir) is loaded
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            other = load("siglip", tiny_dirs["siglip"], onnx_cache_dir=cache_dir)
        assert other.model_id == "siglip-base-patch16-224"
        assert slow.is_alive()
    finally:
        release.set()
        slow.join(timeout=60)


def test_a_copied_model_reuses_the_export(tiny_dirs, tmp_path, cache_dir):
    # The key is the weights' content, not their path: the same files elsewhere are not new.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dirs["clip"], copy)

    first = load("clip", tiny_dirs["clip"], onnx_cache_dir=cache_dir)
    second = load("clip", copy, onnx_cache_dir=cache_dir)

    assert second is not first
    assert second.export_dir == first.export_dir


# Runs an export's float32 and int8 graphs in one process and prints each one's outputs, so the
# same comparison can run natively and on an emulated CPU.
_GRAPHS_RUN = """
import sys, numpy as np, onnxruntime as ort
export_dir, inputs_file, out_file = sys.argv[1:]
outputs = {}
for tower in ("text", "vision"):
    inputs = dict(np.load(inputs_file.replace("TOWER", tower)))
    for name in (tower, tower + ".int8"):
        path = export_dir + "/" + name + ".onnx"
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {i.name: inputs[i.name] for i in session.get_inputs()}
        outputs[name] = session.run(None, feed)[0]
np.savez(out_file, **outputs)
"""

# Intel's AVX2 generation: no AVX-512 VNNI, where onnxruntime's u8 x s8 kernel can saturate.
CPU_WITHOUT_VNNI = "Haswell"


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.slow  # onnxruntime under qemu
@pytest.mark.skipif(platform.machine() != "x86_64", reason="an x86_64 CPU model is emulated")
def test_int8_onnx_answers_the_same_on_a_cpu_without_vnni(tiny_dirs, cache_dir, tmp_path):
    qemu = shutil.which("qemu-x86_64")
    assert qemu, "qemu-user is needed for this check (./run test installs it)"
    int8 = load("clip", tiny_dirs["clip"], dtype="int8", onnx_cache_dir=cache_dir)
    assert int8.quantization == "int8-dynamic"
    queries = ["dog", "ein Hund im Schnee", *onnx_export.INT8_PROBE_QUERIES]
    np.savez(tmp_path / "text.npz", **int8.text_inputs(queries))
    np.savez(tmp_path / "vision.npz", **int8.image_inputs(noise_images()))
    (tmp_path / "run.py").write_text(_GRAPHS_RUN)
    site = [p for p in sys.path if p.endswith("site-packages")]
    args = [sys.executable, tmp_path / "run.py", int8.export_dir, tmp_path / "TOWER.npz"]

    subprocess.run([*args, tmp_path / "native.npz"], check=True, capture_output=True)
    subprocess.run(
        [qemu, "-cpu", CPU_WITHOUT_VNNI, "-E", f"PYTHONPATH={':'.join(site)}",
         *args, tmp_path / "emulated.npz"],
        check=True, capture_output=True,
    )  # fmt: skip

    native, emulated = np.load(tmp_path / "native.npz"), np.load(tmp_path / "emulated.npz")
    for tower in ("text", "vision"):
        full, quantised = _unit(emulated[tower]), _unit(emulated[f"{tower}.int8"])
        # The int8 graph kept under the rule here keeps to it on the other CPU ...
        assert np.sum(full * quantised, axis=1).min() >= onnx_backend.MIN_INT8_COSINE
        # ... because it computes the same thing there (saturating kernels would not).
        same = np.sum(quantised * _unit(native[f"{tower}.int8"]), axis=1).min()
        assert same > 0.9999
