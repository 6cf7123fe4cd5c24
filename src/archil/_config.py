"""Resolution of the client's configuration: API key, region, base URLs, timeouts.

Precedence: explicit argument, then environment variable, then default.
``ARCHIL_API_KEY``, ``ARCHIL_REGION``, ``ARCHIL_BASE_URL`` and
``ARCHIL_OBJECT_URL`` are read here. With neither an API key nor a base URL
configured, the embedded local control plane (``archil[local]``) is started
and used, so the SDK works offline with no account.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from ._errors import ConfigurationError

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_REGION",
    "DEFAULT_TIMEOUT",
    "LONG_POLL_TIMEOUT",
    "REGIONS",
    "ClientConfig",
    "resolve_config",
]

REGIONS: dict[str, str] = {
    "aws-us-east-1": "https://control.green.us-east-1.aws.prod.archil.com",
    "aws-us-west-2": "https://control.green.us-west-2.aws.prod.archil.com",
    "aws-eu-west-1": "https://control.green.eu-west-1.aws.prod.archil.com",
    "gcp-us-central1": "https://control.blue.us-central1.gcp.prod.archil.com",
}
DEFAULT_REGION = "aws-us-east-1"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 3
LONG_POLL_TIMEOUT = 300.0


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client needs to reach a control plane. The key never shows in ``repr``."""

    api_key: SecretStr = field(repr=False)
    base_url: str
    object_base_url: str
    region: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    local: bool = False

    def with_options(
        self, *, timeout: float | None = None, max_retries: int | None = None
    ) -> ClientConfig:
        """A copy with another timeout and/or retry budget."""
        return replace(
            self,
            timeout=self.timeout if timeout is None else _check_timeout(timeout),
            max_retries=self.max_retries if max_retries is None else _check_retries(max_retries),
        )


def _check_timeout(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {value!r}")
    return float(value)


def _check_retries(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"max_retries must be a non-negative integer, got {value!r}")
    return value


def object_url_for(base_url: str) -> str:
    """The object (S3-compatible) gateway for a control-plane URL.

    The cloud's gateway is the control host with ``control.`` swapped for ``s3.``;
    any other control plane (the local one) serves it under ``/s3``.
    """
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if host.startswith("control."):
        netloc = parts.netloc.replace("control.", "s3.", 1)
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return base_url.rstrip("/") + "/s3"


def _clean_url(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{name} must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def resolve_config(
    *,
    api_key: str | None = None,
    region: str | None = None,
    base_url: str | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    allow_local: bool = True,
) -> ClientConfig:
    """Build a :class:`ClientConfig` from arguments, environment and defaults."""
    key = api_key if api_key is not None else os.environ.get("ARCHIL_API_KEY") or None
    if api_key is not None and not api_key.strip():
        raise ConfigurationError("api_key must not be empty")
    url = base_url if base_url is not None else os.environ.get("ARCHIL_BASE_URL") or None
    reg = region if region is not None else os.environ.get("ARCHIL_REGION") or None
    t = _check_timeout(timeout) if timeout is not None else _env_timeout()
    r = _check_retries(max_retries) if max_retries is not None else _env_retries()

    if key is None and url is None:
        if allow_local and os.environ.get("ARCHIL_NO_LOCAL", "") in ("", "0"):
            return _local_config(timeout=t, max_retries=r)
        raise ConfigurationError(
            "no API key: pass api_key=... or set the ARCHIL_API_KEY environment variable"
        )
    if key is None:
        raise ConfigurationError(
            f"no API key for {url}: pass api_key=... or set the ARCHIL_API_KEY environment variable"
        )
    if url is None:
        reg = reg or DEFAULT_REGION
        if reg not in REGIONS:
            raise ConfigurationError(
                f"unknown region {reg!r} (ARCHIL_REGION): choose one of {', '.join(sorted(REGIONS))}"
            )
        url = REGIONS[reg]
    url = _clean_url(url, "base_url (ARCHIL_BASE_URL)")
    obj = os.environ.get("ARCHIL_OBJECT_URL") or object_url_for(url)
    return ClientConfig(
        api_key=SecretStr(key),
        base_url=url,
        object_base_url=_clean_url(obj, "ARCHIL_OBJECT_URL"),
        region=reg,
        timeout=t,
        max_retries=r,
    )


def _env_timeout() -> float:
    """``ARCHIL_TIMEOUT`` (seconds), checked; the default when unset."""
    raw = os.environ.get("ARCHIL_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        return _check_timeout(float(raw))
    except ValueError:
        raise ConfigurationError(
            f"ARCHIL_TIMEOUT must be a positive number of seconds, got {raw!r}"
        ) from None


def _env_retries() -> int:
    """``ARCHIL_MAX_RETRIES``, checked; the default when unset."""
    raw = os.environ.get("ARCHIL_MAX_RETRIES", "").strip()
    if not raw:
        return DEFAULT_MAX_RETRIES
    try:
        return _check_retries(int(raw))
    except ValueError:
        raise ConfigurationError(
            f"ARCHIL_MAX_RETRIES must be a non-negative integer, got {raw!r}"
        ) from None


def _local_config(*, timeout: float, max_retries: int) -> ClientConfig:
    try:
        from .local.embedded import ensure_embedded
    except ImportError as exc:  # the [local] extra is not installed
        raise ConfigurationError(
            "no API key: set ARCHIL_API_KEY (or pass api_key=...) to use Archil's cloud, "
            "or install the local control plane with `pip install 'archil[local]'` "
            f"to run everything on this machine ({exc})"
        ) from None
    server = ensure_embedded()
    return ClientConfig(
        api_key=SecretStr(server.api_key),
        base_url=server.base_url,
        object_base_url=object_url_for(server.base_url),
        region="local",
        timeout=timeout,
        max_retries=max_retries,
        local=True,
    )
