"""The local image builder: Dockerfile text to a cached environment on this machine."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from archil.local.images import ImageBuilder, image_id_for, normalize_dockerfile

PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"
FROM = f"FROM python:{PYVER}-slim"
HOST_CLOUDPICKLE = importlib.metadata.version("cloudpickle")


@pytest.fixture
def builder(tmp_path: Path) -> Iterator[ImageBuilder]:
    b = ImageBuilder(tmp_path / "images")
    yield b
    b.close()


def build(
    builder: ImageBuilder, dockerfile: str, timeout: float = 120
) -> tuple[str, str | None, str]:
    image_id = builder.ensure(dockerfile)
    status, reason = builder.wait(image_id, timeout)
    assert status in ("ready", "failed"), f"still {status}"
    return image_id, reason, status


def ready(builder: ImageBuilder, dockerfile: str) -> str:
    image_id, reason, status = build(builder, dockerfile)
    assert status == "ready", "\n".join([reason or "", *builder.build_log_lines(image_id)])
    return image_id


def run_py(python: str, code: str) -> str:
    proc = subprocess.run(
        [python, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    return str(proc.stdout).strip()


def make_wheel(directory: Path, name: str = "archil_tiny_pkg", version: str = "0.1") -> Path:
    """A pure-Python wheel built by hand (no network, no build backend)."""
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: archil-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = (
            base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        )
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


# -- ids ---------------------------------------------------------------------------


def test_image_id_depends_only_on_the_normalized_content() -> None:
    a = f"{FROM}\nRUN pip install numpy\nWORKDIR /app\n"
    b = f"# a comment\n\n{FROM}\nrun   pip install numpy\n\nworkdir /app"
    c = f"{FROM}\nRUN pip install \\\n numpy\nWORKDIR /app\n"
    assert re.fullmatch(r"img-[0-9a-f]{16}", image_id_for(a))
    assert image_id_for(a) == image_id_for(b)
    assert image_id_for(a) != image_id_for(f"{FROM}\nRUN pip install pandas\nWORKDIR /app\n")
    assert normalize_dockerfile(c) == f"{FROM}\nRUN pip install  numpy\nWORKDIR /app"
    expected = "img-" + hashlib.sha256(normalize_dockerfile(a).encode()).hexdigest()[:16]
    assert image_id_for(a) == expected


def test_same_dockerfile_gives_the_same_image(builder: ImageBuilder) -> None:
    df = f"{FROM}\nENV A=1\n"
    first = ready(builder, df)
    assert builder.ensure(df) == first
    assert builder.status(first) == ("ready", None)
    assert builder.build_count == 1


def test_unknown_image_status_is_none(builder: ImageBuilder) -> None:
    assert builder.status("img-0000000000000000") == (None, None)
    assert builder.status("not-an-id") == (None, None)
    assert builder.build_log_lines("img-0000000000000000") == []
    with pytest.raises(LookupError):
        builder.environment("img-0000000000000000")


def test_concurrent_ensure_builds_once(builder: ImageBuilder, tmp_path: Path) -> None:
    counter = tmp_path / "builds.txt"
    df = f"{FROM}\nRUN echo built >> {counter} && sleep 0.3\n"
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def go() -> None:
        barrier.wait()
        ids.append(builder.ensure(df))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    assert builder.wait(ids[0], 60) == ("ready", None)
    assert counter.read_text() == "built\n"
    assert builder.build_count == 1


def test_two_builders_sharing_a_cache_build_once(tmp_path: Path) -> None:
    counter = tmp_path / "builds.txt"
    df = f"{FROM}\nRUN echo built >> {counter} && sleep 0.3\n"
    builders = [ImageBuilder(tmp_path / "images") for _ in range(2)]
    try:
        ids = [b.ensure(df) for b in builders]
        assert ids[0] == ids[1]
        assert [b.wait(ids[0], 60) for b in builders] == [("ready", None)] * 2
        assert counter.read_text() == "built\n"
        assert sum(b.build_count for b in builders) == 1
    finally:
        for b in builders:
            b.close()


# -- python, pip, cloudpickle ----------------------------------------------------------


def test_python_image_has_a_venv_with_the_host_cloudpickle(builder: ImageBuilder) -> None:
    image_id = ready(builder, f"{FROM}\n")
    env = builder.environment(image_id)
    assert env.python is not None and env.virtual_env is not None
    assert env.python_version == PYVER
    assert env.path_prefix == [str(Path(env.virtual_env) / "bin")]
    assert Path(env.python).parent == Path(env.path_prefix[0])
    out = run_py(
        env.python, "import sys, cloudpickle; print(sys.prefix); print(cloudpickle.__version__)"
    )
    assert out.splitlines() == [env.virtual_env, HOST_CLOUDPICKLE]
    meta = run_py(env.python, "import importlib.metadata as m; print(m.version('cloudpickle'))")
    assert meta == HOST_CLOUDPICKLE


def test_pinning_the_host_cloudpickle_needs_no_network(builder: ImageBuilder) -> None:
    image_id = ready(
        builder, f"{FROM}\nRUN pip install --no-index cloudpickle=={HOST_CLOUDPICKLE}\n"
    )
    assert any("already satisfied" in line.lower() for line in builder.build_log_lines(image_id))


def test_pip_install_of_a_local_wheel(builder: ImageBuilder, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path)
    image_id = ready(builder, f"{FROM}\nRUN python -m pip install --no-index {wheel}\n")
    env = builder.environment(image_id)
    assert env.python is not None
    assert run_py(env.python, "import archil_tiny_pkg; print(archil_tiny_pkg.VALUE)") == "42"
    host = subprocess.run(
        [sys.executable, "-c", "import archil_tiny_pkg"], capture_output=True, check=False
    )
    assert host.returncode != 0, "the package must go into the image, not the host"


def test_pip_in_a_compound_run_uses_the_venv(builder: ImageBuilder, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path)
    out = tmp_path / "which.txt"
    image_id = ready(
        builder, f"{FROM}\nRUN pip install --no-index {wheel} && command -v pip > {out}\n"
    )
    env = builder.environment(image_id)
    assert env.virtual_env is not None
    assert out.read_text().strip() == str(Path(env.virtual_env) / "bin" / "pip")


@pytest.mark.skipif(
    os.environ.get("ARCHIL_TEST_NETWORK") != "1", reason="set ARCHIL_TEST_NETWORK=1 to use PyPI"
)
def test_pip_install_from_pypi(builder: ImageBuilder) -> None:
    image_id = ready(builder, f"{FROM}\nRUN pip install six\n")
    env = builder.environment(image_id)
    assert env.python is not None
    assert run_py(env.python, "import six; print('ok')") == "ok"


def test_missing_python_version_fails_clearly(builder: ImageBuilder) -> None:
    image_id, reason, status = build(builder, "FROM python:2.5-slim\nRUN echo never\n")
    assert status == "failed"
    assert reason is not None and "Python 2.5 is not installed on this machine" in reason
    assert not any(line == "never" for line in builder.build_log_lines(image_id))


def test_debian_base_uses_the_host_userland(builder: ImageBuilder) -> None:
    if shutil.which("python3") is None:
        pytest.skip("no python3 on this machine")
    image_id = ready(builder, "FROM debian:bookworm-slim\nRUN echo hello from debian\n")
    env = builder.environment(image_id)
    assert env.python is not None
    assert (
        run_py(env.python, "import cloudpickle; print(cloudpickle.__version__)") == HOST_CLOUDPICKLE
    )
    assert "hello from debian" in builder.build_log_lines(image_id)


# -- apt-get ----------------------------------------------------------------------------


def test_apt_get_of_missing_packages_fails_listing_them(builder: ImageBuilder) -> None:
    df = (
        f"{FROM}\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends "
        "archil-no-such-package-a coreutils archil-no-such-package-b\n"
    )
    _, reason, status = build(builder, df)
    assert status == "failed"
    assert reason is not None
    assert "archil-no-such-package-a" in reason and "archil-no-such-package-b" in reason
    missing_part = reason.split("not installed on this machine:")[1].split("(")[0]
    assert "coreutils" not in missing_part


def test_apt_get_of_present_packages_succeeds_without_touching_apt(
    builder: ImageBuilder, tmp_path: Path
) -> None:
    lists = Path("/var/lib/apt/lists")
    before = sorted(os.listdir(lists)) if lists.is_dir() else None
    marker = tmp_path / "after-apt"
    df = (
        f"{FROM}\n"
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y coreutils bash "
        f"&& touch {marker} && rm -rf /var/lib/apt/lists/*\n"
        "RUN apt-get clean\n"
    )
    ready(builder, df)
    assert marker.exists(), "the non-apt commands of the line still run"
    after = sorted(os.listdir(lists)) if lists.is_dir() else None
    assert after == before


def test_apt_get_hidden_in_a_complex_command_is_refused(builder: ImageBuilder) -> None:
    _, reason, status = build(builder, f"{FROM}\nRUN echo coreutils | xargs apt-get install -y\n")
    assert status == "failed"
    assert reason is not None and "does not install system packages" in reason


# -- ENV, WORKDIR, RUN, COPY --------------------------------------------------------------


def test_env_and_workdir_are_recorded(builder: ImageBuilder, tmp_path: Path) -> None:
    app = tmp_path / "app"
    df = f'{FROM}\nENV A=1 B="x y"\nENV C=${{A}}-$B\nWORKDIR {app}\nRUN pwd > here.txt && echo "$A|$B|$C" > env.txt\n'
    image_id = ready(builder, df)
    env = builder.environment(image_id)
    assert env.env == {"A": "1", "B": "x y", "C": "1-x y"}
    assert env.workdir == str(app)
    assert (app / "here.txt").read_text().strip() == str(app)
    assert (app / "env.txt").read_text().strip() == "1|x y|1-x y"


def test_uncreatable_workdir_uses_the_image_scratch_dir(builder: ImageBuilder) -> None:
    image_id = ready(builder, f"{FROM}\nWORKDIR /proc/archil-cannot-exist/app\nRUN pwd\n")
    env = builder.environment(image_id)
    scratch = env.root / "fs" / "proc" / "archil-cannot-exist" / "app"
    assert env.workdir == str(scratch)
    assert str(scratch) in builder.build_log_lines(image_id)


def test_mkdir_of_an_uncreatable_path_does_not_fail_the_build(
    builder: ImageBuilder, tmp_path: Path
) -> None:
    made = tmp_path / "made" / "deep"
    image_id = ready(builder, f"{FROM}\nRUN mkdir -p {made} /proc/archil-not-here/workspace\n")
    assert made.is_dir()
    root = builder.environment(image_id).root
    assert (root / "fs" / "proc" / "archil-not-here" / "workspace").is_dir()


def test_run_sees_the_venv_first_on_path(builder: ImageBuilder, tmp_path: Path) -> None:
    out = tmp_path / "prefix.txt"
    image_id = ready(builder, f"{FROM}\nRUN python -c 'import sys; print(sys.prefix)' > {out}\n")
    assert out.read_text().strip() == builder.environment(image_id).virtual_env


def test_failed_run_names_the_instruction_and_the_output(builder: ImageBuilder) -> None:
    image_id, reason, status = build(
        builder, f"{FROM}\nRUN echo first-line && echo boom-output >&2 && exit 3\n"
    )
    assert status == "failed"
    assert reason is not None
    assert "RUN echo first-line && echo boom-output >&2 && exit 3" in reason
    assert "exit code 3" in reason
    assert "boom-output" in reason
    assert "boom-output" in builder.build_log_lines(image_id)


@pytest.mark.parametrize("instruction", ["COPY . /app", "ADD https://example.com/x /x"])
def test_copy_and_add_are_not_supported(builder: ImageBuilder, instruction: str) -> None:
    _, reason, status = build(builder, f"{FROM}\n{instruction}\n")
    assert status == "failed"
    assert reason is not None and "not supported by the local runtime" in reason


def test_background_processes_of_a_step_are_killed(builder: ImageBuilder, tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    ready(builder, f"{FROM}\nRUN (setsid sleep 1000 & echo $! > {pidfile})\n")
    pid = int(pidfile.read_text())
    assert (
        not Path(f"/proc/{pid}").exists()
        or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    )


def test_build_output_goes_to_the_log_and_the_callback(tmp_path: Path) -> None:
    lines: list[str] = []
    b = ImageBuilder(tmp_path / "images", log=lines.append)
    try:
        image_id = ready(b, f"{FROM}\nRUN echo one && echo two\n")
        log = b.build_log_lines(image_id)
        assert "one" in log and "two" in log
        assert log[0].startswith("Step 1/2 : FROM python:")
        assert lines == log
    finally:
        b.close()


# -- persistence --------------------------------------------------------------------------


def test_status_survives_a_new_builder(tmp_path: Path) -> None:
    first = ImageBuilder(tmp_path / "images")
    good = ready(first, f"{FROM}\nENV X=1\n")
    bad, reason, status = build(first, f"{FROM}\nRUN exit 9\n")
    assert status == "failed"
    first.close()
    second = ImageBuilder(tmp_path / "images")
    try:
        assert second.status(good) == ("ready", None)
        assert second.status(bad) == ("failed", reason)
        assert second.environment(good).env == {"X": "1"}
        assert second.ensure(f"{FROM}\nENV X=1\n") == good
        assert second.build_count == 0
    finally:
        second.close()


def test_a_build_interrupted_by_a_restart_is_failed_then_rebuilt(tmp_path: Path) -> None:
    df = f"{FROM}\nENV Y=2\n"
    image_id = image_id_for(df)
    root = tmp_path / "images" / image_id
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(
        json.dumps({"image_id": image_id, "status": "building", "dockerfile": df})
    )
    b = ImageBuilder(tmp_path / "images")
    try:
        status, reason = b.status(image_id)
        assert status == "failed" and reason is not None and "interrupted" in reason
        assert b.ensure(df) == image_id
        assert b.wait(image_id, 60) == ("ready", None)
        assert b.environment(image_id).env == {"Y": "2"}
    finally:
        b.close()


def test_close_interrupts_a_running_build(tmp_path: Path) -> None:
    b = ImageBuilder(tmp_path / "images")
    marker = tmp_path / "started"
    image_id = b.ensure(f"{FROM}\nRUN touch {marker} && sleep 1000\n")
    deadline = 30.0
    while not marker.exists() and deadline > 0:
        threading.Event().wait(0.05)
        deadline -= 0.05
    b.close(timeout=10)
    status, reason = b.status(image_id)
    assert status == "failed"
    assert reason is not None
