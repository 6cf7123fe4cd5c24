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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench_core import ExternalServer  # bench/ is on sys.path when this file runs

import archil

MIB = 1024 * 1024
DISK = "bench-objects"
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


@dataclass
class Figure:
    """One way to move the object, measured in every round."""

    name: str
    run: Callable[[], Any]
    reset: Callable[[], Any]
    rates: list[float] = field(default_factory=list)
    peak_rss: int = 0

    def measure(self, size: int) -> None:
        """One timed run; ``reset`` (untimed) first removes what the previous run wrote.

        Dirty pages are flushed before the clock starts, so that every run begins
        from the same state (the disk's writeback would otherwise slow down
        whichever run comes next).
        """
        self.reset()
        os.sync()
        time.sleep(1.0)
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            self.run()
            elapsed = time.perf_counter() - t0
        self.rates.append(size / elapsed / 1e6)
        self.peak_rss = max(self.peak_rss, rss.delta)

    @property
    def rate(self) -> float:
        """The median throughput in MB/s."""
        return statistics.median(self.rates)


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
    tuning: dict[str, Any],
) -> None:
    """Measure every figure, round robin, and print one line per SDK figure."""
    print(f"object size {size / MIB:.0f} MiB, median of {repeat}", flush=True)
    with (
        httpx.Client(
            headers={"Authorization": server.api_key}, timeout=600, trust_env=False
        ) as raw,
        archil.Archil(base_url=server.base_url, api_key=server.api_key, timeout=600) as client,
    ):
        raw.put(f"{server.base_url}/s3/{DISK}/warm", content=b"x").raise_for_status()
        uploads, downloads = figures(server, raw, client, src, dst, size, tuning)
        for group in (uploads, downloads):
            # Round robin: every figure once per round, so drift hits them all alike.
            for _ in range(repeat):
                for figure in group:
                    figure.measure(size)
            base = group[0]
            for figure, target in zip(group[1:], (0.9, 1.5, 1.5), strict=True):
                print(
                    line(figure.name, figure.rate, base.rate, target, figure.peak_rss), flush=True
                )
                if os.environ.get("BENCH_VERBOSE"):
                    print(
                        f"    runs {[round(r) for r in figure.rates]}, baseline {[round(r) for r in base.rates]}"
                    )
        print(
            f"raw httpx single stream: upload {uploads[0].rate:.1f} MB/s, "
            f"download {downloads[0].rate:.1f} MB/s"
        )


def figures(
    server: ExternalServer,
    raw: httpx.Client,
    client: archil.Archil,
    src: Path,
    dst: Path,
    size: int,
    tuning: dict[str, Any],
) -> tuple[list[Figure], list[Figure]]:
    """The upload figures and the download figures; the first of each is the raw httpx baseline."""
    url = f"{server.base_url}/s3/{DISK}/big.bin"
    objects = client.objects
    single: dict[str, Any] = {"multipart_threshold": size + 1, "concurrency": 1}

    def raw_put() -> None:
        raw.put(
            url, content=file_chunks(src), headers={"Content-Length": str(size)}
        ).raise_for_status()

    def raw_get() -> None:
        with raw.stream("GET", url) as r, dst.open("wb") as f:
            r.raise_for_status()
            for chunk in r.iter_bytes():
                f.write(chunk)

    def drop() -> None:
        objects.delete(DISK, "big.bin")

    def clear() -> None:
        dst.unlink(missing_ok=True)

    uploads = [
        Figure("raw", raw_put, drop),
        Figure(
            "upload, SDK single stream",
            lambda: objects.upload_file(DISK, "big.bin", src, **single),
            drop,
        ),
        Figure(
            "upload, SDK multipart (blocking)",
            lambda: objects.upload_file(DISK, "big.bin", src, **tuning),
            drop,
        ),
        Figure(
            "upload, SDK multipart (async)",
            lambda: asyncio.run(_aupload(server, src, tuning)),
            drop,
        ),
    ]
    downloads = [
        Figure("raw", raw_get, clear),
        Figure(
            "download, SDK single stream",
            lambda: objects.download_file(DISK, "big.bin", dst, concurrency=1),
            clear,
        ),
        Figure(
            "download, SDK ranged (blocking)",
            lambda: objects.download_file(DISK, "big.bin", dst, **tuning),
            clear,
        ),
        Figure(
            "download, SDK ranged (async)",
            lambda: asyncio.run(_adownload(server, dst, tuning)),
            clear,
        ),
    ]
    return uploads, downloads


async def _aupload(server: ExternalServer, src: Path, tuning: dict[str, Any]) -> None:
    async with archil.aio.Archil(
        base_url=server.base_url, api_key=server.api_key, timeout=600
    ) as c:
        await c.objects.upload_file(DISK, "big.bin", src, **tuning)


async def _adownload(server: ExternalServer, dst: Path, tuning: dict[str, Any]) -> None:
    async with archil.aio.Archil(
        base_url=server.base_url, api_key=server.api_key, timeout=600
    ) as c:
        await c.objects.download_file(DISK, "big.bin", dst, **tuning)


if __name__ == "__main__":
    main()
