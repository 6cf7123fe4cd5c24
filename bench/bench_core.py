"""Core benchmarks: ratios against baselines measured in the same run.

    python bench/bench_core.py [--requests 1000] [--repeat 5]

Prints, for each target of the design handbook, the measured ratio:
- ``import archil`` against ``import httpx, pydantic``;
- 1,000 ``client.disks.get()`` calls (blocking and async) against bare httpx;
- ``fn.remote()`` of a trivial function on a ready image and on a prepared
  (forked) image, and ``job.remote()`` of ``true``, against
  ``python -c "import cloudpickle"`` in a subprocess.

The server runs in its own process (``archil local serve``), as it does for a
client of Archil's cloud; ``--in-process`` runs it embedded in this one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

import archil
from archil.local.embedded import LocalServer


def _best_of(repeat: int, fn: object) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


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
    base = _best_of(repeat, lambda: _python("import httpx, pydantic"))
    ours = _best_of(repeat, lambda: _python("import archil"))
    return ours, base


def bench_requests(server: Any, n: int, repeat: int) -> dict[str, tuple[float, float]]:
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
            sync = (_best_of(repeat, sdk), _best_of(repeat, bare))

    async def run_async() -> tuple[float, float]:
        async with (
            archil.aio.Archil(base_url=server.base_url, api_key=server.api_key) as aclient,
            httpx.AsyncClient(headers=headers) as araw,
        ):

            async def abare() -> float:
                t0 = time.perf_counter()
                for _ in range(n):
                    (await araw.get(url)).raise_for_status()
                return time.perf_counter() - t0

            async def asdk() -> float:
                t0 = time.perf_counter()
                for _ in range(n):
                    await aclient.disks.get(disk.id)
                return time.perf_counter() - t0

            await abare()
            await asdk()
            ours = min([await asdk() for _ in range(repeat)])
            base = min([await abare() for _ in range(repeat)])
            return ours, base

    return {"blocking": sync, "async": asyncio.run(run_async())}


def bench_remote(server: Any, repeat: int) -> dict[str, tuple[float, float]]:
    """Trivial calls on a ready image, a prepared image (forked) and a shell job vs the floor."""
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

    for warm in (trivial.remote, prepared.remote, job.remote):
        warm()  # builds the image, prepares its steps, writes cloudpickle to the disk
    floor = statistics.median(_timed(lambda: _python("import cloudpickle")) for _ in range(repeat))
    out = {}
    for name, fn in (
        ("fn.remote() trivial", trivial.remote),
        ("fn.remote() prepared", prepared.remote),
        ("job.remote() of true", job.remote),
    ):
        out[name] = (statistics.median(_timed(fn) for _ in range(repeat)), floor)
    app.close()
    return out


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
    parser.add_argument(
        "--in-process", action="store_true", help="run the server in this process (shares the GIL)"
    )
    args = parser.parse_args()

    ours, base = bench_import(args.repeat)
    print(
        f"import archil            {ours * 1000:8.1f} ms  vs import httpx, pydantic {base * 1000:8.1f} ms  ratio {ours / base:.2f} (target <= 1.05)"
    )
    with tempfile.TemporaryDirectory() as data:
        server: Any = (
            LocalServer(Path(data), auto_create_disks=True).start()
            if args.in_process
            else ExternalServer(data)
        )
        try:
            for kind, (o, b) in bench_requests(server, args.requests, args.repeat).items():
                print(
                    f"{args.requests} disks.get ({kind:8s}) {o:8.3f} s   vs bare httpx {b:8.3f} s  ratio {o / b:.2f} (target <= 1.05)"
                )
            for name, (o, b) in bench_remote(server, args.repeat).items():
                print(
                    f"{name:24s} {o * 1000:8.1f} ms  vs python -c 'import cloudpickle' {b * 1000:8.1f} ms  ratio {o / b:.2f} (target <= 1.5)"
                )
        finally:
            server.stop() if args.in_process else server.close()


if __name__ == "__main__":
    main()
