"""A mount cannot reach outside its disk, even asked for directly over the API.

The SDK refuses a ``..`` subdirectory before sending it (``tests/badinput``); here the
requests go straight to the server: a traversal in ``subdirectory`` or ``path`` is a 400,
and a subdirectory that is a symlink out of the disk (to another disk, or to the server's
data directory) is refused, so no sandbox ever runs with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from archil.local.embedded import LocalServer


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = LocalServer(tmp_path_factory.mktemp("escape") / "data", stop_grace=2.0)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def c(srv: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=srv.base_url,
        headers={"Authorization": srv.api_key},
        trust_env=False,
        timeout=60,
    ) as client:
        yield client


def _disk(c: httpx.Client) -> str:
    r = c.post("/api/disks", json={"name": f"esc-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    disk_id: str = r.json()["data"]["diskId"]
    return disk_id


def _sandboxes(c: httpx.Client) -> list[str]:
    return [s["sandbox_id"] for s in c.get("/api/sandboxes").json()["data"]["sandboxes"]]


def test_traversal_in_a_mount_is_refused(srv: LocalServer, c: httpx.Client) -> None:
    mine, other = _disk(c), _disk(c)
    before = _sandboxes(c)
    for mount in (
        {"disk_id": mine, "subdirectory": f"../{other}"},
        {"disk_id": mine, "subdirectory": "../../api_key"},
        {"disk_id": mine, "subdirectory": "a/../../.."},
        {"disk_id": mine, "subdirectory": "/etc"},
        {"disk_id": mine, "path": "/data/../../etc"},
        {"disk_id": f"../{other}"},
        {"disk_id": mine, "subdirectory": "a\x00b"},
    ):
        r = c.post("/api/sandboxes", params={"wait": "true"}, json={"mounts": [mount]})
        assert r.status_code == 400, (mount, r.status_code, r.text)
        assert srv.api_key not in r.text
    assert _sandboxes(c) == before


def test_a_symlinked_subdirectory_out_of_the_disk_is_refused(
    srv: LocalServer, c: httpx.Client
) -> None:
    mine, other = _disk(c), _disk(c)
    c.put(f"/s3/{other}/private.txt", content=b"other disk").raise_for_status()
    root = srv.data_dir / "disks" / mine
    (root / "to-other").symlink_to(srv.data_dir / "disks" / other)
    (root / "to-data").symlink_to(srv.data_dir)
    (root / "inside").mkdir()
    (root / "to-inside").symlink_to(root / "inside")
    before = _sandboxes(c)
    for sub in ("to-other", "to-data", "to-data/disks"):
        r = c.post(
            "/api/sandboxes",
            params={"wait": "true"},
            json={"mounts": [{"disk_id": mine, "subdirectory": sub}]},
        )
        if r.status_code == 202:  # accepted: then it must not have started with that mount
            data = r.json()["data"]
            assert data["status"] == "failed", (sub, data)
            assert "leaves the disk" in (data.get("exit_reason") or ""), data
            c.delete(f"/api/sandboxes/{data['sandbox_id']}").raise_for_status()
        else:
            assert r.status_code == 400, (sub, r.status_code, r.text)
    assert _sandboxes(c) == before
    # A symlink that stays inside the disk is fine: the refusals above are about escaping.
    r = c.post(
        "/api/sandboxes",
        params={"wait": "true"},
        json={"mounts": [{"disk_id": mine, "subdirectory": "to-inside"}]},
    )
    assert r.status_code == 202 and r.json()["data"]["status"] == "running", r.text
    sid = r.json()["data"]["sandbox_id"]
    c.post(f"/api/sandboxes/{sid}/stop").raise_for_status()
    c.delete(f"/api/sandboxes/{sid}").raise_for_status()
