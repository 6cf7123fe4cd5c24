"""Ctrl-C during fn.remote(): its sandbox is stopped and deleted, no process is left."""

from __future__ import annotations

import signal
import textwrap
import time
import uuid
from pathlib import Path

import archil
from procs import processes_with_env, start_script

SCRIPT = textwrap.dedent(
    """
    import sys
    import archil

    app = archil.App(name="interrupt", disk_id=sys.argv[1])

    @app.function(stream_logs=True)
    def sleepy():
        import time
        print("sleeping", flush=True)
        time.sleep(600)

    sleepy.remote()
    """
)


def test_ctrl_c_stops_and_deletes_the_sandbox(conn: dict[str, str], tmp_path: Path) -> None:
    disk = f"disk_{uuid.uuid4().hex[:10]}"
    proc = start_script(tmp_path / "interrupt.py", SCRIPT, conn, disk)
    client = archil.Archil(**conn)
    try:
        deadline = time.monotonic() + 60
        running: list[archil.Sandbox] = []
        while time.monotonic() < deadline and not running:
            running = [s for s in client.sandboxes.list(disk_id=disk) if s.status == "running"]
            time.sleep(0.1)
        assert running, "the sandbox never started"
        assert proc.stdout is not None
        line = proc.stdout.readline()
        while line and "sleeping" not in line:
            line = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=30)
        gone = False
        while time.monotonic() - t0 < 5:
            if not client.sandboxes.list(disk_id=disk):
                gone = True
                break
            time.sleep(0.05)
        assert gone, "the sandbox was not deleted within 5 s of Ctrl-C"
        assert proc.returncode != 0
        assert "KeyboardInterrupt" in out
        # No process of the sandbox survives.
        assert processes_with_env(f"ARCHIL_SANDBOX_ID={running[0].id}") == []
    finally:
        if proc.poll() is None:
            proc.kill()
        client.close()
