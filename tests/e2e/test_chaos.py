"""fn.remote() through a control plane that fails 20% of requests: every call right, nothing left."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest

import archil
from archil.local.embedded import LocalServer


@pytest.mark.parametrize("mode", ["extensions", "real-api-only"])
def test_remote_calls_under_chaos_give_every_result_once(
    make_server: Callable[..., LocalServer], mode: str
) -> None:
    server = make_server(
        chaos_rate=0.2, chaos_seed=5, auto_create_disks=True, real_api_only=mode == "real-api-only"
    )
    app = archil.App(
        name="chaos",
        disk_id=f"disk_{uuid.uuid4().hex[:10]}",
        base_url=server.base_url,
        api_key=server.api_key,
    )
    app._client = archil.Archil(base_url=server.base_url, api_key=server.api_key, max_retries=10)

    @app.function(stream_logs=False)
    def square(x: int) -> int:
        with open(f"/mnt/archil/ran-{x}", "a") as f:
            f.write("x")
        return x * x

    prepared = archil.Image.debian_slim().run_commands("echo prepared > /root/marker")

    @app.function(image=prepared, stream_logs=False)
    def marker(x: int) -> str:
        with open("/root/marker") as f:
            return f"{x}:{f.read().strip()}"

    forks = [marker.remote(i) for i in range(6)]
    assert forks == [f"{i}:prepared" for i in range(6)]
    blocking = [square.remote(i) for i in range(12)]

    async def concurrent() -> list[int]:
        return await square.map.aio(range(12, 24), concurrency=4)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            app,
            "async_client",
            lambda: archil.aio.Archil(
                base_url=server.base_url, api_key=server.api_key, max_retries=10
            ),
        )
        fanned = asyncio.run(concurrent())
    assert blocking + fanned == [i * i for i in range(24)]
    client = app.client()
    client.flush()
    server.set_chaos(0.0)
    # Each call ran exactly once: its marker file holds one write.
    for i in range(24):
        assert client.objects.get(app.disk_id, f"ran-{i}") == b"x", i
    # Only the stopped sandbox that holds the image's preparation is left.
    left = client.sandboxes.list(disk_id=app.disk_id)
    assert [(s.name.startswith("archil-img-"), s.status) for s in left] == [(True, "stopped")]
    assert [o.key for o in client.objects.list(app.disk_id, prefix=".archil/calls/")] == []
    app.close()
