"""Per-sandbox cgroups on this machine's real hierarchies (skipped where they are not writable)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from archil.local.cgroups import CgroupError, Cgroups, SandboxCgroup


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


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


def test_cleanup_stale_removes_only_old_empty_cgroups(cgroups: Cgroups) -> None:
    old = cgroups.create(f"stale-{uuid.uuid4().hex[:8]}", 32)
    new = cgroups.create(f"fresh-{uuid.uuid4().hex[:8]}", 32)
    busy = cgroups.create(f"busy-{uuid.uuid4().hex[:8]}", 32)
    proc = start_in(busy.agent_join or busy.user_join, "sleep 1000")
    try:
        assert wait_for(lambda: proc.pid in busy.pids())
        past = time.time() - 3600
        for d in (*old.dirs, *busy.dirs):
            os.utime(d, (past, past))
        cgroups.cleanup_stale(older_than=60)
        assert not any(d.exists() for d in old.dirs)
        assert all(d.exists() for d in new.dirs)
        assert all(d.exists() for d in busy.dirs)
        assert proc.poll() is None
    finally:
        for sc in (old, new, busy):
            sc.remove()
        proc.wait(5)


def test_freezing_without_a_freezer_fails_clearly(cgroups: Cgroups) -> None:
    sc = SandboxCgroup(
        "x", (), memory=None, freezer=None, agent_join=(), user_join=(), limit_mib=None
    )
    assert not sc.can_freeze and sc.oom_kills() == 0
    with pytest.raises(CgroupError, match="no freezer"):
        sc.freeze()
