"""Per-sandbox cgroups on this machine's real hierarchies (skipped where they are not writable)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_harness import wait_for  # tests/local, which pytest puts on the path

from archil.local.cgroups import CgroupError, Cgroups, SandboxCgroup


@pytest.fixture(params=["default", "freezer-v2"])
def cgroups(request: pytest.FixtureRequest) -> Iterator[Cgroups]:
    cg = Cgroups.detect(freezer_v2=request.param == "freezer-v2")
    if not (cg.memory_limit or cg.freezer):
        pytest.skip(f"no writable cgroups here: {cg.reason}")
    if request.param == "freezer-v2" and cg.freezer_version != "v2":
        pytest.skip("no cgroup v2 hierarchy with cgroup.freeze here")
    yield cg
    cg.close()


@pytest.fixture
def sandbox(cgroups: Cgroups) -> Iterator[SandboxCgroup]:
    sc = cgroups.create(f"test-{uuid.uuid4().hex[:8]}", 64)
    yield sc
    sc.remove()
    assert not any(d.exists() for d in sc.dirs)


def start_in(procs: tuple[Path, ...], command: str) -> subprocess.Popen[bytes]:
    """A shell that joins ``procs`` and then runs ``command``."""
    joins = "".join(f"echo 0 > {p}; " for p in procs)
    return subprocess.Popen(["/bin/sh", "-c", f"{joins}exec {command}"])


def test_detection_reports_what_is_there(cgroups: Cgroups) -> None:
    assert cgroups.version in ("v1", "v2")
    if not (cgroups.memory_limit and cgroups.freezer):
        assert cgroups.reason
    for base in cgroups.bases:
        assert base.is_dir() and base.name == "archil"
    disabled = Cgroups.disabled("off by configuration")
    assert (disabled.memory_limit, disabled.freezer, disabled.version) == (False, False, None)
    assert disabled.reason == "off by configuration"


def test_create_writes_the_limit(cgroups: Cgroups, sandbox: SandboxCgroup) -> None:
    if not cgroups.memory_limit:
        pytest.skip("no memory controller")
    top = sandbox.dirs[0]
    if cgroups.version == "v1":
        assert (top / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
        memsw = top / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            assert memsw.read_text().strip() == str(64 << 20)
    else:
        assert (top / "memory.max").read_text().strip() == str(64 << 20)
        assert (top / "agent").is_dir() and (top / "procs").is_dir()
    assert sandbox.limit_mib == 64
    assert all(p.exists() for p in (*sandbox.agent_join, *sandbox.user_join))
    with pytest.raises(ValueError, match="invalid cgroup name"):
        cgroups.create("../x", 64)


def test_oom_kills_are_counted(cgroups: Cgroups, sandbox: SandboxCgroup) -> None:
    if not cgroups.memory_limit:
        pytest.skip("no memory controller")
    assert sandbox.oom_kills() == 0
    proc = start_in(sandbox.agent_join, "python3 -c 'b = bytearray(256 << 20)'")
    assert proc.wait(30) == -signal.SIGKILL
    assert sandbox.oom_kills() >= 1


def test_freeze_and_thaw(cgroups: Cgroups, sandbox: SandboxCgroup, tmp_path: Path) -> None:
    if not sandbox.can_freeze:
        pytest.skip("no freezer")
    counter = tmp_path / "n"
    loop = f"sh -c 'i=0; while :; do i=$((i+1)); echo $i > {counter}; sleep 0.01; done'"
    proc = start_in((*sandbox.agent_join, *sandbox.user_join), loop)
    try:
        assert wait_for(lambda: counter.exists() and counter.read_text().strip() not in ("", "1"))
        assert proc.pid in sandbox.pids()
        sandbox.freeze()
        time.sleep(0.05)
        before = counter.read_text()
        time.sleep(0.3)
        assert counter.read_text() == before
        sandbox.thaw()
        assert wait_for(lambda: counter.read_text() != before)
    finally:
        sandbox.freeze()
        sandbox.remove()
        assert proc.wait(5) == -signal.SIGKILL, "remove() thaws and kills what is left"


def test_freeze_catches_vfork_parents(sandbox: SandboxCgroup) -> None:
    """dash runs commands with vfork; a parent waiting for a child frozen before its exec
    must still count as frozen (the v1 freezer needs its state written again for that)."""
    if not sandbox.can_freeze:
        pytest.skip("no freezer")
    loop = "sh -c 'while :; do /bin/true; done'"
    proc = start_in((*sandbox.agent_join, *sandbox.user_join), loop)
    try:
        assert wait_for(lambda: len(sandbox.pids()) >= 1)
        for _ in range(40):
            sandbox.freeze(timeout=5.0)
            sandbox.thaw(timeout=5.0)
    finally:
        sandbox.remove()
        proc.wait(5)


def test_remove_kills_only_its_own_processes(sandbox: SandboxCgroup) -> None:
    procs = sandbox.agent_join or sandbox.user_join
    inside = start_in(procs, "sleep 1000")
    outside = subprocess.Popen(["sleep", "1000"])
    try:
        assert wait_for(lambda: inside.pid in sandbox.pids())
        assert outside.pid not in sandbox.pids()
        sandbox.remove()
        assert inside.wait(5) == -signal.SIGKILL
        assert outside.poll() is None
        assert not any(d.exists() for d in sandbox.dirs)
    finally:
        outside.kill()
        outside.wait()
        inside.kill()
        inside.wait()


def _fake_owner(cgroups: Cgroups, *, alive: bool) -> tuple[str, list[Path], int | None]:
    """Owner directories (with one sandbox cgroup each) of a runtime that is alive or died."""
    owner = f"o-{uuid.uuid4().hex[:16]}"
    lock_dir = Path(tempfile.gettempdir()) / f"archil-cgroups-{os.geteuid()}"
    fd = os.open(lock_dir / f"{owner}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    if alive:
        fcntl.flock(fd, fcntl.LOCK_EX)
    else:
        os.close(fd)
    dirs = []
    for base in cgroups.bases:
        (base / owner / "sbx.1234").mkdir(parents=True)
        dirs.append(base / owner)
    return owner, dirs, fd if alive else None


def test_cleanup_stale_removes_only_dead_runtimes_cgroups(cgroups: Cgroups) -> None:
    dead, dead_dirs, _ = _fake_owner(cgroups, alive=False)
    live, live_dirs, live_fd = _fake_owner(cgroups, alive=True)
    ours = cgroups.create(f"idle-{uuid.uuid4().hex[:8]}", 32)
    foreign = cgroups.bases[0] / f"not-an-owner-{uuid.uuid4().hex[:6]}"
    foreign.mkdir()
    join = "tasks" if (dead_dirs[0] / "sbx.1234" / "tasks").exists() else "cgroup.procs"
    orphan = start_in((dead_dirs[0] / "sbx.1234" / join,), "sleep 1000")
    bystander = subprocess.Popen(["sleep", "1000"])
    try:
        assert wait_for(lambda: orphan.pid in _pids(dead_dirs[0]))
        cgroups.cleanup_stale()
        assert not any(d.exists() for d in dead_dirs)
        assert orphan.wait(5) == -signal.SIGKILL, "what is left in a dead runtime's cgroup dies"
        assert bystander.poll() is None
        assert all(d.exists() for d in live_dirs), "a live runtime's idle cgroups stay"
        assert all(d.exists() for d in ours.dirs) and foreign.exists()
    finally:
        bystander.kill()
        bystander.wait()
        orphan.kill()
        orphan.wait()
        ours.remove()
        foreign.rmdir()
        for d in live_dirs:
            (d / "sbx.1234").rmdir()
            d.rmdir()
        assert live_fd is not None
        os.close(live_fd)
        lock_dir = Path(tempfile.gettempdir()) / f"archil-cgroups-{os.geteuid()}"
        (lock_dir / f"{live}.lock").unlink()
        (lock_dir / f"{dead}.lock").unlink()


def _pids(path: Path) -> set[int]:
    out: set[int] = set()
    for p in path.rglob("cgroup.procs"):
        out |= {int(x) for x in p.read_text().split()}
    return out


def test_freezing_without_a_freezer_fails_clearly(cgroups: Cgroups) -> None:
    sc = SandboxCgroup(
        "x", (), memory=None, freezer=None, agent_join=(), user_join=(), limit_mib=None
    )
    assert not sc.can_freeze and sc.oom_kills() == 0
    with pytest.raises(CgroupError, match="no freezer"):
        sc.freeze()
