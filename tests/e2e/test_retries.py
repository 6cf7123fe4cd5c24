"""Retries of the function itself, per-attempt timeouts and startup timeouts, end to end."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid

import pytest

import archil


def new_app(conn: dict[str, str]) -> archil.App:
    return archil.App(name="retries", disk_id=f"disk_{uuid.uuid4().hex[:10]}", **conn)


def flaky_function(app: archil.App, retries: int | archil.Retries) -> archil.Function[[], str]:
    @app.function(retries=retries, stream_logs=False)
    def flaky() -> str:
        import os

        path = "/mnt/archil/attempts"
        n = 1
        if os.path.exists(path):
            with open(path) as f:
                n = int(f.read()) + 1
        with open(path, "w") as f:
            f.write(str(n))
        if n == 1:
            os._exit(1)  # the container fails
        if n == 2:
            raise RuntimeError("second attempt raises")
        return f"succeeded on attempt {n}"

    return flaky


def retry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "retrying in" in r.getMessage()]


def test_fails_twice_then_succeeds_with_retries_3(
    conn: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="archil")
    app = new_app(conn)
    flaky = flaky_function(app, 3)
    assert flaky.remote() == "succeeded on attempt 3"
    logged = retry_records(caplog)
    assert len(logged) == 2
    assert "attempt 1 of 4" in logged[0].getMessage()
    assert "ContainerError" in logged[0].getMessage()
    assert "RuntimeError: second attempt raises" in logged[1].getMessage()
    app.client().flush()
    assert app.client().sandboxes.list(disk_id=app.disk_id) == []


def test_retries_aio_and_spawn_and_the_final_error_counts_attempts(
    conn: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="archil")
    app = new_app(conn)
    flaky = flaky_function(app, archil.Retries(max_retries=2, initial_delay=0.1))
    assert asyncio.run(flaky.remote.aio()) == "succeeded on attempt 3"
    assert len(retry_records(caplog)) == 2

    app.client().objects.delete(app.disk_id, "attempts")
    assert flaky.spawn().get(timeout=120) == "succeeded on attempt 3"

    @app.function(retries=archil.Retries(max_retries=1, initial_delay=0.0), stream_logs=False)
    def always() -> None:
        raise ValueError("always fails")

    with pytest.raises(ValueError, match="always fails") as info:
        always.remote()
    assert info.value.archil_attempts == 2  # type: ignore[attr-defined]
    assert any("after 2 attempt(s) of 2" in note for note in info.value.__notes__)


def test_timeout_per_attempt_raises_function_timeout_error(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.function(timeout=1, stream_logs=False)
    def sleeps() -> None:
        import time

        time.sleep(10)

    for run in (sleeps.remote, lambda: asyncio.run(sleeps.remote.aio())):
        t0 = time.monotonic()
        with pytest.raises(archil.FunctionTimeoutError, match="timeout=1") as info:
            run()
        assert time.monotonic() - t0 < 3
        assert isinstance(info.value, TimeoutError)
        assert (info.value.limit, info.value.seconds) == ("timeout", 1.0)
    client = app.client()
    client.flush()
    assert client.sandboxes.list(disk_id=app.disk_id) == []


def test_startup_timeout_names_the_limit(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.function(
        image=archil.Image.debian_slim().run_commands("sleep 5"),
        startup_timeout=1,
        stream_logs=False,
    )
    def never() -> None:
        pass

    t0 = time.monotonic()
    with pytest.raises(archil.FunctionTimeoutError, match="startup_timeout=1") as info:
        never.remote()
    assert info.value.limit == "startup_timeout"
    assert time.monotonic() - t0 < 4
    app.client().flush()
    assert app.client().sandboxes.list(disk_id=app.disk_id) == []


def test_a_sandbox_stopped_before_the_process_starts_is_a_sandbox_error_and_is_retried(
    conn: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call whose sandbox stops before its process starts never ran: without retries it
    raises SandboxError naming the sandbox, with retries it runs again in a new one."""
    from archil._sync.resources.sandboxes import Sandbox

    real_run = Sandbox.run
    stopped: list[str] = []

    def run_after_a_stop(self: Sandbox, command: str, **kwargs: object) -> object:
        if not stopped:
            self.stop()
            stopped.append(self.id)
        return real_run(self, command, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Sandbox, "run", run_after_a_stop)
    app = new_app(conn)

    @app.function(stream_logs=False)
    def once() -> str:
        return "ran"

    with pytest.raises(
        archil.SandboxError, match="stopped before the call's process started"
    ) as info:
        once.remote()
    assert info.value.sandbox_id == stopped[0]

    stopped.clear()

    @app.function(stream_logs=False, retries=1)
    def again() -> str:
        return "ran"

    assert again.remote() == "ran"
    assert len(stopped) == 1
    app.client().flush()
    assert app.client().sandboxes.list(disk_id=app.disk_id) == []


def test_a_sandbox_that_stops_under_a_running_call_is_a_sandbox_error_and_is_retried(
    conn: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call's connection drops and its sandbox stops meanwhile (as when the control
    plane restarts): the process cannot be followed again (the connect answers 409).
    That is a SandboxError naming the sandbox, which the function's retries cover."""
    from archil._sync.resources import processes

    app = new_app(conn)
    client = app.client()
    started = threading.Event()
    stopped: list[str] = []
    real_receive = processes.receive_event

    def watch_for_the_start() -> None:
        while not started.is_set():
            try:
                client.objects.head(app.disk_id, "started")
            except archil.NotFoundError:
                time.sleep(0.05)
            else:
                started.set()

    def drop_once_started(session: object, timeout: float) -> object:
        if started.is_set() and not stopped:
            for sandbox in client.sandboxes.list(disk_id=app.disk_id):
                sandbox.stop()
                stopped.append(sandbox.id)
            raise OSError("the connection dropped")
        return real_receive(session, timeout)

    monkeypatch.setattr(processes, "receive_event", drop_once_started)

    def run(retries: int) -> str:
        @app.function(stream_logs=False, retries=retries)
        def stops_under_it() -> str:
            import os
            import time

            if os.path.exists("/mnt/archil/started"):
                return "ran again"
            open("/mnt/archil/started", "w").close()
            time.sleep(60)
            return "not stopped"

        watcher = threading.Thread(target=watch_for_the_start, daemon=True)
        watcher.start()
        try:
            return stops_under_it.remote()
        finally:
            started.set()
            watcher.join()

    with pytest.raises(archil.SandboxError, match="stopped while process") as info:
        run(retries=0)
    assert info.value.sandbox_id == stopped[0]
    assert len(stopped) == 1

    client.objects.delete(app.disk_id, "started")
    started.clear()
    stopped.clear()
    assert run(retries=1) == "ran again"
    assert len(stopped) == 1
    client.flush()
    assert client.sandboxes.list(disk_id=app.disk_id) == []
