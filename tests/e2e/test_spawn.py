"""fn.spawn() and archil.FunctionCall end to end: both halves, across processes, cancel."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import archil

SCRIPT = textwrap.dedent(
    """
    import sys
    import archil

    app = archil.App(name="spawn", disk_id=sys.argv[2])

    @app.function(stream_logs=False)
    def triple(x):
        import time
        time.sleep(1)
        return 3 * x

    if sys.argv[1] == "spawn":
        print(triple.spawn(int(sys.argv[3])).object_id)
    else:
        call = archil.FunctionCall.from_id(sys.argv[3], app=app)
        print(call.get(timeout=60))
    """
)


def new_app(conn: dict[str, str]) -> archil.App:
    return archil.App(name="spawn", disk_id=f"disk_{uuid.uuid4().hex[:10]}", **conn)


def run_script(path: Path, conn: dict[str, str], *args: str) -> str:
    env = {**os.environ, "ARCHIL_BASE_URL": conn["base_url"], "ARCHIL_API_KEY": conn["api_key"]}
    proc = subprocess.run(
        [sys.executable, str(path), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def nothing_left(app: archil.App) -> None:
    client = app.client()
    client.flush()
    assert client.sandboxes.list(disk_id=app.disk_id) == []
    assert [o.key for o in client.objects.list(app.disk_id, prefix=".archil/calls/")] == []


def test_spawn_in_one_process_and_get_in_another(conn: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "spawner.py"
    script.write_text(SCRIPT)
    disk = f"disk_{uuid.uuid4().hex[:10]}"
    t0 = time.monotonic()
    object_id = run_script(script, conn, "spawn", disk, "14")
    assert object_id.startswith("fc-")
    # The spawner exited; the call goes on in its sandbox, and its state is on the disk.
    app = archil.App(name="spawn", disk_id=disk, **conn)
    assert [s.status for s in app.client().sandboxes.list(disk_id=disk)] == ["running"]
    assert run_script(script, conn, "get", disk, object_id) == "42"
    assert time.monotonic() - t0 < 60
    nothing_left(app)
    # Collected once: asking again says so clearly.
    with pytest.raises(archil.ArchilError, match="no call"):
        archil.FunctionCall.from_id(object_id, app=app).get()


def test_spawn_get_timeout_then_value_and_errors(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.function(stream_logs=False)
    def slow(x: int) -> int:
        import time

        time.sleep(2)
        if x < 0:
            raise KeyError("negative")
        return x + 1

    call = slow.spawn(1)
    assert isinstance(call, archil.FunctionCall)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        call.get(timeout=0.2)
    assert not isinstance(info.value, archil.FunctionTimeoutError)
    assert time.monotonic() - t0 < 2
    assert call.get() == 2
    assert call.get() == 2  # the handle remembers the result
    failing = slow.spawn(-1)
    with pytest.raises(KeyError, match="negative") as err:
        failing.get()
    assert isinstance(err.value.__cause__, archil.RemoteError)
    nothing_left(app)


def test_spawn_aio_and_cancel_aio(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.function(stream_logs=False)
    def sleepy(seconds: float) -> str:
        import time

        time.sleep(seconds)
        return "woke"

    async def main() -> str:
        quick = await sleepy.spawn.aio(0.1)
        long = await sleepy.spawn.aio(600)
        again = archil.FunctionCall.from_id(long.object_id, app=app)
        await again.cancel.aio()
        with pytest.raises(archil.FunctionCallCancelledError):
            await long.get.aio()
        return await quick.get.aio(timeout=60)

    assert asyncio.run(main()) == "woke"
    client = app.client()
    client.flush()
    assert client.sandboxes.list(disk_id=app.disk_id) == []


def test_cancel_leaves_no_sandbox(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.function(stream_logs=False)
    def forever() -> None:
        import time

        time.sleep(600)

    call = forever.spawn()
    client = app.client()
    assert [s.status for s in client.sandboxes.list(disk_id=app.disk_id)] == ["running"]
    call.cancel()
    assert client.sandboxes.list(disk_id=app.disk_id) == []
    with pytest.raises(archil.FunctionCallCancelledError):
        call.get(timeout=5)
    call.cancel()  # twice is fine


def test_from_id_rejects_bad_ids_before_any_request(conn: dict[str, str]) -> None:
    app = new_app(conn)
    with pytest.raises(ValueError, match="object_id"):
        archil.FunctionCall.from_id("sb-123", app=app)
    with pytest.raises(ValueError, match="app"):
        archil.FunctionCall.from_id("fc-" + "0" * 32, app="nope")  # type: ignore[arg-type]
    call = archil.FunctionCall.from_id("fc-" + "0" * 32, app=app)
    with pytest.raises(ValueError, match="timeout"):
        call.get(timeout=-1)
