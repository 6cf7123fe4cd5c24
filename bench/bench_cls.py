"""@app.cls warm containers against cold calls, measured in the same run.

    python bench/bench_cls.py [--calls 5] [--rounds 3] [--model-mib 64]

A "model" of ``--model-mib`` MiB is put on the app's disk. Each round times:
- cold: ``--calls`` successive ``fn.remote(x)`` of a function that loads the model and
  predicts (a new sandbox per call, the load every time): the baseline;
- warm: ``--calls`` successive ``Model(round).predict.remote(x)`` of an ``@app.cls`` class
  whose ``@archil.enter()`` loads the model (one sandbox, started and loaded in the first
  call of the round, since each round uses new constructor arguments).

Prints the medians over the rounds and the ratio cold / warm (how many times faster the
warm class is), and the warm per-call time after the first call against a cold call. Runs
on an embedded local control plane in a temporary directory; run it inside
``unshare --pid --fork --mount --mount-proc`` where sandboxes need it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import archil
from archil.local.embedded import LocalServer


def _load(path: str) -> int:
    total = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            total += chunk.count(b"\x01")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-mib", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="archil-bench-cls-") as data:
        server = LocalServer(Path(data), auto_create_disks=True).start()
        try:
            app = archil.App(
                name="bench-cls",
                disk_id="disk_bench_cls",
                base_url=server.base_url,
                api_key=server.api_key,
            )
            weights = bytes(range(256)) * (args.model_mib * 4096)
            app.client().objects.put(app.disk_id, "model/weights.bin", weights)
            model_path = "/mnt/archil/model/weights.bin"

            @app.function(stream_logs=False)
            def predict_cold(x: int) -> int:
                return _load(model_path) + x

            @app.cls(stream_logs=False, scaledown_window=600)
            class Model:
                def __init__(self, round_no: int) -> None:
                    self.round_no = round_no

                @archil.enter()
                def load(self) -> None:
                    self.ones = _load(model_path)

                @archil.method()
                def predict(self, x: int) -> int:
                    return self.ones + x

            expected = [_load_expected(weights) + x for x in range(args.calls)]
            predict_cold.remote(0)  # the image and the disk's library are ready for both
            cold_totals, warm_totals, warm_rest, cold_each = [], [], [], []
            for round_no in range(args.rounds):
                t0 = time.perf_counter()
                cold = [predict_cold.remote(x) for x in range(args.calls)]
                cold_totals.append(time.perf_counter() - t0)
                cold_each.append(cold_totals[-1] / args.calls)
                t0 = time.perf_counter()
                warm = [Model(round_no).predict.remote(0)]
                t1 = time.perf_counter()
                warm += [Model(round_no).predict.remote(x) for x in range(1, args.calls)]
                t2 = time.perf_counter()
                warm_totals.append(t2 - t0)
                warm_rest.append((t2 - t1) / max(1, args.calls - 1))
                assert cold == expected and warm == expected, (cold, warm, expected)
            cold_ms = statistics.median(cold_totals) * 1000
            warm_ms = statistics.median(warm_totals) * 1000
            each_ms = statistics.median(cold_each) * 1000
            rest_ms = statistics.median(warm_rest) * 1000
            print(
                f"medians of {args.rounds} rounds, {args.calls} calls each, "
                f"model {args.model_mib} MiB"
            )
            print(f"{args.calls} cold fn.remote() calls       {cold_ms:9.1f} ms   (baseline)")
            print(
                f"{args.calls} warm @app.cls calls        {warm_ms:9.1f} ms   "
                f"cold/warm x{cold_ms / warm_ms:5.2f}"
            )
            print(
                f"one warm call after the first  {rest_ms:9.1f} ms   "
                f"one cold call {each_ms:.1f} ms: x{each_ms / rest_ms:5.2f}"
            )
            Model._close_sync()
            app.close()
        finally:
            server.stop()


def _load_expected(weights: bytes) -> int:
    return weights.count(b"\x01")


if __name__ == "__main__":
    main()
