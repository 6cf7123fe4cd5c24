"""fn.map (an iterator now), starmap and for_each end to end, both halves, and Ctrl-C during a map."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

import archil
from procs import start_script


def new_app(conn: dict[str, str]) -> archil.App:
    return archil.App(name="fanout", disk_id=f"disk_{uuid.uuid4().hex[:10]}", **conn)


class Odd(Exception):
    pass


FAILING = {5, 17, 30}


def check_in_place(results: list[object]) -> None:
    assert len(results) == 32
    errors = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert errors == sorted(FAILING)
    for i in FAILING:
        assert isinstance(results[i], Odd) and str(results[i]) == f"input {i}"
    assert [r for r in results if not isinstance(r, Exception)] == [
        i * i for i in range(32) if i not in FAILING
    ]


def test_map_return_exceptions_keeps_each_failure_in_its_place(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.function(stream_logs=False)
    def square(x: int) -> int:
        if x in FAILING:
            raise Odd(f"input {x}")
        return x * x

    results = square.map(range(32), concurrency=8, return_exceptions=True)
    assert not isinstance(results, list)
    check_in_place(list(results))

    async def main() -> list[object]:
        return [r async for r in square.map.aio(range(32), concurrency=8, return_exceptions=True)]

    check_in_place(asyncio.run(main()))
    # Without return_exceptions the first failure is raised.
    with pytest.raises(Odd, match="input 5"):
        list(square.map(range(8), concurrency=4))
    client = app.client()
    client.flush()
    assert client.sandboxes.list(disk_id=app.disk_id) == []


def test_map_order_outputs_false_yields_in_completion_order(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.function(stream_logs=False)
    def nap(x: int) -> int:
        import time

        time.sleep(0.5 * x)
        return x

    assert list(nap.map([2, 1, 0], concurrency=3, order_outputs=False)) == [0, 1, 2]
    assert list(nap.map([2, 1, 0], concurrency=3)) == [2, 1, 0]

    async def main() -> tuple[list[int], list[int]]:
        unordered = [r async for r in nap.map.aio([2, 1, 0], concurrency=3, order_outputs=False)]
        ordered = await nap.map.aio([1, 0], concurrency=2)  # awaiting gives the list
        return unordered, ordered

    assert asyncio.run(main()) == ([0, 1, 2], [1, 0])


def test_starmap_and_for_each(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.function(stream_logs=False)
    def write(name: str, value: int) -> int:
        with open(f"/mnt/archil/{name}", "w") as f:
            f.write(str(value))
        return value * 10

    assert list(write.starmap([("a", 1), ("b", 2)])) == [10, 20]
    assert write.for_each(["c", "d"], [3, 4]) is None
    asyncio.run(write.for_each.aio(["e"], [5]))
    client = app.client()
    stored = {k: client.objects.get(app.disk_id, k) for k in "abcde"}
    assert stored == {"a": b"1", "b": b"2", "c": b"3", "d": b"4", "e": b"5"}
    with pytest.raises(ValueError, match="starmap"):
        write.starmap([1, 2])
    with pytest.raises(ValueError, match="order_outputs"):
        write.map([1], order_outputs="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concurrency"):
        write.map.aio([1], concurrency=0)


def test_map_runs_its_inputs_in_at_most_concurrency_containers(conn: dict[str, str]) -> None:
    """Each container loads the function once and runs input after input: its module
    state persists between them, its standard input is its own, and no more than
    ``concurrency`` functions run at once."""
    app = new_app(conn)

    @app.function(stream_logs=False)
    def stamp(i: int) -> tuple[str, int, float, float, str]:
        import builtins
        import sys
        import time
        import uuid

        began = time.time()
        if not hasattr(builtins, "_archil_test_token"):
            builtins._archil_test_token = uuid.uuid4().hex  # type: ignore[attr-defined]
            builtins._archil_test_runs = 0  # type: ignore[attr-defined]
        builtins._archil_test_runs += 1  # type: ignore[attr-defined]
        time.sleep(0.3)
        return (
            builtins._archil_test_token,  # type: ignore[attr-defined]
            builtins._archil_test_runs,  # type: ignore[attr-defined]
            began,
            time.time(),
            sys.stdin.read(),  # /dev/null: the calls' own pipe is not the function's
        )

    results = list(stamp.map(range(8), concurrency=2))
    containers = {token for token, *_ in results}
    assert len(containers) == 2, results
    # Every container counted its own inputs, 1, 2, 3, ... in the order it ran them.
    for token in containers:
        runs = sorted(n for t, n, *_ in results if t == token)
        assert runs == list(range(1, len(runs) + 1)), results
    assert sum(len([r for r in results if r[0] == t]) for t in containers) == 8
    assert all(r[4] == "" for r in results)
    events = sorted([(r[2], 1) for r in results] + [(r[3], -1) for r in results])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2
    client = app.client()
    client.flush()
    assert client.sandboxes.list(disk_id=app.disk_id) == []
    assert [o.key for o in client.objects.list(app.disk_id, prefix=".archil/calls/")] == []


def test_a_container_that_dies_fails_its_input_alone(conn: dict[str, str]) -> None:
    """An exception leaves the container to the next input; an input that kills its
    container fails with ContainerError (or runs again, with ``retries``) and the
    other inputs go on in a new one."""
    app = new_app(conn)

    @app.function(stream_logs=False)
    def risky(i: int) -> tuple[int, str]:
        import builtins
        import uuid

        if not hasattr(builtins, "_archil_test_token"):
            builtins._archil_test_token = uuid.uuid4().hex  # type: ignore[attr-defined]
        if i == 1:
            raise Odd(f"input {i}")
        if i == 2:
            os._exit(7)
        return i, builtins._archil_test_token  # type: ignore[attr-defined]

    results = list(risky.map(range(5), concurrency=1, return_exceptions=True))
    assert isinstance(results[1], Odd)
    assert isinstance(results[2], archil.ContainerError) and results[2].exit_code == 7
    values = [r for r in results if isinstance(r, tuple)]
    assert [v for v, _ in values] == [0, 3, 4]
    # Input 0 ran before the exception, in the container that input 2 then killed.
    assert values[0][1] != values[1][1] == values[2][1]

    @app.function(stream_logs=False, retries=1)
    def once_fatal(i: int) -> int:

        flag = f"/mnt/archil/died-{i}"
        if i == 1 and not os.path.exists(flag):
            open(flag, "w").close()
            os._exit(9)
        return i * 10

    assert list(once_fatal.map(range(3), concurrency=2)) == [0, 10, 20]
    client = app.client()
    client.flush()
    assert client.sandboxes.list(disk_id=app.disk_id) == []


def test_map_uploads_the_next_input_while_earlier_ones_run(conn: dict[str, str]) -> None:
    """A slot that frees finds its next input on the disk already (both halves), and a
    map left early leaves no input behind."""
    app = new_app(conn)

    @app.function(stream_logs=False)
    def inputs_on_disk(x: int) -> int:
        import glob
        import time

        time.sleep(0.3)
        return len(glob.glob("/mnt/archil/.archil/calls/*/input.pkl"))

    # One at a time: while input 0 runs, input 1 is already uploaded (input 2 is not:
    # one input ahead); the last input has none after it. The function's own pickle
    # is there too, for the containers that load it.
    assert list(inputs_on_disk.map(range(3), concurrency=1)) == [3, 3, 2]
    client = app.client()

    def call_files() -> list[str]:
        client.flush()
        return [o.key for o in client.objects.list(app.disk_id, prefix=".archil/calls/")]

    assert call_files() == []
    for _ in inputs_on_disk.map(range(6), concurrency=2):
        break
    assert call_files() == []
    assert client.sandboxes.list(disk_id=app.disk_id) == []

    async def main() -> list[int]:
        return [n async for n in inputs_on_disk.map.aio(range(3), concurrency=1)]

    assert asyncio.run(main()) == [3, 3, 2]
    assert call_files() == []


def test_an_input_that_cannot_be_pickled_fails_alone(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.function(stream_logs=False)
    def size(x: object) -> int:
        return len(str(x))

    inputs: list[object] = ["a", threading.Lock(), "ccc"]
    results = list(size.map(inputs, concurrency=1, return_exceptions=True))
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], ValueError) and "could not serialize" in str(results[1])
    with pytest.raises(ValueError, match="could not serialize"):
        list(size.map(inputs, concurrency=1))
    client = app.client()
    client.flush()
    assert client.sandboxes.list(disk_id=app.disk_id) == []
    assert [o.key for o in client.objects.list(app.disk_id, prefix=".archil/calls/")] == []


@pytest.mark.parametrize("arrived", [False, True], ids=["lost", "arrived"])
def test_a_hand_over_cut_by_a_dropped_connection_runs_once(
    conn: dict[str, str], monkeypatch: pytest.MonkeyPatch, arrived: bool
) -> None:
    """The connection drops as an input is handed to its container, before the line
    left (lost) or after it arrived: the line is sent again once the process is
    attached again, and the input runs exactly once."""
    from archil._sync.resources.processes import Process

    app = new_app(conn)
    sent: list[str | bytes] = []
    real_send = Process.send_input

    def drop_the_first(self: Process, data: str | bytes) -> None:
        sent.append(data)
        if len(sent) == 1 and not arrived:
            self._close_socket()
            raise archil.APIConnectionError("the connection dropped before the line left")
        real_send(self, data)
        if len(sent) == 1:
            self._close_socket()
            raise archil.APIConnectionError("the connection dropped after the line left")

    monkeypatch.setattr(Process, "send_input", drop_the_first)

    @app.function(stream_logs=False, timeout=60)
    def mark(i: int) -> int:
        import time

        with open(f"/mnt/archil/ran-{i}", "a") as f:
            f.write("x")
        time.sleep(1.0 if i == 5 else 0)  # still running when the process is attached again
        return i + 1

    assert list(mark.map([5, 6], concurrency=1)) == [6, 7]
    assert sent[0] == sent[1], sent  # the first line, sent again
    client = app.client()
    assert client.objects.get(app.disk_id, "ran-5") == b"x"
    assert client.objects.get(app.disk_id, "ran-6") == b"x"
    client.flush()
    assert client.sandboxes.list(disk_id=app.disk_id) == []


def test_a_result_cut_off_while_written_is_removed(conn: dict[str, str]) -> None:
    """A container that dies while it writes a result (killed, or out of memory) leaves
    a partial result behind: it goes with the input's other files."""
    app = new_app(conn)

    @app.function(stream_logs=False)
    def cut(i: int) -> bytes:
        import glob
        import os
        import threading
        import time

        def die_once_writing() -> None:
            while not glob.glob("/mnt/archil/.archil/calls/*/output.pkl.tmp"):
                time.sleep(0.001)
            os._exit(3)

        threading.Thread(target=die_once_writing, daemon=True).start()
        return b"x" * (128 << 20)

    [result] = cut.map([0], return_exceptions=True)
    assert isinstance(result, archil.ContainerError) and result.exit_code == 3, result
    client = app.client()
    client.flush()
    assert client.sandboxes.list(disk_id=app.disk_id) == []
    assert [o.key for o in client.objects.list(app.disk_id, prefix=".archil/calls/")] == []


def test_map_timeout_stops_the_input_and_its_container(conn: dict[str, str]) -> None:
    app = new_app(conn)

    @app.function(stream_logs=False, timeout=2)
    def stuck(i: int) -> int:
        import time

        time.sleep(0 if i == 0 else 60)
        return i

    t0 = time.monotonic()
    results = list(stuck.map([0, 1, 2], concurrency=1, return_exceptions=True))
    assert results[0] == 0
    for r in results[1:]:
        assert isinstance(r, archil.FunctionTimeoutError), results
        assert r.limit == "timeout"
    assert time.monotonic() - t0 < 40, "a timed-out call was not stopped at its timeout"
    client = app.client()
    client.flush()
    assert client.sandboxes.list(disk_id=app.disk_id) == []


MAP_SCRIPT = textwrap.dedent(
    """
    import sys
    import archil

    app = archil.App(name="interrupt-map", disk_id=sys.argv[1])

    @app.function(stream_logs=True)
    def sleepy(i):
        import time
        print("sleeping", i, flush=True)
        time.sleep(600)

    for _ in sleepy.map(range(8), concurrency=4):
        pass
    """
)


def test_ctrl_c_during_map_deletes_every_sandbox(conn: dict[str, str], tmp_path: Path) -> None:
    disk = f"disk_{uuid.uuid4().hex[:10]}"
    proc = start_script(tmp_path / "interrupt_map.py", MAP_SCRIPT, conn, disk)
    client = archil.Archil(**conn)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or ()], daemon=True)
    reader.start()
    try:
        seen, output = 0, []
        deadline = time.monotonic() + 60
        while seen < 4:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"only {seen} of 4 calls started in 60 s; output:\n{''.join(output)}"
                ) from None
            output.append(line)
            seen += line.count("sleeping")  # concurrent calls may share a line
        # Four calls run, each in a container of the map's.
        assert len(client.sandboxes.list(disk_id=disk)) == 4
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        proc.wait(timeout=30)
        reader.join(timeout=10)
        while not lines.empty():
            output.append(lines.get())
        out = "".join(output)
        while client.sandboxes.list(disk_id=disk) and time.monotonic() - t0 < 5:
            time.sleep(0.05)
        assert client.sandboxes.list(disk_id=disk) == [], "sandboxes left 5 s after Ctrl-C"
        assert proc.returncode != 0
        assert "KeyboardInterrupt" in out
    finally:
        if proc.poll() is None:
            proc.kill()
        client.close()
