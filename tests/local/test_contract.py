"""The local control plane holds to ``docs/control-plane.openapi.yaml``.

Every operation of the document is called on a running server; each answer's
status must be documented for the operation and its body must validate
against the documented schema (openapi-core does the validation). The
requests are checked against the document too.
"""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate as validate_spec

from archil.local.embedded import LocalServer

pytestmark = pytest.mark.filterwarnings("ignore:Use of allowEmptyValue:DeprecationWarning")

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "control-plane.openapi.yaml"
# The public specification of Archil's control plane, kept in the project.
REFERENCE_PATH = SPEC_PATH.parent / "reference" / "archil-control-plane-openapi.yml"
METHODS = ("get", "put", "post", "delete", "patch", "head")

_XML_LISTS = {"Contents", "CommonPrefixes", "Part", "Upload", "Deleted", "Error", "Object"}
_XML_INTS = {
    "KeyCount",
    "MaxKeys",
    "Size",
    "PartNumber",
    "MaxParts",
    "MaxUploads",
    "PartNumberMarker",
    "NextPartNumberMarker",
}
_XML_BOOLS = {"IsTruncated", "Quiet"}
# S3 tells operations on one path apart by a sub-resource in the query string; the
# document keys them the way AWS's own S3 description does: "/{Bucket}/{Key}?uploads".
_S3_SUBRESOURCES = (
    ("uploads",),
    ("partNumber", "uploadId"),
    ("uploadId",),
    ("delete",),
    ("append",),
)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _documented_path(url: httpx.URL) -> str:
    """The request's path as the document keys it (an S3 sub-resource appended)."""
    if not url.path.startswith("/s3/"):
        return url.path
    for names in _S3_SUBRESOURCES:
        if all(name in url.params for name in names):
            return url.path + "?" + "&".join(names)
    return url.path


def _xml_value(element: ET.Element) -> Any:
    children = list(element)
    name = _local(element.tag)
    if not children:
        text = element.text or ""
        if name in _XML_INTS and text.isdigit():
            return int(text)
        if name in _XML_BOOLS and text in ("true", "false"):
            return text == "true"
        return text
    obj: dict[str, Any] = {}
    for child in children:
        key = _local(child.tag)
        value = _xml_value(child)
        if key in _XML_LISTS:
            obj.setdefault(key, []).append(value)
        else:
            obj[key] = value
    return obj


def xml_loads(value: bytes, **parameters: str) -> Any:
    """S3 XML documents as the data model their schema describes."""
    root = ET.fromstring(value)
    if not list(root) and not (root.text or "").strip():
        return {}  # an empty document, e.g. a quiet <DeleteResult/>
    return _xml_value(root)


def ndjson_loads(value: bytes, **parameters: str) -> Any:
    """A JSON-lines stream as the array of its lines."""
    return [json.loads(line) for line in value.decode("utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def spec_dict() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return data


@pytest.fixture(scope="module")
def openapi(spec_dict: dict[str, Any]) -> OpenAPI:
    config = Config(
        extra_media_type_deserializers={
            "application/x-ndjson": ndjson_loads,
            "application/xml": xml_loads,
        }
    )
    return OpenAPI.from_dict(spec_dict, config=config)


def test_the_document_is_valid_openapi_3_1(spec_dict: dict[str, Any]) -> None:
    assert spec_dict["openapi"].startswith("3.1")
    validate_spec(spec_dict)


# The live control plane's compute half, as published in archil-openapi 0.0.61
# (archil_openapi/api/sandboxes/*.py): (method, path, operationId).
LIVE_OPERATIONS = {
    ("post", "/api/images", "createImage"),
    ("get", "/api/images/{image_id}", "getImage"),
    ("post", "/api/sandboxes", "createSandbox"),
    ("get", "/api/sandboxes", "listSandboxes"),
    ("get", "/api/sandboxes/{sid}", "getSandbox"),
    ("delete", "/api/sandboxes/{sid}", "deleteSandbox"),
    ("post", "/api/sandboxes/{sid}/start", "startSandbox"),
    ("post", "/api/sandboxes/{sid}/stop", "stopSandbox"),
    ("post", "/api/sandboxes/{sid}/pause", "pauseSandbox"),
    ("post", "/api/sandboxes/{sid}/resume", "resumeSandbox"),
    ("post", "/api/sandboxes/{sid}/fork", "forkSandbox"),
    ("post", "/api/sandboxes/{sid}/timeout", "setSandboxTimeout"),
    ("get", "/api/sandboxes/{sid}/ports", "listSandboxPorts"),
    ("put", "/api/sandboxes/{sid}/ports/{port}", "exposeSandboxPort"),
    ("delete", "/api/sandboxes/{sid}/ports/{port}", "deleteSandboxPort"),
    ("post", "/api/sandboxes/{sid}/connections", "createSandboxConnection"),
}


def _marker(op: dict[str, Any]) -> str | None:
    if op.get("x-archil-extension") is True:
        return "extension"
    source = op.get("x-archil-source")
    return str(source) if source is not None else None


def test_every_operation_is_real_or_marked(spec_dict: dict[str, Any]) -> None:
    reference = yaml.safe_load(REFERENCE_PATH.read_text())
    real = {(p, m) for p, ops in reference["paths"].items() for m in ops if m in METHODS}
    live = {(p, m): op_id for m, p, op_id in LIVE_OPERATIONS}
    for path, ops in spec_dict["paths"].items():
        for method, op in ops.items():
            if method not in METHODS:
                continue
            marker = _marker(op)
            if (path, method) in real:
                assert marker is None, (method, path)
                assert op["operationId"] == reference["paths"][path][method]["operationId"]
            elif (path, method) in live:
                assert marker == "archil-openapi 0.0.61", (method, path)
                assert op["operationId"] == live[(path, method)], (method, path)
            elif path.startswith("/s3"):
                assert marker in ("s3-gateway", "extension"), (method, path)
            else:
                assert marker == "extension", (method, path)
            if method == "post":
                refs = [p.get("$ref", "") for p in op.get("parameters", [])]
                assert "#/components/parameters/IdempotencyKey" in refs, (method, path)
    assert real <= {(p, m) for p, ops in spec_dict["paths"].items() for m in ops}
    assert set(live) <= {(p, m) for p, ops in spec_dict["paths"].items() for m in ops}


class Contract:
    """Validates real exchanges against the document and records which operations were seen."""

    def __init__(self, openapi: OpenAPI, spec: dict[str, Any]) -> None:
        self.openapi = openapi
        self.operations: dict[tuple[str, str], tuple[re.Pattern[str], str]] = {}
        for path, ops in spec["paths"].items():
            pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]*", re.escape(path)) + "$")
            for method, op in ops.items():
                if method in METHODS:
                    self.operations[(method, path)] = (pattern, op["operationId"])
        self.seen: dict[str, set[int]] = {}

    def operation(self, method: str, path: str) -> str:
        matches = [
            (template, op_id)
            for (m, template), (pattern, op_id) in self.operations.items()
            if m == method and pattern.match(path)
        ]
        assert matches, f"{method.upper()} {path} is not in the document"
        matches.sort(key=lambda t: t[0].count("{"))
        return matches[0][1]

    def check(self, response: httpx.Response, *, check_request: bool = True) -> httpx.Response:
        request = response.request
        url = request.url
        path = _documented_path(url)
        headers = {k: v for k, v in request.headers.items()}
        mock_request = MockRequest(
            host_url=f"{url.scheme}://{url.netloc.decode()}",
            method=request.method,
            path=path,
            args=dict(url.params),
            headers=headers,
            data=request.content if request.content else None,
            content_type=request.headers.get("content-type", "application/json"),
        )
        content_type = response.headers.get("content-type")
        mock_response = MockResponse(
            data=response.content,
            status_code=response.status_code,
            headers=dict(response.headers),
            content_type=content_type or "application/octet-stream",
        )
        self.openapi.validate_response(mock_request, mock_response)
        if check_request:
            self.openapi.validate_request(mock_request)
        assert response.headers.get("x-request-id"), "every response carries x-request-id"
        op = self.operation(request.method.lower(), path)
        self.seen.setdefault(op, set()).add(response.status_code)
        return response


@pytest.fixture
def contract(openapi: OpenAPI, spec_dict: dict[str, Any]) -> Contract:
    return Contract(openapi, spec_dict)


@pytest.fixture
def contract_server(make_server: Callable[..., LocalServer]) -> LocalServer:
    return make_server(exec_timeout=1.0)


@pytest.fixture
def c(contract_server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=contract_server.base_url,
        headers={"Authorization": contract_server.api_key},
        trust_env=False,
        timeout=30,
    ) as client:
        yield client


def test_every_operation_answers_as_documented(
    contract: Contract, contract_server: LocalServer, c: httpx.Client
) -> None:
    ck = contract.check
    idem = {"Idempotency-Key": "contract-1"}
    idem2 = {"Idempotency-Key": "contract-3"}

    ck(c.get("/healthz"))
    r = ck(c.post("/api/disks", json={"name": "contract"}, headers=idem))
    assert r.status_code == 201
    disk = r.json()["data"]["diskId"]
    assert ck(c.post("/api/disks", json={"name": "contract"})).status_code == 200
    s3 = {
        "name": "with-mount",
        "mounts": [{"type": "s3", "bucketName": "b", "accessKeyId": "AK", "secretAccessKey": "SK"}],
    }
    other = ck(c.post("/api/disks", json=s3)).json()["data"]["diskId"]
    assert ck(c.get("/api/disks", params={"limit": 1})).json()["nextCursor"]
    ck(c.get("/api/disks", params={"name": "contract"}))
    ck(c.get(f"/api/disks/{disk}"))

    user = ck(
        c.post(f"/api/disks/{disk}/users", json={"type": "token", "nickname": "alice"})
    ).json()["data"]
    arn = "arn:aws:iam::123456789012:role/r"
    ck(c.post(f"/api/disks/{disk}/users", json={"type": "awssts", "principal": arn}))
    ck(c.delete(f"/api/disks/{disk}/users/token", params={"identifier": user["identifier"]}))
    ck(c.delete(f"/api/disks/{disk}/users/awssts", params={"identifier": arn}))

    ck(
        c.put(
            f"/s3/{disk}/hello.txt",
            content=b"hello world",
            headers={"content-type": "application/octet-stream"},
        )
    )
    ck(
        c.put(
            f"/s3/{disk}/second", content=b"2", headers={"content-type": "application/octet-stream"}
        )
    )
    ck(c.get(f"/s3/{disk}/hello.txt"))
    assert ck(c.get(f"/s3/{disk}/hello.txt", headers={"Range": "bytes=0-4"})).status_code == 206
    ck(c.head(f"/s3/{disk}/hello.txt"))
    ck(c.head(f"/s3/{disk}"))
    listing = ck(c.get(f"/s3/{disk}", params={"list-type": "2", "max-keys": "1"}))
    assert b"NextContinuationToken" in listing.content
    ck(c.get(f"/s3/{disk}", params={"list-type": "2", "delimiter": "/", "prefix": ""}))
    assert ck(c.delete(f"/s3/{disk}/second")).status_code == 204
    _exercise_multipart_and_friends(ck, c, disk)

    root = ck(c.get(f"/api/disks/{disk}/directory")).json()["data"]
    assert root["entries"]
    ck(c.get(f"/api/disks/{disk}/directory", params={"inode": 1}))

    ck(c.post(f"/api/disks/{disk}/exec", json={"command": "cat /mnt/archil/hello.txt"}))
    ck(
        c.post(
            "/api/exec",
            json={"disks": {"d": disk, "e": {"disk": disk, "readOnly": True}}, "command": "ls"},
        )
    )
    ck(c.post(f"/api/disks/{disk}/grep", json={"directory": "", "pattern": "x"}))

    token = ck(c.post("/api/tokens", json={"name": "t", "description": "d"})).json()["data"]
    ck(c.get("/api/tokens"))
    ck(c.delete(f"/api/tokens/{token['id']}"))

    image = ck(
        c.post("/api/images", json={"source": "debian:bookworm-slim"}, headers=idem2)
    ).json()["data"]
    while image["status"] == "building":
        time.sleep(0.1)
        image = ck(c.get(f"/api/images/{image['image_id']}")).json()["data"]
    assert image["status"] == "ready"
    ck(c.get(f"/api/images/{image['image_id']}"))
    listed = ck(c.get("/api/images")).json()["data"]["images"]
    assert image["image_id"] in [i["image_id"] for i in listed]

    body = {
        "name": "contract",
        "vcpu_count": 1,
        "mem_size_mib": 256,
        "image_id": image["image_id"],
        "env": {"A": "b"},
        "ports": [8080],
        "mounts": [
            {"disk_id": disk, "path": "/mnt/archil", "conditional": True},
            {"disk_id": other, "path": "/extra", "read_only": True},
        ],
        "max_ttl_seconds": 600,
        "idle_ttl_seconds": 300,
        "max_concurrent_execs": 4,
    }
    sb = ck(
        c.post(
            "/api/sandboxes",
            params={"wait": "true"},
            json=body,
            headers={"Idempotency-Key": "contract-2"},
        )
    ).json()["data"]
    assert sb["status"] == "running", sb
    sid = sb["sandbox_id"]
    ck(c.get("/api/sandboxes"))
    ck(c.get("/api/sandboxes", params={"filesystem": disk}))
    ck(c.get(f"/api/sandboxes/{sid}"))
    ck(c.post(f"/api/sandboxes/{sid}/connections"))
    ck(c.post(f"/api/sandboxes/{sid}/timeout", json={"idle_ttl_seconds": 120}))
    ck(c.put(f"/api/sandboxes/{sid}/ports/9000"))
    ck(c.get(f"/api/sandboxes/{sid}/ports"))
    assert ck(c.delete(f"/api/sandboxes/{sid}/ports/9000")).status_code == 204
    ck(c.post(f"/api/sandboxes/{sid}/pause"))
    ck(c.post(f"/api/sandboxes/{sid}/resume", params={"wait": "true"}))
    stopped = ck(c.post(f"/api/sandboxes/{sid}/stop")).json()["data"]
    fork = ck(
        c.post(
            f"/api/sandboxes/{sid}/fork",
            params={"wait": "true"},
            json={"name": "contract-fork", "checkpoint": stopped["checkpoint"]},
        )
    ).json()["data"]
    ck(c.post(f"/api/sandboxes/{fork['sandbox_id']}/stop"))
    assert ck(c.delete(f"/api/sandboxes/{fork['sandbox_id']}")).status_code == 204
    ck(c.post(f"/api/sandboxes/{sid}/start", params={"wait": "true"}))
    ck(c.post(f"/api/sandboxes/{sid}/stop"))
    assert ck(c.delete(f"/api/sandboxes/{sid}")).status_code == 204
    ck(c.delete(f"/api/disks/{disk}"))

    documented = {op_id for _, op_id in contract.operations.values()}
    assert set(contract.seen) == documented, documented - set(contract.seen)


def _xml_body(text: str) -> dict[str, Any]:
    return {
        "content": f'<?xml version="1.0" encoding="UTF-8"?>{text}'.encode(),
        "headers": {"content-type": "application/xml"},
    }


def _exercise_multipart_and_friends(
    ck: Callable[..., httpx.Response], c: httpx.Client, disk: str
) -> None:
    octets = {"content-type": "application/octet-stream"}
    ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
    r = ck(
        c.post(f"/s3/{disk}/mp.bin", params={"uploads": ""}, headers={"Idempotency-Key": "mp-1"})
    )
    upload_id = ET.fromstring(r.content).findtext(f"{ns}UploadId")
    part = {"partNumber": 1, "uploadId": upload_id}
    etag = ck(c.put(f"/s3/{disk}/mp.bin", params=part, content=b"part", headers=octets)).headers[
        "etag"
    ]
    ck(c.get(f"/s3/{disk}/mp.bin", params={"uploadId": upload_id, "max-parts": 10}))
    ck(c.get(f"/s3/{disk}", params={"uploads": "", "prefix": "mp", "max-uploads": 5}))
    body = f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part></CompleteMultipartUpload>"
    ck(c.post(f"/s3/{disk}/mp.bin", params={"uploadId": upload_id}, **_xml_body(body)))
    assert c.get(f"/s3/{disk}/mp.bin").content == b"part"
    r = ck(c.post(f"/s3/{disk}/dropped.bin", params={"uploads": ""}))
    dropped = ET.fromstring(r.content).findtext(f"{ns}UploadId")
    assert ck(c.delete(f"/s3/{disk}/dropped.bin", params={"uploadId": dropped})).status_code == 204
    ck(c.put(f"/s3/{disk}/log.txt", params={"append": "true"}, content=b"1\n", headers=octets))
    ck(c.put(f"/s3/{disk}/log.txt", params={"append": "true"}, content=b"2\n", headers=octets))
    body = "<Delete><Object><Key>log.txt</Key></Object><Object><Key>gone</Key></Object></Delete>"
    ck(c.post(f"/s3/{disk}", params={"delete": ""}, **_xml_body(body)))
    body = "<Delete><Object><Key>mp.bin</Key></Object><Quiet>true</Quiet></Delete>"
    ck(c.post(f"/s3/{disk}", params={"delete": ""}, **_xml_body(body)))


def _multipart_error_cases(c: httpx.Client, disk: str) -> list[tuple[httpx.Response, int]]:
    octets = {"content-type": "application/octet-stream"}
    ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
    r = c.post(f"/s3/{disk}/mp", params={"uploads": ""})
    upload_id = ET.fromstring(r.content).findtext(f"{ns}UploadId")
    e1 = c.put(
        f"/s3/{disk}/mp",
        params={"partNumber": 1, "uploadId": upload_id},
        content=b"a",
        headers=octets,
    ).headers["etag"]
    e2 = c.put(
        f"/s3/{disk}/mp",
        params={"partNumber": 2, "uploadId": upload_id},
        content=b"b",
        headers=octets,
    ).headers["etag"]

    def complete(parts: str) -> httpx.Response:
        return c.post(
            f"/s3/{disk}/mp",
            params={"uploadId": upload_id},
            **_xml_body(f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>"),
        )

    def p(n: int, e: str) -> str:
        return f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"

    c.put(f"/s3/{disk}/etagged", content=b"v1", headers=octets)
    no_upload = {"partNumber": 1, "uploadId": "0" * 32}
    return [
        (c.put(f"/s3/{disk}/mp", params=no_upload, content=b"x", headers=octets), 404),
        (
            c.put(
                f"/s3/{disk}/mp", params={**no_upload, "partNumber": 0}, content=b"", headers=octets
            ),
            400,
        ),
        (c.get(f"/s3/{disk}/mp", params={"uploadId": "0" * 32}), 404),
        (c.delete(f"/s3/{disk}/mp", params={"uploadId": "0" * 32}), 404),
        (complete(p(2, e2) + p(1, e1)), 400),  # InvalidPartOrder
        (complete(p(1, e2)), 400),  # InvalidPart
        (complete(p(1, e1) + p(2, e2)), 400),  # EntityTooSmall
        (c.post(f"/s3/{disk}/mp", params={"uploadId": upload_id}, **_xml_body("<Nope/>")), 400),
        (complete(""), 400),  # MalformedXML: no parts
        (c.post("/s3/dsk-0000000000000000/k", params={"uploads": ""}), 404),
        (c.get(f"/s3/{disk}", params={"uploads": "", "max-uploads": "x"}), 400),
        (c.post(f"/s3/{disk}", params={"delete": ""}, **_xml_body("<Delete/>")), 400),
        (c.post("/s3/dsk-0000000000000000", params={"delete": ""}, **_xml_body("<Delete/>")), 404),
        (
            c.put(
                f"/s3/{disk}/log",
                params={"append": "true"},
                content=b"x" * (1 << 20 | 1),
                headers=octets,
            ),
            400,
        ),
        (c.put(f"/s3/{disk}/log", params={"append": "yes"}, content=b"x", headers=octets), 400),
        (c.get(f"/s3/{disk}/etagged", headers={"If-Match": '"0123"'}), 412),
        (c.head(f"/s3/{disk}/etagged", headers={"If-Match": '"0123"'}), 412),
        (
            c.put(f"/s3/{disk}/copy", content=b"", headers={**octets, "x-amz-copy-source": "a/b"}),
            501,
        ),
    ]


def test_error_answers_are_documented(
    contract: Contract, contract_server: LocalServer, c: httpx.Client
) -> None:
    ck = contract.check
    disk = ck(c.post("/api/disks", json={"name": "errors"})).json()["data"]["diskId"]
    missing = "dsk-0000000000000000"
    nosuch = "00000000-0000-4000-8000-000000000000"

    cases: list[tuple[httpx.Response, int]] = [
        (c.post("/api/disks", json={"name": "bad name"}), 400),
        (
            c.post(
                "/api/disks", json={"name": "errors", "mounts": [{"type": "s3", "bucketName": "x"}]}
            ),
            409,
        ),
        (c.get("/api/disks", params={"limit": 0}), 400),
        (c.get(f"/api/disks/{missing}"), 404),
        (c.delete(f"/api/disks/{missing}"), 404),
        (c.post(f"/api/disks/{missing}/users", json={"type": "token", "nickname": "x"}), 404),
        (c.delete(f"/api/disks/{disk}/users/token", params={"identifier": "nope"}), 404),
        (c.post(f"/api/disks/{disk}/exec", json={"command": "sleep 30"}), 504),
        (c.post(f"/api/disks/{missing}/exec", json={"command": "true"}), 404),
        (c.post("/api/exec", json={"disks": {"a": missing}, "command": "true"}), 404),
        (c.post("/api/exec", json={"disks": {"a": disk}, "command": "sleep 30"}), 504),
        (c.get(f"/api/disks/{disk}/directory", params={"inode": 99999999}), 404),
        (c.delete("/api/tokens/tok-missing"), 404),
        (c.get("/api/images/img-0000000000000000"), 404),
        (c.post("/api/images", json={"source": "Not A Reference"}), 400),
        (c.post("/api/sandboxes", json={"mounts": [{"disk_id": missing}]}), 404),
        (c.post("/api/sandboxes", json={"max_ttl_seconds": 0}), 400),
        (c.get(f"/api/sandboxes/{nosuch}"), 404),
        (c.delete(f"/api/sandboxes/{nosuch}"), 404),
        (c.post(f"/api/sandboxes/{nosuch}/stop"), 404),
        (c.post(f"/api/sandboxes/{nosuch}/connections"), 404),
        (c.put(f"/api/sandboxes/{nosuch}/ports/80"), 404),
        (c.get(f"/s3/{disk}/missing-key"), 404),
        (c.get(f"/s3/{missing}", params={"list-type": "2"}), 404),
        (c.get(f"/s3/{disk}", params={"list-type": "2", "max-keys": "x"}), 400),
        (c.delete(f"/s3/{missing}/k"), 404),
        (c.head(f"/s3/{missing}"), 404),
        (c.head(f"/s3/{disk}/missing-key"), 404),
    ]
    cases += _multipart_error_cases(c, disk)
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.text)
        ck(response, check_request=False)
    with httpx.Client(base_url=contract_server.base_url, trust_env=False) as anonymous:
        for r in (
            anonymous.get("/api/disks"),
            anonymous.post("/api/sandboxes", json={}),
            anonymous.get(f"/s3/{disk}/k"),
            anonymous.put(f"/s3/{disk}/k", content=b"x"),
        ):
            assert r.status_code == 401
            ck(r, check_request=False)


def test_transient_failures_are_documented(
    contract: Contract, contract_server: LocalServer, c: httpx.Client
) -> None:
    disk = c.post("/api/disks", json={"name": "chaos"}).json()["data"]["diskId"]
    contract_server.set_chaos(1.0, seed=11)
    statuses: set[int] = set()
    attempts = 0
    while statuses != {429, 503} and attempts < 200:
        attempts += 1
        for method, path in (
            ("GET", "/api/disks"),
            ("GET", f"/s3/{disk}/k"),
            ("GET", "/api/sandboxes"),
        ):
            try:
                r = c.request(method, path)
            except httpx.TransportError:
                continue
            statuses.add(r.status_code)
            contract.check(r, check_request=False)
    contract_server.set_chaos(0.0)
    assert statuses == {429, 503}


def test_real_api_only_mode_serves_no_extension(
    spec_dict: dict[str, Any], make_server: Callable[..., LocalServer]
) -> None:
    server = make_server(real_api_only=True)
    extensions = [
        (method, path)
        for path, ops in spec_dict["paths"].items()
        for method, op in ops.items()
        if method in METHODS and op.get("x-archil-extension") is True and path != "/healthz"
    ]
    assert ("get", "/api/disks/{id}/directory") in extensions
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": server.api_key}, trust_env=False
    ) as c:
        disk = c.post("/api/disks", json={"name": "real"}).json()["data"]["diskId"]
        for method, path in extensions:
            url = re.sub(r"\{[^}]+\}", lambda m: disk if m.group(0) == "{id}" else "x", path)
            r = c.request(method.upper(), url)
            assert r.status_code in (404, 405), (method, path, r.status_code)
        r = c.post("/api/sandboxes", json={"kernel_variant": "extended"})
        assert r.status_code == 400 and "kernel_variant" in r.json()["error"]
        key = {"Idempotency-Key": "replayed-elsewhere"}
        first = c.post("/api/tokens", json={"name": "a"}, headers=key).json()["data"]["id"]
        second = c.post("/api/tokens", json={"name": "a"}, headers=key).json()["data"]["id"]
        assert first != second, "real-API-only mode must not replay Idempotency-Key"
        image = c.post("/api/images", json={"source": "alpine:3.20"}).json()["data"]
        assert image["status"] == "failed" and "failure_message" not in image
