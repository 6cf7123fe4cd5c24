"""The S3-compatible object API and the directory listing of the local server."""

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

from archil.local.embedded import LocalServer

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
Raw = Callable[..., tuple[int, bytes]]


def _list(client: httpx.Client, disk: str, **params: str | int) -> ET.Element:
    r = client.get(f"/s3/{disk}", params={"list-type": 2, **params})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/xml")
    return ET.fromstring(r.content)


def _keys(root: ET.Element) -> list[str]:
    return [c.findtext(f"{NS}Key") or "" for c in root.findall(f"{NS}Contents")]


def _prefixes(root: ET.Element) -> list[str]:
    return [c.findtext(f"{NS}Prefix") or "" for c in root.findall(f"{NS}CommonPrefixes")]


def _error_code(body: bytes) -> str:
    return ET.fromstring(body).findtext("Code") or ""


@pytest.mark.parametrize("size", [0, 1, 1000, 3 * 1024 * 1024 + 7])
def test_round_trip(server: LocalServer, client: httpx.Client, disk: str, size: int) -> None:
    data = os.urandom(size)
    md5 = hashlib.md5(data).hexdigest()
    r = client.put(f"/s3/{disk}/dir/obj.bin", content=data)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == f'"{md5}"'
    assert (server.data_dir / "disks" / disk / "dir" / "obj.bin").read_bytes() == data

    r = client.get(f"/s3/{disk}/dir/obj.bin")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["content-length"] == str(size)
    assert r.headers["etag"] == f'"{md5}"'
    assert r.headers["last-modified"].endswith("GMT")
    assert r.headers["content-type"] == "application/octet-stream"

    r = client.head(f"/s3/{disk}/dir/obj.bin")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == str(size)
    assert r.headers["etag"] == f'"{md5}"'

    assert client.delete(f"/s3/{disk}/dir/obj.bin").status_code == 204
    assert client.delete(f"/s3/{disk}/dir/obj.bin").status_code == 204
    r = client.get(f"/s3/{disk}/dir/obj.bin")
    assert r.status_code == 404 and _error_code(r.content) == "NoSuchKey"
    assert client.head(f"/s3/{disk}/dir/obj.bin").status_code == 404


def test_content_type_and_overwrite(client: httpx.Client, disk: str) -> None:
    client.put(f"/s3/{disk}/a.json", content=b"{}", headers={"content-type": "application/json"})
    assert client.get(f"/s3/{disk}/a.json").headers["content-type"] == "application/json"
    client.put(f"/s3/{disk}/a.json", content=b"[1]", headers={"content-type": "text/plain"})
    r = client.get(f"/s3/{disk}/a.json")
    assert r.content == b"[1]" and r.headers["content-type"] == "text/plain"


def test_etag_of_a_file_written_behind_the_api(
    server: LocalServer, client: httpx.Client, disk: str
) -> None:
    client.put(f"/s3/{disk}/f", content=b"one")
    path = server.data_dir / "disks" / disk / "f"
    path.write_bytes(b"something else")
    r = client.get(f"/s3/{disk}/f")
    assert r.content == b"something else"
    assert r.headers["etag"] == f'"{hashlib.md5(b"something else").hexdigest()}"'


def test_large_object_is_streamed(server: LocalServer, client: httpx.Client, disk: str) -> None:
    size = 50 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)
    md5 = hashlib.md5()
    for _ in range(50):
        md5.update(chunk)

    def body() -> Iterator[bytes]:
        for _ in range(50):
            yield chunk

    tracemalloc.start()
    try:
        r = client.put(f"/s3/{disk}/big.bin", content=body(), headers={"content-length": str(size)})
        assert r.status_code == 200, r.text
        assert r.headers["etag"] == f'"{md5.hexdigest()}"'
        got = hashlib.md5()
        total = 0
        with client.stream("GET", f"/s3/{disk}/big.bin") as resp:
            assert resp.headers["content-length"] == str(size)
            for part in resp.iter_bytes():
                got.update(part)
                total += len(part)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size and got.hexdigest() == md5.hexdigest()
    assert peak < 16 * 1024 * 1024, f"peak traced memory {peak / 1e6:.1f} MB for a 50 MB object"
    assert (server.data_dir / "disks" / disk / "big.bin").stat().st_size == size
    assert not list((server.data_dir / "disks" / ".uploads").iterdir())


def test_range_requests(client: httpx.Client, disk: str) -> None:
    client.put(f"/s3/{disk}/r", content=b"0123456789")
    r = client.get(f"/s3/{disk}/r", headers={"Range": "bytes=2-5"})
    assert r.status_code == 206 and r.content == b"2345"
    assert r.headers["content-range"] == "bytes 2-5/10"
    assert client.get(f"/s3/{disk}/r", headers={"Range": "bytes=-3"}).content == b"789"
    assert client.get(f"/s3/{disk}/r", headers={"Range": "bytes=7-"}).content == b"789"
    r = client.get(f"/s3/{disk}/r", headers={"Range": "bytes=20-30"})
    assert r.status_code == 416 and _error_code(r.content) == "InvalidRange"


def test_content_md5_is_checked(server: LocalServer, client: httpx.Client, disk: str) -> None:
    good = base64.b64encode(hashlib.md5(b"hello").digest()).decode()
    r = client.put(f"/s3/{disk}/m", content=b"hello", headers={"Content-MD5": good})
    assert r.status_code == 200
    r = client.put(f"/s3/{disk}/n", content=b"hullo", headers={"Content-MD5": good})
    assert r.status_code == 400 and _error_code(r.content) == "BadDigest"
    assert not (server.data_dir / "disks" / disk / "n").exists()


def test_missing_disk_is_no_such_bucket(client: httpx.Client) -> None:
    for r in (
        client.get("/s3/dsk-0000000000000000/k"),
        client.put("/s3/dsk-0000000000000000/k", content=b"x"),
        client.get("/s3/dsk-0000000000000000", params={"list-type": 2}),
        client.delete("/s3/dsk-0000000000000000/k"),
    ):
        assert r.status_code == 404 and _error_code(r.content) == "NoSuchBucket"
    assert client.head("/s3/dsk-0000000000000000").status_code == 404


def test_listing(client: httpx.Client, disk: str) -> None:
    keys = ["a/1", "a/2", "a/b/3", "a-c", "a0", "b", "c/d/e/f", "z z/é"]
    for k in keys:
        assert client.put(f"/s3/{disk}/{k}", content=k.encode()).status_code == 200
    client.put(f"/s3/{disk}/empty-dir/", content=b"")

    root = _list(client, disk)
    assert _keys(root) == sorted(keys)
    assert root.findtext(f"{NS}KeyCount") == str(len(keys))
    assert root.findtext(f"{NS}IsTruncated") == "false"
    assert root.findtext(f"{NS}Name") == disk
    first = root.find(f"{NS}Contents")
    assert first is not None
    assert first.findtext(f"{NS}ETag") == f'"{hashlib.md5(b"a-c").hexdigest()}"'
    assert first.findtext(f"{NS}Size") == "3"
    assert first.findtext(f"{NS}StorageClass") == "STANDARD"
    assert (first.findtext(f"{NS}LastModified") or "").endswith("Z")

    root = _list(client, disk, delimiter="/")
    assert _keys(root) == ["a-c", "a0", "b"]
    assert _prefixes(root) == ["a/", "c/", "z z/"]

    root = _list(client, disk, prefix="a/", delimiter="/")
    assert _keys(root) == ["a/1", "a/2"]
    assert _prefixes(root) == ["a/b/"]
    assert _keys(_list(client, disk, prefix="a/")) == ["a/1", "a/2", "a/b/3"]
    assert _keys(_list(client, disk, prefix="a")) == ["a-c", "a/1", "a/2", "a/b/3", "a0"]
    assert _keys(_list(client, disk, prefix="nothing")) == []
    assert _keys(_list(client, disk, **{"start-after": "b"})) == ["c/d/e/f", "z z/é"]

    root = _list(client, disk, prefix="c/", delimiter="/")
    assert _keys(root) == [] and _prefixes(root) == ["c/d/"]

    root = _list(client, disk, **{"encoding-type": "url", "prefix": "z"})
    assert _keys(root) == ["z%20z/%C3%A9"]


@pytest.mark.parametrize("delimiter", ["", "/"])
def test_listing_pages_with_continuation_tokens(
    client: httpx.Client, disk: str, delimiter: str
) -> None:
    keys = [f"k{i:02d}" for i in range(7)] + [f"p{i}/x" for i in range(4)]
    for k in keys:
        client.put(f"/s3/{disk}/{k}", content=b".")
    items: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"max-keys": 3, "delimiter": delimiter}
        if token:
            params["continuation-token"] = token
        root = _list(client, disk, **params)
        got = _keys(root) + _prefixes(root)
        assert 0 < len(got) <= 3
        assert root.findtext(f"{NS}KeyCount") == str(len(got))
        items += sorted(got)
        pages += 1
        if root.findtext(f"{NS}IsTruncated") == "false":
            assert root.find(f"{NS}NextContinuationToken") is None
            break
        token = root.findtext(f"{NS}NextContinuationToken")
        assert token
    expected = (
        keys if not delimiter else [k for k in keys if "/" not in k] + [f"p{i}/" for i in range(4)]
    )
    assert items == sorted(expected)
    assert pages == -(-len(expected) // 3)


def test_listing_arguments_are_checked(client: httpx.Client, disk: str) -> None:
    cases: list[dict[str, str | int]] = [
        {"list-type": 2, "max-keys": "many"},
        {"list-type": 2, "max-keys": -1},
        {"list-type": 2, "continuation-token": "%%%"},
        {"list-type": 1},
        {"list-type": 2, "encoding-type": "base64"},
    ]
    for params in cases:
        r = client.get(f"/s3/{disk}", params=params)
        assert r.status_code == 400, params
        assert _error_code(r.content) == "InvalidArgument"
    root = _list(client, disk, **{"max-keys": 0})
    assert root.findtext(f"{NS}KeyCount") == "0"


BAD_KEYS = [
    "../x",
    "%2e%2e/x",
    "%2E%2E/escape",
    "a/../../x",
    "a/%2e%2e/%2e%2e/x",
    "/etc/x",
    "%2Fetc/x",
    "a//b",
    "./x",
    "a/./b",
    "x%00y",
    "a\\..\\x",
    "%0A",
    "a%0Ab",
    "a%0D",
    "%09tab",
    "x%7Fy",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_that_escape_the_disk_are_rejected(
    server: LocalServer, disk: str, raw: Raw, tmp_path: Path, key: str
) -> None:
    before = sorted(p.relative_to(server.data_dir) for p in server.data_dir.rglob("*"))
    for method in ("PUT", "GET", "HEAD", "DELETE"):
        status, body = raw(
            server, method, f"/s3/{disk}/{key}", body=b"payload" if method == "PUT" else None
        )
        assert status == 400, (method, key, status, body)
        if method != "HEAD":
            assert _error_code(body) == "InvalidArgument"
    after = sorted(p.relative_to(server.data_dir) for p in server.data_dir.rglob("*"))
    assert before == after
    assert not (server.data_dir / "disks" / "x").exists()
    assert not (server.data_dir / "x").exists()


def test_symlinks_out_of_the_disk_are_not_followed(
    server: LocalServer, client: httpx.Client, disk: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("top secret")
    root = server.data_dir / "disks" / disk
    (root / "link").symlink_to(outside)
    (root / "file-link").symlink_to(outside / "secret")
    (root / "inside").mkdir()
    (root / "inside" / "real").write_text("fine")
    (root / "ok-link").symlink_to(root / "inside")

    for key in ("link/new", "link/secret", "link/sub/new"):
        r = client.put(f"/s3/{disk}/{key}", content=b"x")
        assert r.status_code == 400, key
        assert _error_code(r.content) == "InvalidArgument"
    for key in ("link/secret", "file-link"):
        r = client.get(f"/s3/{disk}/{key}")
        assert r.status_code == 400, key
        assert b"top secret" not in r.content
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "top secret"
    assert client.get(f"/s3/{disk}/ok-link/real").content == b"fine"
    assert _keys(_list(client, disk)) == ["inside/real"]
    client.delete(f"/s3/{disk}/link/secret")
    assert (outside / "secret").exists()

    # Writing to a key that is a symbolic link replaces the link, never its target.
    assert client.put(f"/s3/{disk}/file-link", content=b"replaced").status_code == 200
    assert not (root / "file-link").is_symlink()
    assert (root / "file-link").read_bytes() == b"replaced"
    assert (outside / "secret").read_text() == "top secret"


def test_key_collisions_with_directories(client: httpx.Client, disk: str) -> None:
    assert client.put(f"/s3/{disk}/d/f", content=b"1").status_code == 200
    r = client.put(f"/s3/{disk}/d", content=b"2")
    assert r.status_code == 400 and _error_code(r.content) == "InvalidArgument"
    r = client.put(f"/s3/{disk}/d/f/g", content=b"3")
    assert r.status_code == 400
    assert client.get(f"/s3/{disk}/d").status_code == 404
    assert client.put(f"/s3/{disk}/folder/", content=b"").status_code == 200
    assert client.put(f"/s3/{disk}/folder2/", content=b"data").status_code == 400


def test_concurrent_writers_leave_one_whole_object(client: httpx.Client, disk: str) -> None:
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    errors: list[BaseException] = []

    def put(p: bytes) -> None:
        try:
            assert client.put(f"/s3/{disk}/same", content=p).status_code == 200
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert client.get(f"/s3/{disk}/same").content in payloads


def test_directory_listing(
    server: LocalServer, client: httpx.Client, disk: str, tmp_path: Path
) -> None:
    client.put(f"/s3/{disk}/top.txt", content=b"12345")
    client.put(f"/s3/{disk}/sub/inner/deep.txt", content=b"x")
    root_dir = server.data_dir / "disks" / disk
    (root_dir / "escape").symlink_to(tmp_path)

    r = client.get(f"/api/disks/{disk}/directory")
    assert r.status_code == 200, r.text
    listing = r.json()["data"]
    assert listing["inodeId"] == 1 and listing["path"] == "/"
    entries = {e["name"]: e for e in listing["entries"]}
    assert set(entries) == {"top.txt", "sub", "escape"}
    assert entries["top.txt"]["type"] == "file" and entries["top.txt"]["size"] == 5
    assert entries["sub"]["type"] == "directory"
    assert entries["escape"]["type"] == "symlink"
    assert entries["top.txt"]["inodeId"] == (root_dir / "top.txt").stat().st_ino
    assert entries["top.txt"]["modifiedAt"].endswith("Z")

    sub = client.get(
        f"/api/disks/{disk}/directory", params={"inode": entries["sub"]["inodeId"]}
    ).json()["data"]
    assert sub["path"] == "/sub"
    (inner,) = sub["entries"]
    assert inner["name"] == "inner" and inner["type"] == "directory"
    deep = client.get(f"/api/disks/{disk}/directory", params={"inode": inner["inodeId"]}).json()[
        "data"
    ]
    assert deep["path"] == "/sub/inner" and [e["name"] for e in deep["entries"]] == ["deep.txt"]

    with client_fresh(server) as fresh:
        again = fresh.get(f"/api/disks/{disk}/directory", params={"inode": inner["inodeId"]})
        assert again.json()["data"]["path"] == "/sub/inner"

    for inode, status in (
        (entries["top.txt"]["inodeId"], 400),
        (entries["escape"]["inodeId"], 400),
        (tmp_path.stat().st_ino, 404),
        (987654321, 404),
    ):
        r = client.get(f"/api/disks/{disk}/directory", params={"inode": inode})
        assert r.status_code == status, (inode, r.text)
        assert r.json()["error"].startswith("inode")
    for bad in ("abc", "0", "-3", "1.5"):
        r = client.get(f"/api/disks/{disk}/directory", params={"inode": bad})
        assert r.status_code == 400 and r.json()["error"].startswith("inode")


def client_fresh(server: LocalServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": server.api_key}, trust_env=False
    )


def test_directory_listing_after_restart(
    make_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    first = make_server(tmp_path / "d")
    with client_fresh(first) as c:
        disk = c.post("/api/disks", json={"name": "x"}).json()["data"]["diskId"]
        c.put(f"/s3/{disk}/a/b/c", content=b"1")
        a = next(e for e in c.get(f"/api/disks/{disk}/directory").json()["data"]["entries"])
        b = c.get(f"/api/disks/{disk}/directory", params={"inode": a["inodeId"]}).json()["data"][
            "entries"
        ][0]
    first.stop()
    second = make_server(tmp_path / "d")
    with client_fresh(second) as c:
        r = c.get(f"/api/disks/{disk}/directory", params={"inode": b["inodeId"]})
        assert r.status_code == 200
        assert r.json()["data"]["path"] == "/a/b"


# ---------------------------------------------------------------------------
# Multipart uploads, DeleteObjects, append
# ---------------------------------------------------------------------------

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
    assert _keys(_list(c, disk)) == [key]
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
    assert _keys(_list(c, disk)) == [] and _prefixes(_list(c, disk, delimiter="/")) == []
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
    assert status == 400 and _error_code(body) == "EntityTooLarge"


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
    assert _prefixes(root) == ["a/", "c/"]
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
    assert _keys(_list(client, disk)) == ["d"]

    r = delete(["d", "gone"], quiet=True)
    assert r.status_code == 200
    root = ET.fromstring(r.content)
    assert list(root) == []
    assert _keys(_list(client, disk)) == []

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
