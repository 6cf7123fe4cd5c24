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
