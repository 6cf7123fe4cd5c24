"""One sandbox: :class:`Environment`, what :meth:`Runtime.boot` returns.

Its life: the zygote forks its helper ahead of time, and its agent waits; a boot sends
the configuration and waits for ``ready``; a thread of its own reads the agent's messages
until the socket closes, then cleans up what is left and calls ``on_end``.
:meth:`Environment.stop` has the agent SIGTERM every process and SIGKILL what is left
after the grace, and kills the sandbox itself when it has not ended two seconds later;
:meth:`Environment.kill` kills at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from archil.local import _proc
from archil.local.cgroups import CgroupError
from archil.local.mounts import BootError, check_env
from archil.local.runtime._process import RunningProcess, SpawnError
from archil.local.runtime._sandbox import _archil_env, _Resources, _Sandbox
from archil.local.runtime._zygote import _recv, _send, _Zygote
from archil.local.spec import ExitInfo, ProcessSpec, SandboxSpec

logger = logging.getLogger("archil")

_SPAWN_TIMEOUT = 15.0
_FREEZE_TIMEOUT = 10.0


class _PreparedGone(BootError):
    """A sandbox prepared ahead ended before it could take its configuration."""


class Environment(_Sandbox):
    """One booted sandbox (from :meth:`Runtime.boot`).

    The runtime prepares one ahead of time (its helper forked, its namespaces made, its
    agent waiting): :meth:`Runtime.boot` then only sends it the sandbox's configuration.
    """

    # -- public API

    @property
    def alive(self) -> bool:
        """True from boot until the sandbox is gone."""
        return self._booted and not self._ended.is_set()

    @property
    def memory_limit_mib(self) -> int | None:
        """The memory limit in force, or None."""
        cg = self._res.cgroup
        return cg.limit_mib if cg is not None else None

    def spawn(
        self,
        spec: ProcessSpec,
        *,
        on_output: Callable[[int, bytes], None],
        on_exit: Callable[[ExitInfo], None],
    ) -> RunningProcess:
        """Start ``spec``; raises :class:`SpawnError` when it cannot start.

        ``on_output(stream, data)`` comes from pump threads, in order per stream;
        ``on_exit(info)`` exactly once, after the exit and the end of the output (it may
        run before this method returns, for a process that ends at once). A process that
        fails to start raises and never calls ``on_exit``.
        """
        check_env("env", spec.env)
        cwd = self._cwd(spec)
        with self._lock:
            if not self.alive or self._stopping:
                raise SpawnError("the sandbox is not running")
            if self._frozen:
                raise SpawnError("the sandbox is paused")
            self._seq += 1
            proc = RunningProcess(self, f"p{self._seq}", spec, on_output, on_exit)
            self._procs[proc.id] = proc
        proc._oom_base = self._oom_kills()
        env = self._process_env(spec, proc.id)
        msg: dict[str, Any] = {
            "type": "spawn",
            "id": proc.id,
            "argv": ["/bin/sh", "-c", spec.command],
            "env": env,
            "cwd": cwd,
            "tty": spec.terminal is not None,
            "marker": f"ARCHIL_PROCESS_TOKEN={env['ARCHIL_PROCESS_TOKEN']}",
        }
        try:
            child = self._process_fds(proc, spec)
        except OSError as e:
            self._forget(proc)
            raise SpawnError(f"cannot create the process's pipes: {e.strerror}") from e
        try:
            _send(self._sock, self._send_lock, msg, child)
        except (OSError, ValueError) as e:
            proc._spawn_error = f"cannot reach the sandbox's agent: {e}"
        finally:
            for fd in child:
                os.close(fd)
        if not proc._spawn_error and not proc._spawned.wait(_SPAWN_TIMEOUT):
            proc._spawn_error = "the sandbox's agent did not answer"
        if proc._spawn_error:
            proc._abandon()
            raise SpawnError(proc._spawn_error)
        proc._arm_timeout()
        return proc

    def freeze(self) -> None:
        """Pause every user process (the freezer cgroup, else SIGSTOP through the agent)."""
        self._set_frozen(True)

    def thaw(self) -> None:
        """Resume what :meth:`freeze` paused."""
        self._set_frozen(False)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM every process, SIGKILL what is left after ``grace`` seconds (default: the
        runtime's ``stop_grace``); returns once nothing of the sandbox is left and ``on_end``
        has run (at once when called from one of this sandbox's callbacks)."""
        grace = self._runtime.stop_grace if grace is None else max(0.0, grace)
        with self._lock:
            if self._finished.is_set():
                return
            self._stopping = True
        self._unfreeze_for_stop()
        try:
            _send(self._sock, self._send_lock, {"type": "shutdown", "grace": grace}, [])
        except (OSError, ValueError):
            self._hard_kill()
        if self._on_own_thread():
            threading.Thread(target=self._enforce_stop, args=(grace,), daemon=True).start()
            return
        self._enforce_stop(grace)

    def kill(self) -> None:
        """Kill every process of the sandbox at once; returns once it is gone."""
        with self._lock:
            if self._finished.is_set():
                return
            self._stopping = True
        self._hard_kill()
        if not self._on_own_thread():
            self._wait_finished(self._runtime.stop_grace)

    def _on_own_thread(self) -> bool:
        """True in one of this sandbox's callbacks (where waiting for its end would hang)."""
        return threading.current_thread() is self._reader or self._runtime._on_runtime_thread()

    # -- internals used by RunningProcess

    def _request(self, msg: dict[str, Any]) -> None:
        if self._ended.is_set():
            return
        try:
            _send(self._sock, self._send_lock, msg, [])
        except (OSError, ValueError) as e:
            raise SpawnError(f"cannot reach the sandbox's agent: {e}") from e

    def _forget(self, proc: RunningProcess) -> None:
        with self._lock:
            if self._procs.get(proc.id) is proc:
                del self._procs[proc.id]

    def _oom_kills(self) -> int:
        cg = self._res.cgroup
        return cg.oom_kills() if cg is not None else 0

    # -- boot

    def _prepare(self, zygote: _Zygote) -> None:
        """Have the zygote fork this sandbox's helper; its agent then waits for ``boot``."""
        self._zygote = zygote
        self._runtime._track_helper(self)
        self._reader = threading.Thread(target=self._read_loop, name="archil-sbx", daemon=True)
        self._reader.start()
        config = {"namespace": self.isolation == "namespace", "userns": self._userns}
        try:
            zygote.create(self._helper_id, config, [self._agent_end.fileno()])
        except (OSError, ValueError) as e:
            self._discard()
            raise BootError(f"cannot reach the sandbox zygote: {e}") from e
        finally:
            self._agent_end.close()

    def _send_boot(
        self,
        spec: SandboxSpec,
        token: str,
        res: _Resources,
        on_end: Callable[[str | None], None],
        config: dict[str, Any],
        fds: list[int],
    ) -> None:
        """Make this prepared sandbox ``spec`` (it owns ``res`` from here on)."""
        self.spec, self.sandbox_id, self.token = spec, spec.sandbox_id, token
        self._res, self._on_end = res, on_end
        self._archil_env = _archil_env(spec, self.isolation == "namespace", token)
        if self._reader is not None:
            self._reader.name = f"archil-sbx-{spec.sandbox_id[:24]}"
        self._boot_sent = True
        try:
            _send(self._sock, self._send_lock, {"type": "boot", "config": config}, fds)
        except (OSError, ValueError) as e:
            self._boot_error = f"the prepared sandbox is gone: {e}"
            self._send_failed = True
            self._boot_event.set()

    def _discard(self) -> None:
        """End a prepared sandbox that will not be booted."""
        with self._lock:
            self._stopping = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._hard_kill()

    def _wait_boot(self, timeout: float) -> None:
        """Block until the agent is ready; raise :class:`BootError` otherwise."""
        if self._boot_event.wait(timeout) and self._ready and self.init_pid:
            with self._lock:
                if not self._ended.is_set():
                    self._booted = True
                    return
        error = self._boot_error
        if error is None:
            if self._ended.is_set():
                error = self._end_reason() or "the sandbox ended while booting"
            else:
                error = f"the sandbox did not start within {timeout:g} s"
        lost = self._ended.is_set() or self._send_failed or self._init_lost
        gone = lost and not self._setup_failed
        self._stopping = True
        self._hard_kill()
        self._wait_finished(5.0)
        self._res.release()  # also when the sandbox ended before it was handed them
        raise (_PreparedGone if gone else BootError)(error)

    def _read_loop(self) -> None:
        try:
            while True:
                msg, pid = _recv(self._sock)
                if msg is None:
                    break
                try:
                    self._dispatch(msg, pid)
                except Exception:
                    logger.exception("sandbox %s: bad message %r", self.sandbox_id, msg)
        finally:
            self._finalize()

    # -- the end

    def _end_reason(self) -> str | None:
        if self._stopping:
            return None
        status = self._init_status
        if status is None:
            if self._zygote_dead:
                return "the runtime's zygote process died"
            return "the sandbox's helper process died"
        code, sig = status
        if sig is not None:
            if sig == signal.SIGKILL and self._oom_kills() > 0:
                return f"out of memory (limit {self.memory_limit_mib} MiB)"
            return f"the sandbox's init was killed by signal {_proc.signal_name(sig)}"
        if code == 125 and self._boot_error:
            return self._boot_error
        return f"the sandbox's init exited with status {code}"

    def _finalize(self) -> None:
        """The socket closed: the helper and the agent are gone. Clean up, report."""
        if self._init_status is None and not self._zygote_dead:
            self._helper_ended.wait(0.5)
        with self._lock:
            self._ended.set()
            booted = self._booted
        self._boot_event.set()
        self._hard_kill(scan=False)
        _proc.sweep(self._leftovers, quiet_scans=1 if self._ns_link else 2)
        reason = self._end_reason()
        with self._lock:
            procs = list(self._procs.values())
        started = []
        for p in procs:
            if p._spawned.is_set() and not p._spawn_error:
                started.append(p)
                p._lost("the sandbox stopped" if reason is None else f"the sandbox ended: {reason}")
            elif not p._spawned.is_set():
                p._spawn_error = "the sandbox ended before the process started"
                p._spawned.set()
        for p in started:
            p.done.wait(2.0)
        for fd in (self._helper_fd, self._init_fd, self._ns_fd):
            if fd is not None:
                os.close(fd)
        self._helper_fd = self._init_fd = self._ns_fd = None
        self._sock.close()
        self._res.release()
        self._runtime._forget(self)
        try:
            if booted:
                self._on_end(reason)
        except Exception:
            logger.exception("on_end of sandbox %s failed", self.sandbox_id)
        finally:
            self._finished.set()

    def _enforce_stop(self, grace: float) -> None:
        if not self._ended.wait(grace + 2.0):
            logger.warning("sandbox %s did not stop in %g s: killing it", self.sandbox_id, grace)
            self._hard_kill()
        self._wait_finished(10.0)

    def _wait_finished(self, timeout: float) -> None:
        if not self._finished.wait(timeout):
            logger.warning("sandbox %s: still cleaning up after %g s", self.sandbox_id, timeout)

    # -- pause

    def _set_frozen(self, frozen: bool) -> None:
        with self._lock:
            if not self.alive or self._stopping:
                raise SpawnError("the sandbox is not running")
            if self._frozen == frozen:
                return
        cg = self._res.cgroup
        if cg is not None and cg.can_freeze:
            try:
                cg.freeze(_FREEZE_TIMEOUT) if frozen else cg.thaw(_FREEZE_TIMEOUT)
            except CgroupError as e:
                if frozen:  # not left half-frozen
                    with contextlib.suppress(CgroupError):
                        cg.thaw(_FREEZE_TIMEOUT)
                raise SpawnError(str(e)) from e
        else:
            ack = "frozen" if frozen else "thawed"
            self._acks[ack] = event = threading.Event()
            self._request({"type": "freeze" if frozen else "thaw"})
            if not event.wait(5.0):
                raise SpawnError(f"the sandbox's agent did not report {ack}")
        self._frozen = frozen
