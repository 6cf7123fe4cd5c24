"""Constants shared by the client and the local control plane (no imports, so both can use them)."""

from __future__ import annotations

SANDBOX_DISK_PATH = "/mnt/archil"
"""Where a sandbox's sole disk mount lands when it has no ``path``."""
