"""Start the whole site and keep it up: embedded PostgreSQL + Redis, migrations, a Celery worker,
Celery beat and the web server, each supervised.

Run through ``./run``. A child that dies (worker, beat, Redis, web, or the embedded PostgreSQL)
is restarted with backoff and logged in one line, while the rest keeps serving. Only Ctrl-C or
SIGTERM stops everything: every child's whole process group, then the embedded servers of this
data dir. ``./run manage ...`` runs one management command against the same data (see
:func:`manage`). No Django imports here: the launcher only starts processes, and Django runs
inside them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from config.devserver import embedded

BASE_DIR = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
STOP_GRACE_SECONDS = 15
# A child that stayed up this long has recovered: its next death starts the backoff again.
HEALTHY_AFTER_SECONDS = 60
MAX_BACKOFF_SECONDS = 30
WORKER_READY_TIMEOUT = 90
# A web worker that answers but keeps failing its self-check (database or cache unreachable)
# this long after the start is a failed start.
SELF_CHECK_TIMEOUT = 30
# Addresses that mean "every interface": the site is reached on loopback from here.
ANY_ADDRESS = {"0.0.0.0", "::", ""}  # noqa: S104 - recognising them, not binding

_libc = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
PR_SET_PDEATHSIG = 1


class LaunchError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[run] {message}", flush=True)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def _child_setup() -> None:
    # Runs in the child between fork and exec. If the launcher itself is killed (SIGKILL, OOM),
    # the kernel sends its children SIGTERM instead of leaving them orphaned: an orphaned beat
    # once kept sending sweeps into the next run's Redis.
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Restarts:
    """When a supervised part that stopped is started again: after a backoff that doubles while
    it keeps dying young (up to MAX_BACKOFF_SECONDS) and starts over once it stayed up."""

    backoff: float = 1.0
    started_at: float = 0.0
    restart_at: float | None = None

    def due(self, now: float, name: str, why: str) -> bool:
        """Called while the part is down: the first call logs one line and schedules the
        restart; True once it is time."""
        if self.restart_at is None:
            self.backoff = next_backoff(self.backoff, now - self.started_at)
            self.restart_at = now + self.backoff
            log(f"{name} stopped ({why}); restarting in {self.backoff:.0f}s")
            return False
        return now >= self.restart_at

    def started(self, now: float) -> None:
        self.started_at = now
        self.restart_at = None


@dataclass
class Child:
    """One supervised process, started in a process group of its own."""

    name: str
    cmd: list[str]
    process: subprocess.Popen[str] | None = None
    restarts: Restarts = field(default_factory=Restarts)
    ready: threading.Event = field(default_factory=threading.Event)
    ready_marker: str | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Launcher:
    def __init__(self) -> None:
        self.host = os.environ.get("HOST", "127.0.0.1")
        self.port = port_from_env()
        self.data_dir = data_dir_from_env()
        self.env = site_env(self.data_dir)
        self.env.setdefault("ALLOWED_HOSTS", allowed_hosts_for(self.host))
        self.children: list[Child] = []
        self.self_check_seconds = float(
            os.environ.get("RUN_SELF_CHECK_SECONDS") or SELF_CHECK_TIMEOUT
        )
        self.embedded_postgres = not self.env.get("DATABASE_URL")
        self.embedded_redis = not (self.env.get("CELERY_BROKER_URL") or self.env.get("REDIS_URL"))
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_restarts = Restarts()
        self.postgres_restarts = Restarts()
        self.stopping = False
        self.owns_data_dir = False
        self.lock = self.data_dir / "run.pid"
        self.output_lock = threading.Lock()

    # --- start ---------------------------------------------------------------------------
    def start(self) -> None:
        if not port_free(self.host, self.port):
            raise LaunchError(
                f"port {self.port} on {self.host} is taken; stop what uses it or set PORT=..."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.take_lock()
        if self.embedded_postgres:
            self.env["DATABASE_URL"] = start_postgres_checked(self.data_dir)
            log(f"PostgreSQL + pgvector (embedded) in {embedded.postgres_dir(self.data_dir)}")
        if self.embedded_redis:
            self.start_redis()
            self.env["CELERY_BROKER_URL"] = embedded.socket_url(
                embedded.redis_socket(self.data_dir)
            )
            log(f"Redis (embedded, persistent) on {embedded.redis_socket(self.data_dir)}")

        run_manage(self.env, "migrate", "--noinput", "--verbosity", "0")
        run_manage(self.env, "collectstatic", "--noinput", "--verbosity", "0")
        celery = [PYTHON, "-m", "celery", "-A", "config"]
        self.children = [
            Child(
                "worker",
                [*celery, "--quiet", "worker", "--pool=solo",
                 "--loglevel=INFO", "--hostname=worker@%h"],
                ready_marker=" ready.",
            ),
            # Beat runs apart from the worker, so a worker restart never orphans it.
            Child(
                "beat",
                [*celery, "--quiet", "beat", "--loglevel=WARNING",
                 f"--schedule={self.data_dir / 'celerybeat-schedule'}"],
            ),
            Child(
                "web",
                [PYTHON, "-m", "gunicorn", "config.wsgi", "-c",
                 str(BASE_DIR / "config/gunicorn.py"), "--bind", f"{self.host}:{self.port}"],
            ),
        ]  # fmt: skip
        for child in self.children:
            self.spawn(child)
        self.wait_until_ready()

    def take_lock(self) -> None:
        other = read_pid(self.lock)
        if other and other != os.getpid() and psutil.pid_exists(other):
            raise LaunchError(
                f"another ./run (pid {other}) is using {self.data_dir}; stop it first"
            )
        self.lock.write_text(str(os.getpid()))
        self.owns_data_dir = True

    def start_redis(self) -> None:
        try:
            self.redis = embedded.redis_start(self.data_dir, replace_stale=True)
        except embedded.EmbeddedServiceError as exc:
            self.redis = None
            raise LaunchError(str(exc)) from exc

    def spawn(self, child: Child) -> None:
        child.ready.clear()
        child.process = subprocess.Popen(
            child.cmd,
            env=self.env,
            cwd=BASE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
            preexec_fn=_child_setup,  # only a prctl, no locks taken (safe beside threads)
        )
        child.restarts.started(time.monotonic())
        threading.Thread(
            target=self.relay, args=(child, child.process), daemon=True, name=child.name
        ).start()

    def relay(self, child: Child, process: subprocess.Popen[str]) -> None:
        """Print a child's output line by line, each once, prefixed with the child's name."""
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            child.tail.append(line)
            with self.output_lock:
                print(f"{child.name:<6} | {line}", flush=True)
            if child.ready_marker and child.ready_marker in line:
                child.ready.set()

    def wait_until_ready(self) -> None:
        """Wait until the site answers its self-check and the worker says it is ready.

        "Ready" means a web worker answered ``/health/`` with 200: it loaded its models and
        reached the database and the cache. (A listening port said less: gunicorn's master
        accepts connections while its workers still load models, so the first request after
        "ready" could wait seconds on a busy machine, and a cache URL redis-py cannot open
        went unnoticed until sign-up failed.) A child that exits while starting is a failed
        start (a bad setting, a broken install): restarting it would only repeat the error, so
        the launch stops and shows its output; so does a self-check that keeps failing.
        """
        start = time.monotonic()
        web = next(c for c in self.children if c.name == "web")
        worker = next(c for c in self.children if c.name == "worker")
        health = ""
        while not (web.ready.is_set() and worker.ready.is_set()):
            for child in self.children:
                if not child.alive():
                    code = child.process.poll() if child.process else None
                    last = "\n".join(child.tail)
                    raise LaunchError(
                        f"{child.name} exited while starting ({describe_exit(code or 0)}):\n{last}"
                    )
            waited = time.monotonic() - start
            if not web.ready.is_set():
                status, health = self.web_health()
                if status == 200:
                    web.ready.set()
                elif status and waited > self.self_check_seconds:
                    raise LaunchError(f"the site's self-check (/health/) failed: {health}")
                elif waited > 120:
                    raise LaunchError(
                        f"web server did not answer on port {self.port} within 120s"
                        + (f" ({health})" if health else "")
                    )
            if web.ready.is_set() and waited > WORKER_READY_TIMEOUT:
                log("the worker is not ready yet; the site serves meanwhile")
                break
            time.sleep(0.2)
        shown = "127.0.0.1" if self.host in ANY_ADDRESS else self.host
        url = f"http://{f'[{shown}]' if ':' in shown else shown}:{self.port}/"
        with self.output_lock:
            print(
                "\n"
                f"[run] Site ready at {url}\n"
                "[run]   an admin account:  ./run manage createsuperuser   (then /admin/)\n"
                "[run]   Flickr30k:         ./run manage import_flickr30k --help\n"
                "[run]   Ctrl-C stops everything.\n",
                flush=True,
            )

    def web_health(self) -> tuple[int, str]:
        """GET /health/ on loopback: (status, what it said); (0, why) when nothing answered."""
        host = {"::": "::1", "0.0.0.0": "127.0.0.1", "": "127.0.0.1"}.get(self.host, self.host)  # noqa: S104
        netloc = f"[{host}]" if ":" in host else host
        # As a name the site answers to: ALLOWED_HOSTS may be set without loopback's.
        allowed = self.env["ALLOWED_HOSTS"].split(",")[0].strip().lstrip(".")
        request = urllib.request.Request(
            f"http://{netloc}:{self.port}/health/",
            headers={"Host": allowed.replace("*", "localhost") or "localhost"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
                return response.status, response.read(2000).decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(2000).decode(errors="replace")
        except OSError as exc:
            return 0, str(exc)

    # --- supervise -----------------------------------------------------------------------
    def watch(self) -> None:
        while True:
            self.supervise_once()
            time.sleep(0.5)

    def supervise_once(self) -> None:
        now = time.monotonic()
        if self.embedded_postgres and not embedded.postgres_running(self.data_dir):
            why = "pages answer 503 meanwhile"
            if self.postgres_restarts.due(now, "PostgreSQL", why):
                self.restart("PostgreSQL", self.postgres_restarts, now, self.start_postgres)
        if self.embedded_redis and not (self.redis and self.redis.poll() is None):
            code = self.redis.poll() if self.redis else None
            why = f"{describe_exit(code or 0)}; queued tasks are kept on disk"
            if self.redis_restarts.due(now, "redis", why):
                self.restart("redis", self.redis_restarts, now, self.start_redis)
        for child in self.children:
            if child.alive() or self.stopping:
                continue
            code = child.process.poll() if child.process else None
            if child.restarts.due(now, child.name, describe_exit(code or 0)):
                self.spawn(child)

    def restart(self, name: str, restarts: Restarts, now: float, start: Callable[[], None]) -> None:
        try:
            start()
        except (LaunchError, embedded.EmbeddedServiceError) as exc:
            restarts.started(now)  # a failed start counts as dying young: the backoff doubles
            log(f"{name} did not start: {str(exc).splitlines()[0]}")
        else:
            restarts.started(now)
            log(f"{name} is back")

    def start_postgres(self) -> None:
        embedded.postgres_start(self.data_dir)

    # --- stop ----------------------------------------------------------------------------
    def stop(self) -> None:
        self.stopping = True
        # Web, beat and worker first (they use the database and broker), then the servers.
        for child in reversed(self.children):
            if child.process is not None:
                stop_group(child.name, child.process)
        if self.redis is not None:
            stop_group("redis", self.redis)
        if self.owns_data_dir:
            if self.embedded_postgres:
                # Also a server an earlier ./run manage left running: this data dir's.
                embedded.postgres_stop(self.data_dir)
            self.lock.unlink(missing_ok=True)
        log("stopped")


def next_backoff(previous: float, uptime: float) -> float:
    """Seconds to wait before restarting a child that ran ``uptime`` seconds."""
    if uptime >= HEALTHY_AFTER_SECONDS:
        return 1.0
    return min(previous * 2, MAX_BACKOFF_SECONDS)


def stop_group(name: str, process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """SIGTERM a child's whole process group (gunicorn's workers too), SIGKILL stragglers."""
    try:
        pgid = os.getpgid(process.pid)
    except ProcessLookupError:
        pgid = None
    if pgid == os.getpgrp():
        pgid = None  # never signal our own group (and whoever started us): the process only
        process.terminate()
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop in {STOP_GRACE_SECONDS}s; killing it")
    if pgid is not None:
        # Grandchildren may outlive their parent's exit: the group goes, whatever is left of it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def port_from_env() -> int:
    """PORT as a TCP port number, or a LaunchError saying what is wrong with it."""
    value = os.environ.get("PORT", "8000").strip()
    if not value.isascii() or not value.isdigit() or not 0 < int(value) < 65536:
        raise LaunchError(f"PORT={value!r} is not a port number (1-65535), e.g. PORT=8000")
    return int(value)


def data_dir_from_env() -> Path:
    return Path(os.environ.get("DATA_DIR") or BASE_DIR / ".data").resolve()


def site_env(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ, DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    # One thread per worker process: two busy threads on a small box run slower than one.
    env.setdefault("OMP_NUM_THREADS", "1")
    # As root (containers, CI) Celery warns at every start; the launcher's children are ours.
    env.setdefault("PYTHONWARNINGS", "ignore:You're running the worker with superuser")
    return env


def allowed_hosts_for(host: str) -> str:
    hosts = ["127.0.0.1", "localhost", "[::1]"]
    if host in ANY_ADDRESS:
        # Bound to every interface: answer to this machine's names and addresses.
        name = socket.gethostname()
        hosts += [name, socket.getfqdn()]
        with contextlib.suppress(OSError):
            hosts += [str(info[4][0]) for info in socket.getaddrinfo(name, None)]
    elif host not in hosts:
        hosts.append(f"[{host}]" if ":" in host else host)
    return ",".join(dict.fromkeys(h for h in hosts if h))


def start_postgres_checked(data_dir: Path) -> str:
    """Start the embedded PostgreSQL and prove pgvector works on this CPU; return its URI."""
    try:
        uri = embedded.postgres_start(data_dir)
        embedded.pgvector_self_check(uri, data_dir)
    except embedded.EmbeddedServiceError as exc:
        raise LaunchError(str(exc)) from exc
    return uri


def run_manage(env: dict[str, str], *args: str) -> None:
    """Run a set-up command (migrate, collectstatic), its output prefixed like the parts'."""
    with subprocess.Popen(
        [PYTHON, str(BASE_DIR / "manage.py"), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(f"{'setup':<6} | {line.rstrip()}", flush=True)
    if process.returncode != 0:
        failed = describe_exit(process.returncode)
        raise LaunchError(f"manage.py {' '.join(args)} failed ({failed})")


def manage(argv: list[str]) -> int:
    """``./run manage ARGS``: one management command against this data dir's database.

    Starts the embedded PostgreSQL if it is not running, migrates a new database first (so a
    first command on a fresh clone works), and stops the server afterwards if this call started
    it and no ``./run`` took it over meanwhile.
    """
    data_dir = data_dir_from_env()
    env = site_env(data_dir)
    started = False
    if not env.get("DATABASE_URL"):
        data_dir.mkdir(parents=True, exist_ok=True)
        started = not embedded.postgres_running(data_dir)
        try:
            env["DATABASE_URL"] = start_postgres_checked(data_dir)
            if not embedded.database_initialised(env["DATABASE_URL"]):
                log("new database: applying migrations first")
                run_manage(env, "migrate", "--noinput", "--verbosity", "0")
        except LaunchError as exc:
            log(f"error: {exc}")
            if started:
                embedded.postgres_stop(data_dir)
            return 1
    # The command runs where `./run manage` was typed (`run` records it, then changes to the
    # repository), so `import_captions ../x.csv` reads the file the person means. A relative
    # MEDIA_ROOT stays the repository's, where the site resolves it; DATA_DIR is absolute.
    cwd = env.pop("RUN_CALLER_DIR", "")
    if env.get("MEDIA_ROOT"):
        env["MEDIA_ROOT"] = str((BASE_DIR / env["MEDIA_ROOT"]).resolve())
    # Ctrl-C reaches the command (same terminal); the launcher only waits and tidies up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = subprocess.call(
        [PYTHON, str(BASE_DIR / "manage.py"), *argv],
        env=env,
        cwd=cwd if cwd and Path(cwd).is_dir() else None,
    )
    site = read_pid(data_dir / "run.pid")
    if started and not (site and psutil.pid_exists(site)):
        embedded.postgres_stop(data_dir)
    return code


def _stop_requested(signum: int, frame: object) -> None:
    # The first Ctrl-C or SIGTERM starts the clean-up; later ones (a second Ctrl-C, or the same
    # signal sent to the process group and to us) must not cut it short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    if argv[:1] == ["manage"]:
        return manage(argv[1:])
    try:
        launcher = Launcher()
    except LaunchError as exc:
        log(f"error: {exc}")
        return 1
    signal.signal(signal.SIGTERM, _stop_requested)
    signal.signal(signal.SIGINT, _stop_requested)
    code = 0
    try:
        launcher.start()
        launcher.watch()
    except KeyboardInterrupt:
        log("stopping...")
    except LaunchError as exc:
        log(f"error: {exc}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        launcher.stop()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
