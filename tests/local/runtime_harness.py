"""The harness of the sandbox runtime tests: a runtime's sandboxes, processes and their ends."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archil.local.layers import LayerStore
from archil.local.runtime import (
    Environment,
    Runtime,
)
from archil.local.spec import ExitInfo, ImageEnv, MountSpec, ProcessSpec, SandboxSpec

HOST_IMAGE = ImageEnv(image_id="host", source="host")


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
    """Poll ``predicate`` every 10 ms until it holds or ``timeout`` passes; its last value."""
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


def env_of(p: Proc) -> dict[str, str]:
    return dict(line.split("=", 1) for line in p.text().splitlines() if "=" in line)
