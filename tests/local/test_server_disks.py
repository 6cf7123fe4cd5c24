"""Disks, disk users, API tokens, authentication and the error envelope of the local server."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from archil.local.embedded import LocalServer

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
SANDBOX_ID = "00000000-0000-4000-8000-000000000000"
S3_MOUNT = {
    "type": "s3",
    "bucketName": "my-bucket",
    "accessKeyId": "AKIAEXAMPLE",
    "secretAccessKey": "very-secret-value-123",
    "bucketPrefix": "data/",
}


def test_healthz_needs_no_key(server: LocalServer) -> None:
    with httpx.Client(trust_env=False) as c:
        r = c.get(server.base_url + "/healthz")
        assert r.status_code == 200
        assert r.json() == {"success": True, "data": {"status": "ok"}}
        r = c.get(server.base_url + "/healthz", headers={"Authorization": "key-wrong"})
        assert r.json()["data"]["authenticated"] is False
        r = c.get(server.base_url + "/healthz", headers={"Authorization": server.api_key})
        assert r.json()["data"]["authenticated"] is True
        assert r.json()["data"]["dataDir"] == str(server.data_dir)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/disks"),
        ("POST", "/api/disks"),
        ("GET", "/api/disks/dsk-0123456789abcdef"),
        ("GET", "/api/sandboxes"),
        ("POST", "/api/sandboxes"),
        ("GET", f"/api/sandboxes/{SANDBOX_ID}"),
        ("DELETE", f"/api/sandboxes/{SANDBOX_ID}"),
        ("POST", f"/api/sandboxes/{SANDBOX_ID}/stop"),
        ("POST", f"/api/sandboxes/{SANDBOX_ID}/connections"),
        ("GET", "/api/tokens"),
        ("POST", "/api/exec"),
        ("GET", "/api/nothing-here"),
        ("GET", "/s3/dsk-0123456789abcdef/some/key"),
        ("PUT", "/s3/dsk-0123456789abcdef/some/key"),
    ],
)
def test_requests_without_the_key_get_401(server: LocalServer, method: str, path: str) -> None:
    with httpx.Client(base_url=server.base_url, trust_env=False) as c:
        for headers in ({}, {"Authorization": "key-" + "0" * 32}, {"Authorization": ""}):
            r = c.request(method, path, headers=headers, content=b"{}")
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["x-request-id"]
            assert server.api_key not in r.text
            if path.startswith("/s3"):
                assert b"<Code>" in r.content
            else:
                body = r.json()
                assert body["success"] is False
                assert body["error"]


def test_the_key_is_sent_raw_or_as_bearer(server: LocalServer) -> None:
    with httpx.Client(base_url=server.base_url, trust_env=False) as c:
        assert c.get("/api/disks", headers={"Authorization": server.api_key}).status_code == 200
        bearer = {"Authorization": f"Bearer {server.api_key}"}
        assert c.get("/api/disks", headers=bearer).status_code == 200
        near = {"Authorization": server.api_key[:-1] + ("0" if server.api_key[-1] != "0" else "1")}
        assert c.get("/api/disks", headers=near).status_code == 401


def test_api_key_file_is_private(server: LocalServer) -> None:
    key_file = server.data_dir / "api_key"
    assert key_file.read_text().strip() == server.api_key
    assert server.api_key.startswith("key-") and len(server.api_key) == 36
    assert oct(key_file.stat().st_mode & 0o777) == oct(0o600)


def test_every_response_has_a_request_id(client: httpx.Client) -> None:
    ids = set()
    for r in (
        client.get("/api/disks"),
        client.get("/api/disks/nope"),
        client.post("/api/disks", json={"name": "bad name!"}),
        client.get("/healthz"),
        client.get("/s3/nope/key"),
    ):
        assert r.headers.get("x-request-id", "").startswith("req_"), r
        ids.add(r.headers["x-request-id"])
    assert len(ids) == 5


def test_disk_lifecycle(server: LocalServer, client: httpx.Client) -> None:
    r = client.post("/api/disks", json={"name": "my-data"})
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    disk_id = data["diskId"]
    assert disk_id.startswith("dsk-") and len(disk_id) == 20
    int(disk_id[4:], 16)
    (user,) = data["authorizedUsers"]
    assert user["type"] == "token" and user["nickname"] == "default"
    token = user["token"]
    assert len(token) >= 32
    assert user["tokenSuffix"] == token[-4:]
    assert user["identifier"] and user["createdAt"]

    r = client.get(f"/api/disks/{disk_id}")
    assert r.status_code == 200
    disk = r.json()["data"]
    assert disk["id"] == disk_id and disk["name"] == "my-data"
    assert disk["status"] == "available"
    assert disk["provider"] == "archil" and disk["region"] == "local"
    assert disk["organization"] and disk["createdAt"]
    assert disk["sandboxDisk"] is False
    assert disk["activeDataBytes"] == 0 and disk["totalDataBytes"] == 0
    assert disk["capabilities"] == ["checkpoints"]
    assert "dataSize" not in disk
    assert token not in r.text
    assert [u["identifier"] for u in disk["authorizedUsers"]] == [user["identifier"]]
    assert (server.data_dir / "disks" / disk_id).is_dir()

    listed = client.get("/api/disks").json()
    assert [d["id"] for d in listed["data"]] == [disk_id]
    assert listed.get("nextCursor") is None
    assert token not in client.get("/api/disks").text

    r = client.delete(f"/api/disks/{disk_id}")
    assert r.status_code == 200 and r.json()["success"] is True
    assert client.get(f"/api/disks/{disk_id}").status_code == 404
    assert client.delete(f"/api/disks/{disk_id}").status_code == 404
    assert not (server.data_dir / "disks" / disk_id).exists()
    assert client.get("/api/disks").json()["data"] == []


def test_create_is_idempotent_by_name(client: httpx.Client) -> None:
    first = client.post("/api/disks", json={"name": "ds", "mounts": [S3_MOUNT]})
    assert first.status_code == 201, first.text
    disk_id = first.json()["data"]["diskId"]
    assert first.json()["data"]["authorizedUsers"][0]["token"]

    again = client.post("/api/disks", json={"name": "ds", "mounts": [S3_MOUNT]})
    assert again.status_code == 200
    assert again.json()["data"]["diskId"] == disk_id
    assert all("token" not in u for u in again.json()["data"]["authorizedUsers"])

    other_secret = {**S3_MOUNT, "secretAccessKey": "another-secret"}
    for body in (
        {"name": "ds"},
        {"name": "ds", "mounts": [{**S3_MOUNT, "bucketName": "other"}]},
        {"name": "ds", "mounts": [other_secret]},
    ):
        r = client.post("/api/disks", json=body)
        assert r.status_code == 409, body
        assert r.json()["code"] == "disk_exists"
        assert "ds" in r.json()["error"]
    assert len(client.get("/api/disks").json()["data"]) == 1

    disk = client.get(f"/api/disks/{disk_id}").json()["data"]
    assert disk["provider"] == "s3"
    assert disk["sandboxDisk"] is False and disk["capabilities"] == []
    (mount,) = disk["mounts"]
    assert mount["type"] == "s3" and mount["name"] == "my-bucket"
    assert mount["config"] == {"bucketName": "my-bucket", "bucketPrefix": "data/"}
    for r in (client.get(f"/api/disks/{disk_id}"), client.get("/api/disks"), again):
        assert "very-secret-value-123" not in r.text
        assert "AKIAEXAMPLE" not in r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "has space"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({}, "name"),
        ({"name": "ok", "mounts": [{"type": "gcs", "bucketName": "b"}]}, "mounts[0]"),
        ({"name": "ok", "mounts": [{"type": "ftp", "bucketName": "b"}]}, "mounts[0]"),
        ({"name": "ok", "mounts": [S3_MOUNT, S3_MOUNT]}, "mounts"),
        ({"name": "ok", "colour": "blue"}, "colour"),
    ],
)
def test_bad_disk_requests_name_the_field(
    client: httpx.Client, body: dict[str, object], field: str
) -> None:
    r = client.post("/api/disks", json=body)
    assert r.status_code == 400, r.text
    payload = r.json()
    assert payload["success"] is False and payload["code"] == "validation_error"
    assert payload["error"].startswith(field), payload["error"]
    assert "very-secret-value-123" not in r.text
    assert client.get("/api/disks").json()["data"] == []


@pytest.mark.parametrize(
    "raw_body",
    [b"", b"not json", b"[1, 2]", b'"text"', b"\xff\xfe", b'{"name": "a"'],
)
def test_malformed_bodies_are_400(client: httpx.Client, raw_body: bytes) -> None:
    r = client.post("/api/disks", content=raw_body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"].startswith("body")


@pytest.mark.parametrize(
    "disk_id",
    [
        "dsk-0123456789abcdef",
        "disk_abc123",
        "a.b-c",
        "..",
        "x" * 300,
        "%20",
        "caf%C3%A9",
        "-x",
        SANDBOX_ID,
    ],
)
def test_unknown_ids_are_404_whatever_their_shape(client: httpx.Client, disk_id: str) -> None:
    for method, path in (
        ("GET", f"/api/disks/{disk_id}"),
        ("DELETE", f"/api/disks/{disk_id}"),
        ("GET", f"/api/disks/{disk_id}/directory"),
        ("GET", f"/api/sandboxes/{disk_id}"),
        ("DELETE", f"/api/sandboxes/{disk_id}"),
        ("POST", f"/api/sandboxes/{disk_id}/start"),
        ("POST", f"/api/sandboxes/{disk_id}/stop"),
        ("POST", f"/api/sandboxes/{disk_id}/pause"),
        ("POST", f"/api/sandboxes/{disk_id}/resume"),
        ("POST", f"/api/sandboxes/{disk_id}/fork"),
        ("POST", f"/api/sandboxes/{disk_id}/connections"),
        ("GET", f"/api/sandboxes/{disk_id}/ports"),
        ("GET", f"/api/images/{disk_id}"),
        ("DELETE", f"/api/tokens/{disk_id}"),
    ):
        r = client.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["success"] is False


def test_list_disks_pagination(client: httpx.Client) -> None:
    ids = [
        client.post("/api/disks", json={"name": f"d{i}"}).json()["data"]["diskId"] for i in range(5)
    ]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = client.get("/api/disks", params=params).json()
        seen += [d["id"] for d in body["data"]]
        pages += 1
        cursor = body.get("nextCursor")
        if not cursor:
            break
    assert seen == ids and pages == 3
    assert [d["name"] for d in client.get("/api/disks", params={"name": "d3"}).json()["data"]] == [
        "d3"
    ]
    assert client.get("/api/disks", params={"name": "zz"}).json()["data"] == []
    assert len(client.get("/api/disks", params={"limit": 500}).json()["data"]) == 5
    for bad, field in (
        ({"limit": 0}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"cursor": "!!"}, "cursor"),
    ):
        r = client.get("/api/disks", params=bad)
        assert r.status_code == 400 and r.json()["error"].startswith(field)


def test_disk_users(client: httpx.Client, disk: str) -> None:
    r = client.post(f"/api/disks/{disk}/users", json={"type": "token", "nickname": "alice"})
    assert r.status_code == 201, r.text
    alice = r.json()["data"]
    assert alice["token"] and alice["tokenSuffix"] == alice["token"][-4:]

    r = client.post(
        f"/api/disks/{disk}/users",
        json={
            "type": "token",
            "nickname": "bob",
            "principal": "bob-token-9z9z",
            "tokenSuffix": "9z9z",
        },
    )
    assert r.status_code == 201
    bob = r.json()["data"]
    assert "token" not in bob and bob["tokenSuffix"] == "9z9z"

    arn = "arn:aws:iam::123456789012:role/reader"
    r = client.post(f"/api/disks/{disk}/users", json={"type": "awssts", "principal": arn})
    assert r.status_code == 201
    assert r.json()["data"]["identifier"] == arn
    assert (
        client.post(
            f"/api/disks/{disk}/users", json={"type": "awssts", "principal": arn}
        ).status_code
        == 409
    )

    users = client.get(f"/api/disks/{disk}").json()["data"]["authorizedUsers"]
    assert [u.get("nickname") for u in users] == ["default", "alice", "bob", None]
    text = client.get(f"/api/disks/{disk}").text
    assert alice["token"] not in text and "bob-token-9z9z" not in text

    for body, field in (
        ({"type": "awssts"}, "body"),
        ({"type": "token"}, "body"),
        ({"type": "root", "nickname": "x"}, "type"),
        ({"type": "token", "nickname": "x", "tokenSuffix": "toolong"}, "tokenSuffix"),
    ):
        r = client.post(f"/api/disks/{disk}/users", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"].startswith(field), r.json()["error"]

    r = client.delete(f"/api/disks/{disk}/users/token", params={"identifier": alice["identifier"]})
    assert r.status_code == 200 and r.json()["data"]["message"]
    r = client.delete(f"/api/disks/{disk}/users/token", params={"identifier": alice["identifier"]})
    assert r.status_code == 404
    r = client.delete(f"/api/disks/{disk}/users/awssts", params={"principal": arn})
    assert r.status_code == 200
    assert client.delete(f"/api/disks/{disk}/users/token").json()["error"].startswith("identifier")
    assert (
        client.delete(f"/api/disks/{disk}/users/root", params={"identifier": "x"}).status_code
        == 400
    )
    users = client.get(f"/api/disks/{disk}").json()["data"]["authorizedUsers"]
    assert [u["nickname"] for u in users] == ["default", "bob"]
    assert (
        client.post("/api/disks/nope/users", json={"type": "token", "nickname": "x"}).status_code
        == 404
    )


def test_api_tokens(server: LocalServer, client: httpx.Client) -> None:
    r = client.post("/api/tokens", json={"name": "ci", "description": "for CI"})
    assert r.status_code == 201, r.text
    created = r.json()["data"]
    token = created["token"]
    assert token.startswith("key-") and created["tokenSuffix"] == token[-4:]
    assert created["name"] == "ci" and created["description"] == "for CI"

    listed = client.get("/api/tokens").json()["data"]["tokens"]
    assert [t["id"] for t in listed] == [created["id"]]
    assert token not in client.get("/api/tokens").text
    assert "lastUsedAt" not in listed[0]

    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": token}, trust_env=False
    ) as c:
        assert c.get("/api/disks").status_code == 200
    (record,) = client.get("/api/tokens").json()["data"]["tokens"]
    assert record["lastUsedAt"]

    assert client.post("/api/tokens", json={"name": ""}).json()["error"].startswith("name")
    assert client.post("/api/tokens", json={}).status_code == 400

    assert client.delete(f"/api/tokens/{created['id']}").status_code == 200
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": token}, trust_env=False
    ) as c:
        assert c.get("/api/disks").status_code == 401
    assert client.delete(f"/api/tokens/{created['id']}").status_code == 404


def test_token_list_pagination(client: httpx.Client) -> None:
    for i in range(3):
        client.post("/api/tokens", json={"name": f"t{i}"})
    first = client.get("/api/tokens", params={"limit": 2}).json()
    assert len(first["data"]["tokens"]) == 2 and first["nextCursor"]
    second = client.get("/api/tokens", params={"limit": 2, "cursor": first["nextCursor"]}).json()
    assert [t["name"] for t in second["data"]["tokens"]] == ["t2"]
    assert "nextCursor" not in second


def test_deleting_a_disk_removes_its_files(
    server: LocalServer, client: httpx.Client, disk: str
) -> None:
    assert client.put(f"/s3/{disk}/a/b/c.txt", content=b"x" * 10).status_code == 200
    data = client.get(f"/api/disks/{disk}").json()["data"]
    assert data["activeDataBytes"] == 10 and data["totalDataBytes"] == 10
    assert client.put(f"/s3/{disk}/d.txt", content=b"y" * 5).status_code == 200
    data = client.get(f"/api/disks/{disk}").json()["data"]
    assert data["activeDataBytes"] == 15 and data["totalDataBytes"] == 15
    assert client.delete(f"/api/disks/{disk}").status_code == 200
    assert not (server.data_dir / "disks" / disk).exists()
    assert client.get(f"/s3/{disk}/a/b/c.txt").status_code == 404


def test_a_disk_a_live_sandbox_mounts_cannot_be_deleted(
    server: LocalServer, client: httpx.Client, disk: str
) -> None:
    body = {"base_image": f"python:{PY}-slim", "mounts": [{"disk_id": disk}]}
    r = client.post("/api/sandboxes", params={"wait": "true"}, json=body)
    assert r.status_code == 202 and r.json()["data"]["status"] == "running", r.text
    sid = r.json()["data"]["sandbox_id"]
    try:
        r = client.delete(f"/api/disks/{disk}")
        assert r.status_code == 409 and r.json()["code"] == "disk_in_use", r.text
        assert client.get(f"/api/disks/{disk}").status_code == 200
        assert (server.data_dir / "disks" / disk).is_dir()
        stopped = client.post(f"/api/sandboxes/{sid}/stop")
        assert stopped.json()["data"]["status"] == "stopped"
        assert client.delete(f"/api/disks/{disk}").status_code == 200
        assert client.get(f"/api/disks/{disk}").status_code == 404
        assert not (server.data_dir / "disks" / disk).exists()
    finally:
        client.post(f"/api/sandboxes/{sid}/stop")
        assert client.delete(f"/api/sandboxes/{sid}").status_code == 204


def test_grep_is_not_implemented_locally(client: httpx.Client, disk: str) -> None:
    r = client.post(f"/api/disks/{disk}/grep", json={"directory": "", "pattern": "x"})
    assert r.status_code == 501 and r.json()["code"] == "not_implemented"


def test_unknown_routes_and_methods(client: httpx.Client) -> None:
    r = client.get("/api/unknown")
    assert r.status_code == 404 and r.json()["success"] is False
    r = client.put("/api/disks")
    assert r.status_code == 405 and r.json()["success"] is False
    for method, path in (
        ("PUT", "/api/sandboxes"),
        ("DELETE", "/api/sandboxes"),
        ("PUT", f"/api/sandboxes/{SANDBOX_ID}"),
        ("GET", f"/api/sandboxes/{SANDBOX_ID}/stop"),
        ("GET", f"/api/sandboxes/{SANDBOX_ID}/connections"),
    ):
        r = client.request(method, path)
        assert r.status_code == 405 and r.json()["success"] is False, (method, path)
    for method in ("GET", "POST"):
        r = client.request(method, "/api/containers")
        assert r.status_code == 404 and r.json()["success"] is False


def test_bad_idempotency_key_is_400(client: httpx.Client) -> None:
    r = client.post("/api/disks", json={"name": "a"}, headers={"Idempotency-Key": "has space"})
    assert r.status_code == 400 and r.json()["error"].startswith("Idempotency-Key")
    assert client.get("/api/disks").json()["data"] == []


def test_data_dir_cannot_be_served_twice(
    server: LocalServer, make_server: Callable[..., LocalServer]
) -> None:
    from archil.local.embedded import DataDirInUseError

    with pytest.raises(DataDirInUseError, match=str(server.data_dir)):
        make_server(Path(server.data_dir))
    assert os.path.exists(server.data_dir / "server.json")
