"""What a process ships once and remembers: its cloudpickle on a disk, and what it
already built or prepared on a control plane."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import cloudpickle

from .calls import CONTAINER_DISK_ROOT, LIB_PREFIX

__all__ = ["FALLBACK_MODULES", "PLANS", "CloudpickleLib", "PlanCache"]


FALLBACK_MODULES = ("__init__.py", "_constants.py", "_secrets.py")
"""The part of archil a function's code may use in a container without archil installed:
``archil.is_local()`` and unpickling an ``archil.Secret``."""


class CloudpickleLib:
    """This process's cloudpickle, shipped to a disk so a sandbox can import it.

    The real control plane's Python images have no cloudpickle; the bootstrap finds
    the caller's own version on the disk (``PYTHONPATH``), so no image needs a pip
    step for it and no network is needed. Beside it, under ``fallback/``, is the
    small dependency-free part of archil (:data:`FALLBACK_MODULES`), which the
    bootstrap appends to ``sys.path`` so that an archil installed in the image
    wins. ``files`` are ``(object key, bytes)``, written before ``marker_key``,
    which says the set is complete.
    """

    def __init__(self) -> None:
        version = str(cloudpickle.__version__)
        package = Path(cloudpickle.__file__).parent
        ours = Path(__file__).parents[1]
        sources = [(f"cloudpickle/{p.name}", p) for p in sorted(package.glob("*.py"))]
        sources += [(f"fallback/archil/{name}", ours / name) for name in FALLBACK_MODULES]
        digest = hashlib.sha256()
        files: list[tuple[str, bytes]] = []
        for name, path in sources:
            data = path.read_bytes()
            digest.update(name.encode() + b"\0" + data)
            files.append((name, data))
        self.prefix = f"{LIB_PREFIX}/cloudpickle-{version}-{digest.hexdigest()[:12]}"
        self.files = [(f"{self.prefix}/{name}", data) for name, data in files]
        self.marker_key = f"{self.prefix}/.complete"

    @property
    def guest_path(self) -> str:
        """The directory to put on ``PYTHONPATH`` inside a sandbox."""
        return f"{CONTAINER_DISK_ROOT}/{self.prefix}"


class PlanCache:
    """Thread-safe memory of what this process already did on a control plane.

    Keys are ``(base URL, kind, name)``: built images (source -> image id),
    prepared sandboxes (name -> sandbox id and checkpoint), disks that have the
    cloudpickle library. Entries are dropped when the control plane says they
    are stale.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[tuple[str, str, str], Any] = {}

    def get(self, base_url: str, kind: str, name: str) -> Any:
        """The remembered value, or ``None``."""
        with self._lock:
            return self._data.get((base_url, kind, name))

    def put(self, base_url: str, kind: str, name: str, value: Any) -> None:
        """Remember ``value``."""
        with self._lock:
            self._data[(base_url, kind, name)] = value

    def drop(self, base_url: str, kind: str, name: str) -> None:
        """Forget an entry."""
        with self._lock:
            self._data.pop((base_url, kind, name), None)


PLANS = PlanCache()
"""The process-wide :class:`PlanCache` the runners share."""
