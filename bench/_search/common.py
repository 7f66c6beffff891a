"""What every part of the search-latency bench shares: constants, a measured series and the
watch on other processes' CPU time."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_ID = "clip-vit-base-patch32"
DIM = 512
TOP_K = 10
API_K = 20  # the API's default page size
WARM_UP_QUERIES = 5


@dataclass
class Measured:
    label: str
    seconds: list[float]
    recall: float | None = None

    def pct(self, q: float) -> float:
        return float(np.percentile(self.seconds, q)) * 1000


def _stat(path: Path) -> tuple[int, float]:
    """(parent pid, CPU seconds used so far) from a process's /proc stat file."""
    fields = path.read_text().rsplit(")", 1)[1].split()
    # After "pid (comm)": state, ppid, ..., utime and stime are fields 14 and 15 of stat.
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds process ``pid`` (on this machine) has used so far."""
    return _stat(Path(f"/proc/{pid}/stat"))[1]


def _processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far) for every process now running."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            found[int(stat.parent.name)] = _stat(stat)
        except (OSError, IndexError):
            continue
    return found


def _descendants(processes: dict[int, tuple[int, float]], *roots: int) -> set[int]:
    """``roots`` and every process under them."""
    found, grew = set(roots), True
    while grew:
        grew = False
        for pid, (parent, _) in processes.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def server_cpu_seconds(data_dir: Path) -> tuple[float, float]:
    """CPU seconds used so far by (the web server: every process under this one, this one
    excepted; the bench's PostgreSQL: its postmaster and backends). Unlike latency, CPU per
    request hardly changes when other work competes for the cores."""
    processes = _processes()
    web = _descendants(processes, os.getpid()) - {os.getpid()}
    database: set[int] = set()
    pid_file = data_dir / "postgres" / "postmaster.pid"
    if pid_file.exists():
        database = _descendants(processes, int(pid_file.read_text().split()[0]))
    return (
        sum(processes[pid][1] for pid in web),
        sum(processes[pid][1] for pid in database if pid in processes),
    )


class MachineWatch:
    """CPU time that processes other than this benchmark's used during a section.

    This benchmark's processes are this one and everything under it (gunicorn), and the
    embedded PostgreSQL of its data directory with its backends. Anything else that ran
    (another benchmark, a test suite) competed for the same 2 cores and skews the figures.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.started = time.monotonic()
        self.before = _processes()

    def _ours(self, processes: dict[int, tuple[int, float]]) -> set[int]:
        roots = [os.getpid()]
        pid_file = self.data_dir / "postgres" / "postmaster.pid"
        if pid_file.exists():
            roots.append(int(pid_file.read_text().split()[0]))
        return _descendants(processes, *roots)

    def report(self, section: str) -> None:
        after = _processes()
        ours = self._ours(after)
        elapsed = time.monotonic() - self.started
        used = {
            pid: cpu - self.before.get(pid, (0, 0.0))[1]
            for pid, (_, cpu) in after.items()
            if pid not in ours
        }
        busy = sorted(((cpu, pid) for pid, cpu in used.items() if cpu >= 0.5), reverse=True)
        other = sum(cpu for cpu, _ in busy)
        names = ", ".join(f"{_command(pid)} {cpu:.0f}s" for cpu, pid in busy[:3])
        print(
            f"[{section}] {elapsed:.0f} s; other processes used {other:.0f} CPU-s "
            f"({100 * other / (elapsed * (os.cpu_count() or 1)):.0f}% of the machine)"
            f"{': ' + names if names else ''}; loadavg_1min={os.getloadavg()[0]:.2f}",
            flush=True,
        )


def _command(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    text = " ".join(w.decode(errors="replace") for w in words if w)
    return f"{pid}:{text[:60]}"


def mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"
