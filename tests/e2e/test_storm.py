"""A small chaos storm (``scripts/chaos_storm.py --scale 0.1``) passes all of its checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "chaos_storm.py"


def test_a_small_storm_with_a_crash_leaves_no_duplicate_loss_or_leftover() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--scale", "0.1", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = proc.stdout + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    assert "SIGKILL the server" in proc.stdout
    assert "no duplicates, no lost or wrong results, nothing left behind" in proc.stdout
    ok = sum(
        int(line.split("ok")[1].split()[0])
        for line in proc.stdout.splitlines()
        if line.startswith("  ") and " ok " in line
    )
    assert ok >= 60, report  # most of the 80 operations got through the storm
