"""Per-sandbox cgroups: a memory limit with OOM detection, and a freezer for pause/resume.

Layout
------
Every sandbox gets cgroups named after it under one ``archil`` base per hierarchy
(beneath this process's own cgroup where that is writable, else at the hierarchy root;
``<base>`` below includes the owner directory described further down):

- **cgroup v1** (separate hierarchies): ``memory/<base>/<name>`` holds the sandbox's
  helper, its agent and every user process (the agent's helper joins it, the rest
  inherit it); ``freezer/<base>/<name>`` holds the user processes only, so a frozen
  sandbox's agent still answers.
- **cgroup v2** (one hierarchy, no processes in inner cgroups): ``<base>/<name>`` carries
  ``memory.max`` (and ``memory.swap.max 0``) for its whole subtree, with two children:
  ``agent`` (the helper and the agent) and ``procs`` (the user processes, frozen with
  ``cgroup.freeze``).

On a hybrid machine (v1 controllers, plus the v2 hierarchy at ``/sys/fs/cgroup/unified``
without controllers) the memory limit comes from v1 and the freezer from v1's freezer
hierarchy when it is mounted, else from v2's ``cgroup.freeze``.

A sandbox's processes join by writing ``0`` to the files listed in
:attr:`SandboxCgroup.agent_join` and :attr:`SandboxCgroup.user_join` (the runtime
opens them and hands the descriptors over, so joining works after ``pivot_root``). In
v1 these are the ``tasks`` files: the processes that join are single-threaded, and
moving one thread skips the global ``cgroup_threadgroup_rwsem`` whose write side costs
an RCU grace period (5-15 ms) for a whole process moved through ``cgroup.procs``. v2
has no such shortcut across cgroups (``favordynmods`` on the hierarchy removes the cost).

Each process keeps its sandboxes in a directory of its own in each base,
``<base>/o-<16 hex>``, whose name is that of a lock file it holds (``flock``) in
``$TMPDIR/archil-cgroups-<uid>/`` for as long as it lives. :meth:`Cgroups.cleanup_stale`
removes the directories of processes whose lock is free (they died), killing what is still
in those cgroups and only that; it never touches a live runtime's cgroups, even an idle
sandbox's empty ones, nor anything that is not an owner directory.

Detection (:meth:`Cgroups.detect`) happens once, with a ``reason`` for what is missing.
A sandbox cgroup that cannot be removed because processes are left in it gets those
processes, and only those, killed.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import re
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupError", "Cgroups", "SandboxCgroup"]

logger = logging.getLogger("archil")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_PROBE_LIMIT = 64 << 20


class CgroupError(OSError):
    """A sandbox's cgroups could not be created or configured."""


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


_OWNER_RE = re.compile(r"^o-[0-9a-f]{16}$")
_owner: tuple[str, int] | None = None
_owner_lock = threading.Lock()


def _lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"archil-cgroups-{os.geteuid()}"


def _owner_id() -> str:
    """This process's owner id; its lock file stays locked for as long as the process lives."""
    global _owner
    with _owner_lock:
        if _owner is None:
            owner = f"o-{uuid.uuid4().hex[:16]}"
            d = _lock_dir()
            d.mkdir(mode=0o700, exist_ok=True)
            # Locked before it appears under its name, so that it is never seen unlocked.
            tmp = d / f".{owner}.tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(tmp, d / f"{owner}.lock")
            _owner = (owner, fd)
        return _owner[0]


_homes_created: set[Path] = set()


@atexit.register
def _drop_owner_lock() -> None:
    """At a clean exit with every home directory gone, the lock file goes too."""
    if _owner is not None and not any(h.exists() for h in _homes_created):
        with contextlib.suppress(OSError):
            (_lock_dir() / f"{_owner[0]}.lock").unlink()


def _owner_is_gone(owner: str) -> bool:
    """True only when ``owner``'s lock file exists and nobody holds it (its process died).

    A missing lock file proves nothing (another ``/tmp``, say), so it counts as alive.
    """
    try:
        fd = os.open(_lock_dir() / f"{owner}.lock", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


@dataclass(frozen=True)
class _Hierarchy:
    """One mounted cgroup hierarchy: where it is, its version, and its base directory.

    The sandboxes of this process go in ``home``, a directory of the base named after the
    process's owner id, so that no other process ever mistakes them for stale ones.
    """

    mount: Path
    version: int
    base: Path

    @property
    def home(self) -> Path:
        return self.base / _owner_id()

    def ensure_home(self, kind: str) -> Path:
        """``home``, created (with the base, which an idle runtime's ``close`` removes)."""
        home = self.home
        if not home.is_dir():
            home.mkdir(parents=True, exist_ok=True)
            _homes_created.add(home)
        if self.version == 2 and kind == "memory":
            for ctl in (self.base / "cgroup.subtree_control", home / "cgroup.subtree_control"):
                if "memory" not in _read(ctl).split():
                    _write(ctl, "+memory")
        return home


def _mountinfo() -> Iterator[tuple[Path, str, list[str]]]:
    """(mount point, filesystem type, super options) of every mount of this process."""
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        parts = left.split()
        if len(fields) >= 3 and len(parts) >= 5:
            yield Path(parts[4]), fields[0], fields[2].split(",")


def _own_cgroup(controller: str | None) -> str:
    """This process's cgroup path for a v1 ``controller`` (None: the v2 hierarchy)."""
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if controller is None and parts[0] == "0" and parts[1] == "":
            return parts[2] or "/"
        if controller is not None and controller in parts[1].split(","):
            return parts[2] or "/"
    return "/"


def _v1_mount(controller: str) -> Path | None:
    for mount, fstype, opts in _mountinfo():
        if fstype == "cgroup" and controller in opts:
            return mount
    return None


def _v2_mount(root: Path) -> tuple[Path | None, bool]:
    """The v2 hierarchy and whether it is the only one (pure v2, not hybrid)."""
    if (root / "cgroup.controllers").exists():
        return root, True
    if (root / "unified" / "cgroup.controllers").exists():
        return root / "unified", False
    for mount, fstype, _ in _mountinfo():
        if fstype == "cgroup2":
            return mount, False
    return None, False


def _candidates(mount: Path, own: str, *, v2_memory: bool) -> list[Path]:
    """Where to put the ``archil`` base in a hierarchy: beside or under our cgroup, or the root."""
    own_dir = mount / own.lstrip("/")
    out: list[Path] = []
    if own != "/" and own_dir.is_dir():
        # v2 with controllers: our own cgroup holds processes, so the base is its sibling.
        out.append((own_dir.parent if v2_memory else own_dir) / "archil")
    out.append(mount / "archil")
    return list(dict.fromkeys(out))


def _probe(base: Path, version: int, kind: str) -> str | None:
    """Create ``base`` and try a throwaway child in it; None when it works, else why not."""
    probe = base / f"probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        base.mkdir(exist_ok=True)
        if version == 2 and kind == "memory":
            for ctl in (base.parent / "cgroup.subtree_control", base / "cgroup.subtree_control"):
                if "memory" not in _read(ctl).split():
                    _write(ctl, "+memory")
        probe.mkdir()
        try:
            if kind == "memory":
                name = "memory.limit_in_bytes" if version == 1 else "memory.max"
                _write(probe / name, str(_PROBE_LIMIT))
            else:
                name = "freezer.state" if version == 1 else "cgroup.freeze"
                if not (probe / name).exists():
                    return f"{base}: no {name}"
        finally:
            probe.rmdir()
    except OSError as e:
        return f"{base}: {e.strerror or e}"
    return None


def _pick(mount: Path, version: int, own: str, kind: str) -> tuple[_Hierarchy | None, str]:
    errors: list[str] = []
    for base in _candidates(mount, own, v2_memory=version == 2 and kind == "memory"):
        err = _probe(base, version, kind)
        if err is None:
            return _Hierarchy(mount, version, base), ""
        errors.append(err)
    return None, "; ".join(errors)


def _pids_of(path: Path) -> set[int]:
    """The processes in the cgroup at ``path`` and its descendants."""
    out: set[int] = set()
    for dirpath, _dirs, _files in os.walk(path):
        out |= {int(x) for x in _read(Path(dirpath) / "cgroup.procs").split() if x.isdigit()}
    return out


def _remove_tree(path: Path) -> bool:
    """``rmdir`` the cgroup at ``path`` and its children, deepest first; True when gone."""
    try:
        children = [p for p in path.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return True
    except OSError:
        children = []
    ok = all([_remove_tree(child) for child in children])
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return ok


def _kill_pids(pids: set[int]) -> None:
    me = os.getpid()
    for pid in pids:
        if pid > 1 and pid != me:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


class SandboxCgroup:
    """The cgroups of one sandbox (see the module documentation for the layout)."""

    def __init__(
        self,
        name: str,
        dirs: tuple[Path, ...],
        *,
        memory: tuple[Path, int] | None,
        freezer: tuple[Path, int] | None,
        agent_join: tuple[Path, ...],
        user_join: tuple[Path, ...],
        limit_mib: int | None,
    ) -> None:
        self.name = name
        self.dirs = dirs
        """The top cgroup directory of this sandbox in each hierarchy it uses."""
        self.agent_join = agent_join
        """Files the sandbox's helper writes ``0`` to (its agent and processes inherit them)."""
        self.user_join = user_join
        """Files every user process writes ``0`` to before it runs."""
        self.limit_mib = limit_mib
        """The memory limit, or None where there is none."""
        self._memory = memory
        self._freezer = freezer

    @property
    def can_freeze(self) -> bool:
        """True when the user processes are in a freezer cgroup."""
        return self._freezer is not None

    def oom_kills(self) -> int:
        """How many processes the OOM killer has killed in this sandbox so far."""
        if self._memory is None:
            return 0
        path, version = self._memory
        name = "memory.oom_control" if version == 1 else "memory.events"
        total = 0
        for line in _read(path / name).splitlines():
            key, _, value = line.partition(" ")
            if key in ("oom_kill", "oom_group_kill") and value.strip().isdigit():
                total = max(total, int(value))
        return total

    def freeze(self, timeout: float = 5.0) -> None:
        """Freeze every user process; returns once they are all frozen.

        Raises :class:`CgroupError` when there is no freezer or it does not settle in time.
        """
        self._set_frozen(True, timeout)

    def thaw(self, timeout: float = 5.0) -> None:
        """Undo :meth:`freeze`."""
        self._set_frozen(False, timeout)

    def _set_frozen(self, frozen: bool, timeout: float) -> None:
        if self._freezer is None:
            raise CgroupError("this sandbox has no freezer cgroup")
        path, version = self._freezer
        if version == 1:
            ctl, value = path / "freezer.state", "FROZEN" if frozen else "THAWED"
        else:
            ctl, value = path / "cgroup.freeze", "1" if frozen else "0"
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            # Written again while it settles: the v1 freezer asks each task to freeze only
            # when the state is written, and a task that went to sleep in between (a vfork
            # parent waiting for its frozen child: dash runs commands with vfork) is missed.
            try:
                _write(ctl, value)
            except OSError as e:
                raise CgroupError(e.errno, f"cannot write {value} to {ctl}: {e.strerror}") from e
            for _ in range(4):
                if self._settled(path, version, frozen):
                    return
                time.sleep(delay)
                delay = min(0.01, delay * 2)
            if time.monotonic() > deadline:
                raise CgroupError(f"{path} did not become {'frozen' if frozen else 'thawed'}")

    @staticmethod
    def _settled(path: Path, version: int, frozen: bool) -> bool:
        if version == 1:
            state = _read(path / "freezer.state").strip()
            return state == ("FROZEN" if frozen else "THAWED")
        for line in _read(path / "cgroup.events").splitlines():
            key, _, value = line.partition(" ")
            if key == "frozen":
                return value.strip() == ("1" if frozen else "0")
        return True

    def pids(self) -> set[int]:
        """Every process in any of this sandbox's cgroups (as pids of this process's namespace)."""
        out: set[int] = set()
        for d in self.dirs:
            out |= _pids_of(d)
        return out

    def remove(self, limit: float = 5.0) -> None:
        """Remove the cgroups, killing any process still in them (and only those).

        Thaws first: a frozen process does not die of SIGKILL until it is thawed.
        """
        if self._freezer is not None:
            with contextlib.suppress(CgroupError):
                self.thaw(timeout=1.0)
        deadline = time.monotonic() + limit
        delay = 0.001
        for d in self.dirs:
            while not _remove_tree(d):
                if time.monotonic() > deadline:
                    logger.warning("could not remove the cgroup %s", d)
                    break
                _kill_pids(_pids_of(d))
                time.sleep(delay)
                delay = min(0.05, delay * 2)


class Cgroups:
    """Creates per-sandbox cgroups; build it with :meth:`detect`."""

    def __init__(
        self,
        *,
        memory: _Hierarchy | None,
        freezer: _Hierarchy | None,
        reason: str | None,
    ) -> None:
        self._memory = memory
        self._freezer = freezer
        self.reason = reason
        """Why the memory limit or the freezer is not available, or None."""

    @classmethod
    def detect(cls, root: Path = Path("/sys/fs/cgroup"), *, freezer_v2: bool = False) -> Cgroups:
        """Find writable memory and freezer hierarchies under ``root``.

        ``freezer_v2`` prefers v2's ``cgroup.freeze`` over a v1 freezer hierarchy (for tests
        of the v2 code on a hybrid machine).
        """
        reasons: list[str] = []
        v2, pure_v2 = _v2_mount(root)
        memory: _Hierarchy | None = None
        freezer: _Hierarchy | None = None
        if pure_v2 and v2 is not None:
            if "memory" in _read(v2 / "cgroup.controllers").split():
                memory, err = _pick(v2, 2, _own_cgroup(None), "memory")
                if memory is None:
                    reasons.append(f"cannot create memory cgroups ({err})")
            else:
                reasons.append("the cgroup v2 memory controller is not available")
        else:
            mount = _v1_mount("memory")
            if mount is None:
                reasons.append("no cgroup memory controller is mounted")
            else:
                memory, err = _pick(mount, 1, _own_cgroup("memory"), "memory")
                if memory is None:
                    reasons.append(f"cannot create memory cgroups ({err})")
        errors: list[str] = []
        v1_freezer = None if pure_v2 else _v1_mount("freezer")
        options: list[tuple[Path, int, str]] = []
        if v1_freezer is not None:
            options.append((v1_freezer, 1, _own_cgroup("freezer")))
        if v2 is not None:
            options.insert(len(options) if not freezer_v2 else 0, (v2, 2, _own_cgroup(None)))
        for mount, version, own in options:
            freezer, err = _pick(mount, version, own, "freezer")
            if freezer is not None:
                break
            errors.append(err)
        if freezer is None:
            reasons.append("no freezer cgroup (" + ("; ".join(errors) or "none is mounted") + ")")
        return cls(memory=memory, freezer=freezer, reason="; ".join(reasons) or None)

    @classmethod
    def disabled(cls, reason: str) -> Cgroups:
        """A :class:`Cgroups` that creates nothing."""
        return cls(memory=None, freezer=None, reason=reason)

    @property
    def memory_limit(self) -> bool:
        """True when sandboxes get a memory limit."""
        return self._memory is not None

    @property
    def freezer(self) -> bool:
        """True when sandboxes get a freezer cgroup."""
        return self._freezer is not None

    @property
    def version(self) -> str | None:
        """``"v1"`` or ``"v2"``: the memory controller's hierarchy, else the freezer's."""
        h = self._memory or self._freezer
        return None if h is None else f"v{h.version}"

    @property
    def freezer_version(self) -> str | None:
        """``"v1"`` or ``"v2"``: the freezer's hierarchy, or None without a freezer."""
        return None if self._freezer is None else f"v{self._freezer.version}"

    @property
    def bases(self) -> tuple[Path, ...]:
        """The base directories in use (one per hierarchy, shared by every runtime)."""
        return tuple(dict.fromkeys(h.base for h in (self._memory, self._freezer) if h))

    @property
    def homes(self) -> tuple[Path, ...]:
        """This process's directories in the bases, where its sandboxes' cgroups go."""
        return tuple(dict.fromkeys(h.home for h in (self._memory, self._freezer) if h))

    def create(self, name: str, mem_mib: int) -> SandboxCgroup:
        """Create the cgroups of one sandbox: ``name`` must be unique among live sandboxes."""
        if not _NAME_RE.match(name) or name.startswith("probe-"):
            raise ValueError(f"invalid cgroup name {name!r}")
        created: list[Path] = []
        try:
            try:
                return self._create(name, mem_mib, created)
            except FileNotFoundError:
                # Another runtime of this process removed the (then empty) home: once more.
                for d in reversed(created):
                    _remove_tree(d)
                created.clear()
                return self._create(name, mem_mib, created)
        except OSError as e:
            for d in reversed(created):
                _remove_tree(d)
            if isinstance(e, CgroupError):
                raise
            raise CgroupError(
                e.errno, f"cannot create the cgroup {e.filename}: {e.strerror}"
            ) from e

    def _mkdir(self, path: Path, created: list[Path]) -> Path:
        with contextlib.suppress(OSError):
            _remove_tree(path)
        path.mkdir(parents=True)
        created.append(path)
        return path

    def _create(self, name: str, mem_mib: int, created: list[Path]) -> SandboxCgroup:
        agent: list[Path] = []
        user: list[Path] = []
        memory: tuple[Path, int] | None = None
        freezer: tuple[Path, int] | None = None
        v2_top: Path | None = None
        mem = self._memory
        if mem is not None:
            top = self._mkdir(mem.ensure_home("memory") / name, created)
            limit = str(mem_mib << 20)
            if mem.version == 1:
                _write(top / "memory.limit_in_bytes", limit)
                with contextlib.suppress(OSError):
                    _write(top / "memory.memsw.limit_in_bytes", limit)
                agent.append(top / "tasks")
            else:
                _write(top / "memory.max", limit)
                with contextlib.suppress(OSError):
                    _write(top / "memory.swap.max", "0")
                agent.append(self._mkdir(top / "agent", []) / "cgroup.procs")
                v2_top = top
            memory = (top, mem.version)
        frz = self._freezer
        if frz is not None:
            if frz.version == 1:
                top = self._mkdir(frz.ensure_home("freezer") / name, created)
                freezer = (top, 1)
            else:
                if v2_top is None or mem is None or frz.base != mem.base:
                    v2_top = self._mkdir(frz.ensure_home("freezer") / name, created)
                procs = v2_top / "procs"
                procs.mkdir(exist_ok=True)
                freezer = (procs, 2)
            user.append(freezer[0] / ("tasks" if freezer[1] == 1 else "cgroup.procs"))
        elif v2_top is not None:
            procs = v2_top / "procs"
            procs.mkdir(exist_ok=True)
            user.append(procs / "cgroup.procs")
        return SandboxCgroup(
            name,
            tuple(created),
            memory=memory,
            freezer=freezer,
            agent_join=tuple(agent),
            user_join=tuple(user),
            limit_mib=mem_mib if memory is not None else None,
        )

    def cleanup_stale(self) -> None:
        """Remove the cgroups left by runtimes that died (their owner lock is free).

        Processes still in them (a crashed process-mode sandbox's orphans) are killed: they
        are in the dead runtime's cgroups, and only those. Directories that are not owner
        directories, and those of live runtimes, are left alone.
        """
        mine = _owner_id()
        owners: dict[str, list[Path]] = {}
        for base in self.bases:
            try:
                for p in base.iterdir():
                    if _OWNER_RE.match(p.name) and p.name != mine and p.is_dir():
                        owners.setdefault(p.name, []).append(p)
            except OSError:
                continue
        for owner, dirs in owners.items():
            if _owner_is_gone(owner):
                _remove_stale_owner(owner, dirs)

    def close(self) -> None:
        """Remove this process's directories, and the bases, when nothing is left in them."""
        for d in (*self.homes, *self.bases):
            with contextlib.suppress(OSError):
                d.rmdir()


def _thaw_tree(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path):
        with contextlib.suppress(OSError):
            if "freezer.state" in files:
                _write(Path(dirpath) / "freezer.state", "THAWED")
            elif "cgroup.freeze" in files:
                _write(Path(dirpath) / "cgroup.freeze", "0")


def _remove_stale_owner(owner: str, dirs: list[Path], limit: float = 5.0) -> None:
    """Empty and remove a dead runtime's directories (one per hierarchy), then its lock."""
    deadline = time.monotonic() + limit
    for d in dirs:
        _thaw_tree(d)
    for d in dirs:
        while not _remove_tree(d):
            if time.monotonic() > deadline:
                logger.warning("could not remove the stale cgroup %s", d)
                return
            _kill_pids(_pids_of(d))
            time.sleep(0.01)
    # The lock file stays: a base this process cannot see may still hold the owner's cgroups.
    logger.info("removed the cgroups of a runtime that died (%s)", owner)
