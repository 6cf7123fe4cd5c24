"""The API key, disk tokens, API tokens, bucket secrets and process connection tokens never
show in a repr, a log record (every logger, DEBUG included), an exception, the output, or a
file on a disk, through real work against a real local control plane: disks with bucket
mounts, users and tokens, errors of every kind, retries under chaos, sandbox processes and
a ``fn.remote()`` call.

The scanner is :class:`tests.security.conftest.SecretScan`; each secret is added to it as
soon as the test knows it.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import archil
from archil._callproto import encode_call
from archil.local.embedded import LocalServer

from .conftest import SecretScan

BUCKET_SECRET = "bucket-secret-" + uuid.uuid4().hex
SESSION_TOKEN = "bucket-session-" + uuid.uuid4().hex
AZURE_SECRET = "azure-client-secret-" + uuid.uuid4().hex
ENV_SECRET = "env-value-" + uuid.uuid4().hex
WRONG_KEY = "key-" + uuid.uuid4().hex
CONNECTION_TOKEN = re.compile(r"token=\d+\.[0-9a-f]{16,}")


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[LocalServer]:
    server = LocalServer(tmp_path / "data", stop_grace=2.0, access_log=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_secrets_stay_out_of_reprs_logs_errors_and_output(
    srv: LocalServer, secret_scan: SecretScan
) -> None:
    scan = secret_scan
    scan.add("the API key", srv.api_key)
    scan.add("a wrong API key", WRONG_KEY)
    for label, value in (
        ("a bucket secret", BUCKET_SECRET),
        ("a bucket session token", SESSION_TOKEN),
        ("an Azure client secret", AZURE_SECRET),
        ("a process environment value", ENV_SECRET),
    ):
        scan.add(label, value)

    with archil.Archil(api_key=srv.api_key, base_url=srv.base_url) as client:
        for what in (repr(client), str(client), repr(client.config), repr(srv)):
            scan.check_text("a client's repr", what)

        # Disks and their one-time tokens.
        disk = client.disks.create(name=f"sec-{uuid.uuid4().hex[:6]}")
        tokens = [u.token.get_secret_value() for u in disk.authorized_users if u.token]
        assert tokens, "disk creation hands out a token"
        scan.add("the disk's first token", tokens[0])
        user = client.disks.add_user(disk.id, nickname="robot")
        assert user.token is not None
        scan.add("a disk user's token", user.token.get_secret_value())
        api_token = client.tokens.create("ci", description="for the scan")
        assert api_token.token is not None
        scan.add("an API token", api_token.token.get_secret_value())
        for obj in (disk, user, api_token, client.disks.get(disk.id), client.tokens.list()):
            scan.check_text(f"repr of {type(obj).__name__}", repr(obj))
            scan.check_text(f"str of {type(obj).__name__}", str(obj))

        # Bucket-backed disks: the secrets go to the server and nowhere else.
        s3 = archil.Mount(
            provider="s3",
            bucket="my-bucket",
            access_key_id="AKIAEXAMPLEEXAMPLE",
            secret_access_key=BUCKET_SECRET,
            session_token=SESSION_TOKEN,
        )
        bucketed = client.disks.create(name=f"b-{uuid.uuid4().hex[:6]}", mounts=[s3])
        scan.check_text("a bucket mount's repr", repr(s3) + str(s3) + repr(bucketed))
        for bad in (
            lambda: archil.Mount(provider="s3", secret_access_key=BUCKET_SECRET),
            lambda: archil.Mount(
                provider="s3", bucket="b", access_key_id="A", session_token=SESSION_TOKEN
            ),
            lambda: archil.Mount(provider="azure-blob", client_secret=AZURE_SECRET),
            lambda: client.disks.create(
                name="bad name!", mounts=[{"provider": "s3", "secret_access_key": BUCKET_SECRET}]
            ),
        ):
            with pytest.raises(ValueError) as info:
                bad()
            scan.check_exception(info.value)

        # API errors: 404, 400, 409, 401 with a wrong key.
        for call in (
            lambda: client.disks.get("dsk-0000000000000000"),
            lambda: client.tokens.delete("tok-missing"),
            lambda: client.disks.create(name=disk.name, mounts=[s3]),
            lambda: client.images.build("UPPER/Case"),
        ):
            with pytest.raises(archil.APIError) as api_info:
                call()
            scan.check_exception(api_info.value)
        with (
            archil.Archil(api_key=WRONG_KEY, base_url=srv.base_url) as wrong,
            pytest.raises(archil.AuthenticationError) as auth,
        ):
            wrong.disks.get(disk.id)
        scan.check_exception(auth.value)

        # Transport errors, after retries.
        with (
            archil.Archil(
                api_key=srv.api_key,
                base_url=f"http://127.0.0.1:{_closed_port()}",
                max_retries=1,
            ) as nowhere,
            pytest.raises(archil.APIConnectionError) as conn,
        ):
            nowhere.disks.get(disk.id)
        scan.check_exception(conn.value)

        # Retries under chaos: each one logged, none with a secret.
        srv.set_chaos(0.3, seed=11)
        try:
            retrying = client.with_options(max_retries=8)
            for _ in range(6):
                retrying.disks.get(disk.id)
                retrying.disks.add_user(bucketed.id, nickname=f"n{uuid.uuid4().hex[:6]}")
        finally:
            srv.set_chaos(0.0)
        assert any("retry" in line.lower() for line in scan.log_lines()), "no retry was logged"

        # Sandbox processes: the connection URL's token and environment values.
        sandbox = client.sandboxes.create(mounts=[archil.SandboxMount(disk_id=disk.id)])
        try:
            connection = sandbox.connect()
            scan.add("a process connection token", connection.url.split("token=", 1)[1])
            scan.check_text("a connection's repr", repr(connection) + str(connection))
            result = sandbox.exec(
                'test -n "$SECRET_VALUE" && echo set', env={"SECRET_VALUE": ENV_SECRET}
            )
            assert result.stdout.strip() == "set"
            scan.check_text("a process result", repr(result))
            with pytest.raises(ValueError) as env_info:
                sandbox.exec("true", env={"1BAD": ENV_SECRET})
            scan.check_exception(env_info.value)
        finally:
            sandbox.stop()
            sandbox.delete()

        # A function call: its payload and whatever it leaves on the disk.
        app = archil.App(
            name="secrets", disk_id=disk.id, api_key=srv.api_key, base_url=srv.base_url
        )

        @app.function(stream_logs=True)
        def uses_the_app() -> str:
            return f"{app.name} on {app.disk_id}"

        @app.function(stream_logs=True)
        def plain(x: int) -> int:
            print("working on", x)
            return x * 2

        # An app in a function's closure travels without its key (not run: the sandbox
        # has no archil to rebuild it with).
        for fn in (uses_the_app, plain):
            payload = encode_call(fn.fn, (21,) if fn is plain else (), {})
            leaked = [k for k, v in scan.secrets.items() if v.encode() in payload]
            assert not leaked, f"{leaked} in the pickled call of {fn.name}"
        assert plain.remote(21) == 42
        scan.check_text("the app's and functions' reprs", repr(app) + repr(uses_the_app))
        app.close()

    srv.stop()
    scan.check_files("the disks", srv.data_dir / "disks")
    # The server keeps no bucket secret anywhere in its data directory.
    for path in srv.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in (BUCKET_SECRET, SESSION_TOKEN):
                assert value.encode() not in data, path
    # No log line carries a process connection URL's token.
    found = [line for line in scan.log_lines() if CONNECTION_TOKEN.search(line)]
    assert not found, found[:3]
