"""The S3-compatible object API and the directory listing of the local server."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

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
    assert r.status_code == 404 and error_code(r.content) == "NoSuchKey"
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
    assert r.status_code == 416 and error_code(r.content) == "InvalidRange"


def test_content_md5_is_checked(server: LocalServer, client: httpx.Client, disk: str) -> None:
    good = base64.b64encode(hashlib.md5(b"hello").digest()).decode()
    r = client.put(f"/s3/{disk}/m", content=b"hello", headers={"Content-MD5": good})
    assert r.status_code == 200
    r = client.put(f"/s3/{disk}/n", content=b"hullo", headers={"Content-MD5": good})
    assert r.status_code == 400 and error_code(r.content) == "BadDigest"
    assert not (server.data_dir / "disks" / disk / "n").exists()


def test_missing_disk_is_no_such_bucket(client: httpx.Client) -> None:
    for r in (
        client.get("/s3/dsk-0000000000000000/k"),
        client.put("/s3/dsk-0000000000000000/k", content=b"x"),
        client.get("/s3/dsk-0000000000000000", params={"list-type": 2}),
        client.delete("/s3/dsk-0000000000000000/k"),
    ):
        assert r.status_code == 404 and error_code(r.content) == "NoSuchBucket"
    assert client.head("/s3/dsk-0000000000000000").status_code == 404


def test_listing(client: httpx.Client, disk: str) -> None:
    keys = ["a/1", "a/2", "a/b/3", "a-c", "a0", "b", "c/d/e/f", "z z/é"]
    for k in keys:
        assert client.put(f"/s3/{disk}/{k}", content=k.encode()).status_code == 200
    client.put(f"/s3/{disk}/empty-dir/", content=b"")

    root = list_objects(client, disk)
    assert keys_of(root) == sorted(keys)
    assert root.findtext(f"{NS}KeyCount") == str(len(keys))
    assert root.findtext(f"{NS}IsTruncated") == "false"
    assert root.findtext(f"{NS}Name") == disk
    first = root.find(f"{NS}Contents")
    assert first is not None
    assert first.findtext(f"{NS}ETag") == f'"{hashlib.md5(b"a-c").hexdigest()}"'
    assert first.findtext(f"{NS}Size") == "3"
    assert first.findtext(f"{NS}StorageClass") == "STANDARD"
    assert (first.findtext(f"{NS}LastModified") or "").endswith("Z")

    root = list_objects(client, disk, delimiter="/")
    assert keys_of(root) == ["a-c", "a0", "b"]
    assert prefixes_of(root) == ["a/", "c/", "z z/"]

    root = list_objects(client, disk, prefix="a/", delimiter="/")
    assert keys_of(root) == ["a/1", "a/2"]
    assert prefixes_of(root) == ["a/b/"]
    assert keys_of(list_objects(client, disk, prefix="a/")) == ["a/1", "a/2", "a/b/3"]
    assert keys_of(list_objects(client, disk, prefix="a")) == ["a-c", "a/1", "a/2", "a/b/3", "a0"]
    assert keys_of(list_objects(client, disk, prefix="nothing")) == []
    assert keys_of(list_objects(client, disk, **{"start-after": "b"})) == ["c/d/e/f", "z z/é"]

    root = list_objects(client, disk, prefix="c/", delimiter="/")
    assert keys_of(root) == [] and prefixes_of(root) == ["c/d/"]

    root = list_objects(client, disk, **{"encoding-type": "url", "prefix": "z"})
    assert keys_of(root) == ["z%20z/%C3%A9"]


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
        root = list_objects(client, disk, **params)
        got = keys_of(root) + prefixes_of(root)
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
        assert error_code(r.content) == "InvalidArgument"
    root = list_objects(client, disk, **{"max-keys": 0})
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
            assert error_code(body) == "InvalidArgument"
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
        assert error_code(r.content) == "InvalidArgument"
    for key in ("link/secret", "file-link"):
        r = client.get(f"/s3/{disk}/{key}")
        assert r.status_code == 400, key
        assert b"top secret" not in r.content
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "top secret"
    assert client.get(f"/s3/{disk}/ok-link/real").content == b"fine"
    assert keys_of(list_objects(client, disk)) == ["inside/real"]
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
    assert r.status_code == 400 and error_code(r.content) == "InvalidArgument"
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
