"""A sandbox's processes, the connections attached to them, and the one-shot exec.

:class:`_Processes` starts processes in a running sandbox, finds them, counts the
connections attached to them (an attached sandbox is not idle) and follows their
output; :meth:`~_Processes.run_once` runs a command in a throwaway environment
and returns its :class:`ExecOutcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio.to_thread

from .runtime import Environment, RunningProcess, SpawnError
from .sandboxes_live import (
    _EXEC_OUTPUT_CAP,
    _IMAGE_WAIT,
    DEFAULT_MAX_CONCURRENT_EXECS,
    EXEC_IMAGE,
    Proc,
    _conflict,
)
from .sandboxes_timers import _Timers
from .spec import ExitInfo, MountSpec, ProcessSpec, SandboxSpec
from .state import utcnow

__all__ = ["ExecOutcome", "_Processes", "_settle"]


@dataclass(frozen=True)
class ExecOutcome:
    """The result of a one-shot exec: exit code, output, and where the time went (ms)."""

    exit_code: int
    stdout: str
    stderr: str
    queue_ms: int
    execute_ms: int


class _Processes(_Timers):
    """Run processes in sandboxes and commands in throwaway environments."""

    def running_env(self, sid: str) -> Environment:
        """The environment of a running sandbox, or a 409."""
        row = self.get(sid)
        live = self._live.get(sid)
        if row["status"] != "running" or live is None or live.env is None:
            raise _conflict(f"the sandbox is {row['status']}, not running", "sandbox_not_running")
        return live.env

    def max_execs(self, sid: str) -> int:
        """How many connections may be attached to the sandbox's processes at once."""
        spec = json.loads(self.get(sid)["spec"])
        limit: int = spec.get("max_concurrent_execs") or DEFAULT_MAX_CONCURRENT_EXECS
        return limit

    async def start_process(self, sid: str, spec: ProcessSpec) -> Proc:
        """Start a process in a running sandbox (``SpawnError`` when it cannot be started).

        The spawn waits for the sandbox's agent to fork and exec; it does so on a worker
        thread, so that the event loop serves other requests meanwhile.
        """
        env = self.running_env(sid)
        live = self._live_of(sid)
        pid = "proc-" + secrets.token_hex(8)
        loop = self._loop
        assert loop is not None
        proc = Proc(
            id=pid,
            sandbox_id=sid,
            path=self.process_root / sid / f"{pid}.out",
            terminal=spec.terminal is not None,
            loop=loop,
        )

        def on_exit(info: ExitInfo) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._process_ended, proc, info)

        def spawn() -> RunningProcess:
            return env.spawn(spec, on_output=proc.output.append, on_exit=on_exit)

        try:
            proc.running = await anyio.to_thread.run_sync(spawn)
        except SpawnError:
            proc.output.discard()
            raise
        live.procs[pid] = proc
        return proc

    def process(self, sid: str, process_id: str) -> Proc | None:
        """A process of the sandbox, or ``None``."""
        live = self._live.get(sid)
        return None if live is None else live.procs.get(process_id)

    def attached_count(self, sid: str) -> int:
        """How many process connections are attached to the sandbox now."""
        live = self._live.get(sid)
        return 0 if live is None else live.attached

    def attach(self, sid: str, close: Callable[[], None]) -> None:
        """A process connection attached: the sandbox is not idle."""
        live = self._live_of(sid)
        live.attached += 1
        live.sockets.add(close)
        if live.idle_timer is not None:
            live.idle_timer.cancel()
            live.idle_timer = None
        self.state.update_sandbox(sid, last_active_at=utcnow())

    def detach(self, sid: str, close: Callable[[], None]) -> None:
        """A process connection ended; the idle countdown starts when none is left."""
        live = self._live.get(sid)
        if live is None:
            return
        live.sockets.discard(close)
        live.attached = max(0, live.attached - 1)
        with contextlib.suppress(Exception):
            self.state.update_sandbox(sid, last_active_at=utcnow())
        if live.attached == 0:
            self._arm_idle(sid)

    async def follow(self, proc: Proc, offset: int) -> AsyncIterator[tuple[int, int, bytes]]:
        """Output pieces of ``proc`` from ``offset`` on, waiting for more until it is closed."""
        while True:
            event = proc.changed
            pieces = proc.output.frames(offset)
            if pieces:
                for piece in pieces:
                    yield piece
                last = pieces[-1]
                offset = last[1] + len(last[2])
                continue
            if proc.output.closed:
                return
            await event.wait()

    # -- one-shot exec -------------------------------------------------------------------

    async def run_once(self, command: str, mounts: list[MountSpec], timeout: float) -> ExecOutcome:
        """Run ``command`` in a throwaway environment with ``mounts``; ``TimeoutError`` past ``timeout``."""
        t0 = time.monotonic()
        image = await anyio.to_thread.run_sync(self.images.resolve, EXEC_IMAGE, _IMAGE_WAIT)
        sid = "exec-" + secrets.token_hex(8)
        root = self.layers.new_session(sid)
        spec = SandboxSpec(
            sandbox_id=sid,
            hostname="exec",
            root=root,
            image=image,
            mounts=tuple(mounts),
        )
        try:
            env = await anyio.to_thread.run_sync(
                lambda: self.runtime.boot(spec, on_end=lambda reason: None)
            )
            try:
                t1 = time.monotonic()
                code, out, err = await self._collect(env, command, timeout)
                t2 = time.monotonic()
            finally:
                await anyio.to_thread.run_sync(env.stop, 0.0)
        finally:
            self.layers.remove_session(root)
        return ExecOutcome(code, out, err, int((t1 - t0) * 1000), int((t2 - t1) * 1000))

    async def _collect(
        self, env: Environment, command: str, timeout: float
    ) -> tuple[int, str, str]:
        loop = asyncio.get_running_loop()
        chunks: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        done: asyncio.Future[ExitInfo] = loop.create_future()

        def on_output(stream: int, data: bytes) -> None:
            buf = chunks[stream]
            if len(buf) < _EXEC_OUTPUT_CAP:
                buf += data[: _EXEC_OUTPUT_CAP - len(buf)]

        def on_exit(info: ExitInfo) -> None:
            loop.call_soon_threadsafe(_settle, done, info)

        running = env.spawn(ProcessSpec(command=command), on_output=on_output, on_exit=on_exit)
        try:
            info = await asyncio.wait_for(asyncio.shield(done), timeout)
        except asyncio.TimeoutError:
            await anyio.to_thread.run_sync(running.cancel)
            raise TimeoutError(f"the command did not finish within {timeout:g} s") from None
        stderr = chunks[2].decode("utf-8", "replace")
        if info.status != "completed" and info.exit_reason:
            stderr += (
                ("" if not stderr or stderr.endswith("\n") else "\n") + info.exit_reason + "\n"
            )
        code = info.exit_code if info.exit_code is not None else 128 + 9
        return code, chunks[1].decode("utf-8", "replace"), stderr


def _settle(future: asyncio.Future[ExitInfo], info: ExitInfo) -> None:
    if not future.done():
        future.set_result(info)
