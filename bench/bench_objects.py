"""Large-object transfers through the SDK against raw httpx streaming to the same server.

    python bench/bench_objects.py [--size 256M] [--repeat 3] [--part-size 8M] [--concurrency 4]
    python bench/bench_objects.py --size 1G          # the full run

The server (``archil local serve``) runs in its own process. Each figure is the
median throughput over ``--repeat`` runs, and the process's peak RSS above its
baseline (the peak counter is reset before each transfer; the largest delta of
the repeats is shown). One line per figure: ours, the baseline, the ratio.

Baselines: one ``httpx.Client`` PUT streaming the file, and one GET streamed
into a file. Targets: the multipart upload and the ranged download at least
1.5x the single stream; the SDK's single stream at least 0.9x raw httpx; peak
RSS less than 64 MiB above the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from bench_core import ExternalServer  # bench/ is on sys.path when this file runs

import archil

MIB = 1024 * 1024
_UNITS = {"": 1, "K": 1024, "M": MIB, "G": 1024 * MIB}
_RSS_TARGET = 64 * MIB


def parse_size(text: str) -> int:
    """``256M``, ``1G``, ``1048576``: a number of bytes."""
    m = re.fullmatch(r"(\d+)([KMG]?)i?B?", text.strip().upper())
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


class PeakRSS:
    """The peak resident set size of this process during a block, above its start."""

    def __init__(self) -> None:
        self.delta = 0
        self._resettable = True

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
        return int(m.group(1)) * 1024 if m else 0

    def __enter__(self) -> PeakRSS:
        self._base = self._status("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            self._resettable = False
        self._stop = threading.Event()
        self._sampled = self._base
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._sampled = max(self._sampled, self._status("VmRSS"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join()
        peak = self._sampled
        if self._resettable:
            peak = max(peak, self._status("VmHWM"))
        self.delta = max(0, peak - self._base)


def make_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        for i in range(0, size, MIB):
            f.write(os.urandom(min(MIB, size - i)))


def file_chunks(path: Path, chunk: int = MIB) -> Iterator[bytes]:
    with path.open("rb") as f:
        while data := f.read(chunk):
            yield data


def measure(repeat: int, size: int, fn: Callable[[], Any]) -> tuple[float, int]:
    """Median MB/s over ``repeat`` runs of ``fn`` and the largest peak-RSS delta."""
    rates: list[float] = []
    peak = 0
    for _ in range(repeat):
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - t0
        rates.append(size / elapsed / 1e6)
        peak = max(peak, rss.delta)
    return statistics.median(rates), peak


def line(name: str, ours: float, base: float, target: float, rss: int | None) -> str:
    ratio = ours / base
    ok = "ok" if ratio >= target and (rss is None or rss < _RSS_TARGET) else "MISSED"
    mem = f"  peak RSS +{rss / MIB:5.1f} MiB" if rss is not None else ""
    return (
        f"{name:34s} {ours:8.1f} MB/s  vs {base:8.1f} MB/s  ratio {ratio:4.2f} "
        f"(target >= {target:.1f}){mem}  {ok}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=parse_size, default=parse_size("256M"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--part-size", type=parse_size, default=None)
    parser.add_argument("--concurrency", type=int, default=None)
    args = parser.parse_args()
    size = args.size
    tuning = {"part_size": args.part_size, "concurrency": args.concurrency}

    with tempfile.TemporaryDirectory(prefix="archil-bench-objects-") as tmp:
        root = Path(tmp)
        src, dst = root / "src.bin", root / "dst.bin"
        make_file(src, size)
        server = ExternalServer(str(root / "data"))
        try:
            run(server, src, dst, size, args.repeat, tuning)
        finally:
            server.close()


def run(
    server: ExternalServer,
    src: Path,
    dst: Path,
    size: int,
    repeat: int,
    tuning: dict[str, int | None],
) -> None:
    headers = {"Authorization": server.api_key}
    disk = "bench-objects"
    url = f"{server.base_url}/s3/{disk}/big.bin"
    single = {"multipart_threshold": size + 1, "concurrency": 1}
    print(f"object size {size / MIB:.0f} MiB, median of {repeat}", flush=True)
    with (
        httpx.Client(headers=headers, timeout=600, trust_env=False) as raw,
        archil.Archil(base_url=server.base_url, api_key=server.api_key, timeout=600) as client,
    ):
        raw.put(f"{server.base_url}/s3/{disk}/warm", content=b"x").raise_for_status()

        def raw_put() -> None:
            raw.put(
                url, content=file_chunks(src), headers={"Content-Length": str(size)}
            ).raise_for_status()

        def raw_get() -> None:
            with raw.stream("GET", url) as r, dst.open("wb") as f:
                r.raise_for_status()
                for chunk in r.iter_bytes(MIB):
                    f.write(chunk)

        base_up, _ = measure(repeat, size, raw_put)
        up1, rss = measure(
            repeat, size, lambda: client.objects.upload_file(disk, "big.bin", src, **single)
        )  # type: ignore[arg-type]
        print(line("upload, SDK single stream", up1, base_up, 0.9, rss), flush=True)
        upm, rss = measure(
            repeat, size, lambda: client.objects.upload_file(disk, "big.bin", src, **tuning)
        )  # type: ignore[arg-type]
        print(line("upload, SDK multipart (blocking)", upm, base_up, 1.5, rss), flush=True)
        upa, rss = measure(repeat, size, lambda: asyncio.run(_aupload(server, disk, src, tuning)))
        print(line("upload, SDK multipart (async)", upa, base_up, 1.5, rss), flush=True)

        base_down, _ = measure(repeat, size, raw_get)
        dn1, rss = measure(
            repeat, size, lambda: client.objects.download_file(disk, "big.bin", dst, concurrency=1)
        )
        print(line("download, SDK single stream", dn1, base_down, 0.9, rss), flush=True)
        dnm, rss = measure(
            repeat, size, lambda: client.objects.download_file(disk, "big.bin", dst, **tuning)
        )  # type: ignore[arg-type]
        print(line("download, SDK ranged (blocking)", dnm, base_down, 1.5, rss), flush=True)
        dna, rss = measure(repeat, size, lambda: asyncio.run(_adownload(server, disk, dst, tuning)))
        print(line("download, SDK ranged (async)", dna, base_down, 1.5, rss), flush=True)
        print(f"raw httpx single stream: upload {base_up:.1f} MB/s, download {base_down:.1f} MB/s")


async def _aupload(server: ExternalServer, disk: str, src: Path, tuning: dict[str, Any]) -> None:
    async with archil.aio.Archil(
        base_url=server.base_url, api_key=server.api_key, timeout=600
    ) as c:
        await c.objects.upload_file(disk, "big.bin", src, **tuning)


async def _adownload(server: ExternalServer, disk: str, dst: Path, tuning: dict[str, Any]) -> None:
    async with archil.aio.Archil(
        base_url=server.base_url, api_key=server.api_key, timeout=600
    ) as c:
        await c.objects.download_file(disk, "big.bin", dst, **tuning)


if __name__ == "__main__":
    main()
