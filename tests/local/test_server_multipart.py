"""Multipart uploads, DeleteObjects, append and conditional writes of the local object API."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import httpx
import pytest
from objects_helpers import (  # tests/local, which pytest puts on the path
    NS,
    Raw,
    client_fresh,
    error_code,
    keys_of,
    list_objects,
    prefixes_of,
)

from archil.local.embedded import LocalServer

MIB = 1024 * 1024
SMALL_PART = 64 * 1024


def _text(body: bytes, name: str) -> str:
    return ET.fromstring(body).findtext(f"{NS}{name}") or ""


def _s3_error(r: httpx.Response) -> tuple[int, str]:
    assert r.headers["content-type"].startswith("application/xml"), r.text
    root = ET.fromstring(r.content)
    assert root.tag == "Error" and root.findtext("Message") and root.findtext("RequestId")
    return r.status_code, root.findtext("Code") or ""


def _create(client: httpx.Client, disk: str, key: str, **headers: str) -> str:
    r = client.post(f"/s3/{disk}/{key}", params={"uploads": ""}, headers=headers)
    assert r.status_code == 200, r.text
    root = ET.fromstring(r.content)
    assert root.tag == f"{NS}InitiateMultipartUploadResult"
    assert root.findtext(f"{NS}Bucket") == disk and root.findtext(f"{NS}Key") == key
    return root.findtext(f"{NS}UploadId") or ""


def _part(client: httpx.Client, disk: str, key: str, upload_id: str, n: int, body: bytes) -> str:
    r = client.put(
        f"/s3/{disk}/{key}", params={"partNumber": n, "uploadId": upload_id}, content=body
    )
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == f'"{hashlib.md5(body).hexdigest()}"'
    return r.headers["etag"]


def _complete_body(parts: list[tuple[int, str]]) -> bytes:
    inner = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in parts)
    return f'<?xml version="1.0"?><CompleteMultipartUpload xmlns="{NS[1:-1]}">{inner}</CompleteMultipartUpload>'.encode()


def _complete(
    client: httpx.Client, disk: str, key: str, upload_id: str, parts: list[tuple[int, str]]
) -> httpx.Response:
    return client.post(
        f"/s3/{disk}/{key}", params={"uploadId": upload_id}, content=_complete_body(parts)
    )


def _uploads(client: httpx.Client, disk: str, **params: str | int) -> list[tuple[str, str]]:
    r = client.get(f"/s3/{disk}", params={"uploads": "", **params})
    assert r.status_code == 200, r.text
    root = ET.fromstring(r.content)
    assert root.tag == f"{NS}ListMultipartUploadsResult"
    return [
        (u.findtext(f"{NS}Key") or "", u.findtext(f"{NS}UploadId") or "")
        for u in root.findall(f"{NS}Upload")
    ]


def _staging(server: LocalServer) -> Path:
    return server.data_dir / "disks" / ".multipart"


@pytest.fixture
def small_parts(make_server: Callable[..., LocalServer]) -> LocalServer:
    """A server whose minimum part size is 64 KiB, so tests move little data."""
    return make_server(min_part_size=SMALL_PART)


@pytest.fixture
def sp_client(small_parts: LocalServer) -> Iterator[httpx.Client]:
    with client_fresh(small_parts) as c:
        c.timeout = httpx.Timeout(30.0)
        yield c


@pytest.fixture
def sp_disk(sp_client: httpx.Client) -> str:
    disk_id: str = sp_client.post("/api/disks", json={"name": "mp"}).json()["data"]["diskId"]
    return disk_id


def test_multipart_upload_happy_path(
    small_parts: LocalServer, sp_client: httpx.Client, sp_disk: str
) -> None:
    c, disk, key = sp_client, sp_disk, "dir/assembled.bin"
    upload_id = _create(c, disk, key, **{"content-type": "application/x-test"})
    bodies = [os.urandom(SMALL_PART), os.urandom(SMALL_PART + 5), b"tail"]
    etags = [_part(c, disk, key, upload_id, n, b) for n, b in enumerate(bodies, 1)]

    r = c.get(f"/s3/{disk}/{key}", params={"uploadId": upload_id})
    assert r.status_code == 200, r.text
    root = ET.fromstring(r.content)
    assert root.tag == f"{NS}ListPartsResult"
    assert root.findtext(f"{NS}UploadId") == upload_id
    listed = [
        (int(p.findtext(f"{NS}PartNumber") or 0), p.findtext(f"{NS}ETag"), p.findtext(f"{NS}Size"))
        for p in root.findall(f"{NS}Part")
    ]
    assert listed == [(n, etags[n - 1], str(len(bodies[n - 1]))) for n in (1, 2, 3)]
    page = ET.fromstring(
        c.get(f"/s3/{disk}/{key}", params={"uploadId": upload_id, "max-parts": 2}).content
    )
    assert page.findtext(f"{NS}IsTruncated") == "true"
    assert page.findtext(f"{NS}NextPartNumberMarker") == "2"
    assert _uploads(c, disk) == [(key, upload_id)]

    r = _complete(c, disk, key, upload_id, list(enumerate(etags, 1)))
    assert r.status_code == 200, r.text
    root = ET.fromstring(r.content)
    assert root.tag == f"{NS}CompleteMultipartUploadResult"
    digest = hashlib.md5(b"".join(hashlib.md5(b).digest() for b in bodies)).hexdigest()
    assert root.findtext(f"{NS}ETag") == f'"{digest}-3"'
    assert root.findtext(f"{NS}Key") == key and root.findtext(f"{NS}Location", "").endswith(key)

    got = c.get(f"/s3/{disk}/{key}")
    assert got.content == b"".join(bodies)
    assert got.headers["etag"] == f'"{digest}-3"'
    assert got.headers["content-type"] == "application/x-test"
    assert keys_of(list_objects(c, disk)) == [key]
    assert _uploads(c, disk) == []
    # A repeated completion (its first answer lost) answers the same result.
    again = _complete(c, disk, key, upload_id, list(enumerate(etags, 1)))
    assert again.status_code == 200 and again.content == r.content
    # The upload itself is over: no more parts, no listing, no abort.
    r = c.put(f"/s3/{disk}/{key}", params={"partNumber": 4, "uploadId": upload_id}, content=b"x")
    assert _s3_error(r) == (404, "NoSuchUpload")
    left = [p.name for p in _staging(small_parts).rglob("*") if p.is_file()]
    assert left == ["completed.json"]


def test_parts_are_invisible_until_completion(
    small_parts: LocalServer, sp_client: httpx.Client, sp_disk: str
) -> None:
    c, disk = sp_client, sp_disk
    upload_id = _create(c, disk, "hidden/obj")
    _part(c, disk, "hidden/obj", upload_id, 1, b"p" * SMALL_PART)
    assert _s3_error(c.get(f"/s3/{disk}/hidden/obj")) == (404, "NoSuchKey")
    assert c.head(f"/s3/{disk}/hidden/obj").status_code == 404
    assert (
        keys_of(list_objects(c, disk)) == []
        and prefixes_of(list_objects(c, disk, delimiter="/")) == []
    )
    assert c.get(f"/api/disks/{disk}/directory").json()["data"]["entries"] == []
    disk_dir = small_parts.data_dir / "disks" / disk
    assert list(disk_dir.rglob("*")) == []
    staging = _staging(small_parts)
    assert (staging / upload_id).is_dir()
    assert not staging.is_relative_to(disk_dir)


def test_parts_are_not_visible_inside_a_container(
    small_parts: LocalServer, sp_client: httpx.Client, sp_disk: str
) -> None:
    c, disk = sp_client, sp_disk
    upload_id = _create(c, disk, "secret-upload")
    _part(c, disk, "secret-upload", upload_id, 1, b"staged-bytes")
    data = small_parts.data_dir
    command = (
        f"ls -aR /mnt/archil; ls -aR {data}/disks 2>&1; cat {data}/disks/.multipart/*/* 2>&1; true"
    )
    r = c.post(f"/api/disks/{disk}/exec", json={"command": command}, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()["data"]["stdout"]
    assert out.startswith("/mnt/archil:")
    assert upload_id not in out and "staged-bytes" not in out


def test_replacing_a_part_keeps_the_last_one(sp_client: httpx.Client, sp_disk: str) -> None:
    c, disk = sp_client, sp_disk
    upload_id = _create(c, disk, "k")
    _part(c, disk, "k", upload_id, 1, b"first")
    second = _part(c, disk, "k", upload_id, 1, b"second")
    root = ET.fromstring(c.get(f"/s3/{disk}/k", params={"uploadId": upload_id}).content)
    assert [p.findtext(f"{NS}ETag") for p in root.findall(f"{NS}Part")] == [second]
    assert _complete(c, disk, "k", upload_id, [(1, second)]).status_code == 200
    assert c.get(f"/s3/{disk}/k").content == b"second"


def test_complete_refuses_bad_part_lists(sp_client: httpx.Client, sp_disk: str) -> None:
    c, disk, key = sp_client, sp_disk, "k"
    upload_id = _create(c, disk, key)
    e1 = _part(c, disk, key, upload_id, 1, b"a" * SMALL_PART)
    e2 = _part(c, disk, key, upload_id, 2, b"b" * 10)
    e3 = _part(c, disk, key, upload_id, 3, b"c" * 10)
    cases = [
        ([(2, e2), (1, e1)], "InvalidPartOrder"),
        ([(1, e1), (1, e1)], "InvalidPartOrder"),
        ([(1, e1), (2, e1)], "InvalidPart"),
        ([(1, e1), (7, e2)], "InvalidPart"),
        ([(1, '"00000000000000000000000000000000"')], "InvalidPart"),
        ([(1, e1), (2, e2), (3, e3)], "EntityTooSmall"),
    ]
    for parts, code in cases:
        assert _s3_error(_complete(c, disk, key, upload_id, parts)) == (400, code), parts
    for body in (
        b"not xml",
        b"<CompleteMultipartUpload/>",
        b"<Other/>",
        b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber></Part></CompleteMultipartUpload>",
        b'<!DOCTYPE d [<!ENTITY a "x">]><CompleteMultipartUpload/>',
    ):
        r = c.post(f"/s3/{disk}/{key}", params={"uploadId": upload_id}, content=body)
        assert _s3_error(r) == (400, "MalformedXML"), body
    assert c.get(f"/s3/{disk}/{key}").status_code == 404
    # Quotes around the ETags are optional; a part may be left out.
    r = _complete(c, disk, key, upload_id, [(1, e1.strip('"')), (3, e3)])
    assert r.status_code == 200, r.text
    assert c.get(f"/s3/{disk}/{key}").content == b"a" * SMALL_PART + b"c" * 10


def test_entity_too_small_at_the_default_minimum(client: httpx.Client, disk: str) -> None:
    upload_id = _create(client, disk, "k")
    e1 = _part(client, disk, "k", upload_id, 1, b"x" * (5 * MIB - 1))
    e2 = _part(client, disk, "k", upload_id, 2, b"y")
    r = _complete(client, disk, "k", upload_id, [(1, e1), (2, e2)])
    assert _s3_error(r) == (400, "EntityTooSmall")
    assert _complete(client, disk, "k", upload_id, [(1, e1)]).status_code == 200


def test_no_such_upload_and_part_numbers(sp_client: httpx.Client, sp_disk: str) -> None:
    c, disk = sp_client, sp_disk
    upload_id = _create(c, disk, "k")
    for params in (
        {"uploadId": "0" * 32, "partNumber": 1},
        {"uploadId": "../../etc", "partNumber": 1},
        {"uploadId": upload_id, "partNumber": 1, "x": "wrong-key"},
    ):
        target = "other" if "x" in params else "k"
        params.pop("x", None)
        r = c.put(f"/s3/{disk}/{target}", params=params, content=b"x")
        assert _s3_error(r) == (404, "NoSuchUpload"), params
    assert _s3_error(c.get(f"/s3/{disk}/k", params={"uploadId": "nope"})) == (404, "NoSuchUpload")
    assert _s3_error(_complete(c, disk, "k", "f" * 32, [(1, '"x"')])) == (404, "NoSuchUpload")
    for bad in ("0", "10001", "-1", "one"):
        r = c.put(f"/s3/{disk}/k", params={"uploadId": upload_id, "partNumber": bad}, content=b"")
        assert _s3_error(r) == (400, "InvalidArgument"), bad
    r = c.put(f"/s3/{disk}/k", params={"uploadId": upload_id}, content=b"x")
    assert _s3_error(r) == (400, "InvalidArgument")
    r = c.post(f"/s3/{disk}/k")
    assert _s3_error(r) == (400, "InvalidRequest")
    r = c.post(f"/s3/{disk}/folder/", params={"uploads": ""})
    assert _s3_error(r) == (400, "InvalidArgument")
    r = c.post("/s3/dsk-0000000000000000/k", params={"uploads": ""})
    assert _s3_error(r) == (404, "NoSuchBucket")


def test_upload_part_larger_than_s3_allows(
    small_parts: LocalServer, sp_disk: str, sp_client: httpx.Client, raw: Raw
) -> None:
    upload_id = _create(sp_client, sp_disk, "k")
    status, body = raw(
        small_parts,
        "PUT",
        f"/s3/{sp_disk}/k?partNumber=1&uploadId={upload_id}",
        body=b"",
        headers={"Content-Length": str(6 * 1024**3)},
    )
    assert status == 400 and error_code(body) == "EntityTooLarge"


def test_abort_leaves_nothing(
    small_parts: LocalServer, sp_client: httpx.Client, sp_disk: str
) -> None:
    c, disk = sp_client, sp_disk
    upload_id = _create(c, disk, "k")
    _part(c, disk, "k", upload_id, 1, b"x" * SMALL_PART)
    assert c.delete(f"/s3/{disk}/k", params={"uploadId": upload_id}).status_code == 204
    assert not (_staging(small_parts) / upload_id).exists()
    assert _uploads(c, disk) == []
    assert _s3_error(c.delete(f"/s3/{disk}/k", params={"uploadId": upload_id})) == (
        404,
        "NoSuchUpload",
    )
    r = c.put(f"/s3/{disk}/k", params={"partNumber": 2, "uploadId": upload_id}, content=b"y")
    assert _s3_error(r) == (404, "NoSuchUpload")
    assert c.get(f"/s3/{disk}/k").status_code == 404
    assert list((small_parts.data_dir / "disks" / disk).rglob("*")) == []


def test_a_deleted_disk_takes_its_uploads_along(
    small_parts: LocalServer, sp_client: httpx.Client, sp_disk: str
) -> None:
    upload_id = _create(sp_client, sp_disk, "k")
    assert sp_client.delete(f"/api/disks/{sp_disk}").status_code == 200
    assert not (_staging(small_parts) / upload_id).exists()


def test_abandoned_uploads_are_swept(
    small_parts: LocalServer, sp_client: httpx.Client, sp_disk: str
) -> None:
    c, disk = sp_client, sp_disk
    old = _create(c, disk, "old")
    _part(c, disk, "old", old, 1, b"x")
    assert small_parts.app is not None
    store = small_parts.app.plane.disks.multipart
    assert store.sweep() == 0
    day = 24 * 3600
    fresh = _create(c, disk, "fresh")
    # Nothing happened for more than a day (as seen from "now"): swept.
    assert store.sweep(now=time.time() + day + 60) == 2
    assert _uploads(c, disk) == [] and not (_staging(small_parts) / old).exists()
    assert not (_staging(small_parts) / fresh).exists()


def test_abandoned_uploads_are_swept_at_startup(
    make_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    first = make_server(tmp_path / "d")
    with client_fresh(first) as c:
        disk = c.post("/api/disks", json={"name": "x"}).json()["data"]["diskId"]
        old = _create(c, disk, "old")
        _part(c, disk, "old", old, 1, b"x")
        recent = _create(c, disk, "recent")
    first.stop()
    staging = tmp_path / "d" / "disks" / ".multipart"
    record = staging / old / "upload.json"
    data = json.loads(record.read_text())
    data["initiated"] -= 2 * 24 * 3600
    record.write_text(json.dumps(data))
    two_days_ago = time.time() - 2 * 24 * 3600
    for p in [staging / old, *(staging / old).iterdir()]:
        os.utime(p, (two_days_ago, two_days_ago))
    second = make_server(tmp_path / "d")
    with client_fresh(second) as c:
        assert _uploads(c, disk) == [("recent", recent)]
    assert not (staging / old).exists()


def test_completion_is_atomic_for_readers(client: httpx.Client, disk: str) -> None:
    parts = [os.urandom(5 * MIB) for _ in range(6)]
    whole = b"".join(parts)
    upload_id = _create(client, disk, "atomic")
    etags = [_part(client, disk, "atomic", upload_id, n, p) for n, p in enumerate(parts, 1)]
    seen: list[int] = []
    bad: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        with httpx.Client(base_url=str(client.base_url), headers=dict(client.headers)) as rc:
            while not stop.is_set():
                r = rc.get(f"/s3/{disk}/atomic")
                seen.append(r.status_code)
                if r.status_code == 200 and r.content != whole:
                    bad.append(f"partial object of {len(r.content)} bytes")
                elif r.status_code not in (200, 404):
                    bad.append(r.text)

    t = threading.Thread(target=reader)
    t.start()
    try:
        time.sleep(0.05)
        assert (
            _complete(client, disk, "atomic", upload_id, list(enumerate(etags, 1))).status_code
            == 200
        )
        deadline = time.monotonic() + 10
        while 200 not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        t.join()
    assert not bad
    assert 200 in seen


def test_parts_are_streamed_to_disk(client: httpx.Client, disk: str) -> None:
    chunk = os.urandom(MIB)
    upload_id = _create(client, disk, "big")

    def body() -> Iterator[bytes]:
        for _ in range(40):
            yield chunk

    tracemalloc.start()
    try:
        r = client.put(
            f"/s3/{disk}/big",
            params={"partNumber": 1, "uploadId": upload_id},
            content=body(),
            headers={"content-length": str(40 * MIB)},
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 200, r.text
    assert peak < 16 * MIB, f"peak traced memory {peak / 1e6:.1f} MB for a 40 MB part"


def test_create_with_the_same_idempotency_key_is_one_upload(
    sp_client: httpx.Client, sp_disk: str
) -> None:
    c, disk = sp_client, sp_disk
    first = _create(c, disk, "k", **{"Idempotency-Key": "retry-1"})
    assert _create(c, disk, "k", **{"Idempotency-Key": "retry-1"}) == first
    assert _create(c, disk, "k", **{"Idempotency-Key": "retry-2"}) != first
    assert _create(c, disk, "other", **{"Idempotency-Key": "retry-1"}) != first
    assert _create(c, disk, "k") != first
    assert len(_uploads(c, disk)) == 4


def test_list_multipart_uploads_pages_and_prefixes(sp_client: httpx.Client, sp_disk: str) -> None:
    c, disk = sp_client, sp_disk
    ids = {key: _create(c, disk, key) for key in ("a/1", "a/2", "b", "c/d/e")}
    assert [k for k, _ in _uploads(c, disk)] == ["a/1", "a/2", "b", "c/d/e"]
    assert [k for k, _ in _uploads(c, disk, prefix="a/")] == ["a/1", "a/2"]
    r = c.get(f"/s3/{disk}", params={"uploads": "", "delimiter": "/"})
    root = ET.fromstring(r.content)
    assert [u.findtext(f"{NS}Key") for u in root.findall(f"{NS}Upload")] == ["b"]
    assert prefixes_of(root) == ["a/", "c/"]
    r = c.get(f"/s3/{disk}", params={"uploads": "", "max-uploads": 2})
    root = ET.fromstring(r.content)
    assert root.findtext(f"{NS}IsTruncated") == "true"
    assert root.findtext(f"{NS}NextKeyMarker") == "a/2"
    assert root.findtext(f"{NS}NextUploadIdMarker") == ids["a/2"]
    rest = _uploads(c, disk, **{"key-marker": "a/2", "upload-id-marker": ids["a/2"]})
    assert [k for k, _ in rest] == ["b", "c/d/e"]
    assert [k for k, _ in _uploads(c, disk, **{"key-marker": "a/2"})] == ["b", "c/d/e"]


def test_delete_objects(server: LocalServer, client: httpx.Client, disk: str) -> None:
    for key in ("a", "b/c", "d"):
        client.put(f"/s3/{disk}/{key}", content=b"x")

    def delete(keys: list[str], quiet: bool = False) -> httpx.Response:
        objects = "".join(f"<Object><Key>{escape(k)}</Key></Object>" for k in keys)
        q = "<Quiet>true</Quiet>" if quiet else ""
        return client.post(
            f"/s3/{disk}", params={"delete": ""}, content=f"<Delete>{objects}{q}</Delete>"
        )

    r = delete(["a", "b/c", "never-existed", "../escape"])
    assert r.status_code == 200, r.text
    root = ET.fromstring(r.content)
    assert root.tag == f"{NS}DeleteResult"
    assert [d.findtext(f"{NS}Key") for d in root.findall(f"{NS}Deleted")] == [
        "a",
        "b/c",
        "never-existed",
    ]
    errors = root.findall(f"{NS}Error")
    assert [(e.findtext(f"{NS}Key"), e.findtext(f"{NS}Code")) for e in errors] == [
        ("../escape", "InvalidArgument")
    ]
    assert keys_of(list_objects(client, disk)) == ["d"]

    r = delete(["d", "gone"], quiet=True)
    assert r.status_code == 200
    root = ET.fromstring(r.content)
    assert list(root) == []
    assert keys_of(list_objects(client, disk)) == []

    for body in (b"<Delete/>", b"junk", b"<Other><Object><Key>x</Key></Object></Other>"):
        r = client.post(f"/s3/{disk}", params={"delete": ""}, content=body)
        assert _s3_error(r) == (400, "MalformedXML"), body
    assert _s3_error(delete([f"k{i}" for i in range(1001)])) == (400, "MalformedXML")
    r = client.post(f"/s3/{disk}")
    assert _s3_error(r) == (400, "InvalidRequest")
    r = client.post("/s3/dsk-0000000000000000", params={"delete": ""}, content=b"<Delete/>")
    assert _s3_error(r) == (404, "NoSuchBucket")


def test_append(server: LocalServer, client: httpx.Client, disk: str) -> None:
    def append(body: bytes, key: str = "log.txt", **headers: str) -> httpx.Response:
        return client.put(
            f"/s3/{disk}/{key}", params={"append": "true"}, content=body, headers=headers
        )

    r = append(b"one\n", **{"content-type": "text/plain"})
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"' + hashlib.md5(b"one\n").hexdigest() + '"'
    r = append(b"two\n", **{"content-type": "application/other"})
    assert r.headers["etag"] == '"' + hashlib.md5(b"one\ntwo\n").hexdigest() + '"'
    got = client.get(f"/s3/{disk}/log.txt")
    assert got.content == b"one\ntwo\n" and got.headers["content-type"] == "text/plain"
    assert got.headers["etag"] == r.headers["etag"]
    assert append(b"x" * MIB).status_code == 200

    assert _s3_error(append(b"x" * (MIB + 1))) == (400, "EntityTooLarge")

    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield b"y" * (MIB // 2)

    r = client.put(f"/s3/{disk}/log.txt", params={"append": "true"}, content=chunks())
    assert _s3_error(r) == (400, "EntityTooLarge")
    assert len(client.get(f"/s3/{disk}/log.txt").content) == 8 + MIB

    assert _s3_error(append(b"x", key="folder/")) == (400, "InvalidArgument")
    r = client.put(f"/s3/{disk}/f", params={"append": "false"}, content=b"x")
    assert _s3_error(r) == (400, "InvalidArgument")
    (server.data_dir / "disks" / disk / "link").symlink_to(server.data_dir / "api_key")
    assert _s3_error(append(b"x", key="link")) == (400, "InvalidArgument")
    assert server.api_key in (server.data_dir / "api_key").read_text()
    bad_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    assert _s3_error(append(b"z", **{"Content-MD5": bad_md5})) == (400, "BadDigest")
    assert len(client.get(f"/s3/{disk}/log.txt").content) == 8 + MIB


def test_if_match(client: httpx.Client, disk: str) -> None:
    etag = client.put(f"/s3/{disk}/f", content=b"0123456789").headers["etag"]
    r = client.get(f"/s3/{disk}/f", headers={"If-Match": etag, "Range": "bytes=0-3"})
    assert r.status_code == 206 and r.content == b"0123"
    assert client.get(f"/s3/{disk}/f", headers={"If-Match": "*"}).status_code == 200
    r = client.get(f"/s3/{disk}/f", headers={"If-Match": '"0123"'})
    assert _s3_error(r) == (412, "PreconditionFailed")
    assert client.head(f"/s3/{disk}/f", headers={"If-Match": '"0123"'}).status_code == 412


# -- parts written in place (the client declared its part size) ----------------

STRIDE = 2 * SMALL_PART


def _create_in_place(client: httpx.Client, disk: str, key: str) -> str:
    return _create(client, disk, key, **{"x-archil-part-size": str(STRIDE)})


def test_declared_part_size_completes_without_copying(
    small_parts: LocalServer, sp_client: httpx.Client, sp_disk: str
) -> None:
    c, disk = sp_client, sp_disk
    upload_id = _create_in_place(c, disk, "fast.bin")
    bodies = [os.urandom(STRIDE), os.urandom(STRIDE), os.urandom(STRIDE // 3)]
    etags = {n: _part(c, disk, "fast.bin", upload_id, n, bodies[n - 1]) for n in (3, 1, 2)}
    staging = _staging(small_parts) / upload_id
    assert (staging / "data").stat().st_size == 2 * STRIDE + STRIDE // 3
    data_inode = (staging / "data").stat().st_ino
    listed = ET.fromstring(c.get(f"/s3/{disk}/fast.bin", params={"uploadId": upload_id}).content)
    assert [p.findtext(f"{NS}Size") for p in listed.findall(f"{NS}Part")] == [
        str(len(b)) for b in bodies
    ]
    r = _complete(c, disk, "fast.bin", upload_id, sorted(etags.items()))
    assert r.status_code == 200, r.text
    path = small_parts.data_dir / "disks" / disk / "fast.bin"
    assert path.read_bytes() == b"".join(bodies)
    assert path.stat().st_ino == data_inode  # renamed into place, not copied
    assert c.get(f"/s3/{disk}/fast.bin").headers["etag"] == _text(r.content, "ETag")
    assert [p.name for p in staging.iterdir()] == ["completed.json"]


def test_other_layouts_are_copied(sp_client: httpx.Client, sp_disk: str) -> None:
    c, disk = sp_client, sp_disk
    upload_id = _create_in_place(c, disk, "mixed.bin")
    # A short part in the middle, a part larger than declared, a gap in the numbers.
    bodies = {
        1: os.urandom(STRIDE),
        2: os.urandom(SMALL_PART),
        4: os.urandom(STRIDE + 10),
        5: b"end",
    }
    etags = {n: _part(c, disk, "mixed.bin", upload_id, n, b) for n, b in bodies.items()}
    r = _complete(c, disk, "mixed.bin", upload_id, sorted(etags.items()))
    assert r.status_code == 200, r.text
    assert c.get(f"/s3/{disk}/mixed.bin").content == b"".join(bodies[n] for n in sorted(bodies))


def test_a_rewritten_part_replaces_the_old_one(sp_client: httpx.Client, sp_disk: str) -> None:
    c, disk = sp_client, sp_disk
    upload_id = _create_in_place(c, disk, "k")
    old = _part(c, disk, "k", upload_id, 1, b"a" * STRIDE)
    new = _part(c, disk, "k", upload_id, 1, b"b" * STRIDE)
    assert _s3_error(_complete(c, disk, "k", upload_id, [(1, old)])) == (400, "InvalidPart")
    assert _complete(c, disk, "k", upload_id, [(1, new)]).status_code == 200
    assert c.get(f"/s3/{disk}/k").content == b"b" * STRIDE


def test_a_part_still_arriving_cannot_touch_the_completed_object(
    small_parts: LocalServer, sp_client: httpx.Client, sp_disk: str
) -> None:
    c, disk = sp_client, sp_disk
    upload_id = _create_in_place(c, disk, "sealed.bin")
    e1 = _part(c, disk, "sealed.bin", upload_id, 1, b"1" * STRIDE)
    started, release = threading.Event(), threading.Event()
    answers: list[int] = []

    def slow_body() -> Iterator[bytes]:
        yield b"x" * (SMALL_PART // 2)
        started.set()
        release.wait(10)
        yield b"y" * (STRIDE - SMALL_PART // 2)

    def late_part() -> None:
        with client_fresh(small_parts) as other:
            r = other.put(
                f"/s3/{disk}/sealed.bin",
                params={"partNumber": 2, "uploadId": upload_id},
                content=slow_body(),
                headers={"content-length": str(STRIDE)},
            )
            answers.append(r.status_code)

    t = threading.Thread(target=late_part)
    t.start()
    assert started.wait(10)
    time.sleep(0.2)
    assert _complete(c, disk, "sealed.bin", upload_id, [(1, e1)]).status_code == 200
    release.set()
    t.join(10)
    assert answers == [404]
    path = small_parts.data_dir / "disks" / disk / "sealed.bin"
    assert path.read_bytes() == b"1" * STRIDE


def test_the_declared_part_size_is_checked(sp_client: httpx.Client, sp_disk: str) -> None:
    for bad in ("0", "-1", "lots", str(6 * 1024**3)):
        r = sp_client.post(
            f"/s3/{sp_disk}/k", params={"uploads": ""}, headers={"x-archil-part-size": bad}
        )
        assert _s3_error(r) == (400, "InvalidArgument"), bad


def test_aborting_an_in_place_upload_leaves_nothing(
    small_parts: LocalServer, sp_client: httpx.Client, sp_disk: str
) -> None:
    upload_id = _create_in_place(sp_client, sp_disk, "k")
    _part(sp_client, sp_disk, "k", upload_id, 2, b"z" * STRIDE)
    assert sp_client.delete(f"/s3/{sp_disk}/k", params={"uploadId": upload_id}).status_code == 204
    assert not (_staging(small_parts) / upload_id).exists()
