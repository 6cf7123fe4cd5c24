"""The ``.aio`` calls of an app share one client per event loop, closed as the loop ends.

A call returns once its value is back; its sandbox's stop and delete go on in the
background on the loop, and ``asyncio.run`` finishes them before it returns. The
clients of a process share one SSL context (making one loads the CA bundle).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

import archil
from archil import _tls
from procs import start_script


def new_app(conn: dict[str, str]) -> archil.App:
    return archil.App(name="loop-client", disk_id=f"disk_{uuid.uuid4().hex[:10]}", **conn)


def test_aio_calls_on_one_loop_share_a_client_closed_when_the_loop_ends(
    conn: dict[str, str],
) -> None:
    app = new_app(conn)

    @app.function(stream_logs=False)
    def double(x: int) -> int:
        return 2 * x

    clients: list[archil.aio.Archil] = []

    async def main() -> list[int]:
        values = [await double.remote.aio(1)]
        clients.append(await app._loop_client())
        call = await double.spawn.aio(2)
        values.append(await call.get.aio())
        values += [v async for v in double.map.aio([3, 4])]
        values += await double.map.aio([5])
        clients.append(await app._loop_client())
        return values

    assert asyncio.run(main()) == [2, 4, 6, 8, 10]
    assert clients[0] is clients[1]
    # The loop is gone: its client was closed and forgotten, after the calls' cleanup.
    assert len(app._loop_clients) == 0
    assert clients[0]._transport.pool._client is None
    with app.client() as client:
        assert client.sandboxes.list(disk_id=app.disk_id) == []
        assert [o.key for o in client.objects.list(app.disk_id, prefix=".archil/calls/")] == []

    # A new loop gets a new client.
    async def again() -> archil.aio.Archil:
        assert await double.remote.aio(6) == 12
        return await app._loop_client()

    assert asyncio.run(again()) is not clients[0]


def test_a_call_does_not_wait_for_its_sandboxes_cleanup(conn: dict[str, str]) -> None:
    """The value comes back before the sandbox is deleted (as with the blocking client);
    the loop's end waits for that deletion."""
    app = new_app(conn)

    @app.function(stream_logs=False)
    def one() -> int:
        return 1

    async def main() -> int:
        assert await one.remote.aio() == 1
        client = await app._loop_client()
        pending = len(client._transport.background._tasks)
        await client.flush()
        return pending

    assert asyncio.run(main()) >= 1
    with app.client() as client:
        assert client.sandboxes.list(disk_id=app.disk_id) == []


def test_clients_share_one_ssl_context(
    conn: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[object] = []
    real = httpx.create_ssl_context

    def counted(*args: object, **kwargs: object) -> object:
        made.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "create_ssl_context", counted)
    monkeypatch.setattr(_tls, "_contexts", {})
    app = new_app(conn)

    @app.function(stream_logs=False)
    def one() -> int:
        return 1

    async def main() -> None:
        assert await one.remote.aio() == 1

    for _ in range(3):
        asyncio.run(main())
    assert one.remote() == 1
    assert len(made) == 1

    # Another CA file is another context.
    monkeypatch.setenv("SSL_CERT_FILE", _certifi_file())
    context = _tls.shared_ssl_context()
    assert len(made) == 2
    assert _tls.shared_ssl_context() is context


def _certifi_file() -> str:
    import certifi

    return str(certifi.where())


def test_loops_on_several_threads_each_get_their_own_client(conn: dict[str, str]) -> None:
    import threading

    app = new_app(conn)

    @app.function(stream_logs=False)
    def square(x: int) -> int:
        return x * x

    results: dict[int, tuple[int, archil.aio.Archil]] = {}

    def on_a_thread(i: int) -> None:
        async def main() -> tuple[int, archil.aio.Archil]:
            value = await square.remote.aio(i)
            return value, await app._loop_client()

        results[i] = asyncio.run(main())

    threads = [threading.Thread(target=on_a_thread, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(v for v, _ in results.values()) == [0, 1, 4]
    assert len({id(c) for _, c in results.values()}) == 3  # all alive: ids are distinct
    assert len(app._loop_clients) == 0
    with app.client() as client:
        assert client.sandboxes.list(disk_id=app.disk_id) == []


FIRST_AIO_SCRIPT = """
import asyncio, sys, threading
import archil
from archil.decl import _asynchalf

where = []
real_load = _asynchalf._load

def load():
    where.append(threading.current_thread() is threading.main_thread())
    where.append("archil._async.runner" in sys.modules)
    real_load()

_asynchalf._load = load
app = archil.App(name="first-aio", disk_id=sys.argv[1])

@app.function(stream_logs=False)
def one():
    return 1

async def main():
    assert await one.remote.aio() == 1
    assert await one.remote.aio() == 1

asyncio.run(main())
print("loads:", len(where) // 2, "on the loop's thread:", where[0], "imported before:", where[1])
"""


def test_the_first_aio_call_imports_the_async_half_off_the_event_loop(
    conn: dict[str, str], tmp_path: Path
) -> None:
    """A service's loop keeps serving while its first ``.aio`` call loads archil's async
    half (a few hundred ms of CPU): that happens once, on a worker thread."""
    proc = start_script(
        tmp_path / "first_aio.py", FIRST_AIO_SCRIPT, conn, f"disk_{uuid.uuid4().hex[:10]}"
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "loads: 1 on the loop's thread: False imported before: False" in out


def test_concurrent_first_calls_on_a_loop_make_one_client(
    conn: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first calls wait together for the async half to load (as in a fresh process):
    they must end up on one client, or the clients left over would be closed (when
    their holders are collected) under the calls still using them."""
    import threading

    from archil.decl import _asynchalf

    monkeypatch.setattr(_asynchalf, "_loaded", threading.Event())
    app = new_app(conn)
    made: list[archil.aio.Archil] = []
    real_async_client = app.async_client

    def counted() -> archil.aio.Archil:
        made.append(real_async_client())
        return made[-1]

    monkeypatch.setattr(app, "async_client", counted)

    @app.function(stream_logs=False)
    def square(x: int) -> int:
        return x * x

    async def main() -> list[int]:
        return list(await asyncio.gather(*(square.remote.aio(i) for i in range(4))))

    assert asyncio.run(main()) == [0, 1, 4, 9]
    assert len(made) == 1
