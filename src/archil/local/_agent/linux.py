"""System calls the standard library lacks, the capability bounding set, process helpers."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_CAPBSET_DROP = 24
# The capabilities a sandbox's processes keep (the common container default): enough for
# package managers and servers run as root, not enough to mount, load modules, change the
# network, the clock or the kernel's settings, or to trace processes they do not own.
KEPT_CAPABILITIES = frozenset(
    {
        0,  # CAP_CHOWN
        1,  # CAP_DAC_OVERRIDE
        3,  # CAP_FOWNER
        4,  # CAP_FSETID
        5,  # CAP_KILL
        6,  # CAP_SETGID
        7,  # CAP_SETUID
        8,  # CAP_SETPCAP
        10,  # CAP_NET_BIND_SERVICE
        13,  # CAP_NET_RAW
        18,  # CAP_SYS_CHROOT
        27,  # CAP_MKNOD
        29,  # CAP_AUDIT_WRITE
        31,  # CAP_SETFCAP
    }
)
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
KEEP_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, call: str, path: str = "") -> None:
    """Raise ``OSError`` naming ``call`` (and ``path``) when a libc call returned -1."""
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{call}: {os.strerror(err)}", path or None)


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    """mount(2)."""
    ret = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(ret, "mount", target)


def umount2(target: str, flags: int) -> None:
    """umount2(2)."""
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), "umount2", target)


def unshare(flags: int) -> None:
    """unshare(2)."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def drop_capabilities() -> None:
    """Remove every capability but :data:`KEPT_CAPABILITIES` from the bounding set.

    Called by the agent before it boots: the processes it forks inherit the bounding
    set, so what they run (and any set-user-ID program after it) can never hold a
    dropped capability. A process without ``CAP_SETPCAP``
    (an ordinary user on the host, in process mode) has none of them to lose.
    """
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 40
    for cap in range(last + 1):
        if cap in KEPT_CAPABILITIES:
            continue
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError as e:
            if e.errno == errno.EINVAL:
                continue
            if e.errno == errno.EPERM and os.geteuid() != 0:
                return
            raise


def prctl(option: int, arg: int) -> None:
    """prctl(2) with one argument."""
    z = ctypes.c_ulong(0)
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), z, z, z), "prctl")


def pivot_root(new: str, old: str) -> None:
    """pivot_root(2) (glibc has no wrapper)."""
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown machine {os.uname().machine}")
    _check(_libc.syscall(ctypes.c_long(nr), _b(new), _b(old)), "pivot_root", new)


def die_with_parent(alive_fd: int | None = None, parent: int | None = None) -> None:
    """``PR_SET_PDEATHSIG=SIGKILL``, then exit at once if the parent is already gone.

    ``alive_fd`` is the read end of a pipe whose write end only the parent holds (it reads
    as end-of-file once the parent is dead); ``parent`` is its pid where it is visible.
    """
    prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if parent is not None and os.getppid() != parent:
        os._exit(1)
    if alive_fd is not None and select.select([alive_fd], [], [], 0)[0]:
        os._exit(1)


def wait_status(status: int) -> tuple[int | None, int | None]:
    """(exit code, signal) of a wait status."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status), None


def write_all(path: str, data: str) -> None:
    """Write ``data`` to an existing file (a ``/proc`` setting) in one ``write``."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
