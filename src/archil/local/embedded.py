"""Run the local control plane in a background thread of this process.

:class:`LocalServer` starts uvicorn on a loopback port in a daemon thread and
stops it gracefully (containers are stopped, the database closed).
:func:`ensure_embedded` is what the SDK calls when no API key is configured:
one server per data directory and process, reusing a server that another
process already runs on the same data directory.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from starlette.types import Scope

from .._tls import is_loopback_host
from .server import LocalApp, ServerSettings, create_app, load_api_key

__all__ = ["DataDirInUseError", "LocalServer", "default_data_dir", "ensure_embedded"]

logger = logging.getLogger("archil.local")

_START_TIMEOUT = 30.0
_SERVER_FILE = "server.json"
_LOCK_FILE = "server.lock"


class DataDirInUseError(RuntimeError):
    """Another local control plane already serves this data directory."""


class _RedactTokens(logging.Filter):
    """Hides the ``token=`` of process WebSocket URLs in uvicorn's records.

    uvicorn logs each WebSocket's path and query (``"WebSocket /ws/...?token=..."
    [accepted]``) at INFO; the token lets whoever holds it run processes in the sandbox
    until it expires, so it must not reach a log, whatever the logging configuration.
    """

    _TOKEN = re.compile(r"(token=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        if "token=" in message:
            record.msg = self._TOKEN.sub(r"\1<redacted>", message)
            record.args = None
        return True


def _redact_uvicorn_logs() -> None:
    for name in ("uvicorn.error", "uvicorn.access"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _RedactTokens) for f in target.filters):
            target.addFilter(_RedactTokens())


def default_data_dir() -> Path:
    """``$ARCHIL_DATA_DIR``, else ``$XDG_CACHE_HOME/archil/local``, else ``~/.cache/archil/local``."""
    explicit = os.environ.get("ARCHIL_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "archil" / "local"


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalServer:
    """A local control plane served by uvicorn in a background daemon thread.

    ``base_url`` and ``api_key`` are set once :meth:`start` returns. Use it as a
    context manager to stop it on exit. A server that :func:`ensure_embedded`
    found running in another process is *attached*: ``stop`` leaves it alone.
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        chaos_rate: float = 0.0,
        chaos_seed: int | None = None,
        auto_create_disks: bool = False,
        exec_timeout: float = 30.0,
        stop_grace: float = 10.0,
        access_log: bool = False,
        real_api_only: bool = False,
        namespaces: bool | None = None,
        min_part_size: int = 5 * 1024 * 1024,
        allow_remote: bool = False,
        reap_idle: bool = False,
    ) -> None:
        if not allow_remote and not is_loopback_host(host):
            raise ValueError(
                f"host {host!r} is not a loopback address: the local control plane would be "
                "reachable from other machines; pass allow_remote=True "
                "(archil local serve --allow-remote) to mean it"
            )
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.host = host
        self.port = port
        self.settings = ServerSettings(
            data_dir=self.data_dir,
            auto_create_disks=auto_create_disks,
            exec_timeout=exec_timeout,
            stop_grace=stop_grace,
            chaos_rate=chaos_rate,
            chaos_seed=chaos_seed,
            real_api_only=real_api_only,
            namespaces=namespaces,
            min_part_size=min_part_size,
            reap_idle=reap_idle,
        )
        self.access_log = access_log
        self.base_url = ""
        self.api_key = ""
        self.attached = False
        self.app: LocalApp | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock_fd: int | None = None
        self._owner_pid: int | None = None
        self._state_lock = threading.Lock()

    def __repr__(self) -> str:
        mode = "attached" if self.attached else ("running" if self.running else "stopped")
        return (
            f"LocalServer(url={self.base_url or None!r}, data_dir={str(self.data_dir)!r}, {mode})"
        )

    @classmethod
    def attach(cls, data_dir: Path, base_url: str, api_key: str, pid: int) -> LocalServer:
        """A handle on a server that process ``pid`` runs."""
        server = cls(data_dir)
        server.base_url = base_url
        server.api_key = api_key
        server.attached = True
        server._owner_pid = pid
        return server

    @property
    def running(self) -> bool:
        """Whether the server is serving (for an attached one: whether its process is alive)."""
        if self.attached:
            return self._owner_pid is not None and _pid_alive(self._owner_pid)
        return self._thread is not None and self._thread.is_alive() and self._server is not None

    # -- start / stop ------------------------------------------------------------

    def _acquire_lock(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.data_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = read_server_file(self.data_dir)
            where = f" at {info.get('url')} (pid {info.get('pid')})" if info else ""
            raise DataDirInUseError(
                f"another local control plane is serving {self.data_dir}{where}"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def start(self) -> LocalServer:
        """Start serving; returns once ``/healthz`` would answer. Raises if the server cannot start."""
        with self._state_lock:
            if self.attached or self.running:
                return self
            self._acquire_lock()
            try:
                self._start_locked()
            except BaseException:
                self._release_lock()
                raise
            return self

    def _start_locked(self) -> None:
        self.api_key = load_api_key(self.data_dir)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(False)
        port = int(sock.getsockname()[1])
        self.app = create_app(self.settings, api_key=self.api_key)
        self.app.plane.dropper = self._drop_connection
        _redact_uvicorn_logs()
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="warning",
            access_log=self.access_log,
            lifespan="on",
            http="auto",
            ws="wsproto",
            timeout_graceful_shutdown=3,
            timeout_keep_alive=30,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._error = None

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:
                self._error = exc
            finally:
                with contextlib.suppress(OSError):
                    sock.close()

        thread = threading.Thread(target=run, name="archil-local-server", daemon=True)
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(5)
                self._server = None
                self._thread = None
                reason = f": {self._error}" if self._error else ""
                raise RuntimeError(f"the local control plane did not start{reason}")
            time.sleep(0.01)
        self.port = port
        self.base_url = _url(self.host, port)
        self._write_server_file()
        logger.info("local control plane serving %s at %s", self.data_dir, self.base_url)

    def _write_server_file(self) -> None:
        info = {
            "url": self.base_url,
            "pid": os.getpid(),
            "dataDir": str(self.data_dir),
            "startedAt": time.time(),
        }
        tmp = self.data_dir / f".{_SERVER_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.data_dir / _SERVER_FILE)

    def _drop_connection(self, scope: Scope) -> bool:
        """Close the connection a request came on, without a response (chaos mode)."""
        server = self._server
        client = scope.get("client")
        if server is None or not client:
            return False
        target = (client[0], client[1])
        for proto in list(server.server_state.connections):
            peer = getattr(proto, "client", None)
            if peer is not None and tuple(peer) == target:
                transport = getattr(proto, "transport", None)
                if transport is None:
                    return False
                transport.close()
                return True
        return False

    def stop(self) -> None:
        """Stop serving: long-polls are released, containers stopped, the database closed."""
        with self._state_lock:
            if self.attached:
                return
            server, thread = self._server, self._thread
            if server is None or thread is None:
                self._release_lock()
                return
            if self.app is not None:
                self.app.plane.begin_shutdown_threadsafe()
            server.should_exit = True
            thread.join(self.settings.stop_grace + 30.0)
            if thread.is_alive():
                server.force_exit = True
                thread.join(5.0)
            self._server = None
            self._thread = None
            info = read_server_file(self.data_dir)
            if info.get("pid") == os.getpid() and info.get("url") == self.base_url:
                with contextlib.suppress(OSError):
                    (self.data_dir / _SERVER_FILE).unlink()
            self._release_lock()

    def set_chaos(self, rate: float, seed: int | None = None) -> None:
        """Change the chaos failure rate (0 turns it off) and optionally reseed it."""
        if self.app is None:
            self.settings.chaos_rate = rate
            self.settings.chaos_seed = seed
            return
        self.app.plane.chaos.set(rate, seed)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def read_server_file(data_dir: Path) -> dict[str, Any]:
    """The ``server.json`` of a data directory (``{}`` when absent or unreadable)."""
    try:
        data = json.loads((data_dir / _SERVER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_api_key(data_dir: Path) -> str | None:
    """The API key kept in a data directory, or ``None``."""
    try:
        key = (data_dir / "api_key").read_text().strip()
    except OSError:
        return None
    return key or None


def serves(url: str, key: str, data_dir: Path) -> bool:
    """Whether the server at ``url`` takes ``key`` and serves ``data_dir`` (its ``/healthz``)."""
    try:
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            resp = client.get(url + "/healthz", headers={"Authorization": key})
        data = resp.json().get("data") or {}
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
    return bool(data.get("authenticated") is True and data.get("dataDir") == str(data_dir))


def _probe(data_dir: Path) -> LocalServer | None:
    """A handle on a live server of another process on ``data_dir``, if there is one."""
    info = read_server_file(data_dir)
    url, pid = info.get("url"), info.get("pid")
    if not isinstance(url, str) or not isinstance(pid, int) or pid == os.getpid():
        return None
    if not _pid_alive(pid):
        return None
    key = read_api_key(data_dir)
    if key is None or not serves(url, key, data_dir):
        return None
    return LocalServer.attach(data_dir, url, key, pid)


_EMBEDDED: dict[Path, LocalServer] = {}
_EMBEDDED_LOCK = threading.Lock()
_ATEXIT_REGISTERED = False


def _stop_all() -> None:
    with _EMBEDDED_LOCK:
        servers = list(_EMBEDDED.values())
        _EMBEDDED.clear()
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


def ensure_embedded(data_dir: Path | None = None) -> LocalServer:
    """The embedded local control plane for ``data_dir`` (default :func:`default_data_dir`).

    Starts one (auto-creating disks on first use) unless this process already has
    one, or another process serves the same data directory, in which case that
    one is reused. Says so once on stderr. Servers started here stop at exit.
    """
    global _ATEXIT_REGISTERED
    directory = Path(data_dir or default_data_dir()).expanduser().resolve()
    with _EMBEDDED_LOCK:
        current = _EMBEDDED.get(directory)
        if current is not None and current.running:
            return current
        server = _probe(directory)
        if server is None:
            candidate = LocalServer(directory, auto_create_disks=True)
            try:
                server = candidate.start()
            except DataDirInUseError:
                server = _wait_for_other(directory)
            else:
                if not _ATEXIT_REGISTERED:
                    atexit.register(_stop_all)
                    _ATEXIT_REGISTERED = True
        _EMBEDDED[directory] = server
    try:
        sys.stderr.write(
            "archil: no ARCHIL_API_KEY set; running on the embedded local control plane at "
            f"{server.base_url} (data in {directory}). Set ARCHIL_API_KEY to use Archil's cloud.\n"
        )
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return server


def _wait_for_other(directory: Path, timeout: float = _START_TIMEOUT) -> LocalServer:
    """Another process holds the data directory: wait for its server to answer, then attach."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server = _probe(directory)
        if server is not None:
            return server
        time.sleep(0.05)
    raise DataDirInUseError(
        f"another process holds {directory} but its local control plane does not answer; "
        "set ARCHIL_DATA_DIR to use another directory"
    )
