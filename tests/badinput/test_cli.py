"""Bad arguments to ``archil local serve``: a usage error naming the option, nothing started.

The command's options are parsed in-process (click raises a usage error that names the
option and prints the usage line); a host that is not a loopback address goes through
``main`` itself, which must refuse it with status 2 before it creates the data directory
or binds anything.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from archil._tls import is_loopback_host
from archil.cli import main
from archil.cli.local import serve

from .conftest import BADINPUT, TALLY, Server, attempt
from .strategies import NASTY_TEXT, text

NUMBERS = st.one_of(
    st.sampled_from(["", "x", "1e999", "nan", "-1", "-0.5", "0x10", "1_0", "one", " "]),
    st.integers().map(str),
    st.floats(allow_nan=True).map(str),
    text,
)


def _parse_serve(argv: list[str]) -> None:
    """Parse ``archil local serve`` arguments (``argv`` after ``local serve``) without running it."""
    assert argv[:2] == ["local", "serve"]
    serve.make_context("archil local serve", argv[2:])


def _parse(argv: list[str], option: str) -> str:
    """Parse ``argv``: ``"ok"`` when it is valid, else the usage error must name ``option``."""
    TALLY.tried.add((f"archil local serve {option}", repr(argv)))
    try:
        _parse_serve(argv)
    except click.UsageError as exc:
        err = io.StringIO()
        exc.show(file=err)
        assert exc.exit_code == 2, argv
        assert option in err.getvalue() and "usage: archil" in err.getvalue(), err.getvalue()
        TALLY.outcomes["rejected"] += 1
        return "rejected"
    TALLY.outcomes["ok"] += 1
    return "ok"


@BADINPUT
@given(
    port=NUMBERS,
    chaos=NUMBERS,
    seconds=NUMBERS,
    seed=NUMBERS,
)
def test_serve_numbers(server: Server, port: str, chaos: str, seconds: str, seed: str) -> None:
    before = server.state()
    # A value that starts with '-' is read as an option by argparse: refused all the same.
    outcome = _parse(["local", "serve", "--port", port], "--port")
    if outcome == "ok":
        assert 0 <= int(port) <= 65535
    outcome = _parse(["local", "serve", "--chaos", chaos], "--chaos")
    if outcome == "ok":
        assert 0.0 <= float(chaos) <= 1.0
    outcome = _parse(["local", "serve", "--exec-timeout", seconds], "--exec-timeout")
    if outcome == "ok":
        assert math.isfinite(float(seconds)) and float(seconds) > 0
    _parse(["local", "serve", "--chaos-seed", seed], "--chaos-seed")
    assert server.state() == before


@BADINPUT
@given(option=st.one_of(st.sampled_from(NASTY_TEXT), text).filter(lambda s: s.startswith("-")))
def test_serve_unknown_options(server: Server, option: str) -> None:
    known = {o for p in serve.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    argv = ["local", "serve", option]
    TALLY.tried.add(("archil local serve OPTION", repr(argv)))
    option_name = option.split("=", 1)[0]
    code: Any = None
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            _parse_serve(argv)
        except click.UsageError as exc:
            code = exc.exit_code
            message = exc.format_message()
        except click.exceptions.Exit as exc:
            code = exc.exit_code
            message = ""
    if option_name in known:
        return  # a known option (with or without a value), or --help
    assert code == 2, (option, code)
    assert option_name in message or "No such option" in message, message
    TALLY.outcomes["rejected"] += 1


@BADINPUT
@given(
    host=st.one_of(
        st.sampled_from(
            ["0.0.0.0", "::", "192.0.2.1", "10.0.0.1", "example.com", "[::]", "127.0.0.1.nip.io"]
        ),
        text,
    ).filter(lambda h: not is_loopback_host(h))
)
def test_serve_non_loopback_hosts_need_allow_remote(
    server: Server, host: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = tmp_path_factory.getbasetemp() / "cli-host-data"
    argv = ["local", "serve", "--host", host, "--data-dir", str(data)]
    if host.startswith("-"):
        argv = ["local", "serve", f"--host={host}", "--data-dir", str(data)]
    err = io.StringIO()

    def run() -> Any:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                return main(argv)
            except SystemExit as exc:
                return exc.code

    code = run()
    TALLY.tried.add(("archil local serve --host", repr(host)))
    assert code == 2, (host, err.getvalue())
    assert "--host" in err.getvalue() or "--allow-remote" in err.getvalue(), err.getvalue()
    assert not data.exists()
    TALLY.outcomes["rejected"] += 1
    attempt(
        server,
        "LocalServer(host)",
        host,
        lambda: _local_server(host, data),
        ("host", "allow_remote"),
    )
    assert not data.exists()


def _local_server(host: str, data: Path) -> None:
    from archil.local.embedded import LocalServer

    LocalServer(data, host=host)
