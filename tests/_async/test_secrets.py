"""The API key and bucket secrets never show in reprs, errors or logs."""

from __future__ import annotations

import logging
import pickle

import httpx
import pytest
import respx

from archil._async.client import AsyncArchil
from archil._errors import APIConnectionError, InternalServerError
from archil._models import CreateDiskRequest, Mount

from .helpers import API_KEY, DISK, disk_json, err, ok

BUCKET_SECRET = "bucket-secret-9f8e7d6c5b4a"
SESSION_SECRET = "session-token-1a2b3c4d"


def mount() -> Mount:
    return Mount(
        provider="s3",
        bucket="b",
        access_key_id="AKIAEXAMPLE",
        secret_access_key=BUCKET_SECRET,
        session_token=SESSION_SECRET,
    )


def assert_clean(text: str) -> None:
    assert API_KEY not in text
    assert BUCKET_SECRET not in text
    assert SESSION_SECRET not in text


async def test_reprs_hide_secrets(client: AsyncArchil) -> None:
    assert_clean(repr(client))
    assert_clean(str(client))
    assert_clean(repr(client.config))
    assert_clean(repr(client.with_options(timeout=3)))
    assert_clean(repr(mount()))
    assert_clean(str(mount()))
    assert_clean(repr(CreateDiskRequest(name="d", mounts=[mount()])))
    assert BUCKET_SECRET in str(CreateDiskRequest(name="d", mounts=[mount()]).to_wire())


async def test_errors_and_logs_hide_secrets(
    client: AsyncArchil, router: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    router.post("/api/disks").mock(
        side_effect=[err(503, "busy"), httpx.ConnectError("refused"), ok({"diskId": DISK}, 201)]
    )
    router.get(f"/api/disks/{DISK}").mock(side_effect=[err(500, "down")] * 4)
    with pytest.raises(InternalServerError) as info:
        await client.disks.create("d", mounts=[mount()])
    retries = [r for r in caplog.records if r.name == "archil" and r.levelno == logging.INFO]
    assert len(retries) == 5
    assert "POST /api/disks" in retries[0].getMessage()
    assert "HTTP 503" in retries[0].getMessage()
    assert_clean(caplog.text)
    for record in caplog.records:
        assert_clean(record.getMessage())
        assert_clean(repr(record.args))
    exc = info.value
    assert_clean(str(exc))
    assert_clean(repr(exc))
    assert_clean(repr(pickle.loads(pickle.dumps(exc)).__dict__))


async def test_connection_errors_hide_secrets(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    router.get(f"/api/disks/{DISK}").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(APIConnectionError) as info:
        await client.disks.get(DISK, max_retries=0)
    assert_clean(str(info.value))
    assert_clean(repr(info.value))


async def test_disk_repr_hides_the_one_time_token(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    router.get(f"/api/disks/{DISK}").mock(
        return_value=ok(disk_json(authorizedUsers=[{"type": "token", "token": API_KEY}]))
    )
    disk = await client.disks.get(DISK)
    assert_clean(repr(disk))
    assert_clean(str(disk))
