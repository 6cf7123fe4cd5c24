"""@app.cls end to end: enter once per warm container, method calls reuse it, scale-down, exit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from pathlib import Path

import pytest

import archil
from procs import start_script


def new_app(conn: dict[str, str]) -> archil.App:
    return archil.App(name="cls", disk_id=f"disk_{uuid.uuid4().hex[:10]}", **conn)


def wait_for_no_sandbox(client: archil.Archil, disk: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while client.sandboxes.list(disk_id=disk) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.sandboxes.list(disk_id=disk) == []


def test_enter_runs_once_and_calls_reuse_the_warm_sandbox(
    conn: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    app = new_app(conn)
    client = app.client()
    client.objects.put(app.disk_id, "model/weights.txt", b"7")

    @app.cls(scaledown_window=1.5)
    class Model:
        def __init__(self, bias: int = 0) -> None:
            self.bias = bias

        @archil.enter()
        def load(self) -> None:
            import uuid

            self.token = uuid.uuid4().hex
            with open("/mnt/archil/model/weights.txt") as f:
                self.w = int(f.read())
            with open("/mnt/archil/enters.log", "a") as f:
                f.write(f"enter {self.bias}\n")

        @archil.method()
        def predict(self, x: int) -> tuple[int, str]:
            print(f"predicting {x}")
            if x < 0:
                raise ValueError("negative input")
            return self.w * x + self.bias, self.token

    results = [Model().predict.remote(i) for i in range(5)]
    assert [r[0] for r in results] == [0, 7, 14, 21, 28]
    assert len({token for _, token in results}) == 1  # one warm instance served them all
    assert client.objects.get(app.disk_id, "enters.log") == b"enter 0\n"
    out = capfd.readouterr().out
    assert "predicting 4" in out and "\x1e" not in out
    assert len(client.sandboxes.list(disk_id=app.disk_id)) == 1
    # The method's exception is re-raised as itself; the container stays warm.
    with pytest.raises(ValueError, match="negative input"):
        Model().predict.remote(-1)
    assert Model().predict.remote(1)[1] == results[0][1]
    # Other constructor arguments get their own container.
    assert Model(bias=1).predict.remote(1)[0] == 8
    # Idle for the scale-down window: every sandbox is deleted.
    wait_for_no_sandbox(client, app.disk_id, 6)
    assert client.objects.get(app.disk_id, "enters.log") == b"enter 0\nenter 1\n"

    async def main() -> list[int]:
        return [(await Model().predict.remote.aio(i))[0] for i in range(3)]

    assert asyncio.run(main()) == [0, 7, 14]
    # The end of asyncio.run closed the loop's warm container.
    assert client.sandboxes.list(disk_id=app.disk_id) == []
    assert client.objects.get(app.disk_id, "enters.log").count(b"enter 0") == 2
    with pytest.raises(AttributeError, match="no remote method"):
        Model().load  # noqa: B018


def test_bad_cls_declarations(conn: dict[str, str]) -> None:
    app = new_app(conn)
    with pytest.raises(ValueError, match="scaledown_window"):
        app.cls(scaledown_window=0)
    with pytest.raises(ValueError, match=r"no @archil\.method"):

        @app.cls()
        class Empty:
            pass


SCRIPT = textwrap.dedent(
    """
    import sys
    import archil

    app = archil.App(name="cls-exit", disk_id=sys.argv[1])

    @app.cls(scaledown_window=600, stream_logs=False)
    class Counter:
        @archil.enter()
        def start(self):
            self.n = 0

        @archil.method()
        def bump(self):
            self.n += 1
            return self.n

    print(Counter().bump.remote(), Counter().bump.remote())
    """
)


def test_the_warm_sandbox_is_deleted_at_the_end_of_the_script(
    conn: dict[str, str], tmp_path: Path
) -> None:
    disk = f"disk_{uuid.uuid4().hex[:10]}"
    script = tmp_path / "warm.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "ARCHIL_BASE_URL": conn["base_url"], "ARCHIL_API_KEY": conn["api_key"]}
    proc = subprocess.run(
        [sys.executable, str(script), disk], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "1 2"
    client = archil.Archil(**conn)
    try:
        assert client.sandboxes.list(disk_id=disk) == []
    finally:
        client.close()


INTERRUPT = textwrap.dedent(
    """
    import sys
    import archil

    app = archil.App(name="cls-interrupt", disk_id=sys.argv[1])

    @app.cls(scaledown_window=600)
    class Sleeper:
        @archil.method()
        def nap(self):
            import time
            print("sleeping", flush=True)
            time.sleep(600)

    Sleeper().nap.remote()
    """
)


def test_ctrl_c_during_a_method_call_deletes_the_warm_sandbox(
    conn: dict[str, str], tmp_path: Path
) -> None:
    import signal

    disk = f"disk_{uuid.uuid4().hex[:10]}"
    proc = start_script(tmp_path / "interrupt_cls.py", INTERRUPT, conn, disk)
    client = archil.Archil(**conn)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        while line and "sleeping" not in line:
            line = proc.stdout.readline()
        assert line, "the method never started"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert "KeyboardInterrupt" in out
        wait_for_no_sandbox(client, disk, 5)
    finally:
        if proc.poll() is None:
            proc.kill()
        client.close()


def test_the_end_of_asyncio_run_closes_warm_containers_before_the_loop_shuts_down(
    conn: dict[str, str],
) -> None:
    """The warm container is deleted while tasks are being cancelled, not while the loop
    closes its async generators: requests made then would draw a ResourceWarning each."""
    app = new_app(conn)

    @app.cls()
    class Echo:
        @archil.method()
        def echo(self, x: int) -> int:
            return x

    async def main() -> int:
        return await Echo().echo.remote.aio(3)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(main()) == 3
    late = [str(w.message) for w in caught if "shutdown_asyncgens" in str(w.message)]
    assert late == []
    client = app.client()
    client.flush()
    assert client.sandboxes.list(disk_id=app.disk_id) == []
