"""manage.py import_embeddings: the original project's arrays (one row per image, in the order of
a file names array) become stored, normalised embeddings; anything wrong stores nothing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from tests.factories import ImageFactory
from workers.models import EmbeddingJob, ImageEmbedding

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
NAMES = ["1000092795.jpg", "10002456.jpg", "1000268201.jpg"]


@pytest.fixture
def flickr_images():
    return [ImageFactory(dataset=True, original_filename=name) for name in NAMES]


def write_arrays(tmp_path: Path, vectors: np.ndarray, names) -> tuple[str, str]:
    embeddings, filenames = tmp_path / "image_embeddings.npy", tmp_path / "image_filenames.npy"
    np.save(embeddings, vectors)
    np.save(filenames, np.asarray(names))
    return str(embeddings), str(filenames)


def run(embeddings: str, filenames: str, *extra: str) -> str:
    out = io.StringIO()
    call_command(
        "import_embeddings", "--model", CLIP, "--embeddings", embeddings,
        "--filenames", filenames, *extra, stdout=out,
    )  # fmt: skip
    return out.getvalue()


def raw_vectors(n: int, dim: int = 512, seed: int = 0) -> np.ndarray:
    # Deliberately not unit length: the import normalises.
    return np.random.default_rng(seed).normal(scale=3.0, size=(n, dim))


def test_import_stores_normalised_rows_for_matching_images(tmp_path, flickr_images) -> None:
    vectors = raw_vectors(4)
    paths = write_arrays(tmp_path, vectors, [*NAMES, "404.jpg"])

    out = run(*paths)

    assert f"{CLIP}: 4 rows, stored 3, 0 already had one, 1 file names with no image" in out
    assert "no image: 404.jpg" in out
    for image, row in zip(flickr_images, vectors, strict=False):
        stored = np.asarray(ImageEmbedding.objects.get(image=image, model_id=CLIP).vector)
        assert np.linalg.norm(stored) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(stored, row / np.linalg.norm(row), atol=1e-6)
    done = EmbeddingJob.objects.filter(model_id=CLIP, status=EmbeddingJob.Status.DONE)
    assert done.count() == 3


def test_import_is_idempotent(tmp_path, flickr_images) -> None:
    paths = write_arrays(tmp_path, raw_vectors(3), NAMES)
    run(*paths)
    again = run(*write_arrays(tmp_path, raw_vectors(3, seed=1), NAMES))
    assert "stored 0, 3 already had one" in again
    assert ImageEmbedding.objects.count() == 3


def test_names_as_bytes_or_paths_match_too(tmp_path, flickr_images) -> None:
    names = np.array([f"flickr30k-images/{n}".encode() for n in NAMES])  # dtype "S"
    out = run(*write_arrays(tmp_path, raw_vectors(3), names))
    assert "stored 3" in out


@pytest.mark.parametrize(
    ("vectors", "names", "message"),
    [
        (raw_vectors(3, dim=640), NAMES, "dimension mismatch: .* 512-dimensional .* 640"),
        (raw_vectors(2), NAMES, "row count mismatch: 2 rows of embeddings but 3 file names"),
        (
            np.where(np.arange(512) == 7, np.nan, raw_vectors(3)),
            NAMES,
            "3 rows contain NaN or infinity",
        ),
        (np.zeros((3, 512)), NAMES, "3 rows are all zeros"),
        (
            raw_vectors(3),
            [NAMES[0], NAMES[1], NAMES[0]],
            "file name '1000092795.jpg' appears more than once",
        ),
    ],
    ids=["wrong-dimension", "row-count", "nan", "zero-rows", "duplicate-name"],
)
def test_invalid_arrays_are_refused_and_nothing_is_stored(
    tmp_path, flickr_images, vectors, names, message
) -> None:
    with pytest.raises(CommandError, match=f"nothing imported: {message}"):
        run(*write_arrays(tmp_path, vectors, names))
    assert not ImageEmbedding.objects.exists()
    assert not EmbeddingJob.objects.exists()


def test_one_bad_row_among_many_stores_nothing(tmp_path, flickr_images) -> None:
    vectors = raw_vectors(3)
    vectors[2, 100] = np.inf
    with pytest.raises(CommandError, match=r"1 rows contain NaN .*row 2, 1000268201\.jpg"):
        run(*write_arrays(tmp_path, vectors, NAMES))
    assert not ImageEmbedding.objects.exists()


@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e39], ids=["1e30", "1e-30", "beyond-float32"])
def test_rows_of_extreme_but_finite_values_keep_their_direction(
    tmp_path, flickr_images, scale
) -> None:
    # In float32 the squares of 1e30 overflow and those of 1e-30 underflow: such rows used to
    # be stored as all zeros (every distance NaN) or to end in a traceback.
    vectors = raw_vectors(3)
    vectors[1] *= scale
    assert "stored 3" in run(*write_arrays(tmp_path, vectors, NAMES))
    stored = np.asarray(ImageEmbedding.objects.get(image=flickr_images[1]).vector)
    np.testing.assert_allclose(stored, vectors[1] / np.linalg.norm(vectors[1]), atol=1e-6)


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        (1e200, r"1 rows have values too large to normalise in float64 \(the first: row 1, "),
        (1e-200, r"1 rows have values too small to normalise in float64 \(the first: row 1, "),
    ],
    ids=["overflow", "underflow"],
)
def test_rows_whose_length_float64_cannot_hold_are_refused_by_row(
    tmp_path, flickr_images, scale, message
) -> None:
    vectors = raw_vectors(3)
    vectors[1] *= scale
    with pytest.raises(CommandError, match=f"nothing imported: {message}10002456\\.jpg"):
        run(*write_arrays(tmp_path, vectors, NAMES))
    assert not ImageEmbedding.objects.exists()


def test_empty_arrays_and_empty_files_are_refused_plainly(tmp_path, flickr_images) -> None:
    paths = write_arrays(tmp_path, np.zeros((0, 512)), np.array([], dtype=str))
    with pytest.raises(CommandError, match=r"nothing imported: .* no rows \(shape \(0, 512\)\)"):
        run(*paths)
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    with pytest.raises(CommandError, match="empty.npy is empty: it holds no array"):
        run(str(empty), paths[1])
    assert not ImageEmbedding.objects.exists()


def test_pickled_arrays_need_explicit_trust(tmp_path, flickr_images) -> None:
    embeddings = tmp_path / "e.npy"
    filenames = tmp_path / "f.npy"
    np.save(embeddings, raw_vectors(3))
    np.save(filenames, np.array(NAMES, dtype=object), allow_pickle=True)
    with pytest.raises(CommandError, match="--allow-pickle"):
        run(str(embeddings), str(filenames))
    assert "stored 3" in run(str(embeddings), str(filenames), "--allow-pickle")


def test_no_matching_image_says_to_import_flickr30k_first(tmp_path) -> None:
    with pytest.raises(CommandError, match="import_flickr30k first"):
        run(*write_arrays(tmp_path, raw_vectors(3), NAMES))


def test_unknown_model_lists_the_known_ones(tmp_path) -> None:
    with pytest.raises(CommandError, match="known models"):
        call_command(
            "import_embeddings", "--model", "clip-huge", "--embeddings", "e.npy",
            "--filenames", "f.npy",
        )  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_bulk_load_into_an_empty_model_rebuilds_its_index_once(monkeypatch) -> None:
    from django.db import connection

    from workers import services
    from workers.indexes import hnsw_index_name
    from workers.services import embeddings_import

    images = ImageFactory.create_batch(12, dataset=True)
    dropped = []
    real_drop = services.embedding_index_drop
    monkeypatch.setattr(
        services, "embedding_index_drop", lambda **kw: dropped.append(kw) or real_drop(**kw)
    )
    result = embeddings_import(
        model_id="clip-vit-base-patch32",
        vectors=raw_vectors(12),
        filenames=[i.original_filename for i in images],
        rebuild_index_min_rows=10,
    )
    assert result.stored == 12 and dropped == [{"model_id": "clip-vit-base-patch32"}]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = %s",
            [hnsw_index_name("clip-vit-base-patch32")],
        )
        assert "hnsw" in cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_a_failed_bulk_load_still_leaves_the_index_in_place(monkeypatch) -> None:
    from django.db import connection

    from workers import services
    from workers.indexes import hnsw_index_name
    from workers.services import embeddings_import

    def broken_store(**kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(services, "embeddings_store", broken_store)
    images = ImageFactory.create_batch(12, dataset=True)
    with pytest.raises(RuntimeError, match="disk full"):
        embeddings_import(
            model_id="clip-vit-base-patch32",
            vectors=raw_vectors(12),
            filenames=[i.original_filename for i in images],
            rebuild_index_min_rows=10,
        )
    assert not ImageEmbedding.objects.exists()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_indexes WHERE indexname = %s",
            [hnsw_index_name("clip-vit-base-patch32")],
        )
        assert cursor.fetchone() == (1,)
