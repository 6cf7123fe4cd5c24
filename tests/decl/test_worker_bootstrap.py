"""The map's worker bootstrap, run as a plain process on call directories in a temp dir.

It loads the function once, runs it on each call directory named on its standard
input, skips a directory named again (a hand-over sent twice after a dropped
connection), answers each call with its result and a marker, and keeps the pipe
of call lines from the function, whose own standard input is ``/dev/null``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest

from archil._callproto import (
    WORKER_BOOTSTRAP,
    call_marker,
    decode_result,
    encode_arguments,
    encode_function,
)


def _count_and_read_stdin(path: str, x: int) -> tuple[int, str, int]:
    import builtins
    import sys

    runs = getattr(builtins, "_worker_test_runs", 0) + 1
    builtins._worker_test_runs = runs  # type: ignore[attr-defined]
    with open(path, "a") as f:
        f.write(f"{x}\n")
    if x < 0:
        raise KeyError(x)
    return x * 2, sys.stdin.read(), runs


def _run(
    tmp_path: Path, fn_payload: bytes, calls: list[tuple[str, bytes]], lines: list[str]
) -> str:
    fn_path = tmp_path / "function.pkl"
    fn_path.write_bytes(fn_payload)
    for name, payload in calls:
        (tmp_path / name).mkdir()
        (tmp_path / name / "input.pkl").write_bytes(payload)
    stdin = "".join(f"{tmp_path / line}\n" for line in lines)
    proc = subprocess.run(
        [sys.executable, "-u", "-c", WORKER_BOOTSTRAP, str(fn_path)],
        input=stdin.encode(),
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(cloudpickle.__file__))},
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def test_each_call_runs_once_in_one_interpreter(tmp_path: Path) -> None:
    log = tmp_path / "log"
    fn = _count_and_read_stdin
    calls = [
        ("fc-a", encode_arguments(fn, (str(log), 1), {})),
        ("fc-b", encode_arguments(fn, (str(log),), {"x": -1})),
        ("fc-c", encode_arguments(fn, (str(log), 3), {})),
    ]
    # "fc-a" is named again after "fc-b": a hand-over sent twice is skipped.
    out = _run(tmp_path, encode_function(fn), calls, ["fc-a", "fc-a", "fc-b", "fc-a", "fc-c"])
    assert log.read_text().split() == ["1", "-1", "3"]
    assert out == "".join(call_marker(name).decode() for name in ("fc-a", "fc-b", "fc-c"))
    assert decode_result((tmp_path / "fc-a" / "output.pkl").read_bytes()) == (2, "", 1)
    with pytest.raises(KeyError):
        decode_result((tmp_path / "fc-b" / "output.pkl").read_bytes())
    # The third call saw the state the first two left: one interpreter for all.
    assert decode_result((tmp_path / "fc-c" / "output.pkl").read_bytes()) == (6, "", 3)


def test_a_function_that_cannot_be_loaded_fails_every_call(tmp_path: Path) -> None:
    broken = cloudpickle.dumps(None)[:-3]  # a truncated pickle
    calls = [("fc-a", encode_arguments(print, (), {})), ("fc-b", encode_arguments(print, (), {}))]
    out = _run(tmp_path, broken, calls, ["fc-a", "fc-b"])
    assert out.count("\x1e") == 4
    for name in ("fc-a", "fc-b"):
        with pytest.raises(pickle.UnpicklingError, match="truncated"):
            decode_result((tmp_path / name / "output.pkl").read_bytes())
