"""Development tasks: ``python -m nox -s tests`` runs the whole test suite."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "unasync_check"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite, against the embedded local control plane where it needs one."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def example(session: nox.Session) -> None:
    """Run an example (default: examples/declarative_simple.py) on the embedded local control plane."""
    session.install("-e", ".[local]")
    script = session.posargs[0] if session.posargs else "examples/declarative_simple.py"
    session.run("python", script, env={"ARCHIL_API_KEY": "", "ARCHIL_BASE_URL": ""})


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """The chaos storm: 30% injected failures and a SIGKILL of the server while the SDK works.

    ``python -m nox -s chaos -- --scale 0.1`` runs a small one (CI runs that as a test).
    """
    session.install("-e", ".[local]")
    session.run("python", "scripts/chaos_storm.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Every benchmark: one line per figure, ours beside a baseline measured in the same run.

    The sandbox benchmarks run in a private PID and mount namespace where ``unshare`` works.
    ``python -m nox -s bench -- --quick`` runs fewer repeats and 100 MB objects only.
    """
    session.install("-e", ".[local]")
    quick = "--quick" in session.posargs
    repeat = "3" if quick else "5"
    wrap = ["unshare", "--pid", "--fork", "--mount", "--mount-proc"] if _can_unshare() else []
    session.run(*wrap, "python", "bench/bench_core.py", "--repeat", repeat, external=bool(wrap))
    session.run(*wrap, "python", "bench/bench_cls.py", "--rounds", repeat, external=bool(wrap))
    for size in ("100M",) if quick else ("100M", "1G"):
        session.run("python", "bench/bench_objects.py", "--size", size, "--repeat", "3")


def _can_unshare() -> bool:
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--pid", "--fork", "--mount", "--mount-proc", "true"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "scripts", "bench", "examples", "noxfile.py")
    session.run(
        "ruff", "format", "--check", "src", "tests", "scripts", "bench", "examples", "noxfile.py"
    )


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over src/ (the generated _sync/ tree included)."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "src/archil")


@nox.session(python=PYTHON)
def unasync(session: nox.Session) -> None:
    """Regenerate src/archil/_sync/ and tests/_sync/ from their async sources."""
    session.install("unasync==0.6.0", "ruff")
    session.run("python", "scripts/unasync.py")


@nox.session(python=PYTHON)
def unasync_check(session: nox.Session) -> None:
    """Fail when the generated blocking twin differs from what its async source generates."""
    session.install("unasync==0.6.0", "ruff")
    session.run("python", "scripts/unasync.py", "--check")
