"""TLS for both halves: warnings for a transport that would expose the API key, and the
verifying SSL context every client of this process shares."""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import threading
import warnings
from typing import Any
from urllib.parse import urlsplit

from ._errors import InsecureTransportWarning

__all__ = ["insecure_reasons", "is_loopback_host", "shared_ssl_context", "warn_if_insecure"]

logger = logging.getLogger("archil")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 in brackets or not) is this machine only."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _ssl_contexts(http_client: Any) -> list[ssl.SSLContext]:
    """The SSL contexts of an ``httpx`` client's transports (its own and its mounts')."""
    transports = [getattr(http_client, "_transport", None)]
    transports += list(getattr(http_client, "_mounts", {}).values())
    contexts = []
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        context = getattr(pool, "_ssl_context", None)
        if isinstance(context, ssl.SSLContext):
            contexts.append(context)
    return contexts


def insecure_reasons(urls: list[str], http_client: Any | None) -> list[str]:
    """Why requests to ``urls`` through ``http_client`` would expose the key (empty: they would not)."""
    reasons = []
    for url in dict.fromkeys(urls):
        parts = urlsplit(url)
        if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            reasons.append(f"{url} is plain HTTP to another host: the API key travels unencrypted")
    if http_client is not None:
        for context in _ssl_contexts(http_client):
            if context.verify_mode == ssl.CERT_NONE or not context.check_hostname:
                reasons.append(
                    "the http_client does not verify TLS certificates (verify=False): "
                    "anyone on the network path can read the API key"
                )
                break
    return reasons


def warn_if_insecure(urls: list[str], http_client: Any | None, *, stacklevel: int = 4) -> None:
    """Warn (:class:`~archil.InsecureTransportWarning`, and on the ``archil`` logger) if insecure."""
    for reason in insecure_reasons(urls, http_client):
        logger.warning("insecure connection to the control plane: %s", reason)
        warnings.warn(reason, InsecureTransportWarning, stacklevel=stacklevel)


_contexts: dict[tuple[str | None, str | None], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def shared_ssl_context() -> ssl.SSLContext:
    """The verifying SSL context the clients of this process share, made on first use.

    It is the one ``httpx`` makes by default (the CA file or directory named by
    ``SSL_CERT_FILE`` or ``SSL_CERT_DIR``, else certifi's bundle), one per value of
    those. Making one loads the CA bundle, about 25 ms of CPU: a client opened per
    call (``fn.remote.aio()`` opens one) would otherwise pay that each time.
    """
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    context = _contexts.get(key)
    if context is None:
        with _contexts_lock:
            context = _contexts.get(key)
            if context is None:
                import httpx

                context = httpx.create_ssl_context()
                _contexts[key] = context
    return context
