"""The benchmark harness refuses anything that may be someone's data, and a bench runs end to end
in a directory of its own. Benches delete and truncate what they find, so these refusals are what
keeps a user's library safe when they run one with their real settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import _harness
from config.devserver import embedded

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment whose site data dir (DATA_DIR) holds a library; the default site data dir
    (.data) is a temporary one too, so a broken harness cannot mark or fill the real one."""
    default = tmp_path / "repo" / ".data"
    (default / "postgres").mkdir(parents=True)
    monkeypatch.setattr(_harness, "SITE_DEFAULT_DATA_DIR", default)
    monkeypatch.setattr(_harness, "BENCH_ROOT", default / "bench")
    data_dir = tmp_path / "site-data"
    (data_dir / "media").mkdir(parents=True)
    (data_dir / "media" / "photo.jpg").write_bytes(b"someone's photo")
    return {"DATA_DIR": str(data_dir)}


def test_the_default_site_data_dir_is_the_settings_default() -> None:
    assert REPO_ROOT / ".data" == _harness.SITE_DEFAULT_DATA_DIR
    assert _harness.SITE_DEFAULT_DATA_DIR / "bench" == _harness.BENCH_ROOT


def _claim(path: Path | None, environ: dict[str, str]) -> Path:
    return _harness.data_dir_claim(path, script="test", environ=environ)


def test_refuses_the_sites_data_dir_and_the_folders_above_it(site: dict[str, str]) -> None:
    data_dir = Path(site["DATA_DIR"])
    default = _harness.SITE_DEFAULT_DATA_DIR
    for path in (data_dir, data_dir.parent, default, default.parent):
        with pytest.raises(_harness.BenchRefused, match="site's data dir"):
            _claim(path, site)
    assert not (data_dir / _harness.MARKER).exists()
    assert (data_dir / "media" / "photo.jpg").read_bytes() == b"someone's photo"


def test_refuses_a_non_empty_directory_no_bench_made(site: dict[str, str], tmp_path: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    (library / "notes.txt").write_text("keep me")
    with pytest.raises(_harness.BenchRefused, match="not empty"):
        _claim(library, site)
    assert sorted(p.name for p in library.iterdir()) == ["notes.txt"]


def test_takes_a_new_or_empty_directory_and_knows_it_again(
    site: dict[str, str], tmp_path: Path
) -> None:
    new, empty = tmp_path / "new" / "bench", tmp_path / "empty"
    empty.mkdir()
    for path in (new, empty):
        assert _claim(path, site) == path.resolve()
        assert (path / _harness.MARKER).is_file()
        (path / "postgres").mkdir()  # what a run leaves behind
        assert _claim(path, site) == path.resolve()


def test_default_is_a_directory_of_its_own_under_the_site_data_dir(site: dict[str, str]) -> None:
    path = _claim(None, site)
    assert path == (_harness.SITE_DEFAULT_DATA_DIR / "bench" / "test").resolve()
    assert (path / _harness.MARKER).is_file()
    assert not (_harness.SITE_DEFAULT_DATA_DIR / _harness.MARKER).exists()


def test_one_run_at_a_time_per_directory(site: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "bench"
    with (
        _harness.own_data_dir(path, script="test", environ=site),
        pytest.raises(_harness.BenchRefused, match="in use"),
        _harness.own_data_dir(path, script="test", environ=site),
    ):
        pass


def test_refuses_an_inherited_database_url(site: dict[str, str], tmp_path: Path) -> None:
    environ = {**site, "DATABASE_URL": "postgresql://me@db/my-library"}
    with pytest.raises(_harness.BenchRefused, match="DATABASE_URL"):
        _harness.database_url_choose(None, environ=environ)
    # Checked before anything is made or set up: no data dir, no settings changed.
    with (
        pytest.raises(_harness.BenchRefused, match="DATABASE_URL"),
        _harness.own_django(script="test", data_dir=tmp_path / "bench", environ=environ),
    ):
        pass
    assert not (tmp_path / "bench").exists()
    assert environ["DATABASE_URL"] == "postgresql://me@db/my-library"
    assert "DJANGO_SETTINGS_MODULE" not in environ
    # Named explicitly, a throwaway database is the user's choice.
    explicit = "postgresql://me@db/bench-scratch"
    assert _harness.database_url_choose(explicit, environ=environ) == explicit


@pytest.mark.django_db
def test_refuses_a_database_url_that_holds_tables_no_bench_made() -> None:
    # The test database stands in for a library: migrated tables, no bench marker.
    from django.db import connection

    with pytest.raises(_harness.BenchRefused, match="may be someone's library"):
        _harness._database_claim()
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [_harness.DATABASE_MARKER_TABLE])
        assert cursor.fetchone() == (None,)


def _bench_environ(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MEDIA_ROOT")}
    return {**environ, "OMP_NUM_THREADS": "1", **extra}


def test_a_bench_refuses_an_inherited_database_url_before_touching_anything(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "bench/import_speed.py", "--rows", "5", "--data-dir", str(data_dir)],
        cwd=REPO_ROOT,
        env=_bench_environ(DATABASE_URL="postgresql://me@db/my-library"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "refused: DATABASE_URL is set" in result.stderr
    assert not data_dir.exists()


@pytest.mark.slow  # a bench run end to end in a subprocess
def test_import_speed_runs_end_to_end_in_its_own_directory() -> None:
    # Not under pytest's tmp_path: that is private to root, and the embedded PostgreSQL runs
    # as its own user when started by root.
    import tempfile

    parent = Path(tempfile.mkdtemp(prefix="bench-harness-"))
    parent.chmod(0o755)
    data_dir = parent / "import_speed"
    try:
        result = subprocess.run(
            [sys.executable, "bench/import_speed.py", "--rows", "20", "--keep-index",
             "--data-dir", str(data_dir)],
            cwd=REPO_ROOT, env=_bench_environ(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        lines = result.stdout.splitlines()
        assert lines[0].split() == ["mode", "rows", "seconds"]
        assert [line.split()[-2] for line in lines[1:]] == ["20", "20"]
        assert (data_dir / _harness.MARKER).is_file()
        assert (data_dir / "postgres" / "PG_VERSION").is_file()  # its own database, there
        assert not embedded.postgres_running(data_dir)  # and stopped again
    finally:
        embedded.postgres_stop(data_dir)
        subprocess.run(["rm", "-rf", str(parent)], check=False)


def test_skewed_generator_has_uneven_clusters_in_a_narrow_cone() -> None:
    import numpy as np

    labels: list[np.ndarray] = []
    rows = np.concatenate(
        list(_harness.skewed_unit_vectors(20_000, clusters=50, seed=3, labels=labels))
    )
    again = np.concatenate(list(_harness.skewed_unit_vectors(20_000, clusters=50, seed=3)))
    queries = next(_harness.skewed_unit_vectors(100, clusters=50, seed=3, stream=2, chunk=100))
    blobs = np.concatenate(
        list(_harness.clustered_unit_vectors(20_000, clusters=50, seed=3, noise=0.35))
    )
    assert rows.shape == (20_000, _harness.DIM) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    assert np.array_equal(rows, again)  # seeded: a later run measures the same data
    sizes = np.bincount(np.concatenate(labels), minlength=50)
    assert sizes[0] > 20 * sizes[-1] > 0  # power-law sizes, not equal blobs
    # Spread differs per cluster: mean cosine to the cluster's mean row.
    spread = [
        float(np.mean(rows[label == k] @ (m := rows[label == k].mean(0)) / np.linalg.norm(m)))
        for label in [np.concatenate(labels)]
        for k in range(10)
    ]
    assert max(spread) - min(spread) > 0.05
    pairs = np.random.default_rng(0).integers(0, len(rows), (2000, 2))
    cosine = np.sum(rows[pairs[:, 0]] * rows[pairs[:, 1]], axis=1)
    blob_cosine = np.sum(blobs[pairs[:, 0]] * blobs[pairs[:, 1]], axis=1)
    assert cosine.mean() > 0.3 > abs(blob_cosine.mean())  # a shared mean direction
    # Queries land among the data: each has a row far closer than a random pair.
    assert np.min(np.max(queries @ rows.T, axis=1)) > cosine.mean() + 0.2
