"""Image embedding throughput: the seed project's per-image loop against the product pipeline.

    OMP_NUM_THREADS=1 .venv/bin/python bench/embed_throughput.py \
        [--images 300] [--batch-sizes 32,64] [--device cpu|cuda] [--dtype fp32|fp16|int8] \
        [--threads N] [--backends torch,onnx] [--storage local,s3] [--data-dir DIR] \
        [--database-url URL]

Uses the full-size ViT-B/32 CLIP architecture (``CLIPConfig()`` defaults) with random, seeded
weights (no weights can be downloaded here): speed depends on the architecture, not on the
values. The images are photo-like 500x375 JPEGs written here, so decoding costs what a real
photo costs. Rows of the table:

(a) the seed project's method: per image, open with PIL, run the processor on that one image,
    one ``get_image_features`` forward pass, normalise. No batching, nothing overlapped.
(b) the product pipeline, ``workers.pipeline.images_embed_batch``, end to end into PostgreSQL
    (decode in threads + model + bulk insert with the HNSW index maintained), in two shapes:
    "tasks" calls it once per batch of ids, as each Celery task does (so a batch's decoding
    cannot overlap the previous batch's forward pass); "stream" passes every id in one call
    with ``batch_size``, so decoding runs ahead of the model. "encoder" is
    ``Encoder.embed_images`` alone on already decoded images (preprocessing + forward): the
    ceiling for the pipeline.
(c) on CPU, the same rows for the int8 dynamic-quantised model, and the cosine between its
    embeddings and float32's on the same images and texts.
(s) the images' bytes read through the site's image storage alone (local folder or, with
    ``--storage s3``, the bucket), one at a time: what the storage adds per image.
(d) on CPU, the same rows on the ONNX Runtime backend (the CPU default), float32 and int8,
    with the largest difference and lowest cosine to torch float32 and, for int8, to ONNX float32
    (the int8 rule: cosine >= 0.99). The backend column says which runs each row.

``--storage s3`` reads the images through S3-compatible object storage (django-storages and
boto3, as a worker on another host does) instead of the local folder, and ``--storage
local,s3`` gives the (s) and pipeline rows for both, side by side (the ``storage`` column), with
the same encoders and images: a bucket on a moto S3
server started here in its own process on loopback (no MinIO binary installs here; a site's own
bucket is never used, see bench/_harness.py). Loopback has no network latency: the difference
to the local folder is the storage API's and the HTTP round trips' own cost.

The database is the bench's own embedded PostgreSQL in ``--data-dir`` (default
.data/bench/embed_throughput), never the site's (see bench/_harness.py); it is stopped when the
script ends. The random model and the ONNX exports are kept there for the next run.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _harness
from bench._harness import IMAGE_SIZE  # a typical Flickr30k photo
from tests.tiny_models import build_full_size_clip

SCRIPT = "embed_throughput"
MODEL_ID = "clip-vit-base-patch32"
IMAGE_DIR = "bench"  # under MEDIA_ROOT
TEXTS = [
    "a photo of a dog on the beach",
    "two people riding bikes down a city street",
    "a red car parked in front of a tree",
    "a child in a blue shirt plays with a ball",
    "an old man reading a newspaper",
    "a cat sleeping on a sofa",
    "crowd at an outdoor concert at night",
    "a plate of food on a wooden table",
]


@dataclass
class Row:
    method: str
    dtype: str
    backend: str
    batch: int | None
    images: int
    seconds: float  # wall clock, best of --repeat runs
    cpu_seconds: float  # this process's CPU time (all threads) in that run; not PostgreSQL's
    storage: str = "-"  # where the images were read from, for the rows that read them

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument(
        "--batch-sizes", default="32,64", help="comma-separated, e.g. 32,64 (default %(default)s)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: best")
    parser.add_argument(
        "--dtype",
        choices=["fp32", "fp16", "int8"],
        default=None,
        help="default: fp16 on cuda, fp32 on cpu",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 rows (c) on CPU")
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated torch,onnx (default: both on cpu, torch on cuda)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="time each row this many times, keep the fastest"
    )
    parser.add_argument("--cosine-images", type=int, default=64)
    parser.add_argument(
        "--storage",
        default="local",
        help="where the pipeline rows read images from: local, s3, or local,s3 for both "
        "(default %(default)s; see above)",
    )
    _harness.add_arguments(parser, script=SCRIPT)
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="a CLIP ViT-B/32 save_pretrained directory (e.g. real weights) instead of random ones",
    )
    args = parser.parse_args(argv)
    if args.dtype == "int8" and args.device == "cuda":
        parser.error("--dtype int8 (dynamic quantisation) runs on CPU only")
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",") if size.strip()]
    args.storage = [kind.strip() for kind in args.storage.split(",") if kind.strip()]
    if not args.storage or not set(args.storage) <= {"local", "s3"}:
        parser.error("--storage takes local and/or s3")
    if args.backends is not None:
        args.backends = [name.strip() for name in args.backends.split(",") if name.strip()]
        if not set(args.backends) <= {"torch", "onnx"}:
            parser.error("--backends takes torch and/or onnx")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("fp16" if device == "cuda" else "fp32")

    with _harness.own_django(
        script=SCRIPT, data_dir=args.data_dir, database_url=args.database_url
    ) as data_dir:
        run(args, device=device, dtype=dtype, data_dir=data_dir)


def run(args: argparse.Namespace, *, device: str, dtype: str, data_dir: Path) -> None:
    from django.conf import settings

    model_dir = args.source or build_full_size_clip(data_dir / "clip-vit-b32-random")
    paths = _harness.fake_photos_write(Path(settings.MEDIA_ROOT) / IMAGE_DIR, args.images)
    image_ids = _harness.fake_images_replace(
        len(paths), files=paths, media_root=Path(settings.MEDIA_ROOT)
    )
    measure(args, device=device, dtype=dtype, data_dir=data_dir, model_dir=model_dir,
            paths=paths, image_ids=image_ids)  # fmt: skip


def measure(
    args: argparse.Namespace,
    *,
    device: str,
    dtype: str,
    data_dir: Path,
    model_dir: Path,
    paths: Sequence[Path],
    image_ids: Sequence[int],
) -> None:
    import torch
    from django.conf import settings

    print(
        f"device={device} dtype={dtype} torch_threads={torch.get_num_threads()} "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')} "
        f"decode_threads={settings.EMBEDDING_DECODE_THREADS} images={len(paths)} "
        f"({IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG) torch={torch.__version__} "
        f"weights={'random' if args.source is None else model_dir} "
        f"cpus={os.cpu_count()} loadavg_1min={os.getloadavg()[0]:.2f}",
        flush=True,
    )

    seed_dtype = "fp32" if dtype == "int8" else dtype  # the seed project had no int8 path
    rows = [seed_loop(model_dir, paths, device=device, dtype=seed_dtype, repeat=args.repeat)]
    print(f"  (a) done: {rows[0].rate:.1f} images/s", flush=True)

    dtypes = [dtype]
    if device == "cpu" and dtype != "int8" and not args.no_int8:
        dtypes.append("int8")
    # ONNX Runtime here is the CPU package: on CUDA only torch runs.
    backends = args.backends or (["torch", "onnx"] if device == "cpu" else ["torch"])
    variants = [(backend, variant) for backend in backends for variant in dtypes]
    decoded = decode_all(paths)
    cache_dir = data_dir / "onnx-cache"
    encoders = {}
    for backend, variant in variants:
        start = time.perf_counter()
        encoder = load_bench_encoder(
            model_dir, device=device, dtype=variant, backend=backend, cache_dir=cache_dir
        )
        # The first ONNX load exports (and quantises) into the cache; later loads reuse it.
        print(
            f"  {backend} {variant} loaded in {time.perf_counter() - start:.1f} s "
            f"({encoder.backend}, {encoder.quantization or 'float'})",
            flush=True,
        )
        encoders[backend, variant] = encoder
        encoder.embed_images(decoded[: max(args.batch_sizes)])  # warm-up, untimed
        label = {("torch", "int8"): "(c)"}.get((backend, variant)) or (
            "(d)" if backend == "onnx" else "(b)"
        )
        for batch in args.batch_sizes:
            rows.append(
                encoder_only(
                    encoder, decoded, batch=batch, dtype=variant, label=label, repeat=args.repeat
                )
            )
    media_root = Path(settings.MEDIA_ROOT)
    for kind in args.storage:
        with bench_storage(kind, paths, media_root=media_root) as where:
            print(f"images read from: {where}", flush=True)
            rows.append(storage_read(image_ids, repeat=args.repeat, storage=kind))
            for (backend, variant), encoder in encoders.items():
                label = {("torch", "int8"): "(c)"}.get((backend, variant)) or (
                    "(d)" if backend == "onnx" else "(b)"
                )
                for batch in args.batch_sizes:
                    for mode in ("tasks", "stream"):
                        rows.append(
                            pipeline_run(
                                encoder, image_ids, batch=batch, mode=mode, dtype=variant,
                                label=label, repeat=args.repeat, storage=kind,
                            )
                        )  # fmt: skip
                    print(f"  {kind}: {backend} {variant} batch {batch} done", flush=True)

    print_table(rows)
    # Other work on the machine skews every row; this says how busy it was while measuring.
    print(f"loadavg_1min at the end: {os.getloadavg()[0]:.2f}")
    sample = decoded[: args.cosine_images]
    reference = encoders.get(("torch", dtype))
    for (backend, variant), encoder in encoders.items():
        if reference is not None and encoder is not reference:
            print_agreement(f"{backend} {variant} vs torch {dtype}", reference, encoder, sample)
        float_one = encoders.get((backend, "fp32"))
        if variant == "int8" and float_one is not None and backend == "onnx":
            print_agreement(f"{backend} int8 vs {backend} fp32", float_one, encoder, sample)


# --- where the images are read from -----------------------------------------------------


@contextmanager
def bench_storage(kind: str, paths: Sequence[Path], *, media_root: Path) -> Iterator[str]:
    """The site's image storage for the pipeline rows: the local folder, or a bucket holding
    the same files under the same names."""
    if kind == "local":
        yield f"the local folder {media_root}"
        return
    from django.conf import settings
    from django.core.files import File
    from django.test.utils import override_settings

    from config.settings.base import image_storages

    server, environ = moto_server_start()
    try:
        storages = {**settings.STORAGES, **image_storages(environ)}
        with override_settings(STORAGES=storages):
            from gallery.storage import image_storage

            storage = image_storage()
            for path in paths:
                name = path.relative_to(media_root).as_posix()
                if not storage.exists(name):
                    with path.open("rb") as handle:
                        storage.save(name, File(handle))
            yield f"moto S3 bucket at {environ['AWS_S3_ENDPOINT_URL']}"
    finally:
        server.terminate()
        server.wait(10)


def moto_server_start() -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """moto's S3 server in a process of its own (its request handling must not share this
    process's GIL with the pipeline), with an empty bucket."""
    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("the moto S3 server did not start") from None
            time.sleep(0.1)
    environ = {
        "AWS_STORAGE_BUCKET_NAME": "bench-images",
        "AWS_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_S3_REGION_NAME": "us-east-1",
        "AWS_S3_ADDRESSING_STYLE": "path",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
    }
    boto3.client(
        "s3",
        endpoint_url=environ["AWS_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    ).create_bucket(Bucket=environ["AWS_STORAGE_BUCKET_NAME"])
    return server, environ


# --- decoding and loading --------------------------------------------------------------


def decode_all(paths: Sequence[Path]) -> list[Any]:
    from encoders import open_image

    return [open_image(path) for path in paths]


def load_bench_encoder(
    model_dir: Path, *, device: str, dtype: str, backend: str = "torch", cache_dir: Path
) -> Any:
    import torch

    from encoders.registry import load_encoder

    # ONNX Runtime gets as many intra-op threads as torch has (1 under OMP_NUM_THREADS=1, as
    # a web or CPU Celery worker runs by default; --threads sets both).
    return load_encoder(
        MODEL_ID,
        source=str(model_dir),
        device=device,
        dtype=dtype,
        backend=backend,
        onnx_threads=torch.get_num_threads(),
        onnx_cache_dir=cache_dir,
    )


# --- the measured runs ------------------------------------------------------------------


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(
    device: str,
    work: Callable[[], object],
    *,
    repeat: int,
    prepare: Callable[[], object] | None = None,
) -> tuple[float, float]:
    """Best wall-clock time of ``repeat`` runs of ``work`` and the CPU time of that run.

    ``prepare`` runs untimed before each run. The best run is the one least disturbed by other
    work on the machine.
    """
    best = (float("inf"), 0.0)
    for _ in range(max(repeat, 1)):
        if prepare:
            prepare()
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        work()
        synchronize(device)
        best = min(best, (time.perf_counter() - start, time.process_time() - cpu_start))
    return best


def seed_loop(
    model_dir: Path, paths: Sequence[Path], *, device: str, dtype: str, repeat: int
) -> Row:
    """(a): the seed project's loop, straight on transformers, one image at a time."""
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    model = CLIPModel.from_pretrained(model_dir, dtype=torch_dtype).to(device).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)

    def embed(path: Path) -> Any:
        image = Image.open(path).convert("RGB")
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            output = model.get_image_features(
                pixel_values=inputs["pixel_values"].to(device, torch_dtype)
            )
        features = output if isinstance(output, torch.Tensor) else output.pooler_output
        features = features / features.norm(dim=-1, keepdim=True)
        return features.float().cpu().numpy()[0]

    embed(paths[0])  # warm-up
    seconds, cpu = timed(device, lambda: [embed(path) for path in paths], repeat=repeat)
    return Row(
        "(a) seed: per image, inline preprocessing", dtype, "torch", 1, len(paths), seconds, cpu
    )


def encoder_only(
    encoder: Any, decoded: Sequence[Any], *, batch: int, dtype: str, label: str, repeat: int
) -> Row:
    seconds, cpu = timed(
        encoder.device, lambda: encoder.embed_images(decoded, max_batch=batch), repeat=repeat
    )
    return Row(
        f"{label} encoder only (decoded; preprocess+model)",
        dtype,
        encoder.backend,
        batch,
        len(decoded),
        seconds,
        cpu,
    )


def storage_read(image_ids: Sequence[int], *, repeat: int, storage: str) -> Row:
    """(s): every image's bytes fetched through the site's image storage, one after another,
    as the pipeline's decode threads fetch them (no decoding, no model): the storage's cost."""
    from gallery.models import Image
    from gallery.storage import stored_file_open

    names = list(Image.objects.filter(pk__in=image_ids).values_list("file", flat=True))

    def work() -> None:
        for name in names:
            with stored_file_open(name) as handle:
                handle.read()

    seconds, cpu = timed("cpu", work, repeat=repeat)
    method = "(s) storage read only (bytes, no decode)"
    return Row(method, "-", "-", 1, len(names), seconds, cpu, storage=storage)


def pipeline_run(
    encoder: Any,
    image_ids: Sequence[int],
    *,
    batch: int,
    mode: str,
    dtype: str,
    label: str,
    repeat: int,
    storage: str,
) -> Row:
    """(b)/(c): images_embed_batch into PostgreSQL, from no embeddings for the model."""
    from django.db import connection

    from workers.models import EmbeddingJob, ImageEmbedding
    from workers.pipeline import images_embed_batch

    results = []

    def prepare() -> None:
        results.clear()
        ImageEmbedding.objects.filter(model_id=MODEL_ID).delete()
        # As new images: a "done" job left by the previous run would make the pipeline skip
        # its image (only pending jobs are taken), and every run after the first embed nothing.
        EmbeddingJob.objects.filter(model_id=MODEL_ID).delete()
        # Dead index entries from the previous run would make this run's inserts slower.
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM {ImageEmbedding._meta.db_table}")

    def work() -> None:
        if mode == "tasks":
            for start in range(0, len(image_ids), batch):
                chunk = image_ids[start : start + batch]
                results.append(
                    images_embed_batch(
                        model_id=MODEL_ID, image_ids=chunk, encoder=encoder, batch_size=batch
                    )
                )
        else:
            results.append(
                images_embed_batch(
                    model_id=MODEL_ID, image_ids=image_ids, encoder=encoder, batch_size=batch
                )
            )

    seconds, cpu = timed(encoder.device, work, repeat=repeat, prepare=prepare)
    embedded = sum(result.embedded for result in results)
    failed = {pk: reason for result in results for pk, reason in result.failed.items()}
    stored = ImageEmbedding.objects.filter(model_id=MODEL_ID).count()
    if embedded != len(image_ids) or failed or stored != len(image_ids):
        raise RuntimeError(f"pipeline embedded {embedded}, stored {stored}, failed {failed}")
    method = f"{label} pipeline into Postgres, {mode}"
    return Row(method, dtype, encoder.backend, batch, len(image_ids), seconds, cpu, storage)


# --- output -----------------------------------------------------------------------------


def print_table(rows: Sequence[Row]) -> None:
    baseline = rows[0].rate
    header = (
        f"{'method':<46} {'storage':<7} {'backend':<7} {'dtype':<5} {'batch':>5} "
        f"{'images':>6} {'s':>7} "
        f"{'cpu s':>7} "
        f"{'img/s':>7} {'x (a)':>6}"
    )
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.method:<46} {row.storage:<7} {row.backend:<7} {row.dtype:<5} "
            f"{row.batch or '-':>5} "
            f"{row.images:>6} "
            f"{row.seconds:>7.2f} {row.cpu_seconds:>7.2f} {row.rate:>7.1f} "
            f"{row.rate / baseline:>6.2f}"
        )


def print_agreement(title: str, reference: Any, other: Any, images: Sequence[Any]) -> None:
    """Lowest cosine and largest difference between two encoders' embeddings of the same inputs."""
    import numpy as np

    for kind, inputs, method in (
        ("images", images, "embed_images"),
        ("texts", TEXTS, "embed_texts"),
    ):
        expected = getattr(reference, method)(inputs, max_batch=32)
        got = getattr(other, method)(inputs, max_batch=32)
        cosines = np.sum(expected * got, axis=1)
        print(
            f"{title}, {len(inputs)} {kind}: cosine min {cosines.min():.5f} "
            f"mean {cosines.mean():.5f}; max abs difference {np.abs(expected - got).max():.2e}"
        )


if __name__ == "__main__":
    _harness.main_guarded(main, sys.argv[1:])
