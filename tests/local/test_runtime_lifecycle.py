"""The sandbox runtime engine: timeouts, stops, failures, process mode and user namespaces.

Run it inside ``unshare --pid --fork --mount --mount-proc`` while developing, so that a bug
in a kill path can only reach processes of that namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from runtime_harness import (  # tests/local, which pytest puts on the path
    Harness,
    env_of,
    marker_pids,
    pid_alive,
    ppid_of,
    wait_for,
)

from archil.local.cgroups import Cgroups
from archil.local.runtime import (
    BootError,
    Environment,
    Runtime,
    SpawnError,
)
from archil.local.spec import ExitInfo, ImageEnv, MountSpec

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


# -- timeouts, cancel, stop -----------------------------------------------------------------

TREE = (
    "trap '' TERM; "
    "(trap '' TERM; setsid sh -c \"trap '' TERM; sleep 1000 & sleep 1000\" &); "
    "sh -c 'sleep 1000 & sleep 1000' & sleep 1000"
)


def test_timeout_seconds(h: Harness) -> None:
    env = h.boot()
    t0 = time.monotonic()
    info = h.run(env, "trap '' TERM; sleep 30", timeout_seconds=1).wait()
    assert info == ExitInfo("timed_out", None, "timed out after 1 s")
    assert 2.5 < time.monotonic() - t0 < 10, "SIGTERM first, SIGKILL 2 s later"
    assert h.run(env, "sleep 30", timeout_seconds=1).wait().status == "timed_out"


def test_cancel_kills_the_tree_but_not_the_rest(h: Harness) -> None:
    env = h.boot()
    bystander = h.start(env, "sleep 1000")
    assert wait_for(lambda: len(marker_pids(env.sandbox_id)) == 2)
    others = marker_pids(env.sandbox_id)
    p = h.start(env, TREE)
    assert wait_for(lambda: len(marker_pids(env.sandbox_id)) == 10)
    p.handle.cancel()
    assert p.wait() == ExitInfo("cancelled", None, "cancelled")
    assert wait_for(lambda: marker_pids(env.sandbox_id) == others)
    assert not bystander.done.is_set()


def test_signal_reaches_the_whole_tree(h: Harness) -> None:
    env = h.boot()
    p = h.start(env, "sleep 1000 & setsid sleep 1000 & wait")
    assert wait_for(lambda: len(marker_pids(env.sandbox_id)) == 3)
    p.handle.signal(signal.SIGTERM)
    assert p.wait().status == "failed"
    assert wait_for(lambda: not marker_pids(env.sandbox_id))


def test_stop_leaves_nothing_behind(h: Harness) -> None:
    env = h.boot()
    p = h.start(env, TREE)
    assert wait_for(lambda: len(marker_pids(env.sandbox_id)) == 8)
    init, helper = env.init_pid, ppid_of(env.init_pid)
    t0 = time.monotonic()
    env.stop(0.3)
    assert time.monotonic() - t0 < 5
    assert not marker_pids(env.sandbox_id)
    assert not pid_alive(init) and not pid_alive(helper)
    assert not env.alive
    assert h.ends[env.sandbox_id] == [None]
    assert p.wait().status == "failed"
    assert not list((h.rt._root / "roots").iterdir())
    env.stop(0.3)
    with pytest.raises(SpawnError):
        h.start(env, "true")


def test_stop_is_graceful_first(h: Harness) -> None:
    disk = h.disk()
    env = h.boot()
    p = h.start(env, "trap 'echo bye > /mnt/archil/term; exit 0' TERM; sleep 1000 & wait")
    assert wait_for(lambda: len(marker_pids(env.sandbox_id)) == 2)
    env.stop(5.0)
    assert (disk / "term").read_text() == "bye\n"
    assert p.wait() == ExitInfo("completed", 0, None)


def test_kill_is_immediate(h: Harness) -> None:
    env = h.boot()
    p = h.start(env, TREE)
    assert wait_for(lambda: len(marker_pids(env.sandbox_id)) == 8)
    env.kill()
    assert not marker_pids(env.sandbox_id) and not env.alive
    assert h.ends[env.sandbox_id] == [None]
    assert p.wait().status == "failed"


def test_freeze_and_thaw(h: Harness) -> None:
    if not h.rt.capabilities["freezer"]:
        pytest.skip("no freezer cgroup here")
    _check_freeze(h, h.boot())


def _check_freeze(h: Harness, env: Environment) -> None:
    """A counter printed every 10 ms stops while the sandbox is frozen (output: no disk I/O)."""
    p = h.start(env, "i=0; while :; do i=$((i+1)); echo $i; sleep 0.01; done")

    def count() -> int:
        return len(p.out().split())

    assert wait_for(lambda: count() > 2)
    env.freeze()
    time.sleep(0.1)
    frozen = count()
    time.sleep(0.3)
    assert count() == frozen
    with pytest.raises(SpawnError, match="paused"):
        h.start(env, "true")
    env.thaw()
    assert wait_for(lambda: count() > frozen + 2, 5)
    env.freeze()
    env.stop(0.5)


# -- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["agent", "helper"])
def test_agent_crash_ends_the_sandbox(h: Harness, victim: str) -> None:
    env = h.boot()
    p = h.start(env, "sleep 1000")
    os.kill(env.init_pid if victim == "agent" else ppid_of(env.init_pid), signal.SIGKILL)
    assert wait_for(lambda: bool(h.ends[env.sandbox_id]))
    assert h.ends[env.sandbox_id] == ["the sandbox's init was killed by signal SIGKILL"]
    info = p.wait()
    assert info.status == "failed" and "the sandbox ended" in (info.exit_reason or "")
    assert not env.alive and not marker_pids(env.sandbox_id)


def test_zygote_crash(tmp_path: Path, h: Harness) -> None:
    rt = Runtime(tmp_path / "rt")
    try:
        env = h.boot(rt)
        h.start(env, "sleep 1000")
        zygote = rt.zygote_pid
        assert zygote is not None
        os.kill(zygote, signal.SIGKILL)
        assert wait_for(lambda: bool(h.ends[env.sandbox_id]))
        assert h.ends[env.sandbox_id] == ["the runtime's zygote process died"]
        assert wait_for(lambda: not marker_pids(env.sandbox_id))
        again = h.boot(rt)
        assert rt.zygote_pid not in (None, zygote)
        assert h.run(again, "echo back").text() == "back\n"
    finally:
        rt.shutdown(grace=0.5)


def test_server_death_takes_every_sandbox_with_it(tmp_path: Path, ns_rt: Runtime) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    sid = f"crash-{uuid.uuid4().hex[:8]}"
    ids = [f"{sid}-0", f"{sid}-1"]
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from archil.local.layers import LayerStore
        from archil.local.runtime import Runtime
        from archil.local.spec import ImageEnv, MountSpec, ProcessSpec, SandboxSpec
        rt = Runtime(Path({str(tmp_path / "rt")!r}))
        layers = LayerStore(Path({str(tmp_path / "layers")!r}))
        for sid in {ids!r}:
            spec = SandboxSpec(sandbox_id=sid, hostname="x", root=layers.new_session(sid),
                               image=ImageEnv(image_id="h", source="h"),
                               mounts=(MountSpec(Path({str(disk)!r}), "/mnt/archil"),))
            env = rt.boot(spec, on_end=lambda r: None)
            env.spawn(ProcessSpec(command="sleep 1000 & setsid sleep 1000 & sleep 1000"),
                      on_output=lambda s, d: None, on_exit=lambda i: None)
        print("ready", flush=True)
        time.sleep(1000)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert wait_for(lambda: all(len(marker_pids(i)) == 4 for i in ids))
        proc.kill()
        proc.wait()
        assert wait_for(lambda: not any(marker_pids(i) for i in ids), 5)
    finally:
        proc.kill()
        proc.wait()
        for i in ids:
            for pid in marker_pids(i):
                os.kill(pid, signal.SIGKILL)
    # The dead server could not remove its cgroups: the next runtime's clean-up does.
    cgroups = Cgroups.detect()
    left = [d for base in cgroups.bases for d in base.glob(f"o-*/{sid}-*")]
    if cgroups.memory_limit:
        assert left, "the crashed runtime's cgroups should still be there"
    cgroups.cleanup_stale()
    assert not any(d.exists() for d in left)
    lock_dir = Path(tempfile.gettempdir()) / f"archil-cgroups-{os.geteuid()}"
    for owner in {d.parent.name for d in left}:
        (lock_dir / f"{owner}.lock").unlink()  # a crashed runtime's lock file stays behind


def test_two_sandboxes_share_a_host_directory(h: Harness) -> None:
    disk = h.disk("shared")
    a = h.boot(mounts=(MountSpec(disk, "/mnt/archil"),))
    b = h.boot(mounts=(MountSpec(disk, "/mnt/archil"),))
    pa = h.start(a, "for i in $(seq 50); do echo a$i >> /mnt/archil/a; done; echo done")
    pb = h.start(b, "for i in $(seq 50); do echo b$i >> /mnt/archil/b; done; echo done")
    assert pa.wait().exit_code == pb.wait().exit_code == 0
    assert len((disk / "a").read_text().split()) == len((disk / "b").read_text().split()) == 50
    assert h.run(a, "wc -l < /mnt/archil/b").text().strip() == "50"


def test_user_namespace_mode(tmp_path: Path, h: Harness) -> None:
    rt = Runtime(tmp_path / "rt", user_namespace=True)
    try:
        if not rt.capabilities["user_namespace"]:
            pytest.skip(f"user namespaces do not work here: {rt.capabilities['reason']}")
        disk = h.disk()
        env = h.boot(rt)
        p = h.run(env, "cat /proc/self/uid_map; echo hi > /mnt/archil/u; id -u; echo x > /etc/y")
        assert p.wait().exit_code == 0, p.text(2)
        assert p.text().split()[:3] == ["0", str(os.getuid()), "1"]
        assert (disk / "u").read_text() == "hi\n"
    finally:
        rt.shutdown(grace=0.5)


def test_shutdown_stops_everything_in_parallel(tmp_path: Path, h: Harness) -> None:
    rt = Runtime(tmp_path / "rt")
    envs = [h.boot(rt) for _ in range(3)]
    for env in envs:
        h.start(env, TREE)
    assert wait_for(lambda: all(len(marker_pids(e.sandbox_id)) == 8 for e in envs))
    t0 = time.monotonic()
    rt.shutdown(grace=0.5)
    assert time.monotonic() - t0 < 5
    assert not any(marker_pids(e.sandbox_id) for e in envs)
    assert all(h.ends[e.sandbox_id] == [None] for e in envs)
    with pytest.raises(BootError, match="shut down"):
        h.boot(rt)


# -- process mode ---------------------------------------------------------------------------


def test_process_mode_basics(hp: Harness) -> None:
    disk = hp.disk()
    image = ImageEnv(image_id="i", source="s", host_path=("/opt/img/bin",))
    env = hp.boot(image=image)
    assert env.isolation == "process"
    p = hp.run(env, "pwd; env; echo hi > $ARCHIL_DISK_PATH/f")
    got = env_of(p)
    assert p.text().splitlines()[0] == str(disk)
    assert got["ARCHIL_DISK_PATH"] == str(disk)
    assert got["ARCHIL_ISOLATION"] == "process"
    assert got["ARCHIL_SANDBOX_TOKEN"]
    assert got["PATH"].startswith("/opt/img/bin:")
    assert (disk / "f").read_text() == "hi\n"
    (disk / "sub").mkdir()
    assert hp.run(env, "pwd", cwd="/mnt/archil/sub").text() == f"{disk}/sub\n"
    with pytest.raises(SpawnError, match="/no/such"):
        hp.start(env, "pwd", cwd="/no/such")


def test_process_mode_stop_and_cancel_leave_nothing(hp: Harness) -> None:
    env = hp.boot()
    hp.start(env, "sleep 1000")
    assert wait_for(lambda: len(marker_pids(env.sandbox_id)) == 2)
    others = marker_pids(env.sandbox_id)
    p = hp.start(env, TREE)
    assert wait_for(lambda: len(marker_pids(env.sandbox_id)) == 10)
    p.handle.cancel()
    assert p.wait().status == "cancelled"
    assert wait_for(lambda: marker_pids(env.sandbox_id) == others)
    hp.start(env, TREE)
    assert wait_for(lambda: len(marker_pids(env.sandbox_id)) == 10)
    init, helper = env.init_pid, ppid_of(env.init_pid)
    env.stop(0.3)
    assert not marker_pids(env.sandbox_id)
    assert not pid_alive(init) and not pid_alive(helper)
    assert hp.ends[env.sandbox_id] == [None]


def test_process_mode_freeze_and_thaw(hp: Harness) -> None:
    _check_freeze(hp, hp.boot())


def test_freeze_without_a_freezer_cgroup(tmp_path: Path, h: Harness) -> None:
    rt = Runtime(tmp_path / "rt", cgroups=False)
    try:
        assert rt.capabilities["freezer"] is False and rt.capabilities["memory_limit"] is False
        _check_freeze(h, h.boot(rt))
    finally:
        rt.shutdown(grace=0.5)


def test_process_mode_terminal_stdin_and_timeout(hp: Harness) -> None:
    env = hp.boot()
    tty = hp.start(env, "tty; stty size; read x; echo got $x", terminal=(90, 20))
    assert wait_for(lambda: b"20 90" in tty.out())
    tty.handle.write(b"line\n")
    assert tty.wait().status == "completed"
    assert tty.text().splitlines()[0].startswith("/dev/pts/") and "got line" in tty.text()
    cat = hp.start(env, "cat")
    cat.handle.write(b"\x00\xffdata")
    cat.handle.close_stdin()
    assert cat.wait().exit_code == 0 and cat.out() == b"\x00\xffdata"
    info = hp.run(env, "sleep 30", timeout_seconds=1).wait()
    assert info == ExitInfo("timed_out", None, "timed out after 1 s")


UNPRIVILEGED = """
import sys, threading
sys.path.insert(0, {src!r})
from pathlib import Path
from archil.local.layers import LayerStore
from archil.local.runtime import Runtime
from archil.local.spec import ImageEnv, MountSpec, ProcessSpec, SandboxSpec
base = Path({base!r})
rt = Runtime(base / "rt")
print("isolation", rt.capabilities["isolation"], rt.capabilities["user_namespace"])
spec = SandboxSpec(sandbox_id="unpriv", hostname="ubox", root=LayerStore(base / "l").new_session("u"),
                   image=ImageEnv(image_id="h", source="h"),
                   mounts=(MountSpec(base / "disk", "/mnt/archil"), MountSpec(base / "ro", "/ro", True)))
env = rt.boot(spec, on_end=lambda r: None)
out, done = dict.fromkeys((1, 2), b""), threading.Event()
def on_output(stream, data):
    out[stream] += data
env.spawn(ProcessSpec(command="id -u; cat /proc/self/uid_map; echo hi > /mnt/archil/f; "
                      "echo x > /ro/y; echo z > /etc/archil-unpriv && cat /etc/archil-unpriv"),
          on_output=on_output, on_exit=lambda i: done.set())
done.wait(10)
print(out[1].decode())
print("stderr:", out[2].decode())
env.stop(1.0)
rt.shutdown()
"""


def test_unprivileged_user_namespace(ns_rt: Runtime) -> None:
    """The runtime run by an ordinary user: a user namespace maps it to root inside."""
    python = next(
        (p for p in ("/usr/bin/python3.11", "/usr/bin/python3") if os.path.exists(p)), None
    )
    if os.geteuid() != 0 or python is None or not os.path.exists("/usr/bin/setpriv"):
        pytest.skip("needs root, setpriv and a system Python to switch to an ordinary user")
    base = Path(tempfile.mkdtemp(prefix="archil-unpriv-"))
    try:
        for d in ("disk", "ro"):
            (base / d).mkdir()
        os.chmod(base, 0o777)
        os.chown(base / "disk", 65534, 65534)
        src = str(Path(__file__).resolve().parents[2] / "src")
        script = UNPRIVILEGED.format(src=src, base=str(base))
        argv = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        proc = subprocess.run(
            [*argv, python, "-c", script], capture_output=True, text=True, timeout=60, cwd="/"
        )
        if "isolation process" in proc.stdout:
            pytest.skip(f"unprivileged user namespaces do not work here: {proc.stdout}")
        assert proc.returncode == 0, proc.stderr
        stdout, _, stderr = proc.stdout.partition("stderr:")
        assert stdout.split() == ["isolation", "namespace", "True", "0", "0", "65534", "1", "z"]
        assert "Read-only file system" in stderr
        assert (base / "disk" / "f").read_text() == "hi\n"
        assert not (base / "ro" / "y").exists()
        assert not Path("/etc/archil-unpriv").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def children_of(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(x) for x in f.read().split()}
    except OSError:
        return set()


def test_a_sandbox_is_prepared_ahead_and_cleaned_up(tmp_path: Path, h: Harness) -> None:
    rt = Runtime(tmp_path / "rt")
    try:
        env = h.boot(rt)
        zygote = rt.zygote_pid
        assert zygote is not None
        helper = ppid_of(env.init_pid)
        assert wait_for(lambda: len(children_of(zygote)) == 2), "one in use, one prepared"
        (spare,) = children_of(zygote) - {helper}
        assert wait_for(lambda: len(children_of(spare)) == 1), "the prepared agent waits"
        (spare_agent,) = children_of(spare)
        # A prepared sandbox that died is replaced, not handed out, whether its death is
        # seen before the boot or only once the boot request goes unanswered.
        os.kill(spare_agent, signal.SIGKILL)

        def spare_agents() -> set[int]:
            in_use = {ppid_of(e.init_pid) for e in h.envs if e.alive}
            return {a for c in children_of(zygote) - in_use for a in children_of(c)}

        for _ in range(4):
            again = h.boot(rt)
            assert h.run(again, "echo ok").text() == "ok\n"
            assert wait_for(lambda: bool(spare_agents()))
            for agent in spare_agents():
                os.kill(agent, signal.SIGKILL)
        everything = {zygote, *children_of(zygote)}
        everything |= {p for c in children_of(zygote) for p in children_of(c)}
    finally:
        rt.shutdown(grace=0.5)
    assert wait_for(lambda: not any(pid_alive(p) for p in everything), 5)
