"""Processes tests start and find.

:func:`start_script` runs a script as a user would, configured for the test server.
:func:`processes_with_env` finds processes by a ``NAME=value`` marker in their
environment: sandbox processes carry ``ARCHIL_SANDBOX_ID=<id>``; tests that need their
own marker put one in the environment of what they start. Nothing here signals anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def start_script(
    path: Path, source: str, conn: dict[str, str], *args: str
) -> subprocess.Popen[str]:
    """Write ``source`` to ``path`` and run it with ``args``, pointed at the server of ``conn``.

    Its stdout and stderr come together, as text, on the returned process's ``stdout``.
    """
    path.write_text(source)
    env = {**os.environ, "ARCHIL_BASE_URL": conn["base_url"], "ARCHIL_API_KEY": conn["api_key"]}
    return subprocess.Popen(
        [sys.executable, str(path), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


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
