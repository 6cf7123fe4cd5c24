"""Run containers as Linux processes for the local control plane.

Isolation modes
---------------
**Namespace mode** (the default where it works): each container is started with
util-linux ``unshare --mount --pid --fork --kill-child --propagation private
--mount-proc`` (plus ``--user --map-root-user`` when not root). Inside its private mount
namespace a small ``/bin/sh`` init, PID 1 of the container's PID namespace, bind-mounts
the disk at ``/mnt/archil`` and every additional mount at its path (``remount,bind,ro``
for read-only ones, so writes fail with ``EROFS``), changes directory, then runs the
command as its child and exits with its status. When PID 1 exits the kernel kills every
other process of the namespace, so nothing a container starts (double forks and
``setsid`` daemons included) outlives it.

Mountpoints that do not exist are created on the host and removed again, when empty,
after the last container using them ends (in any process: users hold a shared ``flock``
on a lock file in ``/tmp/archil-mountpoints-<uid>/``). Where one cannot be created (not root), a
tmpfs is mounted over its nearest existing ancestor inside the namespace only (for
``/mnt/archil``: over ``/mnt``), and the mountpoint is made there.

**Process mode** (the fallback where namespaces are not available, or when disabled with
``Runtime(..., namespaces=False)``): the command runs as a plain process in a new
session. The runtime logs one warning. Nothing is mounted; instead:

- ``ARCHIL_DISK_PATH`` is the host directory of the disk (the mount whose container path
  is ``/mnt/archil``);
- ``ARCHIL_MOUNT_COUNT`` is the number of additional mounts and, for each ``N`` from 0,
  ``ARCHIL_MOUNT_<N>`` is its host directory and ``ARCHIL_MOUNT_<N>_PATH`` the path it
  was asked for. Read-only mounts are not enforced in this mode.

In namespace mode the same variables exist, pointing at the mounted paths
(``ARCHIL_DISK_PATH=/mnt/archil``, ``ARCHIL_MOUNT_<N>`` equal to ``ARCHIL_MOUNT_<N>_PATH``).
``ARCHIL_ISOLATION`` is ``namespace`` or ``process``.

Resources
---------
``vcpu_count`` pins the container to that many CPUs (``sched_setaffinity``, capped at the
CPUs this process may use, least-loaded CPUs first). ``mem_size_mib`` is a memory cgroup
limit (cgroup v1 ``memory.limit_in_bytes`` under ``<own cgroup>/archil/<container id>``,
or cgroup v2 ``memory.max``); the process joins the cgroup before ``exec``. A container
killed by the OOM killer ends with ``"out of memory (limit N MiB)"``. Where cgroups are not
writable, :attr:`Runtime.capabilities` says so and containers run without a limit.

Lifetime
--------
Processes are spawned from one long-lived thread with ``PR_SET_PDEATHSIG=SIGKILL``, so if
the server process dies, its containers die too (in namespace mode the whole container;
in process mode only the top process, as its descendants are not tied to it).
:meth:`Runtime.stop` sends SIGTERM to every process of the container (PID 1, the init,
only relays the exit status), then SIGKILL after the grace period, and returns once no
process of the container is left and ``on_exit`` has been called. Every container process
also carries ``ARCHIL_CONTAINER_TOKEN`` in its environment, used to find stragglers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import posixpath
import queue
import re
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from archil.local import _proc
from archil.local.images import DEFAULT_PATH, ImageEnv
from archil.local.logs import LogStore

__all__ = [
    "DISK_MOUNT_PATH",
    "ContainerSpec",
    "ContainerStartError",
    "MountSpec",
    "Runtime",
]

logger = logging.getLogger("archil")

DISK_MOUNT_PATH = "/mnt/archil"
"""Where a container finds its disk."""

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_OUTPUT_CAP = 16 * 1024 * 1024
_IDLE = "exec sleep 2147483647"


@dataclass
class MountSpec:
    """A host directory to mount in a container (the disk is the one at ``/mnt/archil``)."""

    host_path: Path
    container_path: str
    read_only: bool = False


@dataclass
class ContainerSpec:
    """Everything the runtime needs to run one container."""

    container_id: str
    command: str | None = None
    initialization_script: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[MountSpec] = field(default_factory=list)
    vcpu_count: int = 1
    mem_size_mib: int = 512
    image: ImageEnv | None = None
    ports: list[int] = field(default_factory=list)
    timeout_seconds: int | None = None
    workdir: str | None = None


class ContainerStartError(RuntimeError):
    """A container could not be started (raised by :meth:`Runtime.run_to_completion`)."""


# ---------------------------------------------------------------------------
# Mountpoints created on the host, shared by every runtime on this machine
# ---------------------------------------------------------------------------

_mp_lock = threading.Lock()


def _lease_dir() -> Path:
    d = Path("/tmp") / f"archil-mountpoints-{os.geteuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


@dataclass
class _Lease:
    """A container's use of a host mountpoint: a shared ``flock`` held while it runs."""

    target: str
    fd: int
    stem: Path


def _acquire_mountpoint(target: str) -> _Lease | None:
    """Make sure ``target`` exists on the host and hold it; None when it cannot be created.

    Every user of a mountpoint, in any process, holds a shared lock on a lock file named
    after it. The directories the runtime created are listed next to the lock file and
    removed by the last user (the one that gets the lock exclusively), if empty. Removing
    a directory that is still a mountpoint in another container would unmount it there.
    """

    try:
        stem = _lease_dir() / hashlib.sha256(target.encode()).hexdigest()[:32]
    except OSError:
        return None
    while True:
        try:
            fd = os.open(f"{stem}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            if os.stat(f"{stem}.lock").st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        if os.path.isdir(target):
            return _Lease(target, fd, stem)
        missing: list[str] = []
        d = target
        while not os.path.isdir(d):
            if os.path.lexists(d) or posixpath.dirname(d) == d:
                raise OSError(errno.ENOTDIR, "not a directory", d)
            missing.append(d)
            d = posixpath.dirname(d)
        created: list[str] = []
        with _mp_lock:
            for path in reversed(missing):
                try:
                    os.mkdir(path, 0o755)
                except FileExistsError:
                    continue
                created.append(path)
        if created:
            with open(f"{stem}.created", "a") as f:
                f.write("".join(c + "\n" for c in created))
        return _Lease(target, fd, stem)
    except OSError:
        os.close(fd)
        return None


def _release_mountpoint(lease: _Lease) -> None:
    os.close(lease.fd)
    try:
        fd = os.open(f"{lease.stem}.lock", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return
        try:
            with open(f"{lease.stem}.created") as f:
                created = {line.strip() for line in f if line.strip()}
        except OSError:
            created = set()
        for d in sorted(created, key=len, reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(d)
        if not any(os.path.isdir(d) for d in created):
            with contextlib.suppress(OSError):
                os.unlink(f"{lease.stem}.created")
            with contextlib.suppress(OSError):
                os.unlink(f"{lease.stem}.lock")
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# cgroups
# ---------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _own_cgroup(controller: str | None) -> str:
    """This process's cgroup path for ``controller`` (None: the v2 hierarchy)."""
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if controller is None and parts[0] == "0" and parts[1] == "":
            return parts[2] or "/"
        if controller is not None and controller in parts[1].split(","):
            return parts[2] or "/"
    return "/"


def _v1_memory_mount() -> Path | None:
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        if len(fields) >= 3 and fields[0] == "cgroup" and "memory" in fields[2].split(","):
            return Path(left.split()[4])
    return None


class _Cgroup:
    """The memory cgroup of one container."""

    def __init__(self, path: Path, version: int, limit_mib: int) -> None:
        self.path = path
        self.version = version
        self.limit_mib = limit_mib

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs")

    def pids(self) -> set[int]:
        return {int(x) for x in _read(self.path / "cgroup.procs").split() if x.isdigit()}

    def oom_killed(self) -> bool:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in _read(self.path / name).splitlines():
            key, _, value = line.partition(" ")
            if key in ("oom_kill", "oom_group_kill") and value.strip().isdigit() and int(value) > 0:
                return True
        return False

    def remove(self) -> None:
        for attempt in range(100):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                pids = self.pids()
                if pids:
                    _proc.kill_pids(pids, signal.SIGKILL)
                time.sleep(min(0.05, 0.002 * (attempt + 1)))
        logger.warning("could not remove cgroup %s", self.path)


class _Cgroups:
    """Creates per-container memory cgroups under a base directory."""

    def __init__(self, base: Path, version: int) -> None:
        self.base = base
        self.version = version

    @classmethod
    def detect(cls) -> tuple[_Cgroups | None, str | None]:
        v2_root = Path("/sys/fs/cgroup")
        if (v2_root / "cgroup.controllers").exists():
            if "memory" not in _read(v2_root / "cgroup.controllers").split():
                return None, "the cgroup v2 memory controller is not available"
            own = _own_cgroup(None)
            candidates = [v2_root / "archil"]
            if own != "/":
                candidates.append((v2_root / own.lstrip("/")).parent / "archil")
            errors: list[str] = []
            for base in candidates:
                err = cls._try(base, 2)
                if err is None:
                    return cls(base, 2), None
                errors.append(err)
            return None, "cannot create memory cgroups: " + "; ".join(errors)
        mount = _v1_memory_mount()
        if mount is None:
            return None, "no cgroup memory controller is mounted"
        own = _own_cgroup("memory")
        candidates = []
        if own != "/" and (mount / own.lstrip("/")).is_dir():
            candidates.append(mount / own.lstrip("/") / "archil")
        candidates.append(mount / "archil")
        errors = []
        for base in candidates:
            err = cls._try(base, 1)
            if err is None:
                return cls(base, 1), None
            errors.append(err)
        return None, "cannot create memory cgroups: " + "; ".join(errors)

    @staticmethod
    def _try(base: Path, version: int) -> str | None:
        probe = base / f"probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            base.mkdir(exist_ok=True)
            if version == 2:
                parent_ctl = base.parent / "cgroup.subtree_control"
                if "memory" not in _read(parent_ctl).split():
                    _write(parent_ctl, "+memory")
                if "memory" not in _read(base / "cgroup.subtree_control").split():
                    _write(base / "cgroup.subtree_control", "+memory")
            probe.mkdir()
            try:
                limit_file = "memory.limit_in_bytes" if version == 1 else "memory.max"
                _write(probe / limit_file, str(64 << 20))
            finally:
                probe.rmdir()
        except OSError as e:
            return f"{base}: {e.strerror or e}"
        return None

    def create(self, name: str, mem_mib: int) -> _Cgroup:
        path = self.base / name
        with contextlib.suppress(OSError):
            path.rmdir()
        for attempt in range(5):
            try:
                path.mkdir()
                break
            except FileNotFoundError:
                if attempt == 4:
                    raise
                self.base.mkdir(exist_ok=True)
                if self.version == 2:
                    with contextlib.suppress(OSError):
                        _write(self.base / "cgroup.subtree_control", "+memory")
        limit = str(mem_mib * 1024 * 1024)
        try:
            if self.version == 1:
                _write(path / "memory.limit_in_bytes", limit)
                with contextlib.suppress(OSError):
                    _write(path / "memory.memsw.limit_in_bytes", limit)
            else:
                _write(path / "memory.max", limit)
                with contextlib.suppress(OSError):
                    _write(path / "memory.swap.max", "0")
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            raise
        return _Cgroup(path, self.version, mem_mib)

    def cleanup_stale(self, older_than: float = 60.0) -> None:
        """Remove empty container cgroups left by a process that crashed."""
        try:
            entries = list(self.base.iterdir())
        except OSError:
            return
        now = time.time()
        for entry in entries:
            try:
                if not entry.is_dir() or now - entry.stat().st_mtime < older_than:
                    continue
            except OSError:
                continue
            if not _read(entry / "cgroup.procs").split():
                with contextlib.suppress(OSError):
                    entry.rmdir()

    def remove_base(self) -> None:
        with contextlib.suppress(OSError):
            self.base.rmdir()


# ---------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------


@dataclass
class _Mount:
    host: str
    target: str
    read_only: bool
    stage: str | None = None


Sink = Callable[[str, str], None]


class _Container:
    """The runtime's view of one container."""

    def __init__(
        self,
        spec: ContainerSpec,
        on_running: Callable[[], None],
        on_exit: Callable[[int | None, str | None], None],
        sink: Sink,
        log_system: bool,
    ) -> None:
        self.spec = spec
        self.id = spec.container_id
        self.on_running = on_running
        self.on_exit = on_exit
        self.sink = sink
        self.log_system = log_system
        self.lock = threading.Lock()
        self.state: Literal["queued", "starting", "running", "exited"] = "queued"
        self.mode: Literal["namespace", "process"] = "process"
        self.token = f"{self.id}.{uuid.uuid4().hex[:12]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ns_fd: int | None = None
        self.ns_link: str | None = None
        self.init_pid: int | None = None
        self.killed_init = False
        self.cgroup: _Cgroup | None = None
        self.cpus: list[int] = []
        self.mountpoints: list[_Lease] = []
        self.stage_dir: Path | None = None
        self.status_fd: int | None = None
        self.pumps: list[threading.Thread] = []
        self.waiter: threading.Thread | None = None
        self.cancelled = False
        self.stop_requested = False
        self.kill_reason: str | None = None
        self.setup_error: str | None = None
        self.started_at = time.monotonic()
        self.deadline = self.started_at + spec.timeout_seconds if spec.timeout_seconds else None
        self.running_at: float | None = None
        self.exited = threading.Event()
        self.done = threading.Event()
        self.exit_code: int | None = None
        self.reason: str | None = None


class _Spawner:
    """One long-lived thread that forks every container (``PR_SET_PDEATHSIG`` follows it)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="archil-spawner", daemon=True
                )
                self._thread.start()
        self._queue.put(fn)

    def _run(self) -> None:
        while True:
            fn = self._queue.get()
            if fn is None:
                return
            try:
                fn()
            except Exception:
                logger.exception("the container spawner failed")

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            thread = self._thread
            self._thread = None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)


_probe_cache: dict[tuple[str, bool], tuple[list[str] | None, str | None]] = {}
_probe_lock = threading.Lock()


class Runtime:
    """Runs containers as processes on this machine (see the module documentation).

    ``root`` is a private working directory. ``logs`` receives each container's output
    (streams ``stdout``, ``stderr`` and ``system``). ``namespaces`` forces namespace mode
    on (fails when unavailable) or off (process mode); None detects.
    ``user_namespace`` forces ``unshare --user --map-root-user`` on or off (None: only when
    not root). ``cgroups=False`` disables memory limits. ``unshare`` names the util-linux
    binary. ``timeout_grace`` is the SIGTERM-to-SIGKILL delay when ``timeout_seconds``
    runs out. ``hidden_paths`` are host directories (or files) masked inside every
    container in namespace mode (an empty tmpfs, ``/dev/null`` for a file), e.g. the
    directory holding all disks, so a container reaches its own disk only through its
    mounts. A hidden path that contains one of the container's mounts, its image or its
    working directory is left visible for that container.
    """

    def __init__(
        self,
        root: Path,
        logs: LogStore,
        *,
        namespaces: bool | None = None,
        user_namespace: bool | None = None,
        cgroups: bool | None = None,
        unshare: str = "unshare",
        timeout_grace: float = 2.0,
        hidden_paths: Iterable[Path] = (),
    ) -> None:
        self._root = Path(root)
        self._root.mkdir(parents=True, exist_ok=True)
        self._logs = logs
        self._ns_pref = namespaces
        self._userns_pref = user_namespace
        self._cg_pref = cgroups
        self._unshare_name = unshare
        self._timeout_grace = timeout_grace
        self._hidden = [os.path.realpath(p) for p in hidden_paths]
        self._caps: dict[str, Any] | None = None
        self._caps_lock = threading.Lock()
        self._ns_argv: list[str] | None = None
        self._cgroups: _Cgroups | None = None
        self._mount_bin = shutil.which("mount", path=DEFAULT_PATH) or "mount"
        self._mkdir_bin = shutil.which("mkdir", path=DEFAULT_PATH) or "mkdir"
        self._lock = threading.Lock()
        self._containers: dict[str, _Container] = {}
        self._spawner = _Spawner()
        self._closed = False
        try:
            self._all_cpus = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self._all_cpus = []
        self._cpu_load = dict.fromkeys(self._all_cpus, 0)
        self._rr = 0
        self._create_mountpoints_on_host = True

    # -- capabilities ----------------------------------------------------------------

    @property
    def capabilities(self) -> dict[str, Any]:
        """What this machine lets the runtime enforce, detected once.

        Keys: ``namespaces`` (mount+PID namespaces), ``user_namespace``,
        ``memory_limit``, ``cpu_affinity``, ``cgroup`` (``"v1"``, ``"v2"`` or None),
        ``cgroup_path``, and ``reason`` (why something is missing, or None).
        """
        with self._caps_lock:
            if self._caps is None:
                self._caps = self._detect()
            return dict(self._caps)

    def _detect(self) -> dict[str, Any]:
        reasons: list[str] = []
        caps: dict[str, Any] = {
            "namespaces": False,
            "user_namespace": False,
            "memory_limit": False,
            "cpu_affinity": False,
            "cgroup": None,
            "cgroup_path": None,
            "reason": None,
        }
        if self._ns_pref is False:
            reasons.append("namespaces are disabled by configuration")
        else:
            userns = self._userns_pref if self._userns_pref is not None else os.geteuid() != 0
            argv, err = self._probe_namespaces(userns)
            if argv is not None:
                self._ns_argv = argv
                caps["namespaces"] = True
                caps["user_namespace"] = userns
            else:
                if self._ns_pref:
                    raise RuntimeError(f"Linux namespaces are not available: {err}")
                reasons.append(f"Linux namespaces are not available ({err})")
                logger.warning(
                    "archil local runtime: Linux namespaces are not available (%s); containers "
                    "run as plain processes: the disk is not mounted at /mnt/archil (use "
                    "ARCHIL_DISK_PATH), read-only mounts are not enforced",
                    err,
                )
        if self._cg_pref is False:
            reasons.append("memory limits are disabled by configuration")
        else:
            cg, err = _Cgroups.detect()
            if cg is not None:
                self._cgroups = cg
                cg.cleanup_stale()
                caps["memory_limit"] = True
                caps["cgroup"] = f"v{cg.version}"
                caps["cgroup_path"] = str(cg.base)
            else:
                reasons.append(f"memory limits are not enforced ({err})")
        if self._all_cpus and hasattr(os, "sched_setaffinity"):
            caps["cpu_affinity"] = True
        else:
            reasons.append("CPU affinity is not available")
        caps["reason"] = "; ".join(reasons) or None
        return caps

    def _probe_namespaces(self, userns: bool) -> tuple[list[str] | None, str | None]:
        unshare = shutil.which(self._unshare_name) or (
            self._unshare_name
            if os.path.isabs(self._unshare_name) and os.access(self._unshare_name, os.X_OK)
            else None
        )
        if unshare is None:
            return None, f"the util-linux command {self._unshare_name!r} is not installed"
        key = (unshare, userns)
        with _probe_lock:
            if key in _probe_cache:
                return _probe_cache[key]
        base = [unshare]
        if userns:
            base += ["--user", "--map-root-user"]
        base += ["--mount", "--pid", "--fork", "--kill-child", "--propagation", "private"]
        probe = self._root / f"probe-{uuid.uuid4().hex[:8]}"
        src, dst = probe / "src", probe / "dst"
        result: tuple[list[str] | None, str | None] = (None, "unknown error")
        try:
            src.mkdir(parents=True)
            dst.mkdir()
            (src / "probe").write_text("ok")
            m = shlex.quote(self._mount_bin)
            script = (
                f'{m} -c --bind -- "$1" "$2" && {m} -c -o remount,bind,ro -- "$2" '
                '&& [ -f "$2/probe" ] && ! (: > "$2/written") 2>/dev/null'
            )
            errors: list[str] = []
            for extra in (["--mount-proc"], []):
                argv = [*base, *extra]
                try:
                    proc = subprocess.run(
                        [*argv, "--", "/bin/sh", "-c", script, "probe", str(src), str(dst)],
                        capture_output=True,
                        stdin=subprocess.DEVNULL,
                        timeout=20,
                        check=False,
                    )
                except (OSError, subprocess.SubprocessError) as e:
                    errors.append(str(e))
                    continue
                if proc.returncode == 0 and not (src / "written").exists():
                    result = (argv, None)
                    break
                err = proc.stderr.decode(errors="replace").strip().splitlines()
                errors.append(err[-1] if err else f"exit code {proc.returncode}")
            else:
                result = (None, "; ".join(dict.fromkeys(errors)))
        except OSError as e:
            result = (None, str(e))
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        with _probe_lock:
            _probe_cache[key] = result
        return result

    # -- public API ------------------------------------------------------------------

    def start(
        self,
        spec: ContainerSpec,
        on_running: Callable[[], None],
        on_exit: Callable[[int | None, str | None], None],
    ) -> None:
        """Start a container in the background and return at once.

        ``on_running()`` is called once its command has started; ``on_exit(exit_code,
        failure_reason)`` exactly once when no process of it is left. ``failure_reason``
        is None for a normal exit (whatever the code) and for :meth:`stop`; a string for
        out of memory, ``timeout_seconds``, or a failure to start (then ``exit_code`` may
        be None). Both run on a runtime thread and should return quickly.
        """
        self._validate(spec)
        self._start(spec, on_running, on_exit, self._log_sink(spec.container_id), log_system=True)

    def _log_sink(self, cid: str) -> Sink:
        logs = self._logs

        def sink(stream: str, text: str) -> None:
            logs.append(cid, stream, text)

        return sink

    def _start(
        self,
        spec: ContainerSpec,
        on_running: Callable[[], None],
        on_exit: Callable[[int | None, str | None], None],
        sink: Sink,
        *,
        log_system: bool,
    ) -> _Container:
        c = _Container(spec, on_running, on_exit, sink, log_system)
        with self._lock:
            if self._closed:
                raise RuntimeError("the runtime is shut down")
            old = self._containers.get(c.id)
            if old is not None and not old.done.is_set():
                raise ValueError(f"container {c.id} is already running")
            self._containers[c.id] = c
        self._spawner.submit(lambda: self._spawn(c))
        return c

    @staticmethod
    def _validate(spec: ContainerSpec) -> None:
        if not isinstance(spec.container_id, str) or not _ID_RE.match(spec.container_id):
            raise ValueError(f"invalid container id {spec.container_id!r}")
        if spec.vcpu_count < 1:
            raise ValueError("vcpu_count must be at least 1")
        if spec.mem_size_mib < 1:
            raise ValueError("mem_size_mib must be at least 1")
        seen: set[str] = set()
        for m in spec.mounts:
            p = m.container_path
            if not isinstance(p, str) or not p.startswith("/") or "\0" in p:
                raise ValueError(f"mount path {p!r} must be absolute")
            norm = posixpath.normpath(p)
            if norm == "/" or ".." in p.split("/") or norm != p.rstrip("/"):
                raise ValueError(f"mount path {p!r} must be a normalized absolute path below /")
            if norm in seen:
                raise ValueError(f"two mounts at {norm}")
            seen.add(norm)
        for k in spec.env:
            if not k or "=" in k or "\0" in k:
                raise ValueError(f"invalid environment variable name {k!r}")

    def stop(self, container_id: str, grace: float = 10.0) -> None:
        """Stop a container: SIGTERM, then SIGKILL after ``grace`` seconds.

        Returns once no process of the container is left and its ``on_exit`` has been
        called; called from ``on_running`` it starts the stop and returns at once. A no-op
        for an unknown or finished container.
        """
        with self._lock:
            c = self._containers.get(container_id)
        if c is None or c.done.is_set():
            return
        with c.lock:
            c.stop_requested = True
            if c.state == "queued":
                c.cancelled = True
        if c.cancelled:
            c.done.wait(30.0)
            return
        self._system(c, f"stopping: SIGTERM, then SIGKILL after {grace:g} s")
        if threading.current_thread() is c.waiter:
            threading.Thread(
                target=self._terminate, args=(c, grace), name=f"archil-stop-{c.id}", daemon=True
            ).start()
            return
        self._terminate(c, grace)
        c.done.wait(30.0)

    def _terminate(self, c: _Container, grace: float) -> None:
        """SIGTERM every process of ``c``; SIGKILL after ``grace``; wait until all are gone."""
        self._signal(c, signal.SIGTERM)
        if c.exited.wait(max(0.0, grace)):
            return
        if grace > 0:
            self._system(c, f"still running after {grace:g} s: SIGKILL")
        for attempt in range(200):
            self._signal(c, signal.SIGKILL, kill_init=attempt >= 4)
            if c.exited.wait(0.05):
                return
        logger.warning("container %s: processes survived SIGKILL", c.id)

    def is_running(self, container_id: str) -> bool:
        """True from :meth:`start` until the container's processes are gone."""
        with self._lock:
            c = self._containers.get(container_id)
        return c is not None and not c.exited.is_set() and not c.done.is_set()

    def ports(self, container_id: str, *, listening_only: bool = True) -> dict[int, int]:
        """Container port -> host port, for the container's requested ports.

        Containers share the host's network, so the host port is the container port. With
        ``listening_only`` (the default) only ports on which a process of this container
        listens are returned; otherwise every requested port of a running container.
        """
        with self._lock:
            c = self._containers.get(container_id)
        if c is None or c.exited.is_set() or not c.spec.ports:
            return {}
        wanted = {int(p) for p in c.spec.ports}
        if not listening_only:
            return {p: p for p in sorted(wanted)}
        listening = _listening_inodes(wanted)
        if not listening:
            return {}
        owned: set[int] = set()
        for pid in self._container_pids(c):
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    owned.add(int(link[8:-1]))
        return {p: p for p in sorted(listening) if listening[p] & owned}

    def run_to_completion(
        self, spec: ContainerSpec, timeout: float
    ) -> tuple[int, str, str, float, float]:
        """Run ``spec`` to its end; ``(exit_code, stdout, stderr, queue_ms, execute_ms)``.

        Nothing is written to the log store. Output beyond 16 MiB a stream is cut.
        Raises ``TimeoutError`` (after killing it) when it runs longer than ``timeout``
        seconds, and :class:`ContainerStartError` when it cannot start.
        """
        self._validate(spec)
        t0 = time.monotonic()
        out: list[str] = []
        err: list[str] = []
        sizes = {"stdout": 0, "stderr": 0}
        truncated: set[str] = set()
        done = threading.Event()
        result: dict[str, Any] = {}

        def sink(stream: str, text: str) -> None:
            if stream not in sizes:
                return
            if sizes[stream] + len(text) > _OUTPUT_CAP:
                truncated.add(stream)
                return
            sizes[stream] += len(text)
            (out if stream == "stdout" else err).append(text)

        def on_running() -> None:
            result["running_at"] = time.monotonic()

        def on_exit(code: int | None, reason: str | None) -> None:
            result["code"] = code
            result["reason"] = reason
            result["ended_at"] = time.monotonic()
            done.set()

        c = self._start(spec, on_running, on_exit, sink, log_system=False)
        if not done.wait(max(0.0, timeout)):
            c.kill_reason = f"timed out after {timeout:g} s"
            self.stop(spec.container_id, grace=0.0)
            raise TimeoutError(f"the command did not finish within {timeout:g} s")
        code = result.get("code")
        reason = result.get("reason")
        running_at = result.get("running_at")
        if code is None or running_at is None:
            raise ContainerStartError(reason or "the command could not be started")
        stderr = "".join(err)
        if "stderr" in truncated:
            stderr += "\n[archil: stderr truncated at 16 MiB]\n"
        if reason:
            stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + reason + "\n"
        stdout = "".join(out)
        if "stdout" in truncated:
            stdout += "\n[archil: stdout truncated at 16 MiB]\n"
        queue_ms = (running_at - t0) * 1000.0
        execute_ms = (result["ended_at"] - running_at) * 1000.0
        return int(code), stdout, stderr, queue_ms, execute_ms

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop every container (in parallel) and release the runtime's resources."""
        with self._lock:
            self._closed = True
            containers = [c for c in self._containers.values() if not c.done.is_set()]
        threads = [
            threading.Thread(
                target=self.stop, args=(c.id, grace), name=f"archil-stop-{c.id}", daemon=True
            )
            for c in containers
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(grace + 35.0)
        self._spawner.close()
        if self._cgroups is not None:
            self._cgroups.remove_base()

    # -- spawning --------------------------------------------------------------------------

    def _system(self, c: _Container, text: str) -> None:
        if not c.log_system:
            return
        try:
            self._logs.append(c.id, "system", text + "\n")
        except Exception:
            logger.debug("cannot write the log of %s", c.id, exc_info=True)

    def _alloc_cpus(self, n: int) -> list[int]:
        with self._lock:
            if not self._all_cpus:
                return []
            n = max(1, min(n, len(self._all_cpus)))
            k = self._rr % len(self._all_cpus)
            order = self._all_cpus[k:] + self._all_cpus[:k]
            self._rr += n
            chosen = sorted(order, key=lambda cpu: self._cpu_load[cpu])[:n]
            for cpu in chosen:
                self._cpu_load[cpu] += 1
            return sorted(chosen)

    def _free_cpus(self, cpus: list[int]) -> None:
        with self._lock:
            for cpu in cpus:
                if cpu in self._cpu_load:
                    self._cpu_load[cpu] = max(0, self._cpu_load[cpu] - 1)

    def _spawn(self, c: _Container) -> None:
        """Runs on the spawner thread: prepare the container and fork it."""
        try:
            caps = self.capabilities
        except RuntimeError as e:
            c.exited.set()
            self._system(c, f"failed to start: {e}")
            self._finish(c, None, f"failed to start: {e}")
            return
        with c.lock:
            if c.cancelled:
                c.state = "exited"
            else:
                c.state = "starting"
        if c.state == "exited":
            self._system(c, "stopped before it started")
            self._finish(c, None, None)
            return
        try:
            self._prepare_and_fork(c, caps)
        except Exception as e:
            logger.debug("container %s failed to start", c.id, exc_info=True)
            reason: str | None = None if c.cancelled else f"failed to start: {e}"
            self._system(c, reason or "stopped before it started")
            c.exited.set()
            self._cleanup(c)
            self._finish(c, None, reason)
            return
        c.waiter = threading.Thread(
            target=self._wait, args=(c,), name=f"archil-wait-{c.id}", daemon=True
        )
        c.waiter.start()

    def _prepare_and_fork(self, c: _Container, caps: dict[str, Any]) -> None:
        spec = c.spec
        ns = bool(caps["namespaces"]) and self._ns_argv is not None
        c.mode = "namespace" if ns else "process"
        mounts: list[_Mount] = []
        for m in sorted(spec.mounts, key=lambda m: posixpath.normpath(m.container_path).count("/")):
            host = os.path.realpath(m.host_path)
            if not os.path.isdir(host):
                raise ContainerStartError(
                    f"the directory for {m.container_path} does not exist: {host}"
                )
            mounts.append(_Mount(host, posixpath.normpath(m.container_path), m.read_only))
        c.cpus = self._alloc_cpus(spec.vcpu_count) if caps["cpu_affinity"] else []
        notes = []
        if self._cgroups is not None:
            try:
                c.cgroup = self._cgroups.create(c.id, spec.mem_size_mib)
                notes.append(f"memory limit {spec.mem_size_mib} MiB")
            except OSError as e:
                logger.warning("container %s runs without a memory limit: %s", c.id, e)
                notes.append(f"no memory limit ({e.strerror or e})")
        else:
            notes.append("no memory limit")
        if c.cpus:
            notes.append("CPUs " + ",".join(map(str, c.cpus)))
        env = self._environment(spec, mounts, ns, c.token)
        user_script = _user_script(spec.initialization_script, spec.command)
        preexec = _proc.make_preexec(
            pdeathsig=True,
            cgroup_procs=c.cgroup.procs_file if c.cgroup else None,
            cpus=c.cpus or None,
        )
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r: int | None = None
        status_w: int | None = None
        try:
            if ns:
                assert self._ns_argv is not None
                script = self._setup_script(c, mounts, spec)
                status_r, status_w = os.pipe()
                argv = [*self._ns_argv, "--", "/bin/sh", "-c", script, "archil-init", user_script]
                stdin: int = status_w
                cwd = str(self._root)
                mode = "namespaces (mount, pid" + (", user)" if caps["user_namespace"] else ")")
            else:
                argv = ["/bin/sh", "-c", user_script, "sh"]
                stdin = subprocess.DEVNULL
                cwd = self._fallback_cwd(spec, mounts)
                mode = "a plain process (no namespaces)"
            self._system(c, f"starting in {mode}, {', '.join(notes)}")
            with c.lock:
                if c.cancelled:
                    raise ContainerStartError("stopped before it started")
                c.proc = subprocess.Popen(
                    argv,
                    stdin=stdin,
                    stdout=out_w,
                    stderr=err_w,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                    preexec_fn=preexec,
                )
        except BaseException:
            for fd in (out_r, err_r, status_r):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, status_w):
                if fd is not None:
                    os.close(fd)
        c.status_fd = status_r
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            t = threading.Thread(
                target=_proc.pump,
                args=(fd, _stream_sink(c.sink, stream)),
                name=f"archil-{stream}-{c.id}",
                daemon=True,
            )
            t.start()
            c.pumps.append(t)

    def _environment(
        self, spec: ContainerSpec, mounts: list[_Mount], ns: bool, token: str
    ) -> dict[str, str]:
        parts: list[str] = list(spec.image.path_prefix) if spec.image else []
        parts += DEFAULT_PATH.split(":")
        parts += os.environ.get("PATH", "").split(":")
        env: dict[str, str] = {
            "PATH": ":".join(dict.fromkeys(p for p in parts if p)),
            "HOME": str(Path.home()),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
        }
        if spec.image is not None:
            if spec.image.virtual_env:
                env["VIRTUAL_ENV"] = spec.image.virtual_env
            env.update(spec.image.env)
        env.update(spec.env)
        env["ARCHIL_CONTAINER_ID"] = spec.container_id
        env["ARCHIL_CONTAINER_TOKEN"] = token
        env["ARCHIL_ISOLATION"] = "namespace" if ns else "process"
        others = [m for m in mounts if m.target != DISK_MOUNT_PATH]
        disk = next((m for m in mounts if m.target == DISK_MOUNT_PATH), None)
        if disk is not None:
            env["ARCHIL_DISK_PATH"] = DISK_MOUNT_PATH if ns else disk.host
        env["ARCHIL_MOUNT_COUNT"] = str(len(others))
        for i, m in enumerate(others):
            env[f"ARCHIL_MOUNT_{i}"] = m.target if ns else m.host
            env[f"ARCHIL_MOUNT_{i}_PATH"] = m.target
        return env

    def _fallback_cwd(self, spec: ContainerSpec, mounts: list[_Mount]) -> str:
        disk = next((m.host for m in mounts if m.target == DISK_MOUNT_PATH), None)
        for cand in (spec.workdir, spec.image.workdir if spec.image else None, disk):
            if cand and os.path.isdir(cand):
                return cand
        return str(self._root)

    def _setup_script(self, c: _Container, mounts: list[_Mount], spec: ContainerSpec) -> str:
        """The init script: mounts, directory, then the command as a child of PID 1."""
        q = shlex.quote
        mnt = q(self._mount_bin)
        mkd = q(self._mkdir_bin)
        tmpfs: list[str] = []
        targets = [m.target for m in mounts]
        for m in mounts:
            under_other = any(m.target.startswith(t + "/") for t in targets if t != m.target)
            if under_other or any(m.target.startswith(a + "/") for a in tmpfs):
                continue
            lease = _acquire_mountpoint(m.target) if self._create_mountpoints_on_host else None
            if lease is not None:
                c.mountpoints.append(lease)
                continue
            anc = posixpath.dirname(m.target)
            while anc != "/" and not os.path.isdir(anc):
                anc = posixpath.dirname(anc)
            if anc == "/":
                raise ContainerStartError(f"cannot create the mountpoint {m.target}")
            tmpfs = [a for a in tmpfs if not a.startswith(anc + "/")]
            if anc not in tmpfs:
                tmpfs.append(anc)
        lines = ['fail() { printf \'E%s%s\\n\' "$1" "$2" >&0; exit 125; }']
        for i, m in enumerate(mounts):
            if any(m.host == a or m.host.startswith(a + "/") for a in tmpfs):
                if c.stage_dir is None:
                    c.stage_dir = self._stage_dir(c, tmpfs)
                stage = c.stage_dir / str(i)
                stage.mkdir()
                m.stage = str(stage)
                lines.append(
                    f"out=$({mnt} -c --bind -- {q(m.host)} {q(m.stage)} 2>&1) || "
                    f'fail {q(f"cannot mount {m.host}: ")} "$out"'
                )
        for a in tmpfs:
            lines.append(
                f"out=$({mnt} -t tmpfs -o mode=0755 archil {q(a)} 2>&1) || "
                f'fail {q(f"cannot mount a tmpfs on {a}: ")} "$out"'
            )
        for m in mounts:
            t = q(m.target)
            lines.append(
                f"[ -d {t} ] || out=$({mkd} -p -- {t} 2>&1) || "
                f'fail {q(f"cannot create the mountpoint {m.target}: ")} "$out"'
            )
            lines.append(
                f"out=$({mnt} -c --bind -- {q(m.stage or m.host)} {t} 2>&1) || "
                f'fail {q(f"cannot mount {m.host} at {m.target}: ")} "$out"'
            )
            if m.read_only:
                lines.append(
                    f"out=$({mnt} -c -o remount,bind,ro -- {t} 2>&1) || "
                    f'fail {q(f"cannot make {m.target} read-only: ")} "$out"'
                )
        keep = [m.target for m in mounts]
        if spec.image is not None:
            keep += [str(spec.image.root), *(x for x in (spec.image.workdir, spec.workdir) if x)]
        for h in self._hidden:
            if any(k == h or k.startswith(h.rstrip("/") + "/") for k in keep) or not os.path.exists(
                h
            ):
                continue
            if os.path.isdir(h):
                lines.append(
                    f"out=$({mnt} -t tmpfs -o mode=0755,size=64k archil-hidden {q(h)} 2>&1) || "
                    f'fail {q(f"cannot hide {h}: ")} "$out"'
                )
            else:
                lines.append(
                    f"out=$({mnt} -c --bind -- /dev/null {q(h)} 2>&1) || "
                    f'fail {q(f"cannot hide {h}: ")} "$out"'
                )
        dirs = [spec.workdir, spec.image.workdir if spec.image else None]
        if any(m.target == DISK_MOUNT_PATH for m in mounts):
            dirs.append(DISK_MOUNT_PATH)
        cds = [f"cd -- {q(d)} 2>/dev/null" for d in dirs if d]
        lines.append(" || ".join([*cds, "cd /"]))
        lines.append("printf 'R\\n' >&0")
        lines.append("exec </dev/null")
        lines.append('/bin/sh -c "$1" sh')
        lines.append("exit $?")
        return "\n".join(lines) + "\n"

    def _stage_dir(self, c: _Container, covered: list[str]) -> Path:
        """A private directory outside every tmpfs-covered ancestor, for staging mounts."""
        for base in (
            self._root / "stage",
            Path(tempfile.gettempdir()) / "archil-stage",
            Path("/dev/shm/archil-stage"),
        ):
            real = os.path.realpath(base)
            if any(real == a or real.startswith(a + "/") for a in covered):
                continue
            path = base / c.token
            try:
                path.mkdir(parents=True)
            except OSError:
                continue
            return path
        raise ContainerStartError("no directory to stage the mounts in")

    # -- waiting -----------------------------------------------------------------------------

    def _read_status(self, c: _Container) -> str | None:
        """Read the init's report: ``"R"`` when the command starts, or the setup error."""
        fd = c.status_fd
        if fd is None:
            return "R"
        data = b""
        try:
            while b"\n" not in data or not data.startswith(b"R"):
                timeout = None if c.deadline is None else max(0.0, c.deadline - time.monotonic())
                ready, _, _ = select.select([fd], [], [], timeout)
                if not ready:
                    return None
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
            c.status_fd = None
        if data.startswith(b"R"):
            return "R"
        text = data.decode(errors="replace").strip()
        return text[1:] if text.startswith("E") else (text or "the container init exited early")

    def _wait(self, c: _Container) -> None:
        proc = c.proc
        assert proc is not None
        status = self._read_status(c) if c.mode == "namespace" else "R"
        if status == "R":
            if c.mode == "namespace":
                try:
                    c.ns_fd = os.open(
                        f"/proc/{proc.pid}/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC
                    )
                    c.ns_link = os.readlink(f"/proc/self/fd/{c.ns_fd}")
                except OSError:
                    c.ns_fd = None
                c.init_pid = _proc.child_of(proc.pid)
            with c.lock:
                c.state = "running"
            c.running_at = time.monotonic()
            self._system(c, f"running (pid {proc.pid})")
            try:
                c.on_running()
            except Exception:
                logger.exception("on_running callback of %s failed", c.id)
        elif status is None:
            c.kill_reason = f"timed out after {c.spec.timeout_seconds} s"
        else:
            c.setup_error = status
        if c.kill_reason is not None:
            c.deadline = time.monotonic()
        rc: int | None = None
        while rc is None:
            remaining = None if c.deadline is None else max(0.0, c.deadline - time.monotonic())
            try:
                rc = proc.wait(remaining)
            except subprocess.TimeoutExpired:
                rc = self._kill_on_timeout(c, proc)
        self._sweep(c)
        c.exited.set()
        for t in c.pumps:
            t.join(5.0)
        code = rc if rc >= 0 else 128 - rc
        if c.killed_init and code == 1:
            code = 128 + signal.SIGKILL
        reason: str | None = None
        if c.setup_error is not None:
            reason = f"failed to set up the container: {c.setup_error}"
        elif c.kill_reason is not None:
            reason = c.kill_reason
        elif c.cgroup is not None and code != 0 and c.cgroup.oom_killed():
            reason = f"out of memory (limit {c.cgroup.limit_mib} MiB)"
        if reason is not None:
            self._system(c, reason)
        if c.stop_requested and reason is None:
            self._system(c, f"stopped (exit code {code})")
        else:
            self._system(c, f"exited with code {code}")
        self._cleanup(c)
        self._finish(c, code, reason)

    def _kill_on_timeout(self, c: _Container, proc: subprocess.Popen[bytes]) -> int:
        """``timeout_seconds`` ran out: SIGTERM, SIGKILL after the grace; the exit status."""
        if c.kill_reason is None:
            c.kill_reason = f"timed out after {c.spec.timeout_seconds} s"
        c.deadline = None
        self._system(c, f"{c.kill_reason}: stopping")
        self._signal(c, signal.SIGTERM)
        try:
            return proc.wait(self._timeout_grace)
        except subprocess.TimeoutExpired:
            pass
        attempt = 0
        while True:
            self._signal(c, signal.SIGKILL, kill_init=attempt >= 4)
            attempt += 1
            try:
                return proc.wait(0.05)
            except subprocess.TimeoutExpired:
                continue

    def _finish(self, c: _Container, code: int | None, reason: str | None) -> None:
        with c.lock:
            c.state = "exited"
            c.exit_code = code
            c.reason = reason
        c.exited.set()
        try:
            c.on_exit(code, reason)
        except Exception:
            logger.exception("on_exit callback of %s failed", c.id)
        finally:
            with self._lock:
                if self._containers.get(c.id) is c:
                    del self._containers[c.id]
            c.done.set()

    def _container_pids(self, c: _Container) -> set[int]:
        pids: set[int] = set()
        if c.ns_link is not None and c.ns_fd is not None:
            pids |= _proc.pids_in_pid_namespace(c.ns_link)
        if c.cgroup is not None:
            pids |= c.cgroup.pids()
        if c.mode == "process" or c.ns_link is None or c.exited.is_set():
            pids |= _proc.pids_with_env_marker("ARCHIL_CONTAINER_TOKEN", c.token)
        return pids

    def _signal(self, c: _Container, sig: int, *, kill_init: bool = False) -> None:
        """Signal every process of ``c``.

        SIGKILL goes to the command's top process first, so the container's exit status is
        the kill rather than the exit of a shell whose children happened to die before it.
        In namespace mode the init (PID 1) is spared unless ``kill_init``: it exits by
        itself with the command's status once the command is gone (util-linux ``unshare``
        turns an init killed by SIGKILL into exit status 1).
        """
        proc = c.proc
        alive = proc is not None and proc.returncode is None
        pids = self._container_pids(c)
        if c.mode == "namespace":
            if proc is not None:
                pids.discard(proc.pid)
                if sig == signal.SIGKILL and c.ns_link is None and alive:
                    kill_init = True
                    pids.add(proc.pid)
            top = _proc.child_of(c.init_pid) if c.init_pid is not None else None
            if c.init_pid is not None and not (sig == signal.SIGKILL and kill_init):
                pids.discard(c.init_pid)
            if sig == signal.SIGKILL and kill_init:
                c.killed_init = True
        else:
            top = proc.pid if proc is not None else None
        if sig == signal.SIGKILL and top is not None and top in pids and alive:
            _proc.kill_pids([top], sig)
            pids.discard(top)
        _proc.kill_pids(pids, sig)

    def _sweep(self, c: _Container) -> None:
        """After the top process ended: kill whatever of the container is left."""
        proc = c.proc

        def leftovers() -> set[int]:
            return {p for p in self._container_pids(c) if proc is None or p != proc.pid}

        _proc.sweep(leftovers, quiet_scans=1 if c.mode == "namespace" else 2)
        if c.ns_fd is not None:
            os.close(c.ns_fd)
            c.ns_fd = None

    def _cleanup(self, c: _Container) -> None:
        if c.cgroup is not None:
            c.cgroup.remove()
        for lease in c.mountpoints:
            _release_mountpoint(lease)
        c.mountpoints = []
        if c.stage_dir is not None:
            shutil.rmtree(c.stage_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                c.stage_dir.parent.rmdir()
            c.stage_dir = None
        if c.cpus:
            self._free_cpus(c.cpus)
            c.cpus = []
        if c.status_fd is not None:
            os.close(c.status_fd)
            c.status_fd = None


def _stream_sink(sink: Sink, stream: str) -> Callable[[str], None]:
    def on_chunk(text: str) -> None:
        sink(stream, text)

    return on_chunk


def _user_script(init: str | None, command: str | None) -> str:
    """``/bin/sh -c`` text: the init script, stopping on its failure, then the command."""
    parts: list[str] = []
    if init and init.strip():
        parts.append(init.rstrip("\n"))
        parts.append(
            'archil_rc=$?; if [ "$archil_rc" -ne 0 ]; then '
            'echo "archil: the initialization script failed with exit code $archil_rc" >&2; '
            'exit "$archil_rc"; fi'
        )
    parts.append(command if command and command.strip() else _IDLE)
    return "\n".join(parts) + "\n"


def _listening_inodes(ports: set[int]) -> dict[int, set[int]]:
    """Port -> inodes of TCP sockets listening on it (IPv4 and IPv6)."""
    out: dict[int, set[int]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) < 10 or fields[3] != "0A":
                        continue
                    port = int(fields[1].rsplit(":", 1)[1], 16)
                    if port in ports:
                        out.setdefault(port, set()).add(int(fields[9]))
        except OSError as e:
            if e.errno != errno.ENOENT:
                logger.debug("cannot read %s: %s", name, e)
    return out
