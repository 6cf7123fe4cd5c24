"""Secrets reach the container as environment variables, and nowhere else."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from pathlib import Path

import httpx
import pytest

import archil
from archil.local.embedded import LocalServer

VALUE = "tok-" + uuid.uuid4().hex
DIGEST = hashlib.sha256(VALUE.encode()).hexdigest()


def files_holding(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if needle in path.read_bytes():
                    found.append(str(path.relative_to(root)))
            except OSError:
                continue
    return found


def test_secret_reaches_the_container_and_nowhere_else(
    conn: dict[str, str], server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = archil.Secret.from_dict({"SERVICE_TOKEN": VALUE})
    app = archil.App(name="secrets", disk_id=f"disk_{uuid.uuid4().hex[:10]}", **conn)

    @app.function(secrets=[secret], stream_logs=False)
    def use(mode: str, held: archil.Secret) -> str:
        import hashlib
        import os
        import time

        token = os.environ["SERVICE_TOKEN"]
        if held._env() != {"SERVICE_TOKEN": token}:  # an argument Secret reads the env
            raise RuntimeError("the Secret argument did not read the environment")
        if mode == "wait":
            time.sleep(600)
        if mode == "crash":
            print("the token is", token, flush=True)
            os._exit(3)
        return hashlib.sha256(token.encode()).hexdigest()

    @app.run(command='test "$SERVICE_TOKEN" = ' + VALUE, secrets=[secret], stream_logs=False)
    def job() -> None:
        pass

    assert use.remote("plain", secret) == DIGEST
    assert asyncio.run(use.remote.aio("plain", secret)) == DIGEST
    assert job.remote() == 0

    # While a call runs: its payload on the disk and every sandbox record the server
    # answers hold no value, nor does any file of the control plane's state.
    call = use.spawn("wait", secret)
    client = app.client()
    paths = [o.key for o in client.objects.list(app.disk_id, prefix=".archil/calls/")]
    assert any(k.endswith("input.pkl") for k in paths)
    for key in paths:
        assert VALUE.encode() not in client.objects.get(app.disk_id, key)
    raw = httpx.get(
        f"{conn['base_url']}/api/sandboxes", headers={"Authorization": conn["api_key"]}
    ).text
    assert "SERVICE_TOKEN" not in raw or VALUE not in raw
    assert VALUE not in raw
    for sandbox in client.sandboxes.list(disk_id=app.disk_id):
        assert VALUE not in sandbox.data.model_dump_json()
        assert VALUE not in repr(sandbox)
    assert files_holding(server.data_dir, VALUE.encode()) == []
    call.cancel()

    # A failure's text shows no value, even when the function printed it.
    with pytest.raises(archil.ContainerError) as info:
        use.remote("crash", secret)
    assert "the token is ********" in str(info.value)
    assert VALUE not in str(info.value) and VALUE not in repr(info.value)

    for text in (repr(secret), repr(use), repr(use.options), repr(job.options), repr(call)):
        assert VALUE not in text
    client.flush()
    time.sleep(0.1)
    leaked = [r for r in caplog.records if VALUE in r.getMessage() or VALUE in str(r.args)]
    assert leaked == []
    assert len(caplog.records) > 10  # DEBUG records were captured
