"""Finding the processes a test started, by a ``NAME=value`` marker in their environment.

Sandbox processes carry ``ARCHIL_SANDBOX_ID=<id>``; tests that need their own marker put
one in the environment of what they start. Nothing here signals anything.
"""

from __future__ import annotations

from pathlib import Path


def processes_with_env(*needles: str) -> list[int]:
    """Pids of the processes whose environment holds one of ``needles`` (``NAME=value``)."""
    wanted = {n.encode() for n in needles}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if environ & wanted:
            found.append(int(entry.name))
    return found
