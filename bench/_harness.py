"""What every benchmark stands on: its own data dir and database, never the site's, and the one
way of making fake rows.

A benchmark deletes and truncates freely, so where it runs is a safety question, not a
convenience. :func:`own_data_dir` hands a script a directory that is provably the benchmarks':

- ``--data-dir`` defaults to ``.data/bench/<script>``; a given one must not be the site's data
  dir (``DATA_DIR``, else ``.data``) nor a folder above it, and must be missing, empty, or
  already marked as a bench dir by the :data:`MARKER` file this module writes into it;
- one run at a time holds it (an exclusive lock), so a server still running there is a leftover
  of a dead run, and stopping it at the end harms no one.

:func:`own_django` adds Django on top: ``config.settings.dev`` with ``DATA_DIR`` pointing at that
directory, so the settings start an embedded PostgreSQL there; ``migrate``; and at exit the
connections closed and that PostgreSQL stopped. An inherited ``DATABASE_URL`` is refused (it is
where a user's library lives); ``--database-url`` names a throwaway database explicitly, and it
too must be empty or marked as a bench database. Inherited ``MEDIA_ROOT``, an image bucket
(``AWS_STORAGE_BUCKET_NAME``) and broker/cache URLs are dropped, so files and messages stay in
the bench dir as well.

Fake data: :func:`fake_images_replace` (image rows, optionally for files that
:func:`fake_photos_write` made), :func:`fake_captions_create`, :func:`fake_embeddings_copy`, and
the vector generators :func:`unit_vectors`, :func:`clustered_unit_vectors` (equal isotropic
blobs) and :func:`skewed_unit_vectors` (clusters of power-law sizes and varied spread in a narrow,
low-dimensional cone, closer to real image embeddings). Every script makes
its rows through these.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SITE_DEFAULT_DATA_DIR = REPO_ROOT / ".data"  # config/settings/base.py's DATA_DIR default
BENCH_ROOT = SITE_DEFAULT_DATA_DIR / "bench"
MARKER = ".bench-data-dir"
LOCK = ".bench-lock"
# A table in a --database-url database that says it belongs to the benchmarks.
DATABASE_MARKER_TABLE = "bench_harness_marker"
# Settings read from the environment that point at someone's files, broker or cache.
INHERITED_LOCATIONS = (
    "MEDIA_ROOT",
    "AWS_STORAGE_BUCKET_NAME",  # image files in someone's bucket
    "CELERY_BROKER_URL",
    "REDIS_URL",
    "CELERY_RESULT_BACKEND",
    "CACHE_URL",
)
DIM = 512  # clip-vit-base-patch32, the model every bench stores rows for
IMAGE_SIZE = (500, 375)  # a typical Flickr30k photo


class BenchRefused(Exception):
    """The benchmark would touch data that is not its own; the message says why and what to do."""


def add_arguments(parser: argparse.ArgumentParser, *, script: str, database: bool = True) -> None:
    """``--data-dir`` (and, for scripts with a database, ``--database-url``)."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"this bench's own directory (default .data/bench/{script}); never the site's: it "
        f"must be missing, empty or marked by an earlier bench run ({MARKER})",
    )
    if database:
        parser.add_argument(
            "--database-url",
            default=None,
            help="a throwaway PostgreSQL database (empty, or used by a bench before) instead of "
            "the embedded one in --data-dir; DATABASE_URL from the environment is refused",
        )


def site_data_dirs(environ: MutableMapping[str, str]) -> list[Path]:
    """Where the site keeps its data: ``DATA_DIR`` when set, and the default ``.data``."""
    dirs = [SITE_DEFAULT_DATA_DIR]
    if environ.get("DATA_DIR"):
        dirs.append(Path(environ["DATA_DIR"]).expanduser())
    return [path.resolve() for path in dirs]


def data_dir_claim(
    data_dir: Path | None, *, script: str, environ: MutableMapping[str, str] = os.environ
) -> Path:
    """The bench's directory, created and marked; :class:`BenchRefused` if it may be someone's."""
    path = (data_dir or BENCH_ROOT / script).expanduser().resolve()
    for site in site_data_dirs(environ):
        if path == site or path in site.parents:
            raise BenchRefused(
                f"{path} is the site's data dir{'' if path == site else ' or holds it'} "
                f"({site}): a benchmark deletes what it finds. Leave --data-dir out (default "
                f".data/bench/{script}) or give an empty directory of its own."
            )
    if path.exists():
        if not path.is_dir():
            raise BenchRefused(f"--data-dir {path} is not a directory")
        if (path / MARKER).is_file():
            return path
        if any(path.iterdir()):
            raise BenchRefused(
                f"{path} is not empty and was not made by a benchmark (no {MARKER} in it): it "
                "may hold someone's data, and a benchmark deletes what it finds. Give an empty "
                "or new directory."
            )
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text(
        f"Made by bench/{script}.py (bench/_harness.py): benchmark data only, safe to delete.\n"
    )
    return path


def database_url_choose(
    database_url: str | None, *, environ: MutableMapping[str, str] = os.environ
) -> str | None:
    """The explicit ``--database-url``, or None for the embedded one; never an inherited one."""
    if database_url is None and environ.get("DATABASE_URL"):
        raise BenchRefused(
            "DATABASE_URL is set in the environment: that is the site's database, and a "
            "benchmark deletes what it finds. Unset it (the bench starts its own PostgreSQL in "
            "its data dir) or name a throwaway database with --database-url."
        )
    return database_url


@contextmanager
def own_data_dir(
    data_dir: Path | None, *, script: str, environ: MutableMapping[str, str] = os.environ
) -> Iterator[Path]:
    """:func:`data_dir_claim`, held by this run alone until the block ends."""
    path = data_dir_claim(data_dir, script=script, environ=environ)
    with (path / LOCK).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchRefused(f"{path} is in use by another bench run") from None
        yield path


@contextmanager
def own_django(
    *,
    script: str,
    data_dir: Path | None,
    database_url: str | None = None,
    environ: MutableMapping[str, str] = os.environ,
) -> Iterator[Path]:
    """Django on the bench's own data dir and database, migrated; stopped again at the end.

    Yields the data dir. Everything is checked before Django is set up, so a refusal has
    touched nothing.
    """
    database_url = database_url_choose(database_url, environ=environ)
    with own_data_dir(data_dir, script=script, environ=environ) as path:
        for name in INHERITED_LOCATIONS:
            environ.pop(name, None)
        environ["DJANGO_SETTINGS_MODULE"] = "config.settings.dev"
        environ["DATA_DIR"] = str(path)
        environ["DEBUG"] = "0"  # DEBUG keeps every SQL query in memory
        if database_url:
            environ["DATABASE_URL"] = database_url
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        from config.devserver import embedded

        # A kill should stop the embedded server too: turn SIGTERM into an ordinary exit.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        try:
            import django

            django.setup()  # dev settings start (or attach to) PostgreSQL in DATA_DIR
            from django.core.management import call_command

            if database_url:
                _database_claim()
            call_command("migrate", verbosity=0)
            yield path
        finally:
            if "django" in sys.modules and _django_ready():
                from django.db import connections

                connections.close_all()
            if not database_url:
                # The lock says no other run uses this dir: whatever runs here is ours.
                embedded.postgres_stop(path)


def _django_ready() -> bool:
    from django.apps import apps

    return apps.ready


def _database_claim() -> None:
    """Refuse a ``--database-url`` database that has tables and no bench marker; mark it."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT schemaname || '.' || tablename FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        )
        tables = [name for (name,) in cursor.fetchall()]
        if any(name.endswith("." + DATABASE_MARKER_TABLE) for name in tables):
            return
        if tables:
            raise BenchRefused(
                f"--database-url names a database with {len(tables)} tables (e.g. "
                f"{', '.join(tables[:3])}) and no {DATABASE_MARKER_TABLE} table: it may be "
                "someone's library. Give an empty database made for the benchmark."
            )
        cursor.execute(f"CREATE TABLE {DATABASE_MARKER_TABLE} (made_at timestamptz)")
        cursor.execute(f"INSERT INTO {DATABASE_MARKER_TABLE} VALUES (now())")


def main_guarded(run: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None) -> None:
    """Call ``run(argv)``, turning a refusal into one line on stderr and exit status 2."""
    try:
        run(argv)
    except BenchRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# --- fake data ------------------------------------------------------------------------------


def unit_vectors(count: int, *, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """``count`` random L2-normalised float32 rows (no structure: every pair nearly orthogonal)."""
    rows = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clustered_unit_vectors(
    count: int,
    *,
    clusters: int,
    seed: int,
    noise: float,
    stream: int = 1,
    chunk: int = 50_000,
    dim: int = DIM,
) -> Iterator[np.ndarray]:
    """Unit vectors around ``clusters`` seeded centres plus Gaussian noise (the generator of
    ``tests/search/test_search.py::clustered``), ``chunk`` rows at a time so a million rows
    never exist in float64. The same ``seed`` gives the same centres; ``stream`` picks the
    noise, so data (stream 1) and queries (stream 2) share centres but not points."""
    centres = np.random.default_rng(seed).normal(size=(clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed + stream)
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        rows = centres[rng.integers(0, clusters, size)]
        rows = rows + noise * rng.standard_normal((size, dim), dtype=np.float32)
        yield rows / np.linalg.norm(rows, axis=1, keepdims=True)


def skewed_unit_vectors(
    count: int,
    *,
    clusters: int,
    seed: int,
    stream: int = 1,
    chunk: int = 50_000,
    dim: int = DIM,
    zipf: float = 1.1,
    sigma: tuple[float, float] = (0.15, 0.6),
    cone: float = 0.65,
    decay: float = 1.0,
    labels: list[np.ndarray] | None = None,
) -> Iterator[np.ndarray]:
    """Unit vectors shaped more like real image embeddings than :func:`clustered_unit_vectors`'
    equal isotropic blobs, ``chunk`` rows at a time.

    - Cluster sizes follow a power law: cluster k is drawn with probability ~ (k + 1) ** -zipf
      (at 1,000 clusters and 1.1 the biggest holds ~15 % of the rows, the smallest ~0.01 %).
    - Each cluster has its own spread: noise of norm ``sigma_k`` (log-uniform in ``sigma``)
      around a unit centre, so some clusters are tight (near-duplicates, cosine ~0.98 to their
      centre) and some loose (a broad topic, ~0.75).
    - Everything lies in a narrow cone around one shared mean direction (centres are
      ``cone`` * mean + the rest elsewhere, so unrelated rows still have cosine ~cone ** 2), as
      CLIP image embeddings do.
    - Centres and noise vary along a few directions mostly: variance along a fixed random basis
      falls as i ** -decay (decay 1 gives an effective dimensionality of ~30 of 512), the low
      intrinsic dimension that makes real embeddings easier for a graph index than noise.

    The same ``seed`` gives the same structure (mean, basis, centres, sizes, spreads);
    ``stream`` picks the points, so data (stream 1) and queries (stream 2) share clusters, and
    queries favour big clusters as the data does. ``labels``, when given, gets each chunk's
    cluster numbers (0 is the biggest cluster), for checks.
    """
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scale = np.arange(1, dim + 1, dtype=np.float64) ** (-decay / 2)
    scale *= np.sqrt(dim / np.sum(scale**2))  # total variance dim, as an isotropic N(0, 1)
    shaped = (basis * scale).T.astype(np.float32)  # z @ shaped: variance i ** -decay along q_i

    def directions(z: np.ndarray) -> np.ndarray:
        rows = z @ shaped
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    mean = directions(rng.standard_normal((1, dim), dtype=np.float32))[0]
    spread = directions(rng.standard_normal((clusters, dim), dtype=np.float32))
    spread -= np.outer(spread @ mean, mean)  # the part of each centre off the mean direction
    spread /= np.linalg.norm(spread, axis=1, keepdims=True)
    centres = cone * mean + np.sqrt(1 - cone**2) * spread
    weights = np.arange(1, clusters + 1, dtype=np.float64) ** -zipf
    weights /= weights.sum()
    sigmas = np.exp(rng.uniform(np.log(sigma[0]), np.log(sigma[1]), clusters)).astype(np.float32)
    points = np.random.default_rng(seed + stream)
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        picked = points.choice(clusters, size=size, p=weights)
        if labels is not None:
            labels.append(picked)
        noise = directions(points.standard_normal((size, dim), dtype=np.float32))
        noise *= points.standard_normal((size, 1), dtype=np.float32) * 0.15 + 1.0
        rows = centres[picked] + sigmas[picked, None] * noise
        yield (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _raw_connection():
    """A psycopg connection of its own to Django's database, for COPY: the binary vector
    adapters registered on it never change how Django's connection reads vectors."""
    import psycopg
    from django.db import connection
    from pgvector.psycopg import register_vector

    params = connection.get_connection_params()
    keys = ("dbname", "user", "password", "host", "port")
    raw = psycopg.connect(**{key: params[key] for key in keys if params.get(key)})
    register_vector(raw)
    return raw


def fake_photos_write(directory: Path, count: int) -> list[Path]:
    """Write ``count`` photo-like 500x375 JPEGs (smooth colour fields, shapes, sensor-like
    noise), so decoding costs what a real photo costs; files already there are kept."""
    from PIL import Image, ImageDraw, ImageFilter

    directory.mkdir(parents=True, exist_ok=True)
    width, height = IMAGE_SIZE
    paths = []
    for index in range(count):
        path = directory / f"{index:05d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng(index)
        # Low-frequency colour field: a coarse random grid upsampled smoothly.
        coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), "RGB")
        image = coarse.resize((width, height), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(5, 15))):
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            w, h = int(rng.integers(10, 200)), int(rng.integers(10, 200))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x, y, x + w, y + h), fill=colour)
        image = image.filter(ImageFilter.GaussianBlur(1.5))
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (height, width, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(
            path, "JPEG", quality=90
        )
    return paths


def fake_images_replace(
    count: int,
    *,
    files: Sequence[Path] | None = None,
    media_root: Path | None = None,
    splits: Sequence[str] | None = None,
) -> list[int]:
    """Replace every image in the bench's database with ``count`` public Flickr30k rows.

    Rows get ids 1..count (row i is image id i + 1, the same id as its ``flickr30k_id``) and
    ``original_filename`` ``"<id>.jpg"``, or, with ``files`` (under ``media_root``), that
    file's path, name and SHA-256. ``splits[i]`` is row i's split (default none). Written by
    COPY, so a million rows take seconds; the TRUNCATE takes every embedding and caption with
    it. Returns the ids in order.
    """
    import hashlib

    from django.db import connection

    from gallery.models import Image

    if files is not None and len(files) != count:
        raise ValueError(f"{count} images but {len(files)} files")
    table = Image._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {table} RESTART IDENTITY CASCADE")
    now = datetime.now(UTC)
    width, height = IMAGE_SIZE
    with _raw_connection() as raw, raw.cursor() as cursor:
        with cursor.copy(
            f"COPY {table} (id, source, owner_id, visibility, file, width, height, sha256, "
            "original_filename, created_at, flickr30k_id, split) FROM STDIN"
        ) as copy:
            for index in range(count):
                image_id = index + 1
                if files is None:
                    file, name, sha256 = f"bench/{image_id}.jpg", f"{image_id}.jpg", None
                else:
                    path = Path(files[index])
                    file, name = str(path.relative_to(media_root)), path.name
                    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
                copy.write_row(
                    (image_id, "flickr30k", None, "public", file, width, height,
                     sha256 or f"{image_id:064x}", name, now, image_id,
                     splits[index] if splits is not None else "")
                )  # fmt: skip
        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), %s)", [count])
        raw.commit()
    return list(range(1, count + 1))


def fake_captions_create(image_ids: Sequence[int], *, per_image: int) -> int:
    """``per_image`` captions ("caption <c> of image <id>") for each image; returns how many."""
    from gallery.models import Caption

    captions = [
        Caption(image_id=image_id, text=f"caption {c} of image {image_id}", position=c)
        for image_id in image_ids
        for c in range(per_image)
    ]
    Caption.objects.bulk_create(captions, batch_size=5000)
    return len(captions)


def fake_embeddings_copy(
    *, model_id: str, chunks: Iterable[np.ndarray], first_image_id: int = 1
) -> int:
    """Store unit vectors for images ``first_image_id``, ``first_image_id + 1``, ... by binary
    COPY, with no checks and no index maintenance beyond PostgreSQL's own: set-up for a bench,
    not the product's way in (that is ``embeddings_store`` / ``embeddings_import``)."""
    from workers.models import ImageEmbedding

    now = datetime.now(UTC)
    stored = 0
    with _raw_connection() as raw, raw.cursor() as cursor:
        with cursor.copy(
            f"COPY {ImageEmbedding._meta.db_table} (image_id, model_id, vector, created_at) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "varchar", "vector", "timestamptz"])
            for rows in chunks:
                for vector in rows:
                    copy.write_row((first_image_id + stored, model_id, vector, now))
                    stored += 1
        raw.commit()
    return stored
