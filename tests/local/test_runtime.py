"""The sandbox runtime engine, with real namespaces, mounts, cgroups and processes.

Run it inside ``unshare --pid --fork --mount --mount-proc`` while developing, so that a bug
in a kill path can only reach processes of that namespace.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from archil.local.cgroups import Cgroups
from archil.local.layers import LayerStore
from archil.local.runtime import (
    BASE_PATH,
    BootError,
    Environment,
    Runtime,
    SpawnError,
)
from archil.local.spec import ExitInfo, ImageEnv, MountSpec, ProcessSpec, SandboxSpec

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

HOST_IMAGE = ImageEnv(image_id="host", source="host")


# -- helpers --------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rfind(b")") + 2 : raw.rfind(b")") + 3] not in (b"Z", b"X")


def marker_pids(sandbox_id: str) -> set[int]:
    """Live processes whose environment has ``ARCHIL_SANDBOX_ID=sandbox_id`` (found
    independently of the runtime)."""
    needle = f"ARCHIL_SANDBOX_ID={sandbox_id}".encode()
    out: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env and pid_alive(int(name)):
            out.add(int(name))
    return out


def ppid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class Proc:
    """Collects the output and the exit of one process."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, bytes]] = []
        self.infos: list[ExitInfo] = []
        self.done = threading.Event()
        self.handle: Any = None

    def on_output(self, stream: int, data: bytes) -> None:
        self.chunks.append((stream, data))

    def on_exit(self, info: ExitInfo) -> None:
        self.infos.append(info)
        self.done.set()

    def wait(self, timeout: float = 20.0) -> ExitInfo:
        assert self.done.wait(timeout), "the process did not finish"
        time.sleep(0.01)
        assert len(self.infos) == 1, self.infos
        return self.infos[0]

    def out(self, stream: int = 1) -> bytes:
        return b"".join(d for s, d in self.chunks if s == stream)

    def text(self, stream: int = 1) -> str:
        return self.out(stream).decode()


class Harness:
    """Boots sandboxes for one test and checks that nothing of them is left afterwards."""

    def __init__(self, tmp: Path, rt: Runtime) -> None:
        self.tmp = tmp
        self.rt = rt
        self.layers = LayerStore(tmp / "layers")
        self.envs: list[Environment] = []
        self.ends: dict[str, list[str | None]] = {}

    def disk(self, name: str = "disk") -> Path:
        d = self.tmp / "disks" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def spec(self, **kwargs: Any) -> SandboxSpec:
        sid = kwargs.pop("sandbox_id", None) or f"sbx-{uuid.uuid4().hex[:12]}"
        kwargs.setdefault("mounts", (MountSpec(self.disk(), "/mnt/archil"),))
        kwargs.setdefault("image", HOST_IMAGE)
        kwargs.setdefault("root", self.layers.new_session(sid))
        kwargs.setdefault("hostname", "sandbox")
        return SandboxSpec(sandbox_id=sid, **kwargs)

    def boot(
        self, rt: Runtime | None = None, spec: SandboxSpec | None = None, **kwargs: Any
    ) -> Environment:
        spec = spec or self.spec(**kwargs)
        ends = self.ends.setdefault(spec.sandbox_id, [])
        env = (rt or self.rt).boot(spec, on_end=ends.append)
        self.envs.append(env)
        return env

    def start(self, sbx: Environment, command: str, **kwargs: Any) -> Proc:
        p = Proc()
        p.handle = sbx.spawn(
            ProcessSpec(command=command, **kwargs), on_output=p.on_output, on_exit=p.on_exit
        )
        return p

    def run(self, sbx: Environment, command: str, **kwargs: Any) -> Proc:
        p = self.start(sbx, command, **kwargs)
        p.wait()
        return p

    def close(self) -> None:
        for env in self.envs:
            env.stop(0.5)
        left = {sid: marker_pids(sid) for sid in self.ends}
        for pids in left.values():
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        assert not any(left.values()), f"processes left behind: {left}"
        for sid, ends in self.ends.items():
            assert len(ends) <= 1, f"on_end of {sid} called {len(ends)} times"


@pytest.fixture(scope="module")
def ns_rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    rt = Runtime(tmp_path_factory.mktemp("rt-ns"), stop_grace=2.0)
    if rt.capabilities["isolation"] != "namespace":
        rt.shutdown()
        pytest.skip(f"namespaces are not available here: {rt.capabilities['reason']}")
    yield rt
    rt.shutdown(grace=0.5)


@pytest.fixture(scope="module")
def proc_rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    rt = Runtime(tmp_path_factory.mktemp("rt-proc"), namespaces=False, stop_grace=2.0)
    yield rt
    rt.shutdown(grace=0.5)


@pytest.fixture
def h(tmp_path: Path, ns_rt: Runtime) -> Iterator[Harness]:
    harness = Harness(tmp_path, ns_rt)
    yield harness
    harness.close()


@pytest.fixture
def hp(tmp_path: Path, proc_rt: Runtime) -> Iterator[Harness]:
    harness = Harness(tmp_path, proc_rt)
    yield harness
    harness.close()


def env_of(p: Proc) -> dict[str, str]:
    return dict(line.split("=", 1) for line in p.text().splitlines() if "=" in line)


# -- capabilities -----------------------------------------------------------------------------


def test_capabilities(ns_rt: Runtime, proc_rt: Runtime) -> None:
    keys = {"namespaces", "user_namespace", "memory_limit", "freezer", "cpu_affinity", "cgroup"}
    keys |= {"isolation", "reason"}
    caps = ns_rt.capabilities
    assert set(caps) == keys
    assert caps["isolation"] == "namespace" and caps["namespaces"] is True
    assert ns_rt.capabilities == caps
    pcaps = proc_rt.capabilities
    assert pcaps["isolation"] == "process" and pcaps["namespaces"] is False
    assert "disabled by configuration" in pcaps["reason"]
    assert "read-only mounts are not enforced" in pcaps["reason"]


def test_forced_namespaces_off_logs_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt = Runtime(tmp_path / "rt", namespaces=False)
    try:
        with caplog.at_level("WARNING", logger="archil"):
            first = rt.capabilities
            assert rt.capabilities == first
        warnings = [r for r in caplog.records if "plain processes" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        rt.shutdown()


# -- output, exit status --------------------------------------------------------------------


def test_echo_both_streams_in_order(h: Harness) -> None:
    env = h.boot()
    assert env.isolation == "namespace" and env.alive and pid_alive(env.init_pid)
    p = h.run(env, "echo a; echo b >&2; echo c; printf d >&2; printf e")
    assert p.wait() == ExitInfo("completed", 0, None)
    assert p.out(1) == b"a\nc\ne"
    assert p.out(2) == b"b\nd"
    assert p.handle.pid > 0


def test_non_utf8_output_is_kept_as_bytes(h: Harness) -> None:
    env = h.boot()
    p = h.run(env, r"printf '\377\376\000x\n'; head -c 200000 /dev/zero | tr '\0' '\201'")
    out = p.out()
    assert out[:5] == b"\xff\xfe\x00x\n"
    assert out[5:] == b"\x81" * 200000


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("exit 0", ExitInfo("completed", 0, None)),
        ("exit 7", ExitInfo("completed", 7, None)),
        ("kill -TERM $$", ExitInfo("failed", 143, "killed by signal SIGTERM")),
        ("kill -KILL $$", ExitInfo("failed", 137, "killed by signal SIGKILL")),
    ],
)
def test_exit_status(h: Harness, command: str, expected: ExitInfo) -> None:
    env = h.boot()
    assert h.run(env, command).wait() == expected


def test_on_exit_waits_for_the_output_but_not_for_a_background_child(h: Harness) -> None:
    env = h.boot()
    t0 = time.monotonic()
    p = h.run(env, "sleep 30 & echo started")
    assert time.monotonic() - t0 < 5.0
    assert p.wait().status == "completed"
    assert p.out() == b"started\n"


# -- environment and working directory ------------------------------------------------------


def test_environment_precedence(h: Harness) -> None:
    image = ImageEnv(
        image_id="img",
        source="python:3.11",
        env={"A": "image", "B": "image", "C": "image", "PATH": "/opt/img/bin:/usr/bin:/bin"},
    )
    env = h.boot(image=image, env={"B": "sandbox", "C": "sandbox"})
    p = h.run(env, "env", env={"C": "process", "ARCHIL_SANDBOX_ID": "forged"})
    got = env_of(p)
    assert (got["A"], got["B"], got["C"]) == ("image", "sandbox", "process")
    assert got["PATH"] == "/opt/img/bin:/usr/bin:/bin"
    assert got["HOME"] == "/root" and got["LANG"] == "C.UTF-8"
    assert "TERM" not in got
    assert got["ARCHIL_SANDBOX_ID"] == env.sandbox_id
    assert got["ARCHIL_ISOLATION"] == "namespace"
    assert got["ARCHIL_DISK_PATH"] == "/mnt/archil"
    assert got["ARCHIL_MOUNT_COUNT"] == "0"
    assert "ARCHIL_SANDBOX_TOKEN" not in got


def test_base_environment_and_other_mounts(h: Harness) -> None:
    extra = h.disk("extra")
    env = h.boot(mounts=(MountSpec(h.disk(), "/mnt/archil"), MountSpec(extra, "/data/x")))
    got = env_of(h.run(env, "env"))
    assert got["PATH"] == BASE_PATH
    assert got["ARCHIL_MOUNT_COUNT"] == "1"
    assert got["ARCHIL_MOUNT_0"] == got["ARCHIL_MOUNT_0_PATH"] == "/data/x"


def test_working_directory(h: Harness) -> None:
    env = h.boot()
    assert h.run(env, "pwd").text() == "/mnt/archil\n"
    assert h.run(env, "pwd", cwd="/etc").text() == "/etc\n"
    with pytest.raises(SpawnError, match="/no/such/dir"):
        h.start(env, "pwd", cwd="/no/such/dir")
    with pytest.raises(SpawnError, match="absolute"):
        h.start(env, "pwd", cwd="relative")
    bare = h.boot(mounts=())
    assert h.run(bare, "pwd").text() == "/\n"
    assert "ARCHIL_DISK_PATH" not in env_of(h.run(bare, "env"))


# -- mounts and the root filesystem ---------------------------------------------------------


def test_disk_is_mounted_and_writable(h: Harness) -> None:
    disk = h.disk()
    (disk / "before").write_text("from the host")
    env = h.boot()
    p = h.run(env, "cat /mnt/archil/before; echo hello > /mnt/archil/written; ls -ld /mnt/archil")
    assert p.wait().status == "completed", p.text(2)
    assert p.text().startswith("from the host")
    assert (disk / "written").read_text() == "hello\n"


def test_read_only_mount_refuses_writes(h: Harness) -> None:
    shared = h.disk("shared")
    (shared / "data").write_text("shared data")
    mounts = (MountSpec(h.disk(), "/mnt/archil"), MountSpec(shared, "/data/shared", True))
    env = h.boot(mounts=mounts)
    p = h.run(env, "cat /data/shared/data; echo x > /data/shared/new")
    assert p.wait().status == "completed" and p.wait().exit_code != 0
    assert p.text() == "shared data"
    assert "Read-only file system" in p.text(2)
    assert not (shared / "new").exists()
    ok = h.run(env, "echo y > /mnt/archil/rw && echo ok")
    assert ok.text() == "ok\n"


def test_mount_below_an_overlaid_host_directory(h: Harness) -> None:
    extra = h.disk("extra")
    env = h.boot(mounts=(MountSpec(extra, "/opt/archil-test/data"),))
    p = h.run(env, "echo hi > /opt/archil-test/data/f && ls /opt/archil-test")
    assert p.wait().exit_code == 0, p.text(2)
    assert (extra / "f").read_text() == "hi\n"
    assert not Path("/opt/archil-test").exists()


def test_writes_outside_the_mounts_stay_in_the_sandbox(h: Harness) -> None:
    tag = uuid.uuid4().hex[:8]
    spec = h.spec()
    env = h.boot(spec=spec)
    cmd = (
        f"echo 1 > /usr/local/archil-{tag} && echo 2 > /etc/archil-{tag} && "
        f"echo 3 > /tmp/archil-{tag} && mkdir /archil-{tag} && echo 4 > /var/archil-{tag}"
    )
    p = h.run(env, cmd)
    assert p.wait().exit_code == 0, p.text(2)
    upper = spec.root.upper
    assert (upper / "usr" / "local" / f"archil-{tag}").read_text() == "1\n"
    assert (upper / "etc" / f"archil-{tag}").read_text() == "2\n"
    assert (upper / "rootfs" / "tmp" / f"archil-{tag}").read_text() == "3\n"
    assert (upper / "rootfs" / f"archil-{tag}").is_dir()
    assert (upper / "var" / f"archil-{tag}").read_text() == "4\n"
    for host in ("/usr/local", "/etc", "/tmp", "/", "/var"):
        assert not (Path(host) / f"archil-{tag}").exists()
    again = h.run(env, f"cat /usr/local/archil-{tag} /etc/archil-{tag} /tmp/archil-{tag}")
    assert again.text() == "1\n2\n3\n"


def test_host_directories_are_not_visible(h: Harness, tmp_path: Path) -> None:
    other = h.disk("other-disk")
    (other / "secret").write_text("no")
    (tmp_path / "host-marker").write_text("x")
    env = h.boot()
    hidden = [str(other), str(tmp_path), str(h.rt._root), "/work", "/farm", "/old_root"]
    checks = " ; ".join(f"test -e {p} && echo VISIBLE {p}" for p in hidden)
    p = h.run(env, f"{checks}; ls -A /root /tmp /home /mnt; ls /sys/fs/cgroup | wc -l")
    assert "VISIBLE" not in p.text()
    lines = p.text().split()
    assert "archil" in lines and "host-marker" not in lines
    assert lines[-1] == "0", "the host's cgroup hierarchies must not be in the sandbox"
    assert h.run(env, "echo x > /sys/kernel/x").text(2).count("Read-only") == 1


def test_hostname_and_pid_namespace(h: Harness) -> None:
    env = h.boot(hostname="box-7")
    cmd = "hostname; echo $$; tr '\\0' ' ' < /proc/1/cmdline; echo; ls /proc | grep -c '^[0-9]'"
    p = h.run(env, cmd)
    name, pid, cmdline, count = p.text().splitlines()
    assert name == "box-7"
    assert int(pid) > 1
    assert "_agent.py" in cmdline
    assert int(count) <= 4, "only the sandbox's own processes are in its /proc"


def test_processes_keep_only_the_container_capabilities(h: Harness) -> None:
    from archil.local._agent import KEPT_CAPABILITIES

    env = h.boot()
    p = h.run(
        env, "grep -E '^Cap(Bnd|Eff):' /proc/self/status; sh -c 'grep ^CapBnd: /proc/self/status'"
    )
    lines = dict(line.split(":\t") for line in p.text().splitlines()[:2])
    nested = p.text().splitlines()[2].split(":\t")[1]
    kept = sum(1 << cap for cap in KEPT_CAPABILITIES)
    assert int(lines["CapBnd"], 16) == kept
    assert int(nested, 16) == kept, "a process started by a process keeps the same bound"
    assert int(lines["CapEff"], 16) & ~kept == 0
    mounted = h.run(env, "mount -t tmpfs none /tmp 2>&1; echo status=$?")
    assert "status=0" not in mounted.text(), "a sandbox process could mount"
    # The agent drops them from its bounding set, not from what it may do itself.
    agent = h.run(env, "grep ^CapEff: /proc/1/status")
    assert int(agent.text().split(":\t")[1], 16) & ~kept != 0


# -- layers ---------------------------------------------------------------------------------


def test_commit_then_boot_on_the_layer_and_fork_it(h: Harness) -> None:
    first = h.spec()
    env = h.boot(spec=first)
    p = h.run(env, "echo v1 > /etc/archil-layer && mkdir -p /root/app && echo code > /root/app/x")
    assert p.wait().exit_code == 0, p.text(2)
    env.stop(1.0)
    layer = h.layers.commit(first.root.upper)
    assert layer.startswith("ckpt-") and len(layer) == 21
    lower = h.layers.path(layer)
    forks = []
    for n in range(2):
        sid = f"fork{n}-{uuid.uuid4().hex[:8]}"
        root = dataclasses.replace(h.layers.new_session(sid), lowers=(lower,))
        forks.append((h.boot(sandbox_id=sid, root=root), root))
    for n, (fenv, _) in enumerate(forks):
        p = h.run(fenv, f"cat /etc/archil-layer /root/app/x; echo fork{n} > /root/app/x")
        assert p.text() == "v1\ncode\n"
    for n, (fenv, root) in enumerate(forks):
        assert h.run(fenv, "cat /root/app/x").text() == f"fork{n}\n"
        assert (root.upper / "rootfs" / "root" / "app" / "x").read_text() == f"fork{n}\n"
    assert (lower / "rootfs" / "root" / "app" / "x").read_text() == "code\n"


def test_snapshot_of_a_live_upper_keeps_deletions(h: Harness) -> None:
    base_spec = h.spec()
    env = h.boot(spec=base_spec)
    h.run(env, "mkdir -p /srv/d && touch /srv/d/a /srv/d/b /srv/gone")
    env.stop(1.0)
    l1 = h.layers.path(h.layers.commit(base_spec.root.upper))
    second = h.spec(root=dataclasses.replace(h.layers.new_session("s2"), lowers=(l1,)))
    env2 = h.boot(spec=second)
    cmd = (
        "rm -rf /srv/d && mkdir /srv/d && touch /srv/d/c && rm /srv/gone /etc/hostname && "
        "ln -s /etc/passwd /root/link && echo live > /root/f && chmod 640 /root/f"
    )
    assert h.run(env2, cmd).wait().exit_code == 0
    l2 = h.layers.path(h.layers.snapshot(second.root.upper))
    assert env2.alive
    whiteout = os.lstat(l2 / "etc" / "hostname")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.readlink(l2 / "rootfs" / "root" / "link") == "/etc/passwd"
    assert stat.S_IMODE(os.stat(l2 / "rootfs" / "root" / "f").st_mode) == 0o640
    third = dataclasses.replace(h.layers.new_session("s3"), lowers=(l2, l1))
    env3 = h.boot(root=third)
    p = h.run(
        env3, "ls /srv/d; test -e /srv/gone || echo no-gone; test -e /etc/hostname || echo no-h"
    )
    assert p.text() == "c\nno-gone\nno-h\n"


def test_too_many_layers_fail_clearly(h: Harness, tmp_path: Path) -> None:
    lowers = []
    for i in range(40):
        d = tmp_path / ("layer-with-a-rather-long-name-" + "x" * 60 + f"-{i:03d}")
        (d / "rootfs").mkdir(parents=True)
        lowers.append(d)
    root = dataclasses.replace(h.layers.new_session("many"), lowers=tuple(lowers))
    with pytest.raises(BootError, match="cannot mount /: the overlay options"):
        h.boot(root=root)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("relative/path", "absolute"),
        ("/mnt/../etc", r"'\.\.'"),
        ("/", "below /"),
        ("/proc/x", "reserved"),
    ],
)
def test_bad_mount_targets_are_rejected(h: Harness, target: str, match: str) -> None:
    with pytest.raises(ValueError, match=rf"mounts\[0\]\.target.*{match}|{match}"):
        h.boot(mounts=(MountSpec(h.disk(), target),))


def test_bad_mounts_are_rejected_before_anything_starts(h: Harness) -> None:
    disk = h.disk()
    with pytest.raises(ValueError, match=r"mounts\[1\]\.target: two mounts at /data"):
        h.boot(mounts=(MountSpec(disk, "/data"), MountSpec(disk, "/data/")))
    with pytest.raises(BootError, match=r"mounts\[0\]\.source .*missing"):
        h.boot(mounts=(MountSpec(h.tmp / "missing", "/data"),))
    with pytest.raises(ValueError, match="vcpu_count"):
        h.boot(vcpu_count=0)
    assert not list((h.rt._root / "roots").iterdir())


def test_a_mount_that_fails_in_the_sandbox_is_a_boot_error(h: Harness) -> None:
    spec = h.spec(mounts=(MountSpec(h.disk(), "/etc/hostname/sub"),))
    with pytest.raises(BootError, match=r"cannot mount /etc/hostname/sub: .*Not a directory"):
        h.boot(spec=spec)
    assert not list((h.rt._root / "roots").iterdir())
    assert h.ends[spec.sandbox_id] == [], "no on_end for a sandbox that never booted"
    homes = h.rt._cgroups.homes
    assert not [d for home in homes for d in home.glob(f"{spec.sandbox_id}.*")]
    env = h.boot()
    assert h.run(env, "echo fine").text() == "fine\n"


# -- resources ------------------------------------------------------------------------------


def test_memory_limit_ends_the_process_out_of_memory(h: Harness) -> None:
    if not h.rt.capabilities["memory_limit"]:
        pytest.skip("no memory cgroup here")
    env = h.boot(mem_size_mib=64)
    p = h.run(env, "python3 -c 'b = bytearray(256 << 20); print(len(b))'")
    info = p.wait()
    assert info == ExitInfo("failed", 137, "out of memory (limit 64 MiB)")
    assert env.alive, "the agent survives an OOM kill of one of its processes"
    assert h.run(env, "echo still here").text() == "still here\n"


@pytest.mark.parametrize(("vcpus", "expected"), [(1, 1), (2, 2), (64, None)])
def test_vcpu_count_sets_cpu_affinity(h: Harness, vcpus: int, expected: int | None) -> None:
    available = len(os.sched_getaffinity(0))
    env = h.boot(vcpu_count=vcpus)
    p = h.run(env, "python3 -c 'import os; print(len(os.sched_getaffinity(0)))'")
    assert int(p.text()) == min(expected or available, available)


# -- terminals and stdin --------------------------------------------------------------------


def test_terminal_process(h: Harness) -> None:
    env = h.boot()
    p = h.start(
        env, "tty; stty size; echo $TERM; echo err >&2; read x; stty size", terminal=(100, 30)
    )
    assert wait_for(lambda: b"err" in p.out())
    lines = p.text().split()
    assert lines[0].startswith("/dev/pts/")
    assert lines[1:4] == ["30", "100", "xterm-256color"]
    p.handle.resize(120, 40)
    p.handle.write(b"go\n")
    assert p.wait().status == "completed"
    assert p.text().split()[-2:] == ["40", "120"]
    assert p.out(2) == b""


def test_stdin_write_and_close(h: Harness) -> None:
    env = h.boot()
    p = h.start(env, "cat")
    p.handle.write(b"hello ")
    p.handle.write(b"\xffworld\n")
    p.handle.close_stdin()
    assert p.wait() == ExitInfo("completed", 0, None)
    assert p.out() == b"hello \xffworld\n"
    with pytest.raises(BrokenPipeError):
        p.handle.write(b"late")


def test_terminal_close_stdin_sends_eof(h: Harness) -> None:
    env = h.boot()
    p = h.start(env, "cat > /dev/null; echo done", terminal=(80, 24))
    p.handle.write(b"abc\n")
    p.handle.close_stdin()
    assert p.wait().status == "completed"
    assert "done" in p.text()


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
