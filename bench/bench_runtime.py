"""Sandbox runtime benchmarks: medians beside baselines measured in the same run.

    python bench/bench_runtime.py [--runs 30] [--namespaces auto|off]

Prints the median of:
- boot to ready (``Runtime.boot`` with a warm zygote: a namespaced sandbox with its overlay
  root, a disk and a memory cgroup) against ``unshare --mount --pid --fork --mount-proc true``;
- spawn to exit of ``true`` and spawn to first output of ``echo`` in a booted sandbox against
  ``subprocess.run(["true"])``;
- stop of an idle sandbox against ``unshare --mount --pid --fork --mount-proc true``.

Operations are 20 ms apart, as on a runtime that is not booting back to back: after each
boot the runtime prepares the next sandbox (helper forked, namespaces made) in the
background, and a boot or stop timed while that runs shares the CPUs with it.

Run it as root (or where user namespaces work), ideally inside
``unshare --pid --fork --mount --mount-proc``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from archil.local.layers import LayerStore
from archil.local.runtime import Environment, Runtime
from archil.local.spec import ExitInfo, ImageEnv, MountSpec, ProcessSpec, SandboxSpec

_PAUSE = 0.02
"""Between two timed operations: a warm runtime prepares the next sandbox in the background."""


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def _time(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


class _Bench:
    def __init__(self, tmp: Path, namespaces: bool | None) -> None:
        self.rt = Runtime(tmp / "rt", namespaces=namespaces)
        self.layers = LayerStore(tmp / "layers")
        self.disk = tmp / "disk"
        self.disk.mkdir()

    def spec(self) -> SandboxSpec:
        sid = f"bench-{uuid.uuid4().hex[:8]}"
        return SandboxSpec(
            sandbox_id=sid,
            hostname="bench",
            root=self.layers.new_session(sid),
            image=ImageEnv(image_id="host", source="host"),
            mounts=(MountSpec(self.disk, "/mnt/archil"),),
            mem_size_mib=512,
        )

    def boot(self) -> Environment:
        return self.rt.boot(self.spec(), on_end=lambda _reason: None)

    def boots(self, runs: int) -> tuple[list[float], list[float]]:
        boot, stop = [], []
        for _ in range(runs):
            spec = self.spec()
            time.sleep(_PAUSE)
            t0 = time.perf_counter()
            env = self.rt.boot(spec, on_end=lambda _reason: None)
            boot.append(time.perf_counter() - t0)
            time.sleep(_PAUSE)
            t1 = time.perf_counter()
            env.stop(1.0)
            stop.append(time.perf_counter() - t1)
            self.layers.remove_session(spec.root)
        return boot, stop

    @staticmethod
    def spawn(env: Environment, command: str, *, first_output: bool) -> float:
        seen = threading.Event()
        done = threading.Event()

        def on_output(_stream: int, _data: bytes) -> None:
            seen.set()

        def on_exit(_info: ExitInfo) -> None:
            done.set()

        t0 = time.perf_counter()
        env.spawn(ProcessSpec(command=command), on_output=on_output, on_exit=on_exit)
        (seen if first_output else done).wait(10)
        t1 = time.perf_counter()
        done.wait(10)
        return t1 - t0


def _row(name: str, value: float, base_name: str, base: float) -> str:
    return f"{name:<34} {value:8.2f} ms   {base_name:<44} {base:8.2f} ms   x{value / base:5.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--namespaces", choices=("auto", "off"), default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="archil-bench-") as tmp:
        bench = _Bench(Path(tmp), None if args.namespaces == "auto" else False)
        caps = bench.rt.capabilities
        print(f"isolation: {caps['isolation']}, cgroup: {caps['cgroup']}, reason: {caps['reason']}")
        unshare = ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "true"]
        true_base = _time(lambda: subprocess.run(["true"], check=True), args.runs)
        unshare_base = _time(lambda: subprocess.run(unshare, check=True), args.runs)
        bench.boots(3)
        boot, stop = bench.boots(args.runs)
        env = bench.boot()
        for _ in range(3):
            bench.spawn(env, "true", first_output=False)
        true_t = [bench.spawn(env, "true", first_output=False) for _ in range(args.runs)]
        echo_t = [bench.spawn(env, "echo hi", first_output=True) for _ in range(args.runs)]
        env.stop(1.0)
        bench.rt.shutdown(1.0)
        tb, ub = _median_ms(true_base), _median_ms(unshare_base)
        print(f"medians of {args.runs} runs")
        print(
            _row("boot to ready", _median_ms(boot), "unshare --mount --pid --fork --mount-proc", ub)
        )
        print(_row("spawn to exit: true", _median_ms(true_t), 'subprocess.run(["true"])', tb))
        print(
            _row("spawn to first output: echo", _median_ms(echo_t), 'subprocess.run(["true"])', tb)
        )
        print(
            _row(
                "stop (idle sandbox)",
                _median_ms(stop),
                "unshare --mount --pid --fork --mount-proc",
                ub,
            )
        )


if __name__ == "__main__":
    main()
