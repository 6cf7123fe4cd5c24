"""``archil local serve`` and ``archil local status``: the local control plane."""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click

from ._base import ArchilGroup, json_option
from ._output import print_fields, print_json

__all__ = ["local"]


@click.group(cls=ArchilGroup)
def local() -> None:
    """The local control plane: a real Archil API on this machine."""


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    # click's float ranges let nan through (every comparison with it is false) and inf
    # through an open upper bound.
    if not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value!r}")
    return value


@local.command(
    epilog="\b\nExample:\n  archil local serve --port 8700\n"
    "  export ARCHIL_BASE_URL=http://127.0.0.1:8700 ARCHIL_API_KEY=key-..."
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; one that other machines can reach needs --allow-remote.",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow --host to be an address that other machines can reach.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Port to bind (default: 0, any free port).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where state, disks, logs and images live "
    "(default: $ARCHIL_DATA_DIR, else ~/.cache/archil/local).",
)
@click.option(
    "--chaos",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    metavar="RATE",
    callback=_finite,
    help="Make this fraction of API requests fail (503, 429 or a dropped connection).",
)
@click.option("--chaos-seed", type=int, default=None, help="Seed of chaos mode.")
@click.option(
    "--auto-create-disks",
    is_flag=True,
    help="Create a disk that does not exist the first time its id is used.",
)
@click.option(
    "--real-api-only",
    is_flag=True,
    help="Serve only what Archil's live control plane has: no archil extension routes or "
    "fields, and no Idempotency-Key replay (combines with --auto-create-disks).",
)
@click.option(
    "--exec-timeout",
    type=click.FloatRange(0.0, min_open=True),
    default=30.0,
    metavar="SECONDS",
    callback=_finite,
    help="Time limit of exec requests (default: 30).",
)
@click.option(
    "--reap-idle",
    is_flag=True,
    help="Stop a sandbox whose idle TTL runs out instead of pausing it (a paused local "
    "sandbox keeps its processes, frozen).",
)
@click.option("--access-log", is_flag=True, help="Log every request.")
def serve(
    host: str,
    allow_remote: bool,
    port: int,
    data_dir: Path | None,
    chaos: float,
    chaos_seed: int | None,
    auto_create_disks: bool,
    real_api_only: bool,
    exec_timeout: float,
    reap_idle: bool,
    access_log: bool,
) -> int:
    """Run the local control plane in the foreground.

    It prints the base URL and the API key to use (ARCHIL_BASE_URL,
    ARCHIL_API_KEY); the SDK also finds it by itself when it uses the same data
    directory and no API key is set.
    """
    from .._tls import is_loopback_host
    from ..local.embedded import DataDirInUseError, LocalServer, default_data_dir

    if not allow_remote and not is_loopback_host(host):
        raise click.UsageError(
            f"--host {host} is not a loopback address: other machines could reach the local "
            "control plane; add --allow-remote to mean it"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    directory = data_dir if data_dir is not None else default_data_dir()
    server = LocalServer(
        directory,
        host=host,
        port=port,
        chaos_rate=chaos,
        chaos_seed=chaos_seed,
        auto_create_disks=auto_create_disks,
        exec_timeout=exec_timeout,
        access_log=access_log,
        real_api_only=real_api_only,
        allow_remote=allow_remote,
        reap_idle=reap_idle,
    )
    if not is_loopback_host(host):
        print(
            f"archil: warning: binding {host}, reachable from other machines; "
            "anyone who has the API key can run commands on this one",
            file=sys.stderr,
        )
    try:
        server.start()
    except DataDirInUseError as exc:
        print(f"archil: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"archil: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"archil local control plane at {server.base_url} (data in {server.data_dir})")
    print(f"ARCHIL_BASE_URL={server.base_url}")
    print(f"ARCHIL_API_KEY={server.api_key}")
    if chaos:
        print(f"chaos mode: {chaos:.0%} of requests fail")
    if real_api_only:
        print("real-API-only mode: archil extensions are off")
    print("Press Ctrl-C to stop.", flush=True)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.is_set() and server.running:
            stop.wait(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("archil: stopping the local control plane", file=sys.stderr, flush=True)
        server.stop()
    return 0


@local.command(
    epilog="\b\nExamples:\n  archil local status\n  archil local status --json --show-key"
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The data directory to look at (default: $ARCHIL_DATA_DIR, else ~/.cache/archil/local).",
)
@click.option("--show-key", is_flag=True, help="Also print its API key (hidden by default).")
@json_option
def status(data_dir: Path | None, show_key: bool, as_json: bool) -> int:
    """Where the embedded local control plane lives and whether it is up.

    It never starts one: it reads the data directory's server file and asks the
    server it names whether it answers. Exit code 0 whether it is up or not.
    """
    from ..local.embedded import default_data_dir, read_api_key, read_server_file, serves

    directory = Path(data_dir or default_data_dir()).expanduser().resolve()
    info = read_server_file(directory)
    url = info.get("url") if isinstance(info.get("url"), str) else None
    pid = info.get("pid") if isinstance(info.get("pid"), int) else None
    key = read_api_key(directory)
    running = url is not None and key is not None and serves(url, key, directory)
    started = info.get("startedAt")
    report: dict[str, Any] = {
        "data_dir": str(directory),
        "exists": directory.is_dir(),
        "running": running,
        "url": url if running else None,
        "pid": pid if running else None,
        "started_at": started if running and isinstance(started, (int, float)) else None,
        "api_key_file": str(directory / "api_key") if key is not None else None,
    }
    if show_key:
        report["api_key"] = key
    if as_json:
        print_json(report)
        return 0
    pairs: list[tuple[str, Any]] = [
        ("data directory", f"{directory}{'' if report['exists'] else ' (not created yet)'}"),
        ("status", "running" if running else "not running"),
    ]
    if running:
        pairs += [("url", url), ("pid", pid)]
        if isinstance(started, (int, float)):
            pairs.append(("up for", _duration(time.time() - started)))
    if key is not None:
        pairs.append(("api key", key if show_key else f"in {directory / 'api_key'} (--show-key)"))
    print_fields(pairs)
    return 0


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"
