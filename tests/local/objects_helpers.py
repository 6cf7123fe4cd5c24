"""Helpers of the object API tests: S3 listings, error codes and a plain client."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

import httpx

from archil.local.embedded import LocalServer

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
Raw = Callable[..., tuple[int, bytes]]
"""The ``raw`` fixture: a request sent as bytes, answered with its status and body."""


def client_fresh(server: LocalServer) -> httpx.Client:
    """A client of ``server`` with its API key and no proxy settings from the environment."""
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": server.api_key}, trust_env=False
    )


def list_objects(client: httpx.Client, disk: str, **params: str | int) -> ET.Element:
    """The ListObjectsV2 answer for ``disk``, checked to be a 200 XML document."""
    r = client.get(f"/s3/{disk}", params={"list-type": 2, **params})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/xml")
    return ET.fromstring(r.content)


def keys_of(root: ET.Element) -> list[str]:
    """The object keys of a listing."""
    return [c.findtext(f"{NS}Key") or "" for c in root.findall(f"{NS}Contents")]


def prefixes_of(root: ET.Element) -> list[str]:
    """The common prefixes of a listing."""
    return [c.findtext(f"{NS}Prefix") or "" for c in root.findall(f"{NS}CommonPrefixes")]


def error_code(body: bytes) -> str:
    """The ``Code`` of an S3 error document."""
    return ET.fromstring(body).findtext("Code") or ""
