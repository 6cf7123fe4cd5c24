"""A chaos storm: the SDK, blocking and async at once, against a failing server that crashes.

    python scripts/chaos_storm.py                       # the full storm (python -m nox -s chaos)
    python scripts/chaos_storm.py --scale 0.1           # a small one (what CI runs)

The local control plane runs in its own process with chaos mode on (``--rate`` of the
requests fail: 503, 429 with ``Retry-After``, connections dropped before or after the
effect, process WebSockets cut mid-stream). While it runs, at once:

- blocking threads create sandboxes (each under a name made for it) and disks,
- blocking threads and async tasks call ``fn.remote()`` / ``fn.remote.aio()``,
- a blocking ``fn.map()`` and an async ``fn.map.aio()`` run inputs in their containers,
- async tasks create containers and send objects through the object API and back.

When ``--kill-at`` of the work is done, the server is killed with SIGKILL and started
again on the same data directory and port. Afterwards, with chaos off, the server is
counted: no sandbox, disk, container or function run was made twice, no result was lost
or wrong, every failure was a clear ``archil`` error, no sandbox process and no cgroup of
either server is left, and the SDK's retries are in the ``archil`` log. Exit status 0
when every check holds; the report goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import archil
from archil.local.cgroups import Cgroups

FULL = {"sandboxes": 300, "calls": 300, "map": 100, "disks": 100, "objects": 100}
"""The counts of a full storm: sandbox and container creates, function calls, map inputs,
disks, objects."""

MAP_CONCURRENCY = 4
"""The concurrency of each of the storm's two maps."""


# -- the server ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StormServer:
    """``archil local serve`` in its own process, killable and restartable on one port."""

    def __init__(self, data_dir: Path, rate: float, seed: int, tmpdir: Path) -> None:
        self.data_dir = data_dir
        self.rate = rate
        self.seed = seed
        self.port = _free_port()
        self.tmpdir = tmpdir
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_key = ""
        self.starts = 0

    def start(self) -> None:
        """Start it (again) and wait until it prints its URL and key."""
        self.starts += 1
        argv = [
            sys.executable,
            "-m",
            "archil.cli",
            "local",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--chaos",
            str(self.rate),
            "--chaos-seed",
            str(self.seed + self.starts),
        ]
        env = {**os.environ, "TMPDIR": str(self.tmpdir)}
        env.pop("ARCHIL_API_KEY", None)
        env.pop("ARCHIL_BASE_URL", None)
        deadline = time.monotonic() + 30
        while True:
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
            )
            values = _read_exports(proc)
            if values is not None:
                break
            proc.wait()
            if time.monotonic() > deadline:
                raise RuntimeError("the storm's server did not start")
            time.sleep(0.2)  # the port or the data directory is not free yet
        self.proc = proc
        self.api_key = values["ARCHIL_API_KEY"]
        assert values["ARCHIL_BASE_URL"] == self.base_url

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """A graceful stop (SIGTERM), as at the end of the storm."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _read_exports(proc: subprocess.Popen[str]) -> dict[str, str] | None:
    values: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        key, _, value = line.strip().partition("=")
        if key in ("ARCHIL_BASE_URL", "ARCHIL_API_KEY"):
            values[key] = value
        if len(values) == 2:
            return values
    return None


# -- bookkeeping -----------------------------------------------------------------------------


@dataclass
class Tally:
    """What the storm did, kind by kind."""

    ok: collections.Counter[str] = field(default_factory=collections.Counter)
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    wrong: list[str] = field(default_factory=list)
    unclear: list[str] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    first: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def done(self) -> int:
        with self.lock:
            return sum(self.ok.values()) + sum(self.failed.values())

    def success(self, kind: str) -> None:
        with self.lock:
            self.ok[kind] += 1

    def failure(self, kind: str, exc: BaseException) -> None:
        with self.lock:
            self.failed[kind] += 1
            if isinstance(exc, archil.ArchilError):
                what = f"{kind}: {type(exc).__name__}"
                self.errors[what] += 1
                if what not in self.first:
                    frames = traceback.extract_tb(exc.__traceback__)
                    where = " <- ".join(f"{f.name}:{f.lineno}" for f in reversed(frames[-4:]))
                    self.first[what] = f"{str(exc).splitlines()[0][:160]} (at {where})"
            else:
                self.unclear.append(
                    f"{kind}: {type(exc).__name__}: {exc}\n"
                    + "".join(traceback.format_exception(exc)[-3:])
                )

    def mismatch(self, what: str) -> None:
        with self.lock:
            self.wrong.append(what)


class RetryLog(logging.Handler):
    """Counts the ``archil`` logger's retry and reconnect records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.retries = 0
        self.reconnects = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("retrying "):
            self.retries += 1
        elif message.startswith("reconnecting "):
            self.reconnects += 1


# -- the work --------------------------------------------------------------------------------


@dataclass
class Storm:
    """The storm's plan, its clients and what it recorded."""

    server: StormServer
    counts: dict[str, int]
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    tally: Tally = field(default_factory=Tally)
    sandbox_names: dict[str, str | None] = field(default_factory=dict)
    disk_names: dict[str, str | None] = field(default_factory=dict)
    containers: dict[int, str] = field(default_factory=dict)
    call_inputs: dict[int, bool] = field(default_factory=dict)
    map_inputs: dict[int, bool] = field(default_factory=dict)
    disk_id: str = ""

    def client(self) -> archil.Archil:
        return archil.Archil(api_key=self.server.api_key, base_url=self.server.base_url)

    def aclient(self) -> archil.AsyncArchil:
        return archil.AsyncArchil(api_key=self.server.api_key, base_url=self.server.base_url)


def _attempt(storm: Storm, kind: str, work: Callable[[], None]) -> None:
    try:
        work()
    except Exception as exc:
        storm.tally.failure(kind, exc)
    else:
        storm.tally.success(kind)


async def _aattempt(storm: Storm, kind: str, work: Callable[[], Awaitable[None]]) -> None:
    try:
        await work()
    except Exception as exc:
        storm.tally.failure(kind, exc)
    else:
        storm.tally.success(kind)


def blocking_sandboxes(storm: Storm, client: archil.Archil, indices: range) -> None:
    """Create, use and stop named sandboxes (they stay, stopped, to be counted)."""
    mount = archil.SandboxMount(disk_id=storm.disk_id, conditional=True, path="/data")
    for i in indices:
        name = f"storm-{storm.run}-sb-{i}"
        storm.sandbox_names[name] = None

        def work(name: str = name) -> None:
            sandbox = client.sandboxes.create(name=name, mounts=[mount], mem_size_mib=128)
            storm.sandbox_names[name] = sandbox.id
            sandbox.stop()

        _attempt(storm, "sandbox create", work)


def blocking_disks(storm: Storm, client: archil.Archil, indices: range) -> None:
    for i in indices:
        name = f"storm-{storm.run}-disk-{i}"
        storm.disk_names[name] = None

        def work(name: str = name) -> None:
            storm.disk_names[name] = client.disks.create(name=name).id

        _attempt(storm, "disk create", work)


def blocking_calls(storm: Storm, fn: Any, indices: range) -> None:
    for i in indices:
        storm.call_inputs[i] = False

        def work(i: int = i) -> None:
            value = fn.remote(i, storm.run)
            if value != i * i + 1:
                storm.tally.mismatch(f"fn.remote({i}) returned {value!r}")
            storm.call_inputs[i] = True

        _attempt(storm, "fn.remote", work)


async def async_calls(storm: Storm, fn: Any, indices: range, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        storm.call_inputs[i] = False
        async with gate:

            async def work() -> None:
                value = await fn.remote.aio(i, storm.run)
                if value != i * i + 1:
                    storm.tally.mismatch(f"fn.remote.aio({i}) returned {value!r}")
                storm.call_inputs[i] = True

            await _aattempt(storm, "fn.remote.aio", work)

    await asyncio.gather(*(one(i) for i in indices))


def _map_result(storm: Storm, kind: str, i: int, value: object) -> None:
    """Tally one input of a map (run with ``return_exceptions``): a value or its error."""
    if isinstance(value, Exception):
        storm.tally.failure(kind, value)
        return
    if value != i * i + 1:
        storm.tally.mismatch(f"{kind} input {i} gave {value!r}")
    storm.map_inputs[i] = True
    storm.tally.success(kind)


def blocking_map(storm: Storm, fn: Any, indices: range) -> None:
    for i in indices:
        storm.map_inputs[i] = False
    try:
        results = fn.map(
            indices, [storm.run] * len(indices), concurrency=MAP_CONCURRENCY, return_exceptions=True
        )
        for i, value in zip(indices, results, strict=False):
            _map_result(storm, "fn.map", i, value)
    except Exception as exc:  # the map itself failed (not one of its inputs)
        storm.tally.failure("fn.map", exc)


async def async_map(storm: Storm, fn: Any, indices: range) -> None:
    for i in indices:
        storm.map_inputs[i] = False
    try:
        results = fn.map.aio(
            indices, [storm.run] * len(indices), concurrency=MAP_CONCURRENCY, return_exceptions=True
        )
        i = indices.start
        async for value in results:
            _map_result(storm, "fn.map.aio", i, value)
            i += 1
    except Exception as exc:
        storm.tally.failure("fn.map.aio", exc)


async def async_containers(
    storm: Storm, client: archil.AsyncArchil, indices: range, concurrency: int
) -> None:
    gate = asyncio.Semaphore(concurrency)
    mount = archil.ArchilMount(disk_id=storm.disk_id)

    async def one(i: int) -> None:
        async with gate:

            async def work() -> None:
                marks = f"/mnt/archil/storm/{storm.run}/containers"
                container = await client.containers.create(
                    archil_mount=mount,
                    command=f"mkdir -p {marks} && printf x >> {marks}/{i}",
                    mem_size_mib=128,
                )
                storm.containers[i] = container.container_id
                final = await client.containers.wait(container.container_id)
                if final.exit_code != 0:
                    storm.tally.mismatch(f"container {i} exited {final.exit_code}")

            await _aattempt(storm, "container create", work)

    await asyncio.gather(*(one(i) for i in indices))


async def async_objects(
    storm: Storm, client: archil.AsyncArchil, indices: range, concurrency: int
) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            body = random.Random(i).randbytes(random.Random(-i).randrange(1, 256 * 1024))
            key = f"storm/{storm.run}/objects/{i} with space+plus.bin"

            async def work() -> None:
                await client.objects.put(storm.disk_id, key, body)
                back = await client.objects.get(storm.disk_id, key)
                if hashlib.sha256(back).digest() != hashlib.sha256(body).digest():
                    storm.tally.mismatch(f"object {i} came back different")

            await _aattempt(storm, "object round trip", work)

    await asyncio.gather(*(one(i) for i in indices))


# -- the storm -------------------------------------------------------------------------------


def _split(n: int) -> tuple[range, range]:
    half = n // 2
    return range(half), range(half, n)


def make_app(storm: Storm) -> Any:
    app = archil.App(
        name=f"storm-{storm.run}",
        disk_id=storm.disk_id,
        api_key=storm.server.api_key,
        base_url=storm.server.base_url,
    )

    @app.function()
    def square_plus_one(x: int, run: str) -> int:
        # One mark per execution: a call that ran twice leaves two.
        marks = f"/mnt/archil/storm/{run}/runs"
        os.makedirs(marks, exist_ok=True)
        with open(f"{marks}/{x}", "a") as f:
            f.write("x")
        return x * x + 1

    return app, square_plus_one


def run_storm(storm: Storm, kill_at: float, threads: int, concurrency: int) -> None:
    counts = storm.counts
    sb_blocking, sb_async = _split(counts["sandboxes"])
    calls_blocking, calls_async = _split(counts["calls"])
    # The maps' inputs follow the calls', so that their marks on the disk do not meet.
    first_map, second_map = _split(counts["map"])
    map_blocking = range(counts["calls"] + first_map.start, counts["calls"] + first_map.stop)
    map_async = range(counts["calls"] + second_map.start, counts["calls"] + second_map.stop)
    total = sum(counts.values())
    app, fn = make_app(storm)
    client = storm.client()
    killed = threading.Event()

    def killer() -> None:
        while storm.tally.done() < kill_at * total:
            if stop.is_set():
                return
            time.sleep(0.05)
        print(f"storm: SIGKILL the server after {storm.tally.done()} of {total} operations")
        storm.server.kill()
        time.sleep(0.5)
        storm.server.start()
        print("storm: the server is back on the same data directory and port")
        killed.set()

    async def async_half() -> None:
        async with storm.aclient() as aclient:
            await asyncio.gather(
                async_calls(storm, fn, calls_async, concurrency),
                async_containers(storm, aclient, sb_async, concurrency),
                async_objects(storm, aclient, range(counts["objects"]), concurrency),
                async_map(storm, fn, map_async),
            )

    stop = threading.Event()
    watcher = threading.Thread(target=killer, daemon=True)
    watcher.start()
    per = max(1, threads // 3)
    with ThreadPoolExecutor(max_workers=3 * per + 2) as pool:
        futures = []
        for chunk in _chunks(sb_blocking, per):
            futures.append(pool.submit(blocking_sandboxes, storm, client, chunk))
        for chunk in _chunks(range(counts["disks"]), per):
            futures.append(pool.submit(blocking_disks, storm, client, chunk))
        for chunk in _chunks(calls_blocking, per):
            futures.append(pool.submit(blocking_calls, storm, fn, chunk))
        futures.append(pool.submit(blocking_map, storm, fn, map_blocking))
        futures.append(pool.submit(asyncio.run, async_half()))
        for future in futures:
            future.result()
    stop.set()
    watcher.join()
    if not killed.is_set():
        print("storm: the work ended before the kill point; killing now")
        storm.server.kill()
        time.sleep(0.5)
        storm.server.start()
    app.close()
    client.close()


def _chunks(indices: range, n: int) -> Iterator[range]:
    step = max(1, -(-len(indices) // n))
    for start in range(indices.start, indices.stop, step):
        yield range(start, min(start + step, indices.stop))


# -- the checks ------------------------------------------------------------------------------


def check(storm: Storm, owners: set[str], retry_log: RetryLog) -> list[str]:
    """Count on the server; the list of what does not hold (empty: everything does)."""
    problems: list[str] = []
    tally = storm.tally
    problems += [f"wrong result: {w}" for w in tally.wrong]
    problems += [f"not an archil error: {u}" for u in tally.unclear]
    with storm.client() as client:
        sandboxes = list(client.sandboxes.list())
        by_name = collections.Counter(s.name for s in sandboxes)
        prefix = f"storm-{storm.run}-sb-"
        mine = {n for n in by_name if n and n.startswith(prefix)}
        problems += [f"sandbox {n} exists {c} times" for n, c in by_name.items() if c > 1]
        problems += [
            f"sandbox {n} is not one the storm asked for" for n in mine - set(storm.sandbox_names)
        ]
        for name, sid in storm.sandbox_names.items():
            if sid is not None and name not in mine:
                problems.append(f"sandbox {name} ({sid}) was created but is not there")
        disks = list(client.disks.list())
        disk_names = collections.Counter(d.name for d in disks)
        problems += [f"disk {n} exists {c} times" for n, c in disk_names.items() if c > 1]
        for name, did in storm.disk_names.items():
            if did is not None and disk_names[name] != 1:
                problems.append(f"disk {name} ({did}) was created but is not there")
        for i, cid in storm.containers.items():
            marks = _marks(client, storm, f"containers/{i}")
            if marks > 1:
                problems.append(f"container {i} ({cid}) ran its command {marks} times")
        for what, inputs in (("fn.remote", storm.call_inputs), ("fn.map", storm.map_inputs)):
            for i, succeeded in inputs.items():
                runs = _marks(client, storm, f"runs/{i}")
                if runs > 1:
                    problems.append(f"{what} of {i} ran {runs} times")
                if succeeded and runs != 1:
                    problems.append(f"{what} of {i} returned but left {runs} marks")
        live = [s for s in client.sandboxes.list() if s.status in ("pending", "running", "paused")]
        for s in live:
            if s.name and s.name.startswith(("archil-call-", "cntr-")):
                problems.append(f"sandbox {s.name} of a finished call is still {s.status}")
    storm.server.stop()
    problems += [f"process left: {p}" for p in leftover_processes({s.id for s in sandboxes})]
    problems += [f"cgroup left: {c}" for c in leftover_cgroups(owners)]
    if retry_log.retries + retry_log.reconnects == 0:
        problems.append("no retry is in the archil log")
    return problems


def _marks(client: archil.Archil, storm: Storm, name: str) -> int:
    """How many times a run left its mark in ``storm/<run>/<name>`` on the disk."""
    try:
        return len(client.objects.get(storm.disk_id, f"storm/{storm.run}/{name}"))
    except archil.NotFoundError:
        return 0


def leftover_processes(sandbox_ids: set[str]) -> list[str]:
    """Live processes of the storm's sandboxes (found by the id every one of them carries)."""
    found = []
    deadline = time.monotonic() + 10
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                env = (entry / "environ").read_bytes().split(b"\0")
                for var in env:
                    if var.startswith(b"ARCHIL_SANDBOX_ID=") and var[18:].decode() in sandbox_ids:
                        found.append(f"pid {entry.name} of sandbox {var[18:].decode()}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def storm_owners(tmpdir: Path) -> set[str]:
    """The cgroup owner ids of the storm's servers (their lock files live in its TMPDIR)."""
    return {p.name.removesuffix(".lock") for p in tmpdir.rglob("o-*.lock")}


def leftover_cgroups(owners: set[str]) -> list[str]:
    cgroups = Cgroups.detect()
    return [
        str(base / owner) for base in cgroups.bases for owner in owners if (base / owner).exists()
    ]


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full counts")
    parser.add_argument("--rate", type=float, default=0.3, help="chaos failure rate")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--kill-at", type=float, default=0.4, help="fraction of work before SIGKILL"
    )
    parser.add_argument("--threads", type=int, default=6, help="blocking worker threads")
    parser.add_argument("--concurrency", type=int, default=4, help="async operations in flight")
    parser.add_argument("--retries", type=int, default=10, help="the SDK's retry budget")
    args = parser.parse_args(argv)
    counts = {k: max(2, round(v * args.scale)) for k, v in FULL.items()}
    os.environ["ARCHIL_MAX_RETRIES"] = str(args.retries)
    retry_log = RetryLog()
    logging.getLogger("archil").addHandler(retry_log)
    logging.getLogger("archil").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="archil-storm-") as root:
        tmpdir = Path(root) / "tmp"
        tmpdir.mkdir()
        server = StormServer(Path(root) / "data", args.rate, args.seed, tmpdir)
        server.start()
        storm = Storm(server, counts)
        started = time.monotonic()
        try:
            with storm.client() as client:
                storm.disk_id = client.disks.create(name=f"storm-{storm.run}").id
            run_storm(storm, args.kill_at, args.threads, args.concurrency)
            owners = storm_owners(tmpdir)
            server.stop()  # the checks run on the same data, without chaos
            server.rate = 0.0
            server.start()
            owners |= storm_owners(tmpdir)
            problems = check(storm, owners, retry_log)
        finally:
            server.stop()
        elapsed = time.monotonic() - started
    report(storm, counts, retry_log, elapsed, problems)
    return 1 if problems else 0


def report(
    storm: Storm, counts: dict[str, int], retry_log: RetryLog, elapsed: float, problems: list[str]
) -> None:
    tally = storm.tally
    print(
        f"storm: {sum(counts.values())} operations in {elapsed:.0f} s, server started {storm.server.starts} times"
    )
    for kind in sorted(set(tally.ok) | set(tally.failed)):
        print(f"  {kind:18s} ok {tally.ok[kind]:4d}  failed {tally.failed[kind]:4d}")
    for what, n in sorted(tally.errors.items()):
        print(f"  error {what}: {n}, first: {tally.first[what]}")
    print(
        f"  retries logged: {retry_log.retries}, socket reconnects logged: {retry_log.reconnects}"
    )
    if problems:
        print(f"storm: {len(problems)} problems")
        for p in problems:
            print(f"  - {p}")
    else:
        print("storm: no duplicates, no lost or wrong results, nothing left behind")


if __name__ == "__main__":
    sys.exit(main())
