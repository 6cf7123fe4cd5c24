"""fn.remote() end to end, through the real local control plane."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import archil
from archil.local.embedded import LocalServer


def new_app(conn: dict[str, str]) -> archil.App:
    return archil.App(
        name="e2e", disk_id=f"disk_{uuid.uuid4().hex[:10]}", disk_env="production", **conn
    )


class Boom(Exception):
    pass


def test_remote_returns_the_value_and_writes_to_the_disk(
    conn: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    app = new_app(conn)

    @app.function()
    def work(x: int, *, name: str) -> dict[str, object]:
        import os

        print(f"working on {name}")
        os.makedirs("/mnt/archil/out", exist_ok=True)
        with open("/mnt/archil/out/result.txt", "w") as f:
            f.write(str(x * 2))
        return {"double": x * 2, "cwd": os.getcwd(), "disk": os.path.isdir("/mnt/archil")}

    result = work.remote(21, name="answer")
    assert result == {"double": 42, "cwd": "/mnt/archil", "disk": True}
    assert "working on answer" in capfd.readouterr().out
    client = app.client()
    assert client.objects.get(app.disk_id, "out/result.txt") == b"42"
    # Nothing is left behind once the background cleanup is done: no sandbox, no call files.
    client.flush()
    assert client.sandboxes.list(disk_id=app.disk_id) == []
    assert [o.key for o in client.objects.list(app.disk_id, prefix=".archil/calls/")] == []


def test_remote_exception_is_reraised_as_itself(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.function(stream_logs=False)
    def fails() -> None:
        raise Boom("remote failure")

    with pytest.raises(Boom, match="remote failure") as info:
        fails.remote()
    assert isinstance(info.value.__cause__, archil.RemoteError)
    assert "in fails" in info.value.__cause__.remote_traceback


def test_remote_aio_and_blocking_remote_inside_a_running_loop(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.function(stream_logs=False)
    def square(x: int) -> int:
        return x * x

    async def main() -> tuple[int, int, list[int]]:
        a = await square.remote.aio(7)
        b = square.remote(8)  # the notebook case: blocking call with a loop running
        c = await square.map.aio([1, 2, 3], concurrency=3)
        return a, b, c

    assert asyncio.run(main()) == (49, 64, [1, 4, 9])


def test_a_failed_input_upload_deletes_the_sandbox_started_meanwhile(
    conn: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The input goes to the disk while the sandbox starts: when the upload fails, that
    failure is raised, the sandbox started meanwhile is deleted and no function runs."""
    from archil._sync.resources.objects import Objects

    app = new_app(conn)

    @app.function(stream_logs=False)
    def never() -> None:
        raise AssertionError("ran without its input")

    client = app.client()
    real_put = Objects.put
    creates: list[str] = []
    real_create = type(client.sandboxes).create_from

    def create_from(self: object, *args: object, **kwargs: object) -> object:
        sandbox = real_create(self, *args, **kwargs)  # type: ignore[arg-type]
        creates.append(sandbox.id)
        return sandbox

    def failing_put(self: Objects, disk_id: str, key: str, *args: object, **kw: object) -> object:
        if key.endswith("/input.pkl"):
            import time

            time.sleep(0.3)  # the sandbox is running by now
            raise archil.PermissionDeniedError("uploads are refused", status_code=403)
        return real_put(self, disk_id, key, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Objects, "put", failing_put)
    monkeypatch.setattr(type(client.sandboxes), "create_from", create_from)
    with pytest.raises(archil.PermissionDeniedError, match="uploads are refused"):
        never.remote()
    assert len(creates) == 1, "the sandbox was not started while the input was uploaded"
    client.flush()
    assert client.sandboxes.list(disk_id=app.disk_id) == []


def test_a_call_ends_once_its_threads_and_atexit_handlers_are_done(
    conn: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    """The call's process skips the interpreter's teardown, but not what a normal exit
    runs: threads that are not daemons finish, atexit handlers run, output is flushed."""
    app = new_app(conn)

    @app.function()
    def leaves_work_behind() -> int:
        import atexit
        import sys
        import threading
        import time

        def late(path: str, delay: float) -> None:
            time.sleep(delay)
            with open(path, "w") as f:
                f.write("done")

        threading.Thread(target=late, args=("/mnt/archil/thread.txt", 0.5)).start()
        atexit.register(late, "/mnt/archil/atexit.txt", 0.0)
        sys.stdout.write("no newline at the end")
        return 7

    assert leaves_work_behind.remote() == 7
    assert "no newline at the end" in capfd.readouterr().out
    client = app.client()
    assert client.objects.get(app.disk_id, "thread.txt") == b"done"
    assert client.objects.get(app.disk_id, "atexit.txt") == b"done"


def test_map_keeps_input_order(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.function(stream_logs=False)
    def slow_echo(x: int) -> int:
        import time

        time.sleep(0.05 * (5 - x))
        return x

    assert list(slow_echo.map(range(5), concurrency=3)) == [0, 1, 2, 3, 4]


def test_run_job_returns_zero_or_raises_container_error(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.run(
        command="mkdir -p /mnt/archil/job && echo done > /mnt/archil/job/flag", stream_logs=False
    )
    def ok() -> None:
        pass

    @app.run(command="echo about to fail; exit 3", stream_logs=False)
    def bad() -> None:
        pass

    assert ok.remote() == 0
    assert app.client().objects.get(app.disk_id, "job/flag") == b"done\n"
    with pytest.raises(archil.ContainerError) as info:
        bad.remote()
    assert info.value.exit_code == 3
    assert "about to fail" in info.value.logs


def test_shared_volume_is_read_only(conn: dict[str, str]) -> None:
    app = new_app(conn)
    shared = f"disk_{uuid.uuid4().hex[:10]}"
    client = app.client()
    client.objects.put(shared, "input.txt", b"shared data")
    volume = archil.Volume.from_disk_id(shared, shared=True)

    @app.function(additional_volumes={"/datasets": volume}, stream_logs=False)
    def read_and_try_write() -> tuple[str, str]:
        with open("/datasets/input.txt") as f:
            data = f.read()
        try:
            with open("/datasets/new.txt", "w") as f:
                f.write("nope")
            outcome = "written"
        except OSError as exc:
            outcome = type(exc).__name__
        return data, outcome

    data, outcome = read_and_try_write.remote()
    assert data == "shared data"
    assert outcome != "written"
    with pytest.raises(archil.NotFoundError):
        client.objects.head(shared, "new.txt")


def test_functions_from_a_local_module_are_pickled_by_value(
    conn: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "mylocalpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("FACTOR = 3\n\ndef scale(x):\n    return x * FACTOR\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    helpers = importlib.import_module("mylocalpkg.helpers")
    app = new_app(conn)
    remote_scale = app.function(stream_logs=False)(helpers.scale)
    # The container has no 'mylocalpkg' on its path: only pickling by value makes this work.
    assert remote_scale.remote(14) == 42


def test_unpicklable_result_and_failed_build_give_clear_errors(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.function(stream_logs=False)
    def returns_a_lock() -> object:
        import threading

        return threading.Lock()

    with pytest.raises(archil.RemoteError, match="could not be pickled"):
        returns_a_lock.remote()

    @app.function(
        image=archil.Image.debian_slim().apt_install("no-such-package-xyz"), stream_logs=False
    )
    def never_runs() -> None:
        pass

    with pytest.raises(archil.ImageBuildError) as info:
        never_runs.remote()
    assert "no-such-package-xyz" in str(info.value)
    assert info.value.image_id is not None
    app.client().flush()
    assert app.client().sandboxes.list(disk_id=app.disk_id) == []


def test_kernel_variant_extended_works_where_offered_and_fails_clearly_elsewhere(
    conn: dict[str, str], server: LocalServer
) -> None:
    app = new_app(conn)

    @app.function(kernel_variant="extended", stream_logs=False)
    def gpu() -> str:
        return "ran"

    if server.settings.real_api_only:
        with pytest.raises(archil.BadRequestError, match="kernel_variant"):
            gpu.remote()
        assert app.client().sandboxes.list(disk_id=app.disk_id) == []
    else:
        assert gpu.remote() == "ran"


def test_a_script_that_exits_right_after_remote_leaves_nothing(
    conn: dict[str, str], tmp_path: Path
) -> None:
    disk = f"disk_{uuid.uuid4().hex[:10]}"
    script = tmp_path / "quick.py"
    script.write_text(
        "import sys, archil\n"
        "app = archil.App(name='quick', disk_id=sys.argv[1])\n"
        "@app.function(stream_logs=False)\n"
        "def f():\n"
        "    return 7\n"
        "print(f.remote())\n"
    )
    env = {**os.environ, "ARCHIL_BASE_URL": conn["base_url"], "ARCHIL_API_KEY": conn["api_key"]}
    proc = subprocess.run(
        [sys.executable, str(script), disk], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "7"
    client = archil.Archil(**conn)
    try:
        assert client.sandboxes.list(disk_id=disk) == []
        assert [o.key for o in client.objects.list(disk, prefix=".archil/calls/")] == []
    finally:
        client.close()
