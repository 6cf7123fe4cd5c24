"""The ``archil`` command.

``archil local serve`` runs the local control plane in the foreground and
prints what a client needs to use it (``ARCHIL_BASE_URL`` and
``ARCHIL_API_KEY``).
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

__all__ = ["build_parser", "main"]


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1 (a fraction of requests)")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535 (0 picks a free port)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``archil`` command."""
    parser = argparse.ArgumentParser(prog="archil", description="The Archil SDK's command line.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    local = commands.add_parser("local", help="the local control plane")
    local_commands = local.add_subparsers(dest="local_command", metavar="COMMAND")
    local_commands.required = True
    serve = local_commands.add_parser(
        "serve",
        help="run the local control plane in the foreground",
        description=(
            "Run the local control plane in the foreground. It prints the base URL and the "
            "API key to use (ARCHIL_BASE_URL, ARCHIL_API_KEY); the SDK also finds it by itself "
            "when it uses the same data directory and no API key is set."
        ),
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1; a non-loopback address needs --allow-remote)",
    )
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow --host to be an address other machines can reach",
    )
    serve.add_argument(
        "--port", type=_port, default=0, help="port to bind (default: 0, any free port)"
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where state, disks, logs and images live "
        "(default: $ARCHIL_DATA_DIR, else ~/.cache/archil/local)",
    )
    serve.add_argument(
        "--chaos",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="make this fraction of API requests fail (503, 429 or a dropped connection)",
    )
    serve.add_argument("--chaos-seed", type=int, default=None, help="seed of chaos mode")
    serve.add_argument(
        "--auto-create-disks",
        action="store_true",
        help="create a disk that does not exist the first time its id is used",
    )
    serve.add_argument(
        "--real-api-only",
        action="store_true",
        help="serve only what Archil's live control plane has: no archil extension routes or "
        "fields, and no Idempotency-Key replay (combines with --auto-create-disks)",
    )
    serve.add_argument(
        "--exec-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="time limit of exec requests (default: 30)",
    )
    serve.add_argument(
        "--reap-idle",
        action="store_true",
        help="stop a sandbox whose idle TTL runs out instead of pausing it (a paused local "
        "sandbox keeps its processes, frozen)",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(handler=_serve)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from ._tls import is_loopback_host
    from .local.embedded import DataDirInUseError, LocalServer, default_data_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    if not args.allow_remote and not is_loopback_host(args.host):
        print(
            f"archil: --host {args.host} is not a loopback address: other machines could reach "
            "the local control plane; add --allow-remote to mean it",
            file=sys.stderr,
        )
        return 2
    server = LocalServer(
        data_dir,
        host=args.host,
        port=args.port,
        chaos_rate=args.chaos,
        chaos_seed=args.chaos_seed,
        auto_create_disks=args.auto_create_disks,
        exec_timeout=args.exec_timeout,
        access_log=args.access_log,
        real_api_only=args.real_api_only,
        allow_remote=args.allow_remote,
        reap_idle=args.reap_idle,
    )
    if not is_loopback_host(args.host):
        print(
            f"archil: warning: binding {args.host}, reachable from other machines; "
            "anyone who has the API key can run commands on this one",
            file=sys.stderr,
        )
    try:
        server.start()
    except DataDirInUseError as exc:
        print(f"archil: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"archil: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    print(f"archil local control plane at {server.base_url} (data in {server.data_dir})")
    print(f"ARCHIL_BASE_URL={server.base_url}")
    print(f"ARCHIL_API_KEY={server.api_key}")
    if args.chaos:
        print(f"chaos mode: {args.chaos:.0%} of requests fail")
    if args.real_api_only:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``archil`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
