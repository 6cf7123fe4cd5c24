"""Every operation of the contract refuses a request without the API key or with a wrong one.

The operations are read from ``docs/control-plane.openapi.yaml``, so a route added to the
contract is covered here without anyone remembering to list it; and the contract test
(``tests/local/test_contract.py``) holds the server to the contract, so a route the server
serves is in it. Each request names resources that exist (a disk, an object, a sandbox, a
token), so the 401 cannot be a 404 in disguise, and nothing changes on the server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from archil.local.embedded import LocalServer

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "control-plane.openapi.yaml"
METHODS = ("get", "put", "post", "delete", "head", "patch")
QUERY_VALUES = {"partNumber": "1", "append": "true", "max-keys": "10", "list-type": "2"}


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    """``(METHOD, path template, operation)`` for every operation of the contract."""
    spec = yaml.safe_load(CONTRACT.read_text())
    return [
        (method.upper(), path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def _needs_key(op: dict[str, Any]) -> bool:
    return op.get("security") != []


OPERATIONS = [o for o in operations() if _needs_key(o[2])]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = LocalServer(tmp_path_factory.mktemp("auth") / "data", stop_grace=2.0)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def c(srv: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=srv.base_url,
        headers={"Authorization": srv.api_key},
        trust_env=False,
        timeout=30,
    ) as client:
        yield client


@pytest.fixture(scope="module")
def existing(c: httpx.Client) -> dict[str, str]:
    """Ids of real resources to name in the requests."""
    disk = c.post("/api/disks", json={"name": f"auth-{uuid.uuid4().hex[:6]}"})
    disk.raise_for_status()
    disk_id = disk.json()["data"]["diskId"]
    c.put(f"/s3/{disk_id}/kept.txt", content=b"kept").raise_for_status()
    upload = c.post(f"/s3/{disk_id}/kept.txt", params={"uploads": ""})
    upload.raise_for_status()
    upload_id = upload.text.split("<UploadId>")[1].split("</UploadId>")[0]
    token = c.post("/api/tokens", json={"name": "auth-test"})
    token.raise_for_status()
    sandbox = c.post("/api/sandboxes", params={"wait": "true"}, json={})
    sandbox.raise_for_status()
    return {
        "id": disk_id,
        "diskId": disk_id,
        "key": "kept.txt",
        "userType": "token",
        "image_id": "img-0000000000000000",
        "sid": sandbox.json()["data"]["sandbox_id"],
        "port": "8080",
        "uploadId": upload_id,
        "token_id": token.json()["data"]["id"],
    }


def _request(
    client: httpx.Client, method: str, template: str, ids: dict[str, str], headers: dict[str, str]
) -> httpx.Request:
    path, _, query = template.partition("?")
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    if path.startswith("/api/tokens/"):
        path = "/api/tokens/" + ids["token_id"]
    assert "{" not in path, f"no value for a parameter of {template}"
    params = {name: QUERY_VALUES.get(name, ids.get(name, "")) for name in query.split("&") if name}
    body = b"<Delete><Object><Key>kept.txt</Key></Object></Delete>" if "delete" in params else b"{}"
    content = body if method in ("POST", "PUT", "PATCH") else None
    return client.build_request(
        method,
        path,
        params=params,
        content=content,
        headers={"Content-Type": "application/json", **headers},
    )


def _state(c: httpx.Client, ids: dict[str, str]) -> tuple[Any, ...]:
    """What an unauthenticated request could have changed."""
    disks = c.get("/api/disks").json()["data"]
    tokens = c.get("/api/tokens").json()["data"]
    sandbox = c.get(f"/api/sandboxes/{ids['sid']}").json()["data"]
    listing = c.get(f"/s3/{ids['id']}", params={"list-type": "2"}).text
    uploads = c.get(f"/s3/{ids['id']}", params={"uploads": ""}).text
    return (
        sorted(d["id"] for d in disks),
        sorted(t["id"] for t in tokens["tokens"]),
        sandbox["status"],
        listing,
        uploads,
        c.get(f"/s3/{ids['id']}/kept.txt").content,
    )


def test_the_contract_has_operations_that_need_the_key() -> None:
    assert len(OPERATIONS) >= 40
    assert [p for m, p, op in operations() if not _needs_key(op)] == ["/healthz"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic d3Jvbmc6d3Jvbmc="},
    ],
    ids=["absent", "empty", "wrong", "wrong-bearer", "basic"],
)
def test_every_operation_answers_401(
    srv: LocalServer, c: httpx.Client, existing: dict[str, str], headers: dict[str, str]
) -> None:
    before = _state(c, existing)
    with httpx.Client(base_url=srv.base_url, trust_env=False, timeout=30) as anonymous:
        for method, template, _ in OPERATIONS:
            r = anonymous.send(_request(anonymous, method, template, existing, headers))
            assert r.status_code == 401, (method, template, r.status_code, r.text)
            assert srv.api_key not in r.text
    assert _state(c, existing) == before


def test_a_near_miss_key_and_a_revoked_token_are_refused(
    srv: LocalServer, c: httpx.Client, existing: dict[str, str]
) -> None:
    key = srv.api_key
    near = key[:-1] + ("a" if key[-1] != "a" else "b")
    token = c.post("/api/tokens", json={"name": "revoked"}).json()["data"]
    secret = token["token"]
    with httpx.Client(base_url=srv.base_url, trust_env=False, timeout=30) as other:
        assert other.get("/api/disks", headers={"Authorization": secret}).status_code == 200
        assert c.delete(f"/api/tokens/{token['id']}").status_code in (200, 204)
        for value in (near, key + "x", "Bearer " + near, key.upper(), secret, f"Bearer {secret}"):
            for method, template, _ in OPERATIONS:
                r = other.send(
                    _request(other, method, template, existing, {"Authorization": value})
                )
                assert r.status_code == 401, (value[:4], method, template, r.status_code)


def test_a_disk_token_is_not_an_api_key(
    srv: LocalServer, c: httpx.Client, existing: dict[str, str]
) -> None:
    user = c.post(
        f"/api/disks/{existing['id']}/users", json={"type": "token", "nickname": "mounter"}
    )
    assert user.status_code in (200, 201), user.text
    disk_token = user.json()["data"].get("token")
    assert disk_token
    with httpx.Client(base_url=srv.base_url, trust_env=False, timeout=30) as other:
        for method, template, _ in OPERATIONS:
            r = other.send(
                _request(other, method, template, existing, {"Authorization": disk_token})
            )
            assert r.status_code == 401, (method, template, r.status_code)
    c.delete(f"/api/disks/{existing['id']}/users/token", params={"identifier": "mounter"})


def test_the_key_opens_every_operation(c: httpx.Client, existing: dict[str, str]) -> None:
    """The requests above are well-formed: with the key, none of them is refused as 401."""
    for method, template, _ in OPERATIONS:
        if method == "DELETE" or template.endswith("?delete"):
            continue
        r = c.send(
            _request(c, method, template, existing, {"Authorization": c.headers["Authorization"]})
        )
        assert r.status_code != 401, (method, template, r.text)
