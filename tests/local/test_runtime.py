"""The local container runtime, with real processes, namespaces and cgroups."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from archil.local.images import ImageBuilder, ImageEnv
from archil.local.logs import LogStore
from archil.local.runtime import ContainerSpec, ContainerStartError, MountSpec, Runtime

PY = shlex.quote(sys.executable)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def new_id() -> str:
    return "cntr-" + uuid.uuid4().hex[:16]


def marker_pids(cid: str) -> set[int]:
    """Live processes started with ``ARCHIL_CONTAINER_ID=cid`` (found independently of the runtime)."""
    needle = f"ARCHIL_CONTAINER_ID={cid}".encode()
    out: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
        if needle in env and state not in (b"Z", b"X"):
            out.add(int(name))
    return out


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Run:
    """Records the callbacks of one container."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.exited = threading.Event()
        self.running_calls = 0
        self.exit_calls: list[tuple[int | None, str | None]] = []

    def on_running(self) -> None:
        self.running_calls += 1
        self.running.set()

    def on_exit(self, code: int | None, reason: str | None) -> None:
        self.exit_calls.append((code, reason))
        self.exited.set()

    def result(self, timeout: float = 30.0) -> tuple[int | None, str | None]:
        assert self.exited.wait(timeout), "the container did not finish"
        return self.exit_calls[0]


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.logs = LogStore(tmp_path / "logs")
        self.runtimes: list[Runtime] = []
        self.ids: list[str] = []

    def runtime(self, **kwargs: Any) -> Runtime:
        rt = Runtime(self.tmp / f"rt{len(self.runtimes)}", self.logs, **kwargs)
        self.runtimes.append(rt)
        return rt

    def disk(self, name: str = "disk") -> Path:
        d = self.tmp / "disks" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def start(self, rt: Runtime, command: str | None, **kwargs: Any) -> tuple[str, Run]:
        cid = kwargs.pop("container_id", None) or new_id()
        if "mounts" not in kwargs:
            kwargs["mounts"] = [MountSpec(self.disk(), "/mnt/archil", False)]
        self.ids.append(cid)
        run = Run()
        rt.start(
            ContainerSpec(container_id=cid, command=command, **kwargs), run.on_running, run.on_exit
        )
        return cid, run

    def out(self, cid: str, stream: str = "stdout") -> str:
        return "".join(e["data"] for e in self.logs.read(cid) if e["stream"] == stream)

    def close(self) -> None:
        for rt in self.runtimes:
            rt.shutdown(grace=0.5)
        leftovers = {cid: marker_pids(cid) for cid in self.ids}
        for pids in leftovers.values():
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        assert not any(leftovers.values()), f"processes left behind: {leftovers}"
        for rt in self.runtimes:
            try:
                base = rt.capabilities.get("cgroup_path")
            except RuntimeError:
                continue
            if base:
                left = [cid for cid in self.ids if os.path.exists(os.path.join(base, cid))]
                assert not left, f"cgroups left behind: {left}"
        self.logs.close()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


@pytest.fixture
def rt(h: Harness) -> Runtime:
    return h.runtime()


def require_namespaces(rt: Runtime) -> None:
    caps = rt.capabilities
    if not caps["namespaces"]:
        pytest.skip(f"namespaces are not available here: {caps['reason']}")


# -- basics -----------------------------------------------------------------------


def test_capabilities_are_detected_once(rt: Runtime) -> None:
    caps = rt.capabilities
    assert set(caps) >= {"namespaces", "memory_limit", "cpu_affinity", "reason"}
    assert isinstance(caps["namespaces"], bool)
    assert rt.capabilities == caps
    if not all((caps["namespaces"], caps["memory_limit"], caps["cpu_affinity"])):
        assert caps["reason"]


def test_container_writes_to_its_disk(h: Harness, rt: Runtime) -> None:
    require_namespaces(rt)
    disk = h.disk()
    cid, run = h.start(rt, 'echo hello > /mnt/archil/x && echo "wrote $ARCHIL_DISK_PATH" && pwd')
    assert run.result() == (0, None)
    assert (disk / "x").read_text() == "hello\n"
    assert h.out(cid) == "wrote /mnt/archil\n/mnt/archil\n"
    assert run.running_calls == 1
    assert len(run.exit_calls) == 1
    system = h.out(cid, "system")
    assert "running" in system and "exited with code 0" in system


def test_stdout_and_stderr_are_separate_streams(h: Harness, rt: Runtime) -> None:
    cid, run = h.start(rt, "echo out1; echo err1 >&2; printf 'no newline'")
    assert run.result() == (0, None)
    assert h.out(cid) == "out1\nno newline"
    assert h.out(cid, "stderr") == "err1\n"


def test_two_containers_cannot_see_each_others_disks(h: Harness) -> None:
    rt = h.runtime(hidden_paths=[h.tmp / "disks"])
    require_namespaces(rt)
    a, b = h.disk("a"), h.disk("b")
    (a / "secret-a").write_text("A")
    (b / "secret-b").write_text("B")
    script = (
        "ls /mnt/archil; echo ---; "
        "cat {other}/secret-{o} 2>/dev/null && echo LEAK; ls {disks} 2>/dev/null | wc -l; "
        "sleep 0.3; ls /mnt/archil"
    )
    ca, ra = h.start(
        rt,
        script.format(other=shlex.quote(str(b)), o="b", disks=shlex.quote(str(h.tmp / "disks"))),
        mounts=[MountSpec(a, "/mnt/archil", False)],
    )
    cb, rb = h.start(
        rt,
        script.format(other=shlex.quote(str(a)), o="a", disks=shlex.quote(str(h.tmp / "disks"))),
        mounts=[MountSpec(b, "/mnt/archil", False)],
    )
    assert ra.result() == (0, None)
    assert rb.result() == (0, None)
    out_a, out_b = h.out(ca), h.out(cb)
    assert "secret-a" in out_a and "secret-b" not in out_a and "LEAK" not in out_a
    assert "secret-b" in out_b and "secret-a" not in out_b and "LEAK" not in out_b
    assert out_a.split("---\n")[1].splitlines()[0] == "0"


def test_read_only_mount_refuses_writes_while_the_disk_accepts_them(
    h: Harness, rt: Runtime
) -> None:
    require_namespaces(rt)
    disk, shared = h.disk("rw"), h.disk("shared")
    (shared / "input.txt").write_text("data")
    probe = textwrap.dedent(
        """
        import errno
        print(open('/mnt/data/input.txt').read())
        try:
            open('/mnt/data/new.txt', 'w')
        except OSError as e:
            print(errno.errorcode[e.errno])
        open('/mnt/archil/ok.txt', 'w').write('ok')
        """
    )
    cid, run = h.start(
        rt,
        f"{PY} -c {shlex.quote(probe)}",
        mounts=[MountSpec(disk, "/mnt/archil", False), MountSpec(shared, "/mnt/data", True)],
    )
    assert run.result() == (0, None), h.out(cid, "stderr")
    assert h.out(cid).split() == ["data", "EROFS"]
    assert not (shared / "new.txt").exists()
    assert (disk / "ok.txt").read_text() == "ok"


def test_on_exit_is_called_once_with_the_exit_code(h: Harness, rt: Runtime) -> None:
    cid, run = h.start(rt, "echo bye; exit 7")
    assert run.result() == (7, None)
    time.sleep(0.2)
    assert run.exit_calls == [(7, None)]
    assert run.running_calls == 1
    assert not rt.is_running(cid)


def test_killed_by_a_signal_maps_to_128_plus_signal(h: Harness, rt: Runtime) -> None:
    _, run = h.start(rt, "kill -USR1 $$; sleep 5")
    code, reason = run.result()
    assert code == 128 + signal.SIGUSR1
    assert reason is None


def test_initialization_script_runs_before_the_command(h: Harness, rt: Runtime) -> None:
    disk = h.disk()
    cid, run = h.start(
        rt,
        'echo "command sees $FROM_INIT"; cat "$ARCHIL_DISK_PATH/init-marker"',
        initialization_script='echo init runs; export FROM_INIT=yes; echo made > "$ARCHIL_DISK_PATH/init-marker"',
    )
    assert run.result() == (0, None)
    assert h.out(cid) == "init runs\ncommand sees yes\nmade\n"
    assert (disk / "init-marker").exists()


def test_failing_initialization_script_fails_the_container(h: Harness, rt: Runtime) -> None:
    disk = h.disk()
    cid, run = h.start(
        rt,
        'touch "$ARCHIL_DISK_PATH/command-ran"',
        initialization_script="echo preparing; false",
    )
    assert run.result() == (1, None)
    assert not (disk / "command-ran").exists()
    assert "initialization script failed with exit code 1" in h.out(cid, "stderr")


def test_environment_and_workdir(h: Harness, rt: Runtime) -> None:
    img = h.tmp / "image"
    (img / "bin").mkdir(parents=True)
    (img / "work").mkdir()
    tool = img / "bin" / "image-tool"
    tool.write_text("#!/bin/sh\necho image tool\n")
    tool.chmod(0o755)
    env = ImageEnv(
        python=None,
        path_prefix=[str(img / "bin")],
        env={"FROM_IMAGE": "1", "SHARED": "image"},
        workdir=str(img / "work"),
        root=img,
    )
    cid, run = h.start(
        rt,
        'pwd; echo "$FROM_IMAGE $SHARED $FROM_SPEC $PYTHONUNBUFFERED $ARCHIL_CONTAINER_ID"; image-tool; '
        'echo "${SERVER_ONLY:-clean}"',
        image=env,
        env={"SHARED": "spec", "FROM_SPEC": "2"},
    )
    os.environ["SERVER_ONLY"] = "leak"
    try:
        assert run.result() == (0, None)
    finally:
        del os.environ["SERVER_ONLY"]
    lines = h.out(cid).splitlines()
    assert lines == [str(img / "work"), f"1 spec 2 1 {cid}", "image tool", "clean"]


def test_explicit_workdir_wins(h: Harness, rt: Runtime) -> None:
    wd = h.tmp / "wd"
    wd.mkdir()
    cid, run = h.start(rt, "pwd", workdir=str(wd))
    assert run.result() == (0, None)
    assert h.out(cid) == f"{wd}\n"


# -- stop -------------------------------------------------------------------------

_TREE = textwrap.dedent(
    """
    trap '' TERM
    setsid sh -c 'trap "" TERM; (trap "" TERM; exec sleep 1000) & exec sleep 1000' </dev/null >/dev/null 2>&1 &
    {py} -c 'import os, signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork(): os._exit(0)
    os.setsid()
    if os.fork(): os._exit(0)
    time.sleep(1000)' &
    sleep 1000 &
    sleep 0.2
    touch {ready}
    wait
    """
)


@pytest.mark.parametrize("mode", ["namespace", "process", "process-without-cgroup"])
def test_stop_leaves_no_process_behind(h: Harness, mode: str) -> None:
    rt = h.runtime(
        namespaces=None if mode == "namespace" else False,
        cgroups=False if mode == "process-without-cgroup" else None,
    )
    if mode == "namespace":
        require_namespaces(rt)
    ready = h.tmp / "ready"
    cid, run = h.start(rt, _TREE.format(py=PY, ready=shlex.quote(str(ready))))
    assert run.running.wait(10)
    assert wait_for(ready.exists), h.out(cid, "stderr")
    assert wait_for(lambda: len(marker_pids(cid)) >= 5)
    before = marker_pids(cid)
    assert rt.is_running(cid)
    t0 = time.monotonic()
    rt.stop(cid, grace=0.5)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.5, "the SIGTERM-ignoring parent cannot have exited by itself"
    assert [p for p in before if pid_alive(p)] == []
    assert marker_pids(cid) == set()
    assert len(run.exit_calls) == 1
    code, reason = run.exit_calls[0]
    assert code == 137 and reason is None, h.logs.read(cid)
    assert not rt.is_running(cid)
    rt.stop(cid)
    assert len(run.exit_calls) == 1
    assert "SIGKILL" in h.out(cid, "system")


def test_stop_sends_sigterm_first(h: Harness, rt: Runtime) -> None:
    disk = h.disk()
    cid, run = h.start(
        rt,
        "trap 'echo got TERM > \"$ARCHIL_DISK_PATH/term\"; exit 3' TERM; "
        'touch "$ARCHIL_DISK_PATH/ready"; while :; do sleep 0.05; done',
    )
    assert wait_for(lambda: (disk / "ready").exists())
    t0 = time.monotonic()
    rt.stop(cid, grace=10)
    assert time.monotonic() - t0 < 5
    assert (disk / "term").read_text() == "got TERM\n"
    assert run.exit_calls == [(3, None)]


def test_stop_from_the_on_running_callback(h: Harness, rt: Runtime) -> None:
    run = Run()
    cid = new_id()
    h.ids.append(cid)

    def on_running() -> None:
        run.on_running()
        rt.stop(cid, grace=1)

    t0 = time.monotonic()
    rt.start(
        ContainerSpec(cid, "sleep 30", mounts=[MountSpec(h.disk(), "/mnt/archil", False)]),
        on_running,
        run.on_exit,
    )
    code, reason = run.result()
    assert time.monotonic() - t0 < 5
    assert code == 128 + signal.SIGTERM and reason is None


def test_stop_unknown_or_finished_is_a_no_op(h: Harness, rt: Runtime) -> None:
    rt.stop("cntr-doesnotexist000")
    _, run = h.start(rt, "true")
    assert run.result() == (0, None)
    rt.stop(h.ids[-1])
    assert len(run.exit_calls) == 1


def test_container_without_command_idles_until_stopped(h: Harness, rt: Runtime) -> None:
    cid, run = h.start(rt, None, initialization_script="echo ready")
    assert run.running.wait(10)
    time.sleep(0.3)
    assert rt.is_running(cid)
    assert not run.exited.is_set()
    rt.stop(cid, grace=2)
    code, reason = run.result()
    assert code == 128 + signal.SIGTERM and reason is None
    assert h.out(cid) == "ready\n"


def test_shutdown_stops_every_container(h: Harness) -> None:
    rt = h.runtime()
    started = [h.start(rt, "sleep 1000") for _ in range(3)]
    for _, run in started:
        assert run.running.wait(10)
    rt.shutdown(grace=0.5)
    for cid, run in started:
        assert run.exited.is_set()
        assert marker_pids(cid) == set()
    with pytest.raises(RuntimeError):
        h.start(rt, "true")


def test_server_crash_takes_the_containers_with_it(h: Harness, tmp_path: Path) -> None:
    probe = h.runtime()
    require_namespaces(probe)
    cid = new_id()
    ready = tmp_path / "crash-ready"
    script = tmp_path / "server.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time
            from pathlib import Path
            from archil.local.logs import LogStore
            from archil.local.runtime import ContainerSpec, Runtime
            root = Path({str(tmp_path / "crash")!r})
            rt = Runtime(root / "rt", LogStore(root / "logs"))
            rt.start(
                ContainerSpec({cid!r}, command="sleep 1000 & setsid sleep 1000 & touch {ready}; wait"),
                lambda: None,
                lambda code, reason: None,
            )
            time.sleep(1000)
            """
        )
    )
    server = subprocess.Popen([sys.executable, str(script)])
    try:
        assert wait_for(ready.exists, 20)
        assert wait_for(lambda: len(marker_pids(cid)) >= 3)
        server.kill()
        server.wait()
        assert wait_for(lambda: not marker_pids(cid), 10), marker_pids(cid)
    finally:
        server.kill()
        server.wait()
        for pid in marker_pids(cid):
            os.kill(pid, signal.SIGKILL)
        base = probe.capabilities.get("cgroup_path")
        if base:
            wait_for(
                lambda: (
                    not os.path.exists(os.path.join(base, cid)) or _rmdir(os.path.join(base, cid))
                ),
                5,
            )


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except OSError:
        return False
    return True


# -- resources --------------------------------------------------------------------


def test_memory_limit_kills_a_process_that_allocates_past_it(h: Harness, rt: Runtime) -> None:
    caps = rt.capabilities
    if not caps["memory_limit"]:
        pytest.skip(f"memory limits cannot be enforced here: {caps['reason']}")
    hog = "b = b'x' * (256 << 20); print('survived')"
    cid, run = h.start(rt, f"{PY} -I -S -c {shlex.quote(hog)}", mem_size_mib=64)
    code, reason = run.result()
    assert code == 137
    assert reason is not None and "memory" in reason and "64 MiB" in reason
    assert "survived" not in h.out(cid)
    small = "b = b'x' * (8 << 20); print('fine')"
    cid2, run2 = h.start(rt, f"{PY} -I -S -c {shlex.quote(small)}", mem_size_mib=64)
    assert run2.result() == (0, None)
    assert h.out(cid2) == "fine\n"


def test_cpu_affinity_follows_vcpu_count(h: Harness, rt: Runtime) -> None:
    caps = rt.capabilities
    if not caps["cpu_affinity"]:
        pytest.skip(f"CPU affinity is not available here: {caps['reason']}")
    show = "import os; print(len(os.sched_getaffinity(0)))"
    cid, run = h.start(
        rt,
        f"{PY} -I -S -c {shlex.quote(show)}; grep Cpus_allowed_list /proc/self/status",
        vcpu_count=1,
    )
    assert run.result() == (0, None)
    lines = h.out(cid).splitlines()
    assert lines[0] == "1"
    assert lines[1].split()[-1].isdigit()
    machine = len(os.sched_getaffinity(0))
    cid2, run2 = h.start(rt, f"{PY} -I -S -c {shlex.quote(show)}", vcpu_count=64)
    assert run2.result() == (0, None)
    assert h.out(cid2) == f"{machine}\n"


def test_single_cpu_containers_are_spread_over_cpus(h: Harness, rt: Runtime) -> None:
    if len(os.sched_getaffinity(0)) < 2 or not rt.capabilities["cpu_affinity"]:
        pytest.skip("needs two CPUs and CPU affinity")
    runs = [
        h.start(rt, "grep Cpus_allowed_list /proc/self/status; sleep 0.5", vcpu_count=1)
        for _ in range(2)
    ]
    for _, run in runs:
        assert run.result() == (0, None)
    cpus = {h.out(cid).split()[-1] for cid, _ in runs}
    assert len(cpus) == 2


def test_timeout_seconds_is_enforced(h: Harness) -> None:
    rt = h.runtime(timeout_grace=0.3)
    t0 = time.monotonic()
    cid, run = h.start(rt, "trap '' TERM; sleep 30", timeout_seconds=1)
    code, reason = run.result()
    elapsed = time.monotonic() - t0
    assert reason == "timed out after 1 s"
    assert code == 137
    assert 0.9 <= elapsed < 5
    assert marker_pids(cid) == set()


# -- modes ------------------------------------------------------------------------


def test_process_mode_sets_archil_disk_path(h: Harness) -> None:
    rt = h.runtime(namespaces=False)
    assert rt.capabilities["namespaces"] is False
    disk, extra = h.disk("d"), h.disk("extra")
    cid, run = h.start(
        rt,
        'echo "$ARCHIL_DISK_PATH|$ARCHIL_MOUNT_COUNT|$ARCHIL_MOUNT_0|$ARCHIL_MOUNT_0_PATH|$ARCHIL_ISOLATION"; '
        'echo hi > "$ARCHIL_DISK_PATH/f"; pwd',
        mounts=[MountSpec(disk, "/mnt/archil", False), MountSpec(extra, "/mnt/data", True)],
    )
    assert run.result() == (0, None)
    assert h.out(cid).splitlines() == [f"{disk}|1|{extra}|/mnt/data|process", str(disk)]
    assert (disk / "f").read_text() == "hi\n"


def test_missing_namespaces_warn_once_and_fall_back(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    rt = h.runtime(unshare=str(h.tmp / "no-such-unshare"))
    with caplog.at_level(logging.WARNING, logger="archil"):
        caps = rt.capabilities
        assert caps["namespaces"] is False
        assert "not installed" in caps["reason"]
        cid, run = h.start(rt, 'echo "$ARCHIL_DISK_PATH"')
        assert run.result() == (0, None)
        _cid2, run2 = h.start(rt, "true")
        assert run2.result() == (0, None)
        _ = rt.capabilities
    warnings = [r for r in caplog.records if r.name == "archil" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ARCHIL_DISK_PATH" in warnings[0].getMessage()
    assert h.out(cid) == f"{h.disk()}\n"


def test_forced_namespaces_that_are_missing_fail_the_container(h: Harness) -> None:
    rt = h.runtime(namespaces=True, unshare=str(h.tmp / "no-such-unshare"))
    _, run = h.start(rt, "true")
    code, reason = run.result()
    assert code is None
    assert reason is not None and "namespaces are not available" in reason


def test_user_namespace_mode(h: Harness) -> None:
    rt = h.runtime(user_namespace=True)
    require_namespaces(rt)
    assert rt.capabilities["user_namespace"] is True
    disk, ro = h.disk("u"), h.disk("ro")
    cid, run = h.start(
        rt,
        "echo ok > /mnt/archil/u; (echo no > /mnt/ro/x) 2>/dev/null || echo refused",
        mounts=[MountSpec(disk, "/mnt/archil", False), MountSpec(ro, "/mnt/ro", True)],
    )
    assert run.result() == (0, None)
    assert h.out(cid) == "refused\n"
    assert (disk / "u").read_text() == "ok\n"


def test_missing_mountpoints_are_created_and_removed(h: Harness, rt: Runtime) -> None:
    require_namespaces(rt)
    extra = h.disk("extra")
    top = h.tmp / "not-yet"
    target = top / "deep" / "mp"
    ready = h.tmp / "mp-ready"
    _cid, run = h.start(
        rt,
        f"echo in > {shlex.quote(str(target))}/f; touch {shlex.quote(str(ready))}; sleep 0.3",
        mounts=[MountSpec(h.disk(), "/mnt/archil", False), MountSpec(extra, str(target), False)],
    )
    assert wait_for(ready.exists)
    assert target.is_dir()
    assert run.result() == (0, None)
    assert (extra / "f").read_text() == "in\n"
    assert not top.exists()


def test_tmpfs_fallback_when_a_mountpoint_cannot_be_created(h: Harness, rt: Runtime) -> None:
    require_namespaces(rt)
    rt._create_mountpoints_on_host = False
    disk, extra = h.disk("t"), h.disk("textra")
    target = h.tmp / "absent" / "mp"
    cid, run = h.start(
        rt,
        f"echo a > /mnt/archil/a; echo b > {shlex.quote(str(target))}/b; ls {shlex.quote(str(h.tmp))}",
        mounts=[MountSpec(disk, "/mnt/archil", False), MountSpec(extra, str(target), False)],
    )
    assert run.result() == (0, None), h.out(cid, "stderr")
    assert (disk / "a").read_text() == "a\n"
    assert (extra / "b").read_text() == "b\n"
    assert h.out(cid).split() == ["absent"]
    assert not (h.tmp / "absent").exists()


# -- failures, ports, exec, images ----------------------------------------------------


def test_a_missing_mount_source_fails_the_start(h: Harness, rt: Runtime) -> None:
    _cid, run = h.start(rt, "true", mounts=[MountSpec(h.tmp / "missing", "/mnt/archil", False)])
    code, reason = run.result()
    assert code is None
    assert (
        reason is not None and reason.startswith("failed to start") and "does not exist" in reason
    )
    assert run.running_calls == 0


@pytest.mark.parametrize("bad", ["relative", "/", "/mnt/../etc", "/mnt//x/"])
def test_invalid_mount_paths_are_rejected(h: Harness, rt: Runtime, bad: str) -> None:
    with pytest.raises(ValueError):
        rt.start(
            ContainerSpec(new_id(), "true", mounts=[MountSpec(h.disk(), bad, False)]),
            lambda: None,
            lambda code, reason: None,
        )


def test_ports_reports_listening_container_ports(h: Harness, rt: Runtime) -> None:
    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    port = free_port()
    outsider = socket.socket()
    outsider.bind(("127.0.0.1", 0))
    outsider.listen()
    other = int(outsider.getsockname()[1])
    ready = h.tmp / "listening"
    server = textwrap.dedent(
        f"""
        import socket, time
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(('127.0.0.1', {port}))
        s.listen()
        open({str(ready)!r}, 'w').close()
        time.sleep(60)
        """
    )
    try:
        cid, run = h.start(rt, f"{PY} -c {shlex.quote(server)}", ports=[port, other])
        assert run.running.wait(10)
        assert rt.ports(cid, listening_only=False) == {port: port, other: other}
        assert wait_for(ready.exists)
        assert rt.ports(cid) == {port: port}
        rt.stop(cid, grace=1)
        assert rt.ports(cid) == {}
    finally:
        outsider.close()


def test_run_to_completion_returns_output_and_timing(h: Harness, rt: Runtime) -> None:
    disk = h.disk()
    (disk / "in.txt").write_text("content")
    spec = ContainerSpec(
        "exec-" + uuid.uuid4().hex[:16],
        command='cat /mnt/archil/in.txt 2>/dev/null || cat "$ARCHIL_DISK_PATH/in.txt"; echo; echo warn >&2; exit 4',
        mounts=[MountSpec(disk, "/mnt/archil", True)],
    )
    h.ids.append(spec.container_id)
    code, out, err, queue_ms, execute_ms = rt.run_to_completion(spec, timeout=20)
    assert (code, out, err) == (4, "content\n", "warn\n")
    assert queue_ms >= 0 and execute_ms >= 0
    assert h.logs.count(spec.container_id) == 0


def test_run_to_completion_timeout_kills_the_command(h: Harness, rt: Runtime) -> None:
    spec = ContainerSpec("exec-" + uuid.uuid4().hex[:16], command="sleep 30 & sleep 30")
    h.ids.append(spec.container_id)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        rt.run_to_completion(spec, timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert marker_pids(spec.container_id) == set()


def test_run_to_completion_start_failure(h: Harness, rt: Runtime) -> None:
    spec = ContainerSpec(
        "exec-" + uuid.uuid4().hex[:16],
        command="true",
        mounts=[MountSpec(h.tmp / "absent", "/mnt/archil", False)],
    )
    with pytest.raises(ContainerStartError):
        rt.run_to_completion(spec, timeout=10)


def test_container_runs_in_a_built_image(h: Harness, rt: Runtime) -> None:
    builder = ImageBuilder(h.tmp / "images")
    try:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        image_id = builder.ensure(f"FROM python:{version}-slim\nENV GREETING=hi\n")
        assert builder.wait(image_id, 60) == ("ready", None), builder.build_log_lines(image_id)
        env = builder.environment(image_id)
        show = "import sys, os, cloudpickle; print(sys.prefix); print(os.environ['GREETING'])"
        cid, run = h.start(rt, f"python -c {shlex.quote(show)}", image=env)
        assert run.result() == (0, None), h.out(cid, "stderr")
        assert h.out(cid).splitlines() == [env.virtual_env, "hi"]
    finally:
        builder.close()


def test_a_shared_mountpoint_outlives_its_creator(h: Harness) -> None:
    first, second = h.runtime(), h.runtime()
    require_namespaces(first)
    top = h.tmp / "shared-mp"
    target = top / "mp"
    go = h.tmp / "go"
    mounts = [MountSpec(h.disk(), str(target), False)]
    _ca, ra = h.start(
        first, f"while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.02; done", mounts=mounts
    )
    cb, rb = h.start(second, f"sleep 0.5; ls {shlex.quote(str(target))}", mounts=mounts)
    assert ra.running.wait(10) and rb.running.wait(10)
    (h.disk() / "seen").write_text("x")
    go.touch()
    assert ra.result() == (0, None)
    assert target.is_dir(), "removed while another container still had it mounted"
    assert rb.result() == (0, None)
    assert h.out(cb) == "seen\n"
    assert not top.exists()
