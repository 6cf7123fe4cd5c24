"""Processes over the process WebSocket, through real sockets to a scripted fake server."""

from __future__ import annotations

import logging
import pickle

import pytest

from archil._async.resources.sandboxes import AsyncSandbox
from archil._errors import APIConnectionError, InternalServerError, ProcessError
from archil._process import MAX_INPUT_FRAME, ProcessOutput

from .helpers import FakeClock

# isort: split
from fake_sandbox_server import PROCESS_ID, SANDBOX_ID, TOKEN, FakeSandboxServer, Plan

FIVE = [(1, b"one\n"), (2, b"two\n"), (1, b"three\n"), (2, b"four\n"), (1, b"five\n")]


def joined(outputs: list[ProcessOutput]) -> bytes:
    return b"".join(o.data for o in outputs)


async def test_start_started_frames_exit(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer
) -> None:
    sandbox_server.reset(Plan(chunks=FIVE, status="completed", exit_code=3))
    process = await box.run(
        "echo hi", env={"A": "1"}, cwd="/work", timeout_seconds=30, terminal=(80, 24)
    )
    assert process.id == PROCESS_ID
    assert process.result is None
    outputs = [out async for out in process]
    assert [(o.stream, o.offset, o.data) for o in outputs] == [
        ("stdout", 0, b"one\n"),
        ("stderr", 4, b"two\n"),
        ("stdout", 8, b"three\n"),
        ("stderr", 14, b"four\n"),
        ("stdout", 19, b"five\n"),
    ]
    result = process.result
    assert result is not None
    assert (result.status, result.exit_code, result.ok) == ("completed", 3, False)
    assert result.stdout == "one\nthree\nfive\n" and result.stderr == "two\nfour\n"
    assert process.cursor == 24
    assert [out async for out in process] == []
    assert await process.wait() is result
    assert sandbox_server.connections == [
        [
            {
                "type": "start",
                "command": "echo hi",
                "terminal": {"cols": 80, "rows": 24},
                "env": {"A": "1"},
                "cwd": "/work",
                "timeout_seconds": 30,
            }
        ]
    ]


async def test_exec_returns_the_result(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer
) -> None:
    sandbox_server.reset(
        Plan(
            chunks=[(1, b"out\n"), (2, b"err\n")],
            status="failed",
            exit_code=137,
            exit_reason="out of memory",
        )
    )
    result = await box.exec("python big.py")
    assert result.process_id == PROCESS_ID
    assert (result.status, result.exit_code, result.exit_reason) == ("failed", 137, "out of memory")
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    sandbox_server.reset()
    result = await box.exec("true", collect_output=False)
    assert result.ok and result.stdout == ""


async def test_output_bytes_that_are_not_utf8_stay_intact(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer
) -> None:
    raw = b"\xff\xfe\x00bin\xc3"
    sandbox_server.reset(Plan(chunks=[(1, raw), (1, b"\xa9 ok")]))
    process = await box.run("cat blob")
    outputs = [out async for out in process]
    assert joined(outputs) == raw + b"\xa9 ok"
    assert process.result is not None
    # The character split across two frames is decoded whole.
    assert process.result.stdout == "\ufffd\ufffd\x00bin\u00e9 ok"


@pytest.mark.parametrize("mode", ["abrupt", "close"])
async def test_a_dropped_socket_reconnects_and_attaches_from_the_cursor(
    box: AsyncSandbox,
    sandbox_server: FakeSandboxServer,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    caplog.set_level(logging.INFO, logger="archil")
    sandbox_server.reset(Plan(chunks=FIVE, drop_after=[2, 1], drop_mode=mode))
    process = await box.run("count")
    outputs = [out async for out in process]
    assert joined(outputs) == b"".join(p for _, p in FIVE)
    offsets = [o.offset for o in outputs]
    assert offsets == sorted(set(offsets))
    assert process.result is not None and process.result.status == "completed"
    assert process.result.stdout == "one\nthree\nfive\n"
    first, second, third = sandbox_server.connections
    assert first[0]["type"] == "start"
    assert second == [{"type": "attach", "process_id": PROCESS_ID, "offset": 8}]
    assert third == [{"type": "attach", "process_id": PROCESS_ID, "offset": 14}]
    assert sandbox_server.connection_posts == 3
    # Progress (new output) resets the budget: both waits are the first backoff.
    assert clock.sleeps == [0.5, 0.5]
    retries = [r.getMessage() for r in caplog.records if r.name == "archil"]
    assert len(retries) == 2
    assert all("reconnecting process" in m and SANDBOX_ID in m for m in retries)
    assert all(TOKEN not in m for m in retries)


async def test_a_frame_overlapping_the_cursor_is_trimmed(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer
) -> None:
    sandbox_server.reset(Plan(chunks=[(1, b"abcd"), (1, b"efgh")], drop_after=[1], overlap=2))
    process = await box.run("letters")
    outputs = [out async for out in process]
    assert [(o.offset, o.data) for o in outputs] == [(0, b"abcd"), (4, b"efgh")]
    assert process.result is not None and process.result.stdout == "abcdefgh"
    assert sandbox_server.connections[1][0]["offset"] == 4


async def test_wait_reconnects_too(box: AsyncSandbox, sandbox_server: FakeSandboxServer) -> None:
    sandbox_server.reset(Plan(chunks=FIVE, drop_after=[0, 3]))
    result = await box.exec("count")
    assert result.stdout == "one\nthree\nfive\n" and result.stderr == "two\nfour\n"
    assert [c[0].get("offset") for c in sandbox_server.connections] == [None, 0, 14]


async def test_the_reconnect_budget_runs_out(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer, clock: FakeClock
) -> None:
    sandbox_server.reset(Plan(chunks=FIVE, drop_after=[1, 0, 0, 0, 0, 0]))
    process = await box.run("count")
    seen: list[ProcessOutput] = []
    with pytest.raises(APIConnectionError, match="could not connect again"):
        async for out in process:
            seen.append(out)
    assert joined(seen) == b"one\n"
    # The client's max_retries (3) attempts after the first drop, then the error.
    assert len(sandbox_server.connections) == 1 + 3
    assert clock.sleeps == [0.5, 1.0, 2.0]
    assert process.result is None


async def test_a_connection_that_stayed_up_a_minute_resets_the_budget(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer, clock: FakeClock
) -> None:
    """A quiet process whose socket drops now and then is not given up on."""
    sandbox_server.reset(Plan(chunks=FIVE, drop_after=[1, 0, 0, 0, 0, 0]))
    ticks = iter(range(0, 10_000, 61))
    box._transport.clock = lambda: float(next(ticks))
    result = await box.exec("count")
    assert result.stdout == "one\nthree\nfive\n"
    assert len(sandbox_server.connections) == 7
    assert clock.sleeps == [0.5] * 6


async def test_refused_upgrades_are_retried_then_raised(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer, clock: FakeClock
) -> None:
    sandbox_server.reset(Plan(refuse=[503, 503]))
    result = await box.exec("true")
    assert result.ok
    assert clock.sleeps == [0.5, 1.0]
    sandbox_server.reset(Plan(refuse=[0, 503, 503, 503, 503]))
    sandbox_server.plan.drop_after = [0]
    process = await box.run("true")
    with pytest.raises(APIConnectionError) as info:
        await process.wait()
    assert isinstance(info.value.__cause__, InternalServerError)


async def test_a_refused_upgrade_that_is_not_transient_is_raised_at_once(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer, clock: FakeClock
) -> None:
    sandbox_server.reset(Plan(refuse=[403]))
    with pytest.raises(Exception) as info:
        await box.run("true")
    assert getattr(info.value, "status_code", None) == 403
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)
    assert clock.sleeps == []


async def test_connection_urls_are_retried(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer, clock: FakeClock
) -> None:
    sandbox_server.reset(Plan(connection_errors=2))
    assert (await box.exec("true")).ok
    assert sandbox_server.connection_posts == 3
    assert clock.sleeps == [0.5, 1.0]


async def test_a_drop_before_started_is_not_retried(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer
) -> None:
    """The start may have spawned the process: sending it again could run it twice."""
    sandbox_server.reset(Plan(unanswered=[True]))
    with pytest.raises(APIConnectionError, match="may or may not be running"):
        await box.run("once")
    assert len(sandbox_server.connections) == 1


async def test_a_drop_before_attached_is_retried(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer, clock: FakeClock
) -> None:
    sandbox_server.reset(Plan(chunks=FIVE, drop_after=[1], unanswered=[False, True, True]))
    result = await box.exec("count")
    assert result.stdout == "one\nthree\nfive\n"
    assert [c[0]["type"] for c in sandbox_server.connections] == ["start"] + ["attach"] * 3
    assert clock.sleeps == [0.5, 1.0, 2.0]


async def test_an_error_event_raises_process_error(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer
) -> None:
    sandbox_server.reset(Plan(chunks=FIVE, error_after=2))
    process = await box.run("count")
    seen: list[ProcessOutput] = []
    with pytest.raises(ProcessError) as info:
        async for out in process:
            seen.append(out)
    assert info.value.code == "internal" and info.value.process_id == PROCESS_ID
    assert "the process broke" in str(info.value)
    assert len(seen) == 2
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.code, again.process_id) == ("internal", PROCESS_ID)


async def test_a_start_the_server_refuses(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer
) -> None:
    sandbox_server.reset(
        Plan(start_error={"error": "spawn_failed", "message": "no such file: /bin/nope"})
    )
    with pytest.raises(ProcessError) as info:
        await box.run("/bin/nope")
    assert info.value.code == "spawn_failed" and "/bin/nope" in str(info.value)


async def test_attach_to_a_process(box: AsyncSandbox, sandbox_server: FakeSandboxServer) -> None:
    sandbox_server.reset(Plan(chunks=FIVE))
    process = await box.attach(PROCESS_ID, offset=8)
    outputs = [out async for out in process]
    assert joined(outputs) == b"three\nfour\nfive\n"
    assert sandbox_server.connections[0] == [
        {"type": "attach", "process_id": PROCESS_ID, "offset": 8}
    ]
    with pytest.raises(ProcessError) as info:
        await box.attach("proc-nope")
    assert info.value.code == "process_not_found"
    with pytest.raises(ValueError, match="offset"):
        await box.attach(PROCESS_ID, offset=-1)


async def test_kill_and_resize_use_control_connections(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer
) -> None:
    sandbox_server.reset(Plan(hold=True))
    process = await box.run("sleep 1000", terminal=True)
    await process.resize(120, 40)
    assert sandbox_server.resized == [(120, 40)]
    await process.kill()
    result = await process.wait()
    assert (result.status, result.exit_code) == ("cancelled", None)
    await process.kill()  # it has exited: nothing is sent
    assert [c[0] for c in sandbox_server.connections[1:]] == [
        {"type": "resize", "process_id": PROCESS_ID, "cols": 120, "rows": 40},
        {"type": "kill", "process_id": PROCESS_ID},
    ]
    await box.kill(PROCESS_ID)
    assert sandbox_server.connections[-1] == [{"type": "kill", "process_id": PROCESS_ID}]


async def test_a_control_answer_that_is_not_exactly_right(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer
) -> None:
    sandbox_server.reset(Plan(control_answer={"type": "killed", "extra": 1}))
    with pytest.raises(ProcessError, match="expected"):
        await box.kill(PROCESS_ID)
    sandbox_server.reset(
        Plan(control_answer={"type": "error", "error": "process_not_found", "message": "gone"})
    )
    with pytest.raises(ProcessError) as info:
        await box.resize(PROCESS_ID, 80, 24)
    assert info.value.code == "process_not_found"
    with pytest.raises(ValueError, match="cols"):
        await box.resize(PROCESS_ID, 0, 24)


async def test_standard_input_reaches_the_process(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer
) -> None:
    sandbox_server.reset(Plan(chunks=[], echo_stdin=True))
    process = await box.run("cat")
    big = bytes(range(256)) * (MAX_INPUT_FRAME // 256 * 2 + 7)
    await process.send_input(b"abc")
    await process.send_input("é\n")
    await process.send_input(big)
    await process.close_stdin()
    await process.close_stdin()
    result = await process.wait()
    frames = [m for m in sandbox_server.connections[0] if isinstance(m, bytes)]
    assert [len(f) for f in frames[:2]] == [3, 3]
    assert max(len(f) for f in frames) == MAX_INPUT_FRAME
    assert len(frames) == 2 + 3
    assert sandbox_server.stdin == b"abc" + "é\n".encode() + big
    assert sandbox_server.connections[0][-1] == {"type": "close_stdin"}
    assert result.stdout.startswith("abcé\n")
    assert process.cursor == len(sandbox_server.stdin)
    with pytest.raises(ProcessError, match="exited"):
        await process.send_input(b"late")
    with pytest.raises(TypeError):
        await process.send_input(42)  # type: ignore[arg-type]


async def test_close_detaches_and_using_the_handle_attaches_again(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer
) -> None:
    sandbox_server.reset(Plan(chunks=FIVE))
    async with await box.run("count") as process:
        first = await process._next()
        while first is None:
            first = await process._next()
    assert first.data == b"one\n"
    assert "running" in repr(process) and TOKEN not in repr(process)
    result = await process.wait()
    assert result.stdout == "one\nthree\nfive\n"
    assert sandbox_server.connections[1][0] == {
        "type": "attach",
        "process_id": PROCESS_ID,
        "offset": 4,
    }


async def test_the_socket_carries_no_api_key(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sandbox_server.reset()
    await box.exec("true", env={"SECRET": "env-secret-2b4d"})
    headers = sandbox_server.upgrade_headers[0]
    assert "authorization" not in headers
    assert headers["user-agent"].startswith("archil-python/")
    assert TOKEN not in caplog.text
    assert "env-secret-2b4d" not in caplog.text
    assert sandbox_server.api_key not in caplog.text


async def test_bad_arguments_fail_before_connecting(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer
) -> None:
    sandbox_server.reset()
    for kwargs, field in [
        ({"command": ""}, "command"),
        ({"command": "x", "env": {"1X": "y"}}, "env"),
        ({"command": "x", "timeout_seconds": 0}, "timeout_seconds"),
        ({"command": "x", "terminal": (0, 10)}, "terminal"),
    ]:
        with pytest.raises(ValueError, match=field):
            await box.run(**kwargs)  # type: ignore[arg-type]
    assert sandbox_server.connection_posts == 0


async def test_process_handles_are_not_picklable(
    box: AsyncSandbox, sandbox_server: FakeSandboxServer
) -> None:
    sandbox_server.reset()
    async with await box.run("true") as process:
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(process)
