"""An ``archil.Secret`` reaches the container, and no output of the command line shows it."""

from __future__ import annotations

import hashlib
import json
import textwrap
import uuid
from pathlib import Path

import pytest

from .helpers import Cli

VALUE = "cli-secret-" + uuid.uuid4().hex

APP = textwrap.dedent(
    """
    import hashlib
    import os

    import archil

    app = archil.App(name="secret-cli", disk_id="{disk}")
    token = archil.Secret.from_local_environ(["CLI_TEST_TOKEN"])

    @app.function(secrets=[token], stream_logs=True)
    def peek() -> str:
        print("the token is set:", "CLI_TEST_TOKEN" in os.environ)
        return hashlib.sha256(os.environ["CLI_TEST_TOKEN"].encode()).hexdigest()

    @app.run(command='test "${{#CLI_TEST_TOKEN}}" -gt 20 && echo long enough', secrets=[token])
    def job():
        pass
    """
)


@pytest.fixture(scope="module")
def secret_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "secret_app.py"
    path.write_text(APP.format(disk=f"disk_{uuid.uuid4().hex[:10]}"))
    return path


def test_a_secret_reaches_the_container_and_no_output_shows_it(
    cli_auto: Cli, secret_app: Path
) -> None:
    env = {**cli_auto.env, "CLI_TEST_TOKEN": VALUE}
    outputs: list[str] = []

    def run(*args: str) -> str:
        result = cli_auto.ok(*args, env=env)
        outputs.extend([result.stdout, result.stderr])
        return result.stdout

    digest = json.loads(run("run", f"{secret_app}::peek", "--json"))
    assert digest == hashlib.sha256(VALUE.encode()).hexdigest()
    assert "long enough" in run("run", f"{secret_app}::job")
    assert "the token is set: True" in "".join(outputs)

    # A detached call's sandbox is still there: its record and listing hold no secret.
    run("run", "--detach", f"{secret_app}::job", "--json")
    listed = json.loads(run("sandboxes", "ls", "--json"))
    assert listed
    for sandbox in listed:
        run("sandboxes", "get", sandbox["sandbox_id"], "--json")
    run("sandboxes", "ls")
    for text in outputs:
        assert VALUE not in text
