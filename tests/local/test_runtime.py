"""The sandbox runtime engine, with real namespaces, mounts, cgroups and processes.

Run it inside ``unshare --pid --fork --mount --mount-proc`` while developing, so that a bug
in a kill path can only reach processes of that namespace.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
import time
import uuid
from pathlib import Path

import pytest
from runtime_harness import (  # tests/local, which pytest puts on the path
    Harness,
    env_of,
    pid_alive,
    wait_for,
)

from archil.local.runtime import (
    BASE_PATH,
    BootError,
    Runtime,
    SpawnError,
)
from archil.local.spec import ExitInfo, ImageEnv, MountSpec

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


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
    assert "_agent.zygote" in cmdline
    assert int(count) <= 4, "only the sandbox's own processes are in its /proc"


def test_processes_keep_only_the_container_capabilities(h: Harness) -> None:
    from archil.local._agent.linux import KEPT_CAPABILITIES

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
