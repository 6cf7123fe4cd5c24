"""Response decoding helpers: envelopes, error bodies, listings, merging created users."""

from __future__ import annotations

import httpx
import pytest

from archil._errors import APIError, ConflictError, NotFoundError
from archil._models import CreateDiskResult, Disk
from archil._wire import (
    decode_envelope,
    error_from_response,
    items_decoder,
    map_transport_error,
    object_url,
    parse_list_objects,
    with_created_users,
)


def response(status: int, **kwargs: object) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "http://h/api/x?a=1"), **kwargs)  # type: ignore[arg-type]


def test_envelope() -> None:
    env = decode_envelope(response(200, json={"success": True, "data": [1], "nextCursor": "c"}))
    assert (env.data, env.next_cursor, env.status_code) == ([1], "c", 200)
    assert decode_envelope(response(204)).data is None
    assert decode_envelope(response(200, json={"success": True})).data is None
    assert (
        decode_envelope(
            response(200, json={"success": True, "data": [], "nextCursor": ""})
        ).next_cursor
        is None
    )
    with pytest.raises(APIError, match="not JSON"):
        decode_envelope(response(200, text="<html>"))


def test_items_decoder() -> None:
    decode = items_decoder(Disk, "disks")
    assert decode(None) == []
    assert decode({"disks": None}) == []
    assert decode([{"id": "d", "name": "n", "status": "available"}])[0].id == "d"
    with pytest.raises(APIError):
        decode("nope")


def test_error_bodies() -> None:
    e = error_from_response(
        response(409, json={"success": False, "error": "exists", "code": "DISK_EXISTS"})
    )
    assert isinstance(e, ConflictError)
    assert (e.status_code, e.message, e.code, e.method, e.url) == (
        409,
        "exists",
        "DISK_EXISTS",
        "GET",
        "http://h/api/x",
    )
    nested = error_from_response(response(404, json={"error": {"message": "gone", "code": "X"}}))
    assert isinstance(nested, NotFoundError) and (nested.message, nested.code) == ("gone", "X")
    xml = error_from_response(
        response(
            404,
            content=b'<?xml version="1.0"?><Error xmlns="urn:x"><Code>NoSuchKey</Code><Message>missing</Message></Error>',
        )
    )
    assert (xml.code, xml.message) == ("NoSuchKey", "missing")
    empty = error_from_response(response(503))
    assert empty.message == "Service Unavailable"
    broken = error_from_response(response(500, content=b"<Error><Code>"))
    assert broken.message == "Internal Server Error"


def test_transport_errors_are_mapped() -> None:
    request = httpx.Request("GET", "http://h/api/disks?x=1")
    timeout = map_transport_error(httpx.ReadTimeout("slow", request=request))
    assert type(timeout).__name__ == "APITimeoutError"
    assert timeout.url == "http://h/api/disks"
    refused = map_transport_error(httpx.ConnectError("refused"))
    assert type(refused).__name__ == "APIConnectionError"
    assert "refused" in str(refused)


def test_object_url_quoting() -> None:
    assert (
        object_url("http://h/s3", "dsk-1", "a b/c#d?.txt") == "http://h/s3/dsk-1/a%20b/c%23d%3F.txt"
    )
    assert object_url("http://h/s3", "dsk-1") == "http://h/s3/dsk-1"


def test_listing_without_namespace_and_truncation() -> None:
    page = parse_list_objects(
        b"<ListBucketResult><Contents><Key>k</Key><Size>7</Size></Contents>"
        b"<IsTruncated>false</IsTruncated><NextContinuationToken>ignored</NextContinuationToken>"
        b"</ListBucketResult>"
    )
    assert [(o.key, o.size, o.etag) for o in page.objects] == [("k", 7, None)]
    assert page.next_continuation_token is None
    with pytest.raises(APIError):
        parse_list_objects(b"not xml")


def test_with_created_users_merges_and_appends() -> None:
    disk = Disk.model_validate(
        {
            "id": "d",
            "name": "n",
            "status": "available",
            "authorizedUsers": [{"type": "token", "nickname": "default", "identifier": "u1"}],
        }
    )
    created = CreateDiskResult.model_validate(
        {
            "diskId": "d",
            "authorizedUsers": [
                {"type": "token", "nickname": "default", "identifier": "u1", "token": "t-1"},
                {"type": "token", "nickname": "other", "token": "t-2"},
            ],
        }
    )
    merged = with_created_users(disk, created)
    tokens = [u.token.get_secret_value() if u.token else None for u in merged.authorized_users]
    assert tokens == ["t-1", "t-2"]
    assert disk.authorized_users[0].token is None
