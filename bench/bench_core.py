"""Core benchmarks: ratios against baselines measured in the same run.

    python bench/bench_core.py [--requests 1000] [--repeat 5]

Prints one line per figure: ours, the baseline measured in the same run, the
ratio, each a median over ``--repeat`` runs:
- ``import archil`` against ``import httpx, pydantic`` (wall time, and peak RSS);
- 1,000 ``client.disks.get()`` calls blocking against a bare ``httpx.Client``,
  and async with 50 in flight against a bare ``httpx.AsyncClient``;
- ``fn.remote()`` of a trivial function on a ready image and on a prepared
  (forked) image, ``fn.remote.aio()`` of the trivial one (on an event loop kept
  running, as a service's is), and ``job.remote()`` of ``true``, against
  ``python -c "import cloudpickle"`` in a subprocess;
- sandbox create to first output of a process (p50 and p95);
- ``fn.map`` over 64 inputs that sleep 0.5 s against the ideal for its concurrency.

The server runs in its own process (``archil local serve``), as it does for a
client of Archil's cloud; ``--in-process`` runs it embedded in this one.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

import archil
from archil.local.embedded import LocalServer

T = TypeVar("T")

IN_FLIGHT = 50
"""Async requests in flight at once."""
MAP_CONCURRENCY = 8
"""``fn.map``'s default concurrency."""


def _median_of(repeat: int, fn: object) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True)


class ExternalServer:
    """``archil local serve`` in its own process, so the server does not share our GIL."""

    def __init__(self, data_dir: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "archil.cli",
                "local",
                "serve",
                "--port",
                "0",
                "--data-dir",
                data_dir,
                "--auto-create-disks",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        values: dict[str, str] = {}
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            key, _, value = line.strip().partition("=")
            if key in ("ARCHIL_BASE_URL", "ARCHIL_API_KEY"):
                values[key] = value
            if len(values) == 2:
                break
        self.base_url = values["ARCHIL_BASE_URL"]
        self.api_key = values["ARCHIL_API_KEY"]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def bench_import(repeat: int) -> tuple[float, float]:
    base = _median_of(repeat, lambda: _python("import httpx, pydantic"))
    ours = _median_of(repeat, lambda: _python("import archil"))
    return ours, base


def _peak_rss_kib(modules: str) -> int:
    # VmHWM belongs to the process image that exec made (ru_maxrss would count the
    # parent's pages that the child held between fork and exec).
    code = (
        f"import {modules}\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith('VmHWM:'):\n"
        "        print(line.split()[1])"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


def bench_import_rss(repeat: int) -> tuple[float, float]:
    """Peak RSS (KiB) after ``import archil`` and after ``import httpx, pydantic``."""
    ours = statistics.median(_peak_rss_kib("archil") for _ in range(repeat))
    base = statistics.median(_peak_rss_kib("httpx, pydantic") for _ in range(repeat))
    return ours, base


def _paired(ours: list[float], base: list[float]) -> tuple[float, float, float]:
    """Medians of both sides and the median of the ratios of runs made back to back.

    This machine's speed drifts by 10-30 % over seconds; a ratio within a pair
    cancels that drift where a ratio of two medians does not.
    """
    ratios = [o / b for o, b in zip(ours, base, strict=True)]
    return statistics.median(ours), statistics.median(base), statistics.median(ratios)


def bench_requests(server: Any, n: int, repeat: int) -> dict[str, tuple[float, float, float]]:
    """n ``disks.get()`` against n bare GETs of the same URL, blocking and async.

    Pairs alternate which side runs first, so warming and drift hit both alike.
    """
    headers = {"Authorization": server.api_key}
    with archil.Archil(base_url=server.base_url, api_key=server.api_key) as client:
        disk = client.disks.create("bench-disk")
        url = f"{server.base_url}/api/disks/{disk.id}"
        with httpx.Client(headers=headers) as raw:

            def bare() -> None:
                for _ in range(n):
                    raw.get(url).raise_for_status()

            def sdk() -> None:
                for _ in range(n):
                    client.disks.get(disk.id)

            bare()
            sdk()
            ours, base = [], []
            for i in range(repeat):
                if i % 2:
                    base.append(_timed(bare))
                    ours.append(_timed(sdk))
                else:
                    ours.append(_timed(sdk))
                    base.append(_timed(bare))
            sync = _paired(ours, base)

    async def run_async() -> tuple[float, float, float]:
        async with (
            archil.aio.Archil(base_url=server.base_url, api_key=server.api_key) as aclient,
            httpx.AsyncClient(headers=headers) as araw,
        ):

            async def in_flight(call: Callable[[], Awaitable[object]]) -> float:
                # n requests, IN_FLIGHT at a time.
                left = iter(range(n))

                async def worker() -> None:
                    for _ in left:
                        await call()

                t0 = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
                return time.perf_counter() - t0

            async def bare_get() -> None:
                (await araw.get(url)).raise_for_status()

            async def sdk_get() -> None:
                await aclient.disks.get(disk.id)

            await in_flight(bare_get)
            await in_flight(sdk_get)
            ours, base = [], []
            for i in range(repeat):
                if i % 2:
                    base.append(await in_flight(bare_get))
                    ours.append(await in_flight(sdk_get))
                else:
                    ours.append(await in_flight(sdk_get))
                    base.append(await in_flight(bare_get))
            return _paired(ours, base)

    return {"blocking": sync, "async": asyncio.run(run_async())}


def bench_remote(server: Any, repeat: int) -> dict[str, tuple[float, float]]:
    """Trivial calls on a ready image, a prepared image (forked) and a shell job vs the floor.

    Medians of ``4 * repeat`` samples of each, taken in turn with the floor's (each
    floor sample once the calls' background cleanup is done).
    """
    app = archil.App(
        name="bench", disk_id="bench-remote", base_url=server.base_url, api_key=server.api_key
    )

    @app.function(stream_logs=False)
    def trivial() -> int:
        return 1

    @app.function(image=archil.Image.python().run_commands("true"), stream_logs=False)
    def prepared() -> int:
        return 2

    @app.run(command="true", stream_logs=False)
    def job() -> None:
        pass

    loop = _LoopThread()

    async def flush_loop_client() -> None:
        await (await app._loop_client()).flush()

    for warm in (trivial.remote, prepared.remote, job.remote):
        warm()  # builds the image, prepares its steps, writes cloudpickle to the disk
    loop.run(trivial.remote.aio())
    rows = {
        "fn.remote() trivial": trivial.remote,
        "fn.remote() prepared": prepared.remote,
        "fn.remote.aio() trivial": lambda: loop.run(trivial.remote.aio()),
        "job.remote() of true": job.remote,
    }
    # Samples interleave with the floor's, so that drift of the machine hits all alike;
    # the floor is timed once the calls' cleanup is done, so that it never shares the CPUs.
    floor: list[float] = []
    samples: dict[str, list[float]] = {name: [] for name in rows}
    # The two functions take turns at coming first: the second of two calls in a row
    # shares the CPUs with the cleanup of the first.
    client = app.client()
    for i in range(4 * repeat):
        client.flush()
        loop.run(flush_loop_client())
        floor.append(_timed(lambda: _python("import cloudpickle")))
        names = list(rows)
        if i % 2:
            names[0], names[1] = names[1], names[0]
        for name in names:
            samples[name].append(_timed(rows[name]))
    loop.close()
    app.close()
    return {name: (statistics.median(t), statistics.median(floor)) for name, t in samples.items()}


class _LoopThread:
    """An event loop running on a thread of its own, to time ``.aio`` calls from here.

    The loop runs between calls, so a call's background cleanup runs beside the
    caller, as the blocking client's does on its threads.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.run(self.loop.shutdown_asyncgens())  # closes the app's client on this loop
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def bench_first_output(server: Any, samples: int) -> tuple[float, float]:
    """Sandbox create (``?wait=true``) to the first byte of a process's output: p50, p95."""
    times = []
    with archil.Archil(base_url=server.base_url, api_key=server.api_key) as client:
        for i in range(samples + 2):
            t0 = time.perf_counter()
            sandbox = client.sandboxes.create(
                base_image="python:3.11-slim", idle_ttl_seconds=60, name=f"first-output-{i}"
            )
            process = sandbox.run("echo ready")
            next(iter(process))
            elapsed = time.perf_counter() - t0
            process.wait()
            sandbox.stop()
            sandbox.delete()
            if i >= 2:  # the first two warm the image and the runtime
                times.append(elapsed)
            time.sleep(0.05)
    return _percentile(times, 0.5), _percentile(times, 0.95)


def bench_map(server: Any, repeat: int) -> tuple[float, float]:
    """``fn.map`` over 64 inputs sleeping 0.5 s, against the ideal for its concurrency."""
    app = archil.App(
        name="bench-map", disk_id="bench-map", base_url=server.base_url, api_key=server.api_key
    )

    @app.function(stream_logs=False)
    def nap(i: int) -> int:
        time.sleep(0.5)
        return i

    nap.remote(0)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        assert list(nap.map(range(64), concurrency=MAP_CONCURRENCY)) == list(range(64))
        times.append(time.perf_counter() - t0)
    app.close()
    ideal = math.ceil(64 / MAP_CONCURRENCY) * 0.5
    return statistics.median(times), ideal


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20, help="sandbox creates timed")
    parser.add_argument(
        "--in-process", action="store_true", help="run the server in this process (shares the GIL)"
    )
    args = parser.parse_args()

    ours, base = bench_import(args.repeat)
    _line("import archil (wall)", ours * 1000, "ms", "import httpx, pydantic", base * 1000, 0.25)
    ours, base = bench_import_rss(args.repeat)
    _line("import archil (peak RSS)", ours / 1024, "MiB", "import httpx, pydantic", base / 1024)
    with tempfile.TemporaryDirectory() as data:
        server: Any = (
            LocalServer(Path(data), auto_create_disks=True).start()
            if args.in_process
            else ExternalServer(data)
        )
        try:
            n = args.requests
            for kind, (o, b, r) in bench_requests(server, n, 2 * args.repeat + 1).items():
                what = "blocking" if kind == "blocking" else f"async, {IN_FLIGHT} in flight"
                _line(f"{n} disks.get ({what})", o, "s", "bare httpx", b, 1.05, ratio=r)
            for name, (o, b) in bench_remote(server, args.repeat).items():
                _line(name, o * 1000, "ms", "python -c 'import cloudpickle'", b * 1000, 1.5)
            p50, p95 = bench_first_output(server, args.samples)
            print(
                f"{'sandbox create to first output':34s} p50 {p50 * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms"
            )
            ours, ideal = bench_map(server, max(1, args.repeat // 2))
            _line(
                f"fn.map 64 x sleep(0.5), concurrency {MAP_CONCURRENCY}",
                ours,
                "s",
                "the ideal",
                ideal,
                1.2,
            )
        finally:
            server.stop() if args.in_process else server.close()


def _line(
    name: str,
    ours: float,
    unit: str,
    baseline: str,
    base: float,
    target: float | None = None,
    *,
    ratio: float | None = None,
) -> None:
    """One figure; ``ratio`` (the median of paired ratios) when given, else ours / base."""
    goal = f" (target <= {target})" if target is not None else ""
    shown = ours / base if ratio is None else ratio
    print(
        f"{name:34s} {ours:9.2f} {unit:3s} vs {baseline} {base:9.2f} {unit:3s} ratio {shown:.2f}{goal}",
        flush=True,
    )


if __name__ == "__main__":
    main()
