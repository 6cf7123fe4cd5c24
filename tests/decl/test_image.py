import sys

import pytest

import archil
from archil.decl.image import Image

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_python_base_and_chain_renders_dockerfile() -> None:
    image = (
        archil.Image.python("3.11")
        .pip_install("pandas", "numpy>=2")
        .apt_install("git", "curl")
        .run_commands("mkdir -p /workspace")
        .workdir("/workspace")
        .env(PYTHONUNBUFFERED="1", GREETING="hello world")
    )
    assert image.to_dockerfile() == (
        "FROM python:3.11-slim\n"
        "RUN pip install pandas 'numpy>=2'\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends git curl\n"
        "RUN mkdir -p /workspace\n"
        "WORKDIR /workspace\n"
        'ENV PYTHONUNBUFFERED=1 GREETING="hello world"\n'
    )
    assert image.python_version == "3.11"


def test_images_are_immutable_and_shareable() -> None:
    base = Image.python("3.11")
    a = base.pip_install("numpy")
    b = base.pip_install("torch")
    assert base.to_dockerfile() == "FROM python:3.11-slim\n"
    assert a != b
    assert a == Image.python("3.11").pip_install("numpy")
    assert hash(a) == hash(Image.python("3.11").pip_install("numpy"))


def test_base_images() -> None:
    assert Image.debian_slim().to_dockerfile().startswith(f"FROM python:{PY}-slim-bookworm")
    assert Image.debian_slim().python_version == PY
    assert Image.ubuntu("22.04").to_dockerfile() == "FROM ubuntu:22.04\n"
    assert Image.ubuntu("22.04").python_version is None
    assert Image.python().python_version == PY


def test_dockerfile_on_class_and_instance() -> None:
    img = archil.Image.dockerfile("FROM python:3.12-slim\n# comment\nRUN echo \\\n  hi\nENV A=1\n")
    assert img.python_version == "3.12"
    assert img.to_dockerfile() == "FROM python:3.12-slim\nRUN echo \\\n  hi\nENV A=1\n"
    extended = Image.python("3.11").dockerfile("RUN echo extra")
    assert extended.to_dockerfile().endswith("RUN echo extra\n")
    with pytest.raises(ValueError, match="FROM"):
        Image.dockerfile("RUN echo no base")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: Image.python("3"), "python_version"),
        (lambda: Image.python("3.11").pip_install("--index-url=http://evil"), "pip_install"),
        (lambda: Image.python("3.11").pip_install("numpy; rm -rf /\n"), "newline"),
        (lambda: Image.python("3.11").apt_install("git && rm -rf /"), "apt_install"),
        (lambda: Image.python("3.11").env(**{"1BAD": "x"}), "env"),
        (lambda: Image.python("3.11").workdir("relative/dir"), "workdir"),
        (lambda: Image.python("3.11").run_commands("  "), "run_commands"),
        (lambda: Image.ubuntu("jammy"), "ubuntu"),
        (lambda: Image.ubuntu(b"22.04"), "ubuntu"),  # type: ignore[arg-type]
        (lambda: Image.ubuntu(None), "ubuntu"),  # type: ignore[arg-type]
        (lambda: Image.python("3.11").workdir("/app\x00"), "workdir"),
    ],
)
def test_bad_input_names_the_method(call, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        call()


def test_plan_replays_the_steps_once_and_keeps_env_and_workdir() -> None:
    image = (
        Image.python("3.11")
        .apt_install("git")
        .pip_install("numpy")
        .env(GREETING="hello world")
        .workdir("/workspace")
    )
    plan = image.plan()
    assert plan.base == "python:3.11-slim"
    assert plan.env == {"GREETING": "hello world"}
    assert plan.workdir == "/workspace"
    assert plan.prepare is not None
    lines = plan.prepare.splitlines()
    assert lines[0] == "set -e"
    assert any("apt-get install -y --no-install-recommends git" in line for line in lines)
    assert any("pip install numpy" in line for line in lines)
    assert "export GREETING='hello world'" in lines
    assert lines[-1] == "mkdir -p /workspace && cd /workspace"
    assert plan.key == image.plan().key != Image.python("3.11").plan().key
    assert Image.python("3.11").env(A="1").plan().prepare is None


def test_dockerfile_copy_is_refused_and_cmd_ignored() -> None:
    with pytest.raises(ValueError, match="COPY"):
        Image.dockerfile("FROM python:3.11-slim\nCOPY . /app\n")
    image = Image.dockerfile("FROM python:3.11-slim\nCMD ['python']\nENV A=1\n")
    assert image.plan().env == {"A": "1"}


def test_local_files_are_content_hashed_and_checked(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "f.txt").write_text("one")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    (tmp_path / "modx.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    base = archil.Image.debian_slim()
    a = base.add_local_file(tmp_path / "f.txt", "/etc/f.txt")
    assert a.plan().key == base.add_local_file(tmp_path / "f.txt", "/etc/f.txt").plan().key
    assert "COPY --from=local:" in a.to_dockerfile()
    (tmp_path / "f.txt").write_text("two")
    assert base.add_local_file(tmp_path / "f.txt", "/etc/f.txt").plan().key != a.plan().key
    plan = base.add_local_dir(tmp_path / "d", "/srv/d").add_local_python_source("modx").plan()
    assert plan.python_modules == ("modx",)
    assert [t.remote for t in plan.uploads] == ["/srv/d", "/opt/archil/python"]
    assert [rel for rel, _ in plan.uploads[1].files] == ["modx.py"]
    assert plan.prepare is not None and "cp -R" in plan.prepare
    with pytest.raises(ValueError, match="not a file"):
        base.add_local_file(tmp_path / "nope", "/x")
    with pytest.raises(ValueError, match="remote_path"):
        base.add_local_dir(tmp_path / "d", "relative/path")
    with pytest.raises(ValueError, match="remote_path"):
        base.add_local_dir(tmp_path / "d", "/mnt/archil/x")
    with pytest.raises(ValueError, match="cannot be found"):
        base.add_local_python_source("no_such_module_xyz")
    with pytest.raises(ValueError, match="top-level"):
        base.add_local_python_source("a.b")


def test_from_registry_reads_the_python_version_of_official_tags() -> None:
    assert archil.Image.from_registry("python:3.12-slim").python_version == "3.12"
    assert archil.Image.from_registry("docker.io/library/python:3.11").python_version == "3.11"
    assert archil.Image.from_registry("ubuntu:24.04").python_version is None
    assert archil.Image.from_registry("my/img:1", python_version="3.11").python_version == "3.11"
    with pytest.raises(ValueError, match="tag"):
        archil.Image.from_registry("python 3.12")
