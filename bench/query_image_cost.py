"""What one query image (search by image) costs to decode: peak memory and CPU, per file of a
hostile corpus.

Builds the corpus in a temporary directory: giants of every accepted format inside the upload
limits (1-bit, palette, 16-bit, float, CMYK, interlaced, multi-frame, EXIF-rotated, progressive
JPEG, decompression-bomb headers, files of noise at the byte limit). Each file then goes through
``gallery.decoding.image_query_decode`` (what ``POST /search/image/`` and ``POST /api/search/image``
call) in a fresh Python process, which reports its peak RSS (``ru_maxrss``, the whole process:
Python, Django and Pillow included) and the CPU seconds of the decode alone. No database is
used. Prints a table and whether every file stays within ``--max-rss-mb`` and ``--max-cpu``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/query_image_cost.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

REPO_ROOT = Path(__file__).resolve().parents[1]


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show upright
    return exif.tobytes()


def _png_header_only(width: int, height: int, bit_depth: int = 1, colour: int = 0) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _noise(mode: str, size: tuple[int, int]) -> Image.Image:
    bands = len(Image.new(mode, (1, 1)).getbands())
    return Image.frombytes(mode, size, os.urandom(size[0] * size[1] * bands))


def _pattern(size: tuple[int, int]) -> Image.Image:
    """RGBA that compresses, but only after PNG's costliest row filters."""
    x = np.arange(size[0], dtype=np.uint32)
    y = np.arange(size[1], dtype=np.uint32)[:, None]
    bands = [(x * y) % 251, (x + y) % 256, (x ^ y) % 256, (x * 3 + y * 7) % 256]
    return Image.fromarray(np.stack(bands, -1).astype(np.uint8), "RGBA")


def _save(image: Image.Image, path: Path, fmt: str, **params: object) -> None:
    image.save(path, fmt, **params)


def _frames(mode: str, size: tuple[int, int], n: int) -> list[Image.Image]:
    return [Image.new(mode, size, color=i * 40) for i in range(n)]


# name -> writer(path). Sizes: 80,000,000 pixels is the upload limit (10000 x 8000); 4000 x 3000
# the query limit for what cannot be decoded at reduced scale (a quarter of it for WebP and
# progressive JPEGs).
GIANT = (10000, 8000)
AT_QUERY_LIMIT = (4000, 3000)
WEBP_AT_QUERY_LIMIT = (2000, 1500)  # and progressive JPEG's


def _corpus() -> dict[str, Callable[[Path], None]]:
    def palette_giant(size: tuple[int, int]) -> Image.Image:
        image = Image.new("P", size)
        image.putpalette(bytes(range(256)) * 3)
        return image

    def multi_frame_gif(path: Path) -> None:
        first, *rest = [f.convert("P") for f in _frames("L", AT_QUERY_LIMIT, 3)]
        first.save(path, "GIF", save_all=True, append_images=rest)

    def multi_frame_tiff(path: Path) -> None:
        first, *rest = _frames("L", AT_QUERY_LIMIT, 3)
        first.save(
            path, "TIFF", save_all=True, append_images=rest, compression="tiff_adobe_deflate"
        )

    def bmp_rle8(path: Path) -> None:
        # Pillow writes no RLE: a 4000x3000 8-bit BMP whose pixels are runs of 255 (RLE8).
        width, height = AT_QUERY_LIMIT
        row = b"\xff\x00" * (width // 255) + bytes([width % 255, 0]) + b"\x00\x00"
        pixels = row * height + b"\x00\x01"
        palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
        info = struct.pack(
            "<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0
        )
        offset = 14 + len(info) + len(palette)
        head = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
        path.write_bytes(head + info + palette + pixels)

    return {
        "png 1-bit 10000x8000": lambda p: _save(Image.new("1", GIANT), p, "PNG"),
        "png 1-bit 4000x3000": lambda p: _save(Image.new("1", AT_QUERY_LIMIT), p, "PNG"),
        "png 1-bit 4000x3000 exif-rotated": lambda p: _save(
            Image.new("1", AT_QUERY_LIMIT), p, "PNG", exif=_exif_rotated()
        ),
        "png palette 10000x8000": lambda p: _save(palette_giant(GIANT), p, "PNG"),
        "png palette 4000x3000": lambda p: _save(palette_giant(AT_QUERY_LIMIT), p, "PNG"),
        "png palette+transparency 4000x3000": lambda p: _save(
            palette_giant(AT_QUERY_LIMIT), p, "PNG", transparency=0
        ),
        "png 16-bit gray 4000x3000": lambda p: _save(Image.new("I;16", AT_QUERY_LIMIT), p, "PNG"),
        "png RGBA 4000x3000": lambda p: _save(Image.new("RGBA", AT_QUERY_LIMIT), p, "PNG"),
        "png RGBA pattern 4000x3000 (paeth)": lambda p: _save(_pattern(AT_QUERY_LIMIT), p, "PNG"),
        "png RGB interlaced 4000x3000": lambda p: _save(
            Image.new("RGB", AT_QUERY_LIMIT), p, "PNG", interlace=1
        ),
        "png RGB noise 2800x2800 (23 MB)": lambda p: _save(
            _noise("RGB", (2800, 2800)), p, "PNG", compress_level=1
        ),
        "png bomb header 30000x30000": lambda p: p.write_bytes(_png_header_only(30000, 30000)),
        "png header 8944x8944 RGBA": lambda p: p.write_bytes(_png_header_only(8944, 8944, 8, 6)),
        "tiff 1-bit g4 10000x8000": lambda p: _save(
            Image.new("1", GIANT), p, "TIFF", compression="group4"
        ),
        "tiff 1-bit g4 4000x3000": lambda p: _save(
            Image.new("1", AT_QUERY_LIMIT), p, "TIFF", compression="group4"
        ),
        "tiff float 4000x3000": lambda p: _save(
            Image.new("F", AT_QUERY_LIMIT), p, "TIFF", compression="tiff_adobe_deflate"
        ),
        "tiff CMYK 4000x3000": lambda p: _save(
            Image.new("CMYK", AT_QUERY_LIMIT), p, "TIFF", compression="tiff_adobe_deflate"
        ),
        "tiff jpeg-compressed 4000x3000": lambda p: _save(
            Image.new("RGB", AT_QUERY_LIMIT), p, "TIFF", compression="jpeg"
        ),
        "tiff 3 frames 4000x3000": multi_frame_tiff,
        "gif 10000x8000": lambda p: _save(palette_giant(GIANT), p, "GIF"),
        "gif 3 frames 4000x3000": multi_frame_gif,
        "webp lossless 4000x3000": lambda p: _save(
            Image.new("RGB", AT_QUERY_LIMIT), p, "WEBP", lossless=True
        ),
        "webp lossless RGBA 2000x1500": lambda p: _save(
            Image.new("RGBA", WEBP_AT_QUERY_LIMIT), p, "WEBP", lossless=True
        ),
        "webp noise 2000x1500": lambda p: _save(_noise("RGB", WEBP_AT_QUERY_LIMIT), p, "WEBP"),
        "webp noise 2000x1500 q100": lambda p: _save(
            _noise("RGB", WEBP_AT_QUERY_LIMIT), p, "WEBP", quality=100
        ),
        "webp lossless noise 2000x1500": lambda p: _save(
            _noise("RGB", WEBP_AT_QUERY_LIMIT), p, "WEBP", lossless=True, quality=0
        ),
        "gif noise 4000x3000": lambda p: _save(_noise("L", AT_QUERY_LIMIT), p, "GIF"),
        "tiff jpeg noise 4000x3000": lambda p: _save(
            _noise("RGB", AT_QUERY_LIMIT), p, "TIFF", compression="jpeg", quality=60
        ),
        "webp 16383x180": lambda p: _save(Image.new("RGB", (16383, 180)), p, "WEBP"),
        "png RGB 13000x900 strip": lambda p: _save(Image.new("RGB", (13000, 900)), p, "PNG"),
        "bmp 1-bit 10000x8000": lambda p: _save(Image.new("1", GIANT), p, "BMP"),
        "bmp rle8 4000x3000": bmp_rle8,
        "bmp 24-bit noise 2900x2900 (25 MB)": lambda p: _save(
            _noise("RGB", (2900, 2900)), p, "BMP"
        ),
        "jpeg baseline 10000x8000": lambda p: _save(Image.new("RGB", GIANT), p, "JPEG"),
        "jpeg baseline 4:4:4 10000x8000": lambda p: _save(
            Image.new("RGB", GIANT), p, "JPEG", subsampling=0, quality=95
        ),
        "jpeg baseline exif-rotated 10000x8000": lambda p: _save(
            Image.new("RGB", GIANT), p, "JPEG", exif=_exif_rotated()
        ),
        "jpeg CMYK 10000x8000": lambda p: _save(Image.new("CMYK", GIANT), p, "JPEG"),
        "jpeg gray 10000x8000": lambda p: _save(Image.new("L", GIANT), p, "JPEG"),
        "jpeg noise 6000x4000 (~20 MB)": lambda p: _save(
            _noise("RGB", (6000, 4000)), p, "JPEG", quality=85
        ),
        "jpeg progressive 10000x8000": lambda p: _save(
            Image.new("RGB", GIANT), p, "JPEG", progressive=True
        ),
        "jpeg progressive 4:4:4 2000x1500": lambda p: _save(
            Image.new("RGB", WEBP_AT_QUERY_LIMIT), p, "JPEG", progressive=True, subsampling=0
        ),
        "jpeg progressive noise 4000x3000": lambda p: _save(
            _noise("RGB", (4000, 3000)), p, "JPEG", progressive=True, quality=90
        ),
        "jpeg progressive noise 2000x1500 q100": lambda p: _save(
            _noise("RGB", WEBP_AT_QUERY_LIMIT),
            p,
            "JPEG",
            progressive=True,
            quality=100,
            subsampling=0,
        ),  # fmt: skip
    }


def measure(path: Path, *, upload: bool) -> dict[str, object]:
    """In this (fresh) process: decode ``path`` as a query image (or as an upload); peak RSS
    and CPU."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    sys.path.insert(0, str(REPO_ROOT))
    import django

    django.setup()
    from django.core.files.uploadedfile import UploadedFile

    from gallery.decoding import image_file_decode, image_query_decode
    from kernel.errors import ApplicationError

    before_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(path, "rb") as handle:
        file = UploadedFile(handle, name=path.name, size=path.stat().st_size)
        start = os.times()
        try:
            if upload:
                picture = image_file_decode(file=file, label="the upload").image
            else:
                picture = image_query_decode(file=file, label="the query image")
            outcome = f"decoded {picture.width}x{picture.height}"
        except ApplicationError as exc:
            outcome = f"{exc.status} {exc.message}"
        end = os.times()
    return {
        "baseline_mb": before_rss / 1024,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_s": (end.user - start.user) + (end.system - start.system),
        "outcome": outcome,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-rss-mb", type=float, default=300.0)
    parser.add_argument("--max-cpu", type=float, default=0.5, help="seconds")
    parser.add_argument("--only", default="", help="files whose name contains this")
    parser.add_argument(
        "--upload",
        action="store_true",
        help="decode as an upload (gallery.decoding.image_file_decode: the upload limits only) "
        "instead of as a query image; the figures are the query path's goal, not the upload's",
    )
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, upload=args.upload)))
        return 0

    if args.build:
        # Pillow encodes a progressive JPEG in one buffer; noise at quality 95 needs a big one.
        ImageFile.MAXBLOCK = 64 * 1024 * 1024
        for n, (name, write) in enumerate(_corpus().items()):
            if args.only in name:
                write(args.build / f"{n:02d} {name}")
        return 0

    failures = 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="query-image-cost-") as tmp:
        # Built in a process of its own: a child's ru_maxrss starts from its parent's peak (the
        # kernel keeps it across fork and exec), so this process must stay small.
        build = [sys.executable, __file__, "--build", tmp, "--only", args.only]
        subprocess.run(build, check=True, cwd=REPO_ROOT)
        for path in sorted(Path(tmp).iterdir()):
            name = path.name.split(" ", 1)[1]
            child = subprocess.run(
                [sys.executable, __file__, "--measure", str(path)]
                + (["--upload"] if args.upload else []),
                capture_output=True,
                text=True,
                cwd=REPO_ROOT,
                check=False,
            )
            if child.returncode != 0:
                print(f"{name}: the measuring process failed:\n{child.stderr}", file=sys.stderr)
                failures += 1
                continue
            result = json.loads(child.stdout.strip().splitlines()[-1])
            ok = result["peak_mb"] <= args.max_rss_mb and result["cpu_s"] <= args.max_cpu
            failures += not ok
            rows.append((name, path.stat().st_size, result, ok))
            print(_row(name, path_size=rows[-1][1], result=result, ok=ok), flush=True)
    print(
        f"\n{len(rows)} files; limits: peak RSS <= {args.max_rss_mb:.0f} MB (whole process), "
        f"CPU <= {args.max_cpu} s (the decode)."
    )
    if rows:
        worst_rss = max(rows, key=lambda r: r[2]["peak_mb"])
        worst_cpu = max(rows, key=lambda r: r[2]["cpu_s"])
        print(f"highest peak RSS: {worst_rss[2]['peak_mb']:.0f} MB ({worst_rss[0]})")
        print(f"highest CPU: {worst_cpu[2]['cpu_s']:.2f} s ({worst_cpu[0]})")
    print("MEETS the figures" if not failures else f"{failures} file(s) OVER the figures")
    return 1 if failures else 0


def _row(name: str, *, path_size: int, result: dict[str, object], ok: bool) -> str:
    outcome = str(result["outcome"])
    outcome = outcome if len(outcome) <= 60 else outcome[:57] + "..."
    return (
        f"{name:<38} {path_size / 1e6:7.2f} MB  base {result['baseline_mb']:4.0f} MB  "
        f"peak {result['peak_mb']:5.0f} MB  cpu {result['cpu_s']:5.2f} s  "
        f"{'ok  ' if ok else 'OVER'}  {outcome}"
    )


if __name__ == "__main__":
    sys.exit(main())
