"""Core benchmarks: ratios against baselines measured in the same run.

    python bench/bench_core.py [--requests 1000] [--repeat 5]

Prints, for each target of the design handbook, the measured ratio:
- ``import archil`` against ``import httpx, pydantic``;
- 1,000 ``client.disks.get()`` calls (blocking and async) against bare httpx;
- ``fn.remote()`` of a trivial function (cached image) against
  ``python -c "import cloudpickle"``.
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


def bench_remote(server: Any, repeat: int) -> tuple[float, float]:
    app = archil.App(
        name="bench", disk_id="bench-remote", base_url=server.base_url, api_key=server.api_key
    )

    @app.function(stream_logs=False)
    def trivial() -> int:
        return 1

    trivial.remote()  # builds and caches the image
    ours = statistics.median(_timed(trivial.remote) for _ in range(repeat))
    base = statistics.median(_timed(lambda: _python("import cloudpickle")) for _ in range(repeat))
    app.close()
    return ours, base


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
    with (
        tempfile.TemporaryDirectory() as data,
        LocalServer(Path(data), auto_create_disks=True) as server,
    ):
        for kind, (o, b) in bench_requests(server, args.requests, args.repeat).items():
            print(
                f"{args.requests} disks.get ({kind:8s}) {o:8.3f} s   vs bare httpx {b:8.3f} s  ratio {o / b:.2f} (target <= 1.10)"
            )
        o, b = bench_remote(server, args.repeat)
        print(
            f"fn.remote() trivial      {o * 1000:8.1f} ms  vs python -c 'import cloudpickle' {b * 1000:8.1f} ms  ratio {o / b:.2f} (target <= 2.0)"
        )


if __name__ == "__main__":
    main()
