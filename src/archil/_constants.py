"""Constants shared by the client and the local control plane (no imports, so both can use them)."""

from __future__ import annotations

SANDBOX_DISK_PATH = "/mnt/archil"
"""Where a sandbox's sole disk mount lands when it has no ``path``."""

REMOTE_ENV = "ARCHIL_IS_REMOTE"
"""Set to ``1`` in the environment of every call's process in a container (``archil.is_local``)."""


def is_local() -> bool:
    """``False`` in a function's container (inside ``fn.remote()``), ``True`` everywhere else.

    Code shared by a script and its functions can branch on it, for example to
    load a model from ``/mnt/archil`` only where the disk is mounted.
    """
    import os

    return os.environ.get(REMOTE_ENV) != "1"
