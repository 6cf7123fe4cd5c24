"""The runtime: :class:`Runtime` finds what this machine allows, boots sandboxes, stops them.

Speed
-----
The zygote is started once; after each boot the runtime has it prepare the next sandbox
(helper forked, namespaces made, agent waiting), so a boot only sends the configuration:
cgroups, CPUs, mounts, ``pivot_root``. A prepared sandbox that died is replaced, once,
without the caller noticing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archil.local import _proc
from archil.local.cgroups import CgroupError, Cgroups, SandboxCgroup
from archil.local.layers import delete_tree
from archil.local.mounts import BootError, ensure_skeleton, mount_plan, validate_sandbox_spec
from archil.local.runtime._environment import Environment, _PreparedGone
from archil.local.runtime._sandbox import _Resources
from archil.local.runtime._zygote import _Spawner, _Zygote
from archil.local.spec import GUEST_DISK_PATH, ImageEnv, MountSpec, RootSpec, SandboxSpec

logger = logging.getLogger("archil")

_BOOT_TIMEOUT = 30.0

_probe_cache: dict[tuple[bool, str], str | None] = {}
_probe_lock = threading.Lock()


class Runtime:
    """Boots sandboxes on this machine (see :mod:`archil.local.runtime`).

    ``root`` is a private working directory (skeleton, mountpoints, the zygote's log).
    ``namespaces`` forces namespace mode on (a boot fails where it does not work) or off
    (process mode); None detects. ``user_namespace`` forces a user namespace on or off
    (None: only when not root). ``cgroups=False`` disables memory limits and the freezer
    cgroup. ``stop_grace`` is the default SIGTERM-to-SIGKILL delay of
    :meth:`Environment.stop`.
    """

    def __init__(
        self,
        root: Path,
        *,
        namespaces: bool | None = None,
        user_namespace: bool | None = None,
        cgroups: bool | None = None,
        stop_grace: float = 10.0,
    ) -> None:
        self._root = Path(root).resolve()
        self._root.mkdir(parents=True, exist_ok=True)
        (self._root / "roots").mkdir(exist_ok=True)
        self.stop_grace = stop_grace
        self._ns_pref = namespaces
        self._userns_pref = user_namespace
        self._cg_pref = cgroups
        self._caps: dict[str, Any] | None = None
        self._caps_lock = threading.Lock()
        self._ns_error: str | None = None
        self._userns = False
        self._cgroups = Cgroups.disabled("not detected yet")
        self._cpus = _proc.CpuPool()
        self._spawner: _Spawner | None = None
        self._zygote: _Zygote | None = None
        self._zygote_lock = threading.Lock()
        self._lock = threading.Lock()
        self._envs: dict[str, Environment] = {}
        self._prepared: Environment | None = None
        self._helpers: dict[str, Environment] = {}
        self._loop: _proc.EventLoop | None = None
        self._closed = False

    # -- capabilities

    @property
    def capabilities(self) -> dict[str, Any]:
        """What this machine lets the runtime enforce, detected once.

        Keys: ``namespaces``, ``user_namespace``, ``memory_limit``, ``freezer``,
        ``cpu_affinity``, ``cgroup`` (``"v1"``, ``"v2"`` or None), ``isolation``
        (``"namespace"`` or ``"process"``) and ``reason`` (what is missing and why, or None).
        """
        with self._caps_lock:
            if self._caps is None:
                self._caps = self._detect()
            return dict(self._caps)

    def _detect(self) -> dict[str, Any]:
        reasons: list[str] = []
        if self._cg_pref is False:
            self._cgroups = Cgroups.disabled("cgroups are disabled by configuration")
        else:
            self._cgroups = Cgroups.detect()
            self._cgroups.cleanup_stale()
        if self._cgroups.reason:
            reasons.append(self._cgroups.reason)
        caps: dict[str, Any] = {
            "namespaces": False,
            "user_namespace": False,
            "memory_limit": self._cgroups.memory_limit,
            "freezer": self._cgroups.freezer,
            "cpu_affinity": bool(self._cpus.cpus),
            "cgroup": self._cgroups.version,
            "isolation": "process",
            "reason": None,
        }
        if not self._cpus.cpus:
            reasons.append("CPU affinity is not available")
        if self._ns_pref is False:
            err: str | None = "namespaces are disabled by configuration"
        else:
            userns = self._userns_pref if self._userns_pref is not None else os.geteuid() != 0
            err = self._probe(userns)
            if err is None:
                self._userns = userns
                caps.update(namespaces=True, user_namespace=userns, isolation="namespace")
            else:
                err = f"Linux namespaces are not available ({err})"
        if err is not None:
            self._ns_error = err
            reasons.append(err)
            reasons.append("read-only mounts are not enforced")
            if self._ns_pref is not True:
                logger.warning(
                    "archil local runtime: %s; sandboxes run as plain processes (the disk is "
                    "at $ARCHIL_DISK_PATH, read-only mounts are not enforced)",
                    err,
                )
        caps["reason"] = "; ".join(reasons) or None
        return caps

    def _probe(self, userns: bool) -> str | None:
        """Boot a minimal sandbox once per process; None when it works, else why not."""
        key = (userns, sys.executable)
        with _probe_lock:
            if key in _probe_cache:
                return _probe_cache[key]
            probe = self._root / f"probe-{uuid.uuid4().hex[:8]}"
            try:
                for d in ("upper", "work", "src"):
                    (probe / d).mkdir(parents=True)
                spec = SandboxSpec(
                    sandbox_id="probe",
                    hostname="probe",
                    root=RootSpec(upper=probe / "upper", work=probe / "work"),
                    image=ImageEnv(image_id="host", source="host"),
                    mounts=(MountSpec(probe / "src", GUEST_DISK_PATH, read_only=True),),
                )
                env = self._boot(spec, lambda _r: None, namespace=True, userns=userns, cg=False)
                env.stop(0.0)
                result: str | None = None
            except (BootError, OSError) as e:
                result = str(e)
            finally:
                delete_tree(probe)
            _probe_cache[key] = result
            return result

    # -- booting

    def boot(self, spec: SandboxSpec, *, on_end: Callable[[str | None], None]) -> Environment:
        """Boot a sandbox; returns once its agent is ready.

        Raises ``ValueError`` for a malformed spec and :class:`BootError` (naming what
        failed) when it cannot boot; nothing of it is left then, and ``on_end`` is never
        called. Otherwise ``on_end(reason)`` is called once when the sandbox is gone:
        ``reason`` is None after :meth:`Environment.stop`, :meth:`Environment.kill` or
        :meth:`shutdown`, else why it ended (its init died, out of memory...).
        """
        validate_sandbox_spec(spec)
        caps = self.capabilities
        if self._ns_pref is True and not caps["namespaces"]:
            raise BootError(self._ns_error or "Linux namespaces are not available")
        namespace = caps["isolation"] == "namespace"
        return self._boot(spec, on_end, namespace=namespace, userns=self._userns, cg=True)

    def _boot(
        self,
        spec: SandboxSpec,
        on_end: Callable[[str | None], None],
        *,
        namespace: bool,
        userns: bool,
        cg: bool,
    ) -> Environment:
        validate_sandbox_spec(spec)
        plan = []
        if namespace:
            plan = mount_plan(spec, ensure_skeleton(self._root), self._root, userns=userns)
        try:
            env = self._boot_once(spec, on_end, plan, (namespace, userns, cg), prepared=True)
        except _PreparedGone:
            # The sandbox prepared ahead died (say, with its zygote): once more, from scratch.
            env = self._boot_once(spec, on_end, plan, (namespace, userns, cg), prepared=False)
        self._prepare_next(namespace, userns)
        return env

    def _boot_once(
        self,
        spec: SandboxSpec,
        on_end: Callable[[str | None], None],
        plan: list[dict[str, Any]],
        kind: tuple[bool, bool, bool],
        *,
        prepared: bool,
    ) -> Environment:
        """One attempt: ``kind`` is (namespace, user namespace, cgroups)."""
        namespace, userns, cg = kind
        token = f"{spec.sandbox_id[:64]}.{uuid.uuid4().hex[:8]}"
        env = self._take_prepared(namespace, userns, fresh=not prepared)
        res = _Resources(self, self._cpus.take(spec.vcpu_count), None)
        fds: list[int] = []
        try:
            res.cgroup = self._make_cgroup(token, spec) if cg else None
            res.rootdir = self._root / "roots" / token
            res.rootdir.mkdir()
            config, fds = self._config(spec, token, namespace, plan, res)
            with self._lock:
                if self._closed:
                    raise BootError("the runtime is shut down")
                self._envs[token] = env
        except BaseException:
            res.release()
            env._discard()
            raise
        try:
            env._send_boot(spec, token, res, on_end, config, fds)
        finally:
            for fd in fds:
                os.close(fd)
        try:
            env._wait_boot(_BOOT_TIMEOUT)
        except _PreparedGone as e:
            if not prepared:
                raise BootError(str(e)) from None
            raise
        return env

    def _take_prepared(self, namespace: bool, userns: bool, *, fresh: bool) -> Environment:
        """The prepared sandbox when it is of this kind and still there, else a new one."""
        with self._lock:
            if self._closed:
                raise BootError("the runtime is shut down")
            env, self._prepared = self._prepared, None
        kind = "namespace" if namespace else "process"
        usable = env is not None and (env.isolation, env._userns) == (kind, userns) and env._usable
        if env is not None and usable and not fresh:
            return env
        if env is not None:
            env._discard()
        env = Environment(self, namespace=namespace, userns=userns)
        env._prepare(self._get_zygote())
        return env

    def _prepare_next(self, namespace: bool, userns: bool) -> None:
        """Prepare the next sandbox now, so that the next boot finds it waiting."""
        with self._lock:
            if self._closed or self._prepared is not None:
                return
        try:
            env = Environment(self, namespace=namespace, userns=userns)
            env._prepare(self._get_zygote())
        except BootError as e:
            logger.debug("cannot prepare a sandbox ahead: %s", e)
            return
        with self._lock:
            keep = not self._closed and self._prepared is None
            if keep:
                self._prepared = env
        if not keep:
            env._discard()

    def _make_cgroup(self, token: str, spec: SandboxSpec) -> SandboxCgroup | None:
        if not (self._cgroups.memory_limit or self._cgroups.freezer):
            return None
        try:
            return self._cgroups.create(token, spec.mem_size_mib)
        except CgroupError as e:
            logger.warning("sandbox %s runs without cgroups: %s", spec.sandbox_id, e)
            return None

    def _config(
        self,
        spec: SandboxSpec,
        token: str,
        namespace: bool,
        plan: list[dict[str, Any]],
        res: _Resources,
    ) -> tuple[dict[str, Any], list[int]]:
        """The agent's ``boot`` configuration and the cgroup files it is handed (opened here)."""
        agent_files = res.cgroup.agent_join if res.cgroup is not None else ()
        user_files = res.cgroup.user_join if res.cgroup is not None else ()
        fds: list[int] = []
        try:
            for path in (*agent_files, *user_files):
                fds.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
        except OSError as e:
            for fd in fds:
                os.close(fd)
            raise BootError(f"cannot open {e.filename}: {e.strerror}") from e
        config = {
            "hostname": spec.hostname,
            "root": str(res.rootdir),
            "plan": plan,
            "cpus": res.cpus or None,
            "agent_cgroups": len(agent_files),
            "marker": None if namespace else f"ARCHIL_SANDBOX_TOKEN={token}",
        }
        return config, fds

    def _io(self) -> _proc.EventLoop:
        """The thread that pumps every process's output and runs their timers."""
        with self._lock:
            if self._loop is None:
                self._loop = _proc.EventLoop("archil-io")
            return self._loop

    def _on_runtime_thread(self) -> bool:
        """True on a thread that must not wait for a sandbox to end (it may be needed)."""
        loop = self._loop
        return loop is not None and loop.in_loop

    def _get_zygote(self) -> _Zygote:
        """The zygote, (re)started when there is none or it died."""
        with self._zygote_lock:
            z = self._zygote
            if z is not None and z.alive:
                return z
            if z is not None:
                z.close(0.5)
            if self._spawner is None:
                self._spawner = _Spawner()
            self._zygote = _Zygote(self._spawner, self._root / "zygote.log", self._helper_ended)
            return self._zygote

    def _track_helper(self, env: Environment) -> None:
        with self._lock:
            self._helpers[env._helper_id] = env

    def _helper_ended(self, helper_id: str, code: int | None, sig: int | None) -> None:
        """The zygote reaped a helper (what it says counts when the helper said nothing)."""
        with self._lock:
            env = self._helpers.get(helper_id)
        if env is not None and env._init_status is None:
            env._init_status = (code, sig)
            env._helper_ended.set()

    def _forget(self, env: Environment) -> None:
        with self._lock:
            if self._envs.get(env.token) is env:
                del self._envs[env.token]
            if self._helpers.get(env._helper_id) is env:
                del self._helpers[env._helper_id]

    @property
    def zygote_pid(self) -> int | None:
        """The pid of the current zygote process, if one is running."""
        z = self._zygote
        return z.pid if z is not None and z.alive else None

    def environments(self) -> list[Environment]:
        """The sandboxes that are booted and not yet gone."""
        with self._lock:
            return list(self._envs.values())

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop every sandbox (in parallel, within ``grace`` plus a few seconds), then the
        zygote; remove the cgroup base directories."""
        with self._lock:
            self._closed = True
            envs = list(self._envs.values())
            prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared._discard()
        threads = [
            threading.Thread(target=e.stop, args=(grace,), name=f"archil-stop-{e.sandbox_id}")
            for e in envs
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + grace + 15.0
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._zygote_lock:
            if self._zygote is not None:
                self._zygote.close()
                self._zygote = None
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()
        self._cgroups.close()
