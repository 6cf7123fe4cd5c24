"""``archil run``: the examples, typed options, --detach and Ctrl-C, through the console script."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import archil
from procs import processes_with_env

from .helpers import ARCHIL, ROOT, Cli

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

TYPED = textwrap.dedent(
    '''
    import archil

    app = archil.App(name="typed", disk_id="{disk}")

    @app.function()
    def combine(count: int, ratio: float = 0.5, loud: bool = False, label: str = "x") -> dict:
        """Combine the options into one value."""
        print("working", flush=True)
        return {{"count": count * 2, "ratio": ratio, "loud": loud, "label": label}}

    @app.function()
    def fails(message: str = "bad") -> None:
        raise ValueError(message)

    @app.function()
    def sleepy() -> None:
        import time
        print("sleeping", flush=True)
        time.sleep(600)

    if __name__ == "__main__":
        raise SystemExit("the __main__ block must not run")
    '''
)


@pytest.fixture(scope="module")
def typed_app(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    disk = f"disk_{uuid.uuid4().hex[:10]}"
    path = tmp_path_factory.mktemp("typed") / "typed_app.py"
    path.write_text(TYPED.format(disk=disk))
    return path, disk


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["examples/declarative_simple.py", "--name", "Ada"], "greeted Ada\n"),
        (["examples/declarative_ml_training.py::train", "--seed", "42", "--json"], None),
        (["examples/declarative_data_processing.py::make_shards", "--n", "2", "--json"], None),
        (["examples/run_command.py"], "0\n"),
    ],
    ids=["simple", "ml-training", "data-processing", "run-command"],
)
def test_examples(cli_auto: Cli, args: list[str], expected: str | None) -> None:
    result = cli_auto.ok("run", *args)
    if args[0].endswith("::train"):
        model = json.loads(result.stdout)
        assert abs(model["w"] - 3.0) < 0.1 and abs(model["b"] + 2.0) < 0.1
        assert "Model saved to /mnt/archil/models/linear.json" in result.stderr
    elif args[0].endswith("::make_shards"):
        assert json.loads(result.stdout) == [
            f"/mnt/archil/pipeline/raw/shard-{i:03d}.csv" for i in range(2)
        ]
    else:
        assert result.stdout.endswith(expected or "")
    if args[0] == "examples/declarative_simple.py":
        assert "Hello from Ada!" in result.stdout
        # Progress on stderr (not a terminal: plain lines): the image, then the run.
        assert re.search(r"^archil: building image \S+: ready in [0-9.]+s$", result.stderr, re.M)
        assert "archil: running say_hello on disk disk_abc123\n" in result.stderr


def test_which_function(cli_auto: Cli) -> None:
    several = cli_auto("run", "examples/declarative_data_processing.py")
    assert several.returncode == 1
    assert "make_shards, summarize" in several.stderr.splitlines()[0]
    unknown = cli_auto("run", "examples/declarative_data_processing.py::nope")
    assert unknown.returncode == 1 and "it has: make_shards, summarize" in unknown.stderr
    none = cli_auto("run", "examples/simple_container.py")
    assert none.returncode == 1 and "declares no archil function or job" in none.stderr
    assert len(none.stderr.splitlines()) == 1
    missing = cli_auto("run", "examples/nothing_here.py")
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_typed_options(cli_auto: Cli, typed_app: tuple[Path, str]) -> None:
    path, _ = typed_app
    result = cli_auto.ok(
        "run",
        f"{path}::combine",
        "--count",
        "21",
        "--ratio",
        "1.5",
        "--loud",
        "--label",
        "hi",
        "--json",
    )
    assert json.loads(result.stdout) == {"count": 42, "ratio": 1.5, "loud": True, "label": "hi"}
    assert "working" in result.stderr  # with --json, the container's output goes to stderr
    quiet = cli_auto.ok("run", "--quiet", f"{path}::combine", "--count", "1")
    assert quiet.stdout == "{'count': 2, 'label': 'x', 'loud': False, 'ratio': 0.5}\n"
    assert "working" not in quiet.stdout + quiet.stderr

    helped = cli_auto.ok("run", f"{path}::combine", "--help").stdout
    assert " ".join(helped.split()).startswith(f"usage: archil run {path}::combine [OPTIONS]")
    assert "Combine the options into one value." in helped
    for option in ("--count INTEGER", "--ratio FLOAT", "--loud / --no-loud", "--label TEXT"):
        assert option in helped
    assert "[default: 0.5]" in helped

    bad = cli_auto("run", f"{path}::combine", "--count", "many")
    assert bad.returncode == 2 and "'many' is not a valid integer" in bad.stderr
    required = cli_auto("run", f"{path}::combine")
    assert required.returncode == 2 and "--count" in required.stderr

    raised = cli_auto("run", f"{path}::fails", "--message", "broken input")
    assert raised.returncode == 1
    assert raised.stderr.splitlines()[-1] == "archil: error: fails raised ValueError: broken input"


def test_detach_a_job(cli_auto: Cli) -> None:
    detached = cli_auto.ok("run", "--detach", "examples/run_command.py")
    sandbox_id = detached.stdout.strip()
    assert UUID.match(sandbox_id), detached.stdout
    ids = json.loads(cli_auto.ok("run", "examples/run_command.py", "--detach", "--json").stdout)
    assert set(ids) == {"sandbox_id", "process_id"}
    logs = cli_auto.ok("sandboxes", "logs", ids["sandbox_id"], ids["process_id"], "--follow")
    assert "archived 1000 lines" in logs.stdout
    with cli_auto.client() as client:
        for sid in (sandbox_id, ids["sandbox_id"]):
            sandbox = client.sandboxes.get(sid)
            assert sandbox.status == "running" and sandbox.idle_ttl_seconds == 0
    for sid in (sandbox_id, ids["sandbox_id"]):
        cli_auto.ok("sandboxes", "rm", sid)


def test_detach_a_function(cli_auto: Cli, typed_app: tuple[Path, str]) -> None:
    path, disk = typed_app
    started = cli_auto.ok("run", "--detach", f"{path}::combine", "--count", "4")
    object_id = started.stdout.strip()
    assert re.match(r"^fc-[0-9a-f]{32}$", object_id), started.stdout
    assert "archil.FunctionCall.from_id" in started.stderr
    app = archil.App(
        name="typed",
        disk_id=disk,
        api_key=cli_auto.server.api_key,
        base_url=cli_auto.server.base_url,
    )
    try:
        call = archil.FunctionCall.from_id(object_id, app=app)
        assert call.get(timeout=60) == {"count": 8, "ratio": 0.5, "loud": False, "label": "x"}
    finally:
        app.close()
    as_json = json.loads(
        cli_auto.ok("run", f"{path}::combine", "--count", "1", "--detach", "--json").stdout
    )
    assert set(as_json) == {"object_id"}
    app = archil.App(
        name="typed",
        disk_id=disk,
        api_key=cli_auto.server.api_key,
        base_url=cli_auto.server.base_url,
    )
    try:
        archil.FunctionCall.from_id(as_json["object_id"], app=app).cancel()
    finally:
        app.close()


def test_ctrl_c_stops_and_deletes_the_sandbox(cli_auto: Cli, typed_app: tuple[Path, str]) -> None:
    path, disk = typed_app
    proc = subprocess.Popen(
        [str(ARCHIL), "run", f"{path}::sleepy"],
        env=cli_auto.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        with cli_auto.client() as client:
            line = proc.stdout.readline()
            while line and "sleeping" not in line:
                line = proc.stdout.readline()
            running = client.sandboxes.list(disk_id=disk)
            assert [s.status for s in running] == ["running"]
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == 130, out
            assert "Traceback" not in out
            assert client.sandboxes.list(disk_id=disk) == []
        assert _processes_with_env(f"ARCHIL_SANDBOX_ID={running[0].id}") == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _processes_with_env(needle: str) -> list[int]:
    """The processes still marked with ``needle`` after up to 5 s for them to end."""
    deadline = time.monotonic() + 5
    while (found := processes_with_env(needle)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found
