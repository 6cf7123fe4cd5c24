"""OCI references: parsing, normalization, and what the local control plane runs them as."""

from __future__ import annotations

import pytest

from archil.local.imageref import ImageRef, LocalBase, local_base, parse_reference

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("python", "docker.io/library/python:latest"),
        ("python:3.11-slim", "docker.io/library/python:3.11-slim"),
        ("library/python:3.11", "docker.io/library/python:3.11"),
        ("docker.io/python:3.11", "docker.io/library/python:3.11"),
        ("docker.io/library/python:3.11", "docker.io/library/python:3.11"),
        ("index.docker.io/library/python:3.12", "docker.io/library/python:3.12"),
        ("Docker.IO/library/ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
        ("acme/app", "docker.io/acme/app:latest"),
        ("acme/tools/app:v1.2.3", "docker.io/acme/tools/app:v1.2.3"),
        ("ghcr.io/acme/app:1", "ghcr.io/acme/app:1"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:dev", "localhost:5000/app:dev"),
        ("registry.example.com:443/team/app_x:Tag_1", "registry.example.com:443/team/app_x:Tag_1"),
        ("my-registry.local/a.b/c__d/e-f--g:x", "my-registry.local/a.b/c__d/e-f--g:x"),
        (f"python@{DIGEST}", f"docker.io/library/python@{DIGEST}"),
        (f"python:3.11@{DIGEST}", f"docker.io/library/python:3.11@{DIGEST}"),
        (f"localhost:5000/app@{DIGEST}", f"localhost:5000/app@{DIGEST}"),
    ],
)
def test_normalized(text: str, normalized: str) -> None:
    ref = parse_reference(text)
    assert ref.normalized == normalized
    # normalizing is idempotent
    assert parse_reference(ref.normalized) == ref


def test_parts() -> None:
    ref = parse_reference("localhost:5000/team/app:1.0")
    assert ref == ImageRef(registry="localhost:5000", repository="team/app", tag="1.0")
    assert ref.name == "localhost:5000/team/app"
    pinned = parse_reference(f"python@{DIGEST}")
    assert (pinned.tag, pinned.digest) == (None, DIGEST)
    assert parse_reference("python").tag == "latest"


@pytest.mark.parametrize(
    ("text", "short"),
    [
        ("docker.io/library/python:3.11-slim", "python:3.11-slim"),
        ("python", "python:latest"),
        ("acme/app:1", "acme/app:1"),
        ("ghcr.io/acme/app:1", "ghcr.io/acme/app:1"),
        (f"alpine@{DIGEST}", f"alpine@{DIGEST}"),
    ],
)
def test_short(text: str, short: str) -> None:
    assert parse_reference(text).short == short


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("python:3.11", "3.11"),
        ("python:3.11-slim", "3.11"),
        ("python:3.11-slim-bookworm", "3.11"),
        ("python:3.12-bookworm", "3.12"),
        ("python:3.11.7", "3.11"),
        ("python:3.11.7-slim", "3.11"),
        ("python:3.13.0rc1-slim", "3.13"),
        ("python:3.9-alpine3.20", "3.9"),
        ("docker.io/library/python:3.10", "3.10"),
        ("mirror.gcr.io/library/python:3.12-slim", "3.12"),
        (f"python:3.11-slim@{DIGEST}", "3.11"),
        ("python:3", "3"),
        ("python:3-slim", "3"),
        ("python:latest", "3"),
        ("python", "3"),
        ("python:slim", "3"),
        ("python:slim-bookworm", "3"),
    ],
)
def test_python_images(text: str, version: str) -> None:
    assert local_base(parse_reference(text)) == LocalBase(kind="python", python_version=version)


@pytest.mark.parametrize(
    "text",
    [
        "debian",
        "debian:bookworm-slim",
        "ubuntu:22.04",
        "node:20-bookworm",
        "buildpack-deps:bookworm",
        f"debian@{DIGEST}",
    ],
)
def test_host_images(text: str) -> None:
    assert local_base(parse_reference(text)) == LocalBase(kind="host")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("alpine:3.20", ["alpine:3.20 is not available to the local control plane", "python:X.Y"]),
        ("ghcr.io/acme/python:3.11", ["ghcr.io/acme/python:3.11 is not available"]),
        ("acme/debian:12", ["acme/debian:12 is not available"]),
        ("localhost:5000/ubuntu:22.04", ["localhost:5000/ubuntu:22.04 is not available"]),
        ("python:2.7", ["Python 3 images only"]),
        ("python:3.11-windowsservercore", ["Windows image"]),
        ("python:foo", ["cannot tell which Python", "'foo'"]),
        (f"python@{DIGEST}", ["names no Python version", "python:3.11-slim"]),
    ],
)
def test_unavailable(text: str, words: list[str]) -> None:
    reason = local_base(parse_reference(text))
    assert isinstance(reason, str)
    for word in words:
        assert word in reason


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ["must not be empty"]),
        ("python 3.11", ["whitespace"]),
        (" python:3.11", ["whitespace"]),
        ("python:3.11\n", ["whitespace"]),
        ("Python:3.11", ["lower case", "'Python'"]),
        ("acme/MyApp:1", ["lower case"]),
        ("python:", ["empty tag"]),
        ("python:-slim", ["tag '-slim' is not valid"]),
        ("python:" + "a" * 129, ["not valid"]),
        ("python@sha256:abc", ["not a valid digest"]),
        ("python@sha256:" + "A" * 64, ["not a valid digest"]),
        ("python@md5:" + "a" * 32, ["followed by a digest"]),
        ("python@", ["followed by a digest"]),
        (f"a@b@{DIGEST}", ["followed by a digest"]),
        ("foo//bar", ["empty path component"]),
        ("/python", ["empty path component"]),
        ("python/", ["empty path component"]),
        ("ghcr.io/", ["names no repository"]),
        (":3.11", ["names no image"]),
        ("my-.app", ["not a valid repository name component"]),
        ("acme/-app", ["not a valid repository name component"]),
        ("bad_host.io:port/app", ["registry 'bad_host.io:port'"]),
        ("docker://python:3.11", ["URL scheme"]),
        ("x" * 513, ["513 characters", "512"]),
    ],
)
def test_malformed(text: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        parse_reference(text)
    message = str(info.value)
    assert message.startswith("source: ")
    for word in words:
        assert word in message


def test_longest_accepted() -> None:
    text = "a/" * 200 + "b" * 111
    assert len(text) == 511
    assert parse_reference(text).repository == text


def test_credentials_are_not_echoed() -> None:
    for text in ("user:hunter2secret@ghcr.io/acme/app:1", "https://user:hunter2secret@ghcr.io/a"):
        with pytest.raises(ValueError) as info:
            parse_reference(text)
        assert "hunter2secret" not in str(info.value)
        assert str(info.value).startswith("source: ")


def test_not_a_string() -> None:
    with pytest.raises(ValueError, match=r"^source: must be a string"):
        parse_reference(42)  # type: ignore[arg-type]
