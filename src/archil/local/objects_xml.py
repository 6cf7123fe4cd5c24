"""The S3 XML of the local object gateway.

:class:`S3Error` and its ``<Error>`` document (:func:`s3_error_response`),
escaping for XML 1.0, the result documents the routes answer with, and the
helpers that read the elements of a request's XML document.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape as _xml_escape

from starlette.responses import Response

if TYPE_CHECKING:
    from .server import ControlPlane

__all__ = ["S3Error", "escape", "s3_error_response"]

_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_MALFORMED_XML = (
    "The XML you provided was not well-formed or did not validate against our published schema."
)
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escape(text: str) -> str:
    """XML-escape ``text``, replacing characters XML 1.0 cannot carry with U+FFFD."""
    return _xml_escape(_XML_INVALID.sub("\ufffd", text))


class S3Error(Exception):
    """An error answered as an S3 XML ``<Error>`` document."""

    def __init__(self, status: int, code: str, message: str, resource: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.resource = resource


def s3_error_response(
    status: int, code: str, message: str, resource: str | None = None, request_id: str | None = None
) -> Response:
    """An S3 XML error response."""
    parts = [f"<Code>{escape(code)}</Code>", f"<Message>{escape(message)}</Message>"]
    if resource:
        parts.append(f"<Resource>{escape(resource)}</Resource>")
    if request_id:
        parts.append(f"<RequestId>{escape(request_id)}</RequestId>")
    body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error>' + "".join(parts) + "</Error>"
    return Response(body, status_code=status, media_type="application/xml")


def _iso(ts: float) -> str:
    dt = datetime.fromtimestamp(ts, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _el(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def _xml_doc(root: str, inner: Sequence[str]) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<{root} xmlns="{_NS}">' + "".join(inner) + f"</{root}>"
    )
    return Response(body, media_type="application/xml")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _malformed() -> S3Error:
    return S3Error(400, "MalformedXML", _MALFORMED_XML)


def _owner(plane: ControlPlane) -> list[str]:
    who = f"<ID>{escape(plane.organization)}</ID><DisplayName>{escape(plane.organization)}</DisplayName>"
    return [f"<Initiator>{who}</Initiator>", f"<Owner>{who}</Owner>"]
