"""The local image store: real builds on this machine's interpreters, no mocks."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from archil.local import buildrun, hostenv
from archil.local.images import ImageRecord, ImageStore, ImageUnavailable, image_id_for
from archil.local.spec import ImageEnv

PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"
SOURCE = f"python:{PYVER}-slim"
NORMALIZED = f"docker.io/library/python:{PYVER}-slim"
OFFLINE = {"PATH": "/usr/bin:/bin", "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}
SRC = str(Path(__file__).resolve().parents[2] / "src")


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=env or OFFLINE,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def ready(store: ImageStore, source: str) -> ImageRecord:
    record = store.wait(store.request(source).image_id, 120)
    assert record.status == "ready", store.build_output(record.image_id)
    return record


def absent_python_version() -> str:
    for version in ("3.1", "3.2", "3.3", "3.4", "3.5"):
        if hostenv.find_python(version) is None:
            return version
    pytest.skip("this machine has every old Python this test could ask for")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageStore]:
    s = ImageStore(tmp_path_factory.mktemp("images"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def built(store: ImageStore) -> tuple[ImageRecord, ImageEnv]:
    """The python image of this machine's version, built once for the module."""
    started = time.monotonic()
    env = store.resolve(SOURCE, timeout=120)
    print(f"built {SOURCE} in {time.monotonic() - started:.2f}s")
    record = store.get(env.image_id)
    assert record is not None
    return record, env


@pytest.fixture(scope="module")
def base_python() -> hostenv.HostPython:
    python = hostenv.find_python(PYVER)
    assert python is not None
    return python


def layer_python(env: ImageEnv) -> str:
    assert env.layer is not None
    return str(env.layer / "usr" / "local" / "bin" / "python")


# -- the python layer -------------------------------------------------------------------


def test_record(built: tuple[ImageRecord, ImageEnv]) -> None:
    record, env = built
    assert record.image_id == image_id_for(NORMALIZED) == env.image_id
    assert re.fullmatch(r"img-[0-9a-f]{16}", record.image_id)
    assert record.source == NORMALIZED == env.source
    assert (record.status, record.failure_reason, record.failure_message) == ("ready", None, None)
    assert record.private is False
    assert record.digest is not None and re.fullmatch(r"sha256:[0-9a-f]{64}", record.digest)
    assert record.canonical_source == f"docker.io/library/python@{record.digest}"
    assert env.digest == record.digest
    for stamp in (record.created_at, record.updated_at):
        assert stamp.endswith("Z")
        datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert record.created_at <= record.updated_at
    wire = record.to_wire()
    assert wire["status"] == "ready" and "failure_reason" not in wire
    assert wire["canonical_source"] == record.canonical_source


def test_python_runs_with_the_right_version(
    built: tuple[ImageRecord, ImageEnv], base_python: hostenv.HostPython
) -> None:
    _, env = built
    proc = run([layer_python(env), "-c", "import sys; print(sys.version)"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{base_python.full_version} ")
    assert proc.stdout.startswith(f"{PYVER}.")
    assert env.python_version == PYVER
    assert env.env["PYTHON_VERSION"] == base_python.full_version
    assert env.env["PATH"].split(":")[:2] == ["/usr/local/sbin", "/usr/local/bin"]


def test_pip_works_offline(built: tuple[ImageRecord, ImageEnv]) -> None:
    _, env = built
    proc = run([layer_python(env), "-m", "pip", "--version"])
    assert proc.returncode == 0, proc.stderr
    assert re.match(
        rf"pip \S+ from \S+/usr/local/lib/python{PYVER}/site-packages/pip ", proc.stdout
    )
    assert f"(python {PYVER})" in proc.stdout


def test_host_path_finds_python(built: tuple[ImageRecord, ImageEnv]) -> None:
    _, env = built
    assert env.layer is not None
    assert env.host_path[0] == str(env.layer / "usr" / "local" / "bin")
    path = ":".join([*env.host_path, "/usr/bin", "/bin"])
    proc = run(
        ["sh", "-c", "command -v python; python -m pip --version; command -v apt-get"],
        env={**OFFLINE, "PATH": path},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(env.layer / "usr" / "local" / "bin" / "python")
    assert lines[1].startswith("pip ")
    assert lines[2] == str(env.layer / "usr" / "local" / "sbin" / "apt-get")


def test_no_system_site_packages(
    built: tuple[ImageRecord, ImageEnv], base_python: hostenv.HostPython
) -> None:
    _, env = built
    probe = "import json, sys; print(json.dumps(sys.path))"
    base_path = json.loads(run([base_python.executable, "-c", probe]).stdout)
    layer_path = json.loads(run([layer_python(env), "-c", probe]).stdout)
    base_sites = {p for p in base_path if p.endswith(("site-packages", "dist-packages"))}
    assert base_sites, base_path
    assert not base_sites & set(layer_path)
    # A package the base interpreter imports is not importable in the image.
    names = [n for n in ("pytest", "pluggy", "iniconfig") if _importable(base_python, n)]
    if not names:
        pytest.skip("the base interpreter has none of the probe packages")
    proc = run([layer_python(env), "-c", f"import {names[0]}"])
    assert proc.returncode != 0
    assert "ModuleNotFoundError" in proc.stderr


def _importable(python: hostenv.HostPython, name: str) -> bool:
    return run([python.executable, "-c", f"import {name}"]).returncode == 0


def test_venv_is_made_for_usr_local(
    built: tuple[ImageRecord, ImageEnv], base_python: hostenv.HostPython
) -> None:
    _, env = built
    assert env.layer is not None
    prefix = env.layer / "usr" / "local"
    cfg = dict(
        line.split(" = ", 1)
        for line in (prefix / "pyvenv.cfg").read_text().splitlines()
        if " = " in line
    )
    assert cfg["home"] == base_python.bin_dir
    assert cfg["include-system-site-packages"] == "false"
    assert 'VIRTUAL_ENV="/usr/local"' in (prefix / "bin" / "activate").read_text().replace("'", '"')
    shebangs = {}
    for path in (prefix / "bin").iterdir():
        if path.is_file() and not path.is_symlink():
            head = path.read_bytes()[:200]
            if head.startswith(b"#!"):
                shebangs[path.name] = head.split(b"\n")[0].decode()
    assert {"pip", "pip3", f"pip{PYVER}"} <= set(shebangs)
    assert set(shebangs.values()) == {"#!/usr/local/bin/python"}
    assert os.readlink(prefix / "bin" / "python").startswith(("/", "python"))


def test_no_file_names_the_build_directory(built: tuple[ImageRecord, ImageEnv]) -> None:
    _, env = built
    assert env.layer is not None
    needle = os.fsencode(env.layer.parent)
    checked = 0
    for dirpath, _dirs, files in os.walk(env.layer):
        for name in files:
            path = Path(dirpath, name)
            if path.is_symlink():
                assert needle not in os.fsencode(os.readlink(path)), path
                continue
            assert needle not in path.read_bytes(), path
            checked += 1
    assert checked > 100
    grep = run(["grep", "-rlF", str(env.layer.parent), str(env.layer)])
    assert grep.returncode == 1 and grep.stdout == "", grep.stdout


def test_binds_are_the_interpreters_installation(
    built: tuple[ImageRecord, ImageEnv], base_python: hostenv.HostPython
) -> None:
    _, env = built
    visible = ("/usr", "/etc", "/var", "/opt")
    if base_python.prefix == "/usr" or base_python.prefix.startswith(
        tuple(v + "/" for v in visible)
    ):
        assert env.binds == ()
    else:
        assert Path(base_python.prefix) in env.binds


def _can_overlay() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    proc = run(["unshare", "-m", "true"], env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    return proc.returncode == 0


@pytest.mark.skipif(not _can_overlay(), reason="needs root and mount namespaces")
def test_works_at_usr_local_in_an_overlay(
    built: tuple[ImageRecord, ImageEnv], tmp_path: Path
) -> None:
    """The layer over this machine's /usr/local, as a sandbox sees it."""
    _, env = built
    assert env.layer is not None
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    inner = textwrap.dedent(
        """\
        set -e
        command -v python; command -v pip; command -v apt-get
        python -c 'import sys; print(sys.prefix, sys.executable)'
        pip --version
        apt-get install -y coreutils
        """
    )
    script = (
        f"mount -t overlay overlay -o lowerdir={env.layer}/usr/local:/usr/local,"
        f"upperdir={upper},workdir={work} /usr/local && "
        f"env -i PATH={env.env['PATH']} PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null sh -c {shlex.quote(inner)}"
    )
    proc = run(["unshare", "-m", "sh", "-c", script], env={"PATH": "/usr/bin:/bin:/usr/sbin"})
    if "mount" in proc.stderr and proc.returncode == 32:
        pytest.skip(f"overlayfs is not available here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:3] == ["/usr/local/bin/python", "/usr/local/bin/pip", "/usr/local/sbin/apt-get"]
    assert lines[3] == "/usr/local /usr/local/bin/python"
    assert lines[4].startswith("pip ") and "/usr/local/lib/python" in lines[4]
    assert "coreutils is installed on this machine" in lines[5]


# -- requests, idempotency, persistence ----------------------------------------------------


def test_request_is_idempotent(store: ImageStore, built: tuple[ImageRecord, ImageEnv]) -> None:
    record, _ = built
    runs = store.builds_run
    for spelling in (SOURCE, NORMALIZED, f"docker.io/python:{PYVER}-slim"):
        again = store.request(spelling)
        assert again.image_id == record.image_id
        assert again.status == "ready"
        assert again.digest == record.digest
    assert store.builds_run == runs
    assert store.request(f"python:{PYVER}").image_id != record.image_id


def test_a_new_store_sees_the_ready_image(
    store: ImageStore, built: tuple[ImageRecord, ImageEnv]
) -> None:
    record, env = built
    again = ImageStore(store.root)
    try:
        assert again.get(record.image_id) == record
        assert again.environment(record.image_id) == env
        assert again.request(SOURCE) == record
        assert again.resolve(SOURCE) == env
        assert again.builds_run == 0
    finally:
        again.close()


def test_build_output(store: ImageStore, built: tuple[ImageRecord, ImageEnv]) -> None:
    record, _ = built
    text = store.build_output(record.image_id)
    assert f"building {NORMALIZED}" in text
    assert "pip " in text and record.digest is not None and record.digest in text
    assert store.build_output("img-0000000000000000") == ""
    assert store.build_output("../../etc") == ""


def test_unknown_ids(store: ImageStore) -> None:
    assert store.get("img-0000000000000000") is None
    assert store.get("../../etc/passwd") is None
    with pytest.raises(LookupError, match="image_id"):
        store.environment("img-0000000000000000")
    with pytest.raises(LookupError, match="image_id"):
        store.wait("img-0000000000000000", 0.1)


def test_concurrent_requests_build_once(
    tmp_path: Path, built: tuple[ImageRecord, ImageEnv]
) -> None:
    first, second = ImageStore(tmp_path), ImageStore(tmp_path)
    records: list[ImageRecord] = []
    barrier = threading.Barrier(8)

    def request(s: ImageStore) -> None:
        barrier.wait()
        records.append(s.request(SOURCE))

    threads = [threading.Thread(target=request, args=(s,)) for s in [first, second] * 4]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {r.image_id for r in records} == {built[0].image_id}
        assert {r.status for r in records} == {"building"}
        done = [first.wait(records[0].image_id, 120), second.wait(records[0].image_id, 120)]
        assert [r.status for r in done] == ["ready", "ready"]
        assert first.builds_run + second.builds_run == 1
        # the same inputs give the same digest
        assert done[0].digest == built[0].digest
    finally:
        first.close()
        second.close()


def test_concurrent_processes_build_once(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""\
        import sys
        from pathlib import Path
        from archil.local.images import ImageStore
        s = ImageStore(Path(sys.argv[1]))
        env = s.resolve({SOURCE!r}, timeout=120)
        print(s.builds_run, env.digest)
        s.close()
        """
    )
    env = {**OFFLINE, "PYTHONPATH": SRC}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [out.split() for out, _ in outs]
    assert sorted(int(r[0]) for r in results) == [0, 1]
    assert results[0][1] == results[1][1]


def test_close_refuses_new_requests(tmp_path: Path) -> None:
    s = ImageStore(tmp_path)
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.request(SOURCE)


# -- failures -----------------------------------------------------------------------------------


def test_missing_python_version_fails_clearly(store: ImageStore) -> None:
    version = absent_python_version()
    record = store.wait(store.request(f"python:{version}-slim").image_id, 60)
    assert record.status == "failed"
    assert record.failure_reason == "invalid_source"
    assert record.failure_message is not None
    assert record.failure_message.startswith(
        f"Python {version} is not installed on this machine (found "
    )
    assert PYVER in record.failure_message
    assert (record.digest, record.canonical_source) == (None, None)
    assert record.failure_message in store.build_output(record.image_id)
    with pytest.raises(ImageUnavailable) as info:
        store.environment(record.image_id)
    assert str(info.value) == record.failure_message
    assert info.value.record == record
    with pytest.raises(ImageUnavailable, match=f"Python {version} is not installed"):
        store.resolve(f"python:{version}-slim")


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("alpine:3.20", "alpine:3.20 is not available to the local control plane"),
        ("ghcr.io/acme/app:1", "ghcr.io/acme/app:1 is not available"),
        ("python:2.7-slim", "Python 3 images only"),
    ],
)
def test_unsupported_references_fail_at_once(store: ImageStore, source: str, words: str) -> None:
    runs = store.builds_run
    record = store.request(source)
    assert record.status == "failed"
    assert record.failure_reason == "invalid_source"
    assert record.failure_message is not None and words in record.failure_message
    assert store.get(record.image_id) == record
    assert store.request(source) == record
    assert store.builds_run == runs
    with pytest.raises(ImageUnavailable, match=re.escape(words)):
        store.resolve(source)
    wire = record.to_wire()
    assert wire["failure_reason"] == "invalid_source" and "digest" not in wire


@pytest.mark.parametrize("source", ["", "Python:3.11", "python 3.11", "python@sha256:abc"])
def test_malformed_references_raise(store: ImageStore, source: str) -> None:
    with pytest.raises(ValueError, match=r"^source: "):
        store.request(source)


def _fake_manifest(root: Path, status: str, **extra: object) -> str:
    image_id = image_id_for(NORMALIZED)
    directory = root / image_id
    directory.mkdir(parents=True)
    data = {
        "image_id": image_id,
        "source": NORMALIZED,
        "private": False,
        "status": status,
        "created_at": "2024-01-01T00:00:00.000Z",
        "updated_at": "2024-01-01T00:00:00.000Z",
        **extra,
    }
    (directory / "manifest.json").write_text(json.dumps(data))
    return image_id


def test_an_interrupted_build_reads_as_failed_and_rebuilds(tmp_path: Path) -> None:
    image_id = _fake_manifest(tmp_path, "building")
    s = ImageStore(tmp_path)
    try:
        # While another process holds the build lock, the build is live.
        fd = os.open(tmp_path / image_id / ".lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            held = s.get(image_id)
            assert held is not None and held.status == "building"
        finally:
            os.close(fd)
        record = s.get(image_id)
        assert record is not None
        assert (record.status, record.failure_reason) == ("failed", "interrupted")
        assert record.failure_message and "request the image again" in record.failure_message
        assert json.loads((tmp_path / image_id / "manifest.json").read_text())["status"] == "failed"
        again = s.request(SOURCE)
        assert again.status == "building"
        done = s.wait(image_id, 120)
        assert done.status == "ready", s.build_output(image_id)
        assert done.created_at == "2024-01-01T00:00:00.000Z"
        assert s.builds_run == 1
    finally:
        s.close()


def test_an_image_whose_python_is_gone_fails(tmp_path: Path) -> None:
    image_id = _fake_manifest(
        tmp_path,
        "ready",
        digest="sha256:" + "0" * 64,
        canonical_source="docker.io/library/python@sha256:" + "0" * 64,
        builder_version=buildrun.BUILDER_VERSION,
        build={"interpreter": "/nonexistent/bin/python3.11", "python_version": "3.11"},
    )
    (tmp_path / image_id / "layer").mkdir()
    s = ImageStore(tmp_path)
    try:
        record = s.get(image_id)
        assert record is not None
        assert (record.status, record.failure_reason) == ("failed", "invalid_source")
        assert record.failure_message is not None
        assert "/nonexistent/bin/python3.11" in record.failure_message
        assert "no longer on this machine" in record.failure_message
        with pytest.raises(ImageUnavailable, match="no longer on this machine"):
            s.environment(image_id)
    finally:
        s.close()


# -- other bases --------------------------------------------------------------------------


def test_python_3_is_the_newest_local_python(store: ImageStore) -> None:
    newest = hostenv.newest_python()
    assert newest is not None
    env = store.environment(ready(store, "python:3").image_id)
    assert env.python_version == newest.version
    proc = run([layer_python(env), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    assert proc.stdout.strip() == newest.version


def test_host_images(store: ImageStore) -> None:
    record = ready(store, "debian:bookworm-slim")
    assert record.canonical_source == f"docker.io/library/debian@{record.digest}"
    env = store.environment(record.image_id)
    assert env.layer is not None
    assert (env.layer / "usr" / "local" / "sbin" / "apt-get").is_file()
    assert env.env["PATH"] == buildrun.DEFAULT_PATH
    assert env.host_path[-1] == str(env.layer / "usr" / "local" / "sbin")
    if os.path.exists("/usr/bin/python3"):
        system = hostenv.probe_python("/usr/bin/python3")
        assert system is not None and env.python_version == system.version
        assert env.binds == ()
        assert not (env.layer / "usr" / "local" / "bin").exists()
    else:
        python3 = env.layer / "usr" / "local" / "bin" / "python3"
        assert python3.is_symlink()
        assert run([str(python3), "-c", "print('ok')"]).stdout.strip() == "ok"
    other = ready(store, "ubuntu:22.04")
    assert other.image_id != record.image_id and other.digest != record.digest


# -- the apt stand-in ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def apt_get(built: tuple[ImageRecord, ImageEnv]) -> Path:
    _, env = built
    assert env.layer is not None
    return env.layer / "usr" / "local" / "sbin" / "apt-get"


def apt(shim: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["sh", str(shim), *args], env={"PATH": "/usr/local/bin:/usr/bin:/bin"})


@pytest.mark.parametrize("command", ["update", "clean", "autoclean", "autoremove"])
def test_apt_housekeeping_succeeds(apt_get: Path, command: str) -> None:
    proc = apt(apt_get, "-qq", command)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and f"apt-get {command}" in proc.stdout


def test_apt_install_of_present_packages(apt_get: Path) -> None:
    proc = apt(apt_get, "install", "-y", "--no-install-recommends", "coreutils")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "archil local: apt-get installs nothing here; coreutils is installed on this machine"
    )
    proc = apt(apt_get, "-o", "Dpkg::Options::=--force-confold", "install", "-y", "sh", "coreutils")
    assert proc.returncode == 0, proc.stderr
    assert "sh, coreutils are installed" in proc.stdout


def test_apt_install_of_missing_packages(apt_get: Path) -> None:
    proc = apt(apt_get, "install", "-y", "coreutils", "definitely-not-a-package-xyz")
    assert proc.returncode == 100
    assert "definitely-not-a-package-xyz" in proc.stderr
    assert "coreutils" not in proc.stderr
    assert "this machine's packages" in proc.stderr and "Archil's cloud" in proc.stderr


def test_apt_other_commands_fail(apt_get: Path) -> None:
    for args in (["upgrade", "-y"], ["remove", "coreutils"], []):
        proc = apt(apt_get, *args)
        assert proc.returncode == 100, args
        assert proc.stderr.startswith("archil local: E: apt-get")
    apt_shim = apt_get.with_name("apt")
    proc = apt(apt_shim, "update")
    assert proc.returncode == 0 and "apt update" in proc.stdout


def test_apt_shim_is_posix_sh(apt_get: Path) -> None:
    assert apt_get.read_text().startswith("#!/bin/sh\n")
    assert os.access(apt_get, os.X_OK)
    dash = shutil.which("dash")
    if dash is not None:
        proc = run([dash, "-n", str(apt_get)])
        assert proc.returncode == 0, proc.stderr


# -- facts about this machine ------------------------------------------------------------


def test_the_base_interpreter_is_never_a_venv(base_python: hostenv.HostPython) -> None:
    me = hostenv.probe_python(sys.executable)
    assert me is not None
    assert me.prefix == sys.base_prefix
    assert me.version == PYVER
    assert base_python.prefix != sys.prefix or sys.prefix == sys.base_prefix
    assert not os.path.exists(os.path.join(base_python.prefix, "pyvenv.cfg"))
    assert hostenv.pip_source(base_python) is not None


def test_missing_apt_packages() -> None:
    missing = hostenv.missing_apt_packages(
        ["coreutils", "definitely-not-a-package-xyz", "sh=1.0", "another-missing-one:amd64"]
    )
    assert missing == ["definitely-not-a-package-xyz", "another-missing-one:amd64"]
    assert hostenv.missing_apt_packages([]) == []
