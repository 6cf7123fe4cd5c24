"""The caller of ``fn.remote()`` dies at a random moment: nothing of its call is left.

Each run is a subprocess that calls ``fn.remote()`` of a function that sleeps, killed at a
moment drawn (seeded) between its start and a while after its function began to sleep:

- SIGINT (Ctrl-C): within 5 s of the signal, no sandbox of the run is left on the server
  and no process of it on this machine;
- SIGKILL (no cleanup at all): the sandbox ends by its idle TTL, which the server enforces
  (``archil local serve --reap-idle`` stops a sandbox whose idle TTL runs out), and once it
  has, no sandbox of the run is running and no process of it is left.

The server runs in its own process (``archil local serve``), as a user's would. The calls'
idle TTL is shortened for the SIGKILL runs with ``ARCHIL_FUNCTION_IDLE_TTL``. Processes are
found by a marker that only the run's function carries in its environment and by the
sandbox ids the server lists; nothing the test did not start is ever signalled.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import archil
from procs import processes_with_env

RUNS = 20
PARALLEL = 4
IDLE_TTL = 2
SEED = 20261205
MARK = "ARCHIL_CRASH_MARK"

SCRIPT = textwrap.dedent(
    f"""
    import sys
    import archil

    app = archil.App(name="crash", disk_id=sys.argv[1])

    @app.function(env={{"{MARK}": sys.argv[2]}}, stream_logs=True)
    def sleepy():
        import time
        print("sleeping", flush=True)
        time.sleep(600)

    print("calling", flush=True)
    sleepy.remote()
    """
)


@dataclass
class CrashServer:
    """``archil local serve --reap-idle`` in its own process."""

    data_dir: Path
    tmpdir: Path
    proc: subprocess.Popen[str] | None = None
    base_url: str = ""
    api_key: str = ""

    def start(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        env = {**os.environ, "TMPDIR": str(self.tmpdir)}
        env.pop("ARCHIL_API_KEY", None)
        env.pop("ARCHIL_BASE_URL", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "archil.cli",
                "local",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(self.data_dir),
                "--auto-create-disks",
                "--reap-idle",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        values: dict[str, str] = {}
        for line in self.proc.stdout:
            key, _, value = line.strip().partition("=")
            if key in ("ARCHIL_BASE_URL", "ARCHIL_API_KEY"):
                values[key] = value
            if len(values) == 2:
                break
        assert len(values) == 2, "the server did not start"
        self.base_url, self.api_key = values["ARCHIL_BASE_URL"], values["ARCHIL_API_KEY"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def crash_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashServer]:
    root = tmp_path_factory.mktemp("crashes")
    tmp = root / "tmp"
    tmp.mkdir()
    server = CrashServer(root / "data", tmp)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api(crash_server: CrashServer) -> Iterator[archil.Archil]:
    with archil.Archil(api_key=crash_server.api_key, base_url=crash_server.base_url) as c:
        yield c


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crash-script") / "crash.py"
    path.write_text(SCRIPT)
    return path


@pytest.fixture(scope="module")
def time_to_sleep(crash_server: CrashServer, script: Path, api: archil.Archil) -> float:
    """Seconds from a caller's start until its function sleeps (one warm-up call, Ctrl-C'd).

    The first call on a server also builds the image; the runs see the warm path.
    """
    run = Run(f"disk_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex, 0.0)
    proc = _spawn(crash_server, script, run, {})
    t0 = time.monotonic()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "sleeping" in line:
                break
        took = time.monotonic() - t0
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _wait(lambda: not api.sandboxes.list(disk_id=run.disk), 30)
    return took


@dataclass
class Run:
    disk: str
    mark: str
    delay: float
    sandboxes: set[str] = field(default_factory=set)
    output: str = ""
    returncode: int | None = None
    after_signal: float = 0.0
    signals: int = 1
    left: list[str] = field(default_factory=list)


def _spawn(
    server: CrashServer, script: Path, run: Run, extra: dict[str, str]
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "ARCHIL_FUNCTION_IDLE_TTL"}
    env.update(ARCHIL_BASE_URL=server.base_url, ARCHIL_API_KEY=server.api_key, **extra)
    return subprocess.Popen(
        [sys.executable, str(script), run.disk, run.mark],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(predicate: object, timeout: float, interval: float = 0.05) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def _needles(run: Run) -> list[str]:
    return [f"{MARK}={run.mark}", *(f"ARCHIL_SANDBOX_ID={s}" for s in run.sandboxes)]


def _kill_at_random(
    server: CrashServer,
    script: Path,
    api: archil.Archil,
    run: Run,
    sig: signal.Signals,
    extra: dict[str, str],
) -> subprocess.Popen[str]:
    """Start the caller, signal it after ``run.delay`` s, noting the sandboxes it had."""
    proc = _spawn(server, script, run, extra)
    t0 = time.monotonic()
    while time.monotonic() - t0 < run.delay:
        run.sandboxes |= {s.id for s in api.sandboxes.list(disk_id=run.disk)}
        time.sleep(min(0.1, max(0.0, run.delay - (time.monotonic() - t0))))
    proc.send_signal(sig)
    run.after_signal = time.monotonic()
    return proc


def _sigint_run(server: CrashServer, script: Path, api: archil.Archil, run: Run) -> Run:
    proc = _kill_at_random(server, script, api, run, signal.SIGINT, {})
    try:
        out = ""
        for _ in range(60):
            try:
                out, _ = proc.communicate(timeout=1)
                break
            except subprocess.TimeoutExpired:
                # CPython drops a KeyboardInterrupt raised inside a callback it ignores
                # errors of (an import lock's weakref callback, say): the caller never saw
                # Ctrl-C, and a person would press it again.
                proc.send_signal(signal.SIGINT)
                run.signals += 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run.output, run.returncode = out, proc.returncode

    def clean() -> bool:
        sandboxes = api.sandboxes.list(disk_id=run.disk)
        run.sandboxes |= {s.id for s in sandboxes}
        run.left = [f"{s.id}:{s.status}" for s in sandboxes]
        run.left += [f"pid {p}" for p in processes_with_env(*_needles(run))]
        return not run.left

    deadline = run.after_signal + 5.0
    while not clean() and time.monotonic() < deadline:
        time.sleep(0.05)
    return run


def _upto(time_to_sleep: float) -> float:
    """The latest moment to signal at: callers start slower when several run at once."""
    return 3 * time_to_sleep + 2.0


def _delays(rng: random.Random, upto: float) -> list[float]:
    """Moments to signal at: spread from the caller's start to well into the sleep."""
    return [round(rng.uniform(0.0, upto), 3) for _ in range(RUNS)]


def test_sigint_at_random_moments_leaves_nothing_within_5_s(
    crash_server: CrashServer, script: Path, api: archil.Archil, time_to_sleep: float
) -> None:
    rng = random.Random(SEED)
    runs = [
        Run(f"disk_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex, d)
        for d in _delays(rng, _upto(time_to_sleep))
    ]
    with ThreadPoolExecutor(PARALLEL) as pool:
        done = list(pool.map(lambda r: _sigint_run(crash_server, script, api, r), runs))
    failed = [(r.delay, r.left, r.output[-500:]) for r in done if r.left]
    assert not failed, failed
    # A Ctrl-C that CPython itself dropped is pressed once more; one the SDK ignored is not.
    assert all(r.signals <= 2 for r in done), [(r.delay, r.signals) for r in done]
    # Every caller ended on the interrupt (none finished its 600 s sleep, none hung).
    assert all(r.returncode not in (None, 0) for r in done), [r.returncode for r in done]
    # The draws reached the sleeping function, not only the caller's start.
    assert sum("sleeping" in r.output for r in done) >= RUNS // 4


def test_sigkill_at_random_moments_is_reaped_by_the_idle_ttl(
    crash_server: CrashServer, script: Path, api: archil.Archil, time_to_sleep: float
) -> None:
    rng = random.Random(SEED + 1)
    runs = [
        Run(f"disk_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex, d)
        for d in _delays(rng, _upto(time_to_sleep))
    ]
    extra = {"ARCHIL_FUNCTION_IDLE_TTL": str(IDLE_TTL)}

    def one(run: Run) -> Run:
        proc = _kill_at_random(crash_server, script, api, run, signal.SIGKILL, extra)
        out, _ = proc.communicate(timeout=60)
        run.output, run.returncode = out, proc.returncode
        return run

    with ThreadPoolExecutor(PARALLEL) as pool:
        done = list(pool.map(one, runs))
    assert all(r.returncode == -signal.SIGKILL for r in done)

    def reaped(run: Run) -> bool:
        sandboxes = api.sandboxes.list(disk_id=run.disk)
        run.sandboxes |= {s.id for s in sandboxes}
        run.left = [f"{s.id}:{s.status}" for s in sandboxes if s.status != "stopped"]
        run.left += [f"pid {p}" for p in processes_with_env(*_needles(run))]
        return not run.left

    # A create that was in flight when its caller died still finishes, then idles out:
    # allow for the slowest boot on a loaded machine before the idle TTL counts.
    assert _wait(lambda: all([reaped(r) for r in done]), IDLE_TTL + 60, interval=0.5), [
        (r.delay, r.left) for r in done if r.left
    ]
    killed_while_running = 0
    for run in done:
        for sandbox in api.sandboxes.list(disk_id=run.disk):
            assert sandbox.status == "stopped"
            assert sandbox.data.exit_reason == "idle_ttl_seconds ran out", sandbox.data
            assert sandbox.data.idle_ttl_seconds == IDLE_TTL
            killed_while_running += 1
    # The draws reached calls whose sandbox was up, not only the caller's start.
    assert killed_while_running >= RUNS // 4
