"""Bad input against a real local control plane: each call works or fails clearly, and
nothing is created on the server or written outside a disk.

:func:`attempt` is the property every test checks for each input it draws: the call
returns, or raises a ``ValueError`` (pydantic's ``ValidationError`` is one) or a 4xx
``archil.APIError`` whose message names the field; any other exception fails the test.
A rejected call must leave the server's state (its SQLite rows, its files outside the
disks' contents, the directory around the data directory) exactly as it was.

Every input tried is counted; the total is printed in the terminal summary and written to
``badinput-count.json`` in pytest's base temporary directory.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _pytest.terminal import TerminalReporter
from hypothesis import HealthCheck, settings

import archil
from archil.local.embedded import LocalServer

BADINPUT = settings(
    max_examples=int(os.environ.get("ARCHIL_BADINPUT_EXAMPLES", "150")),
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
"""Bounded: the whole directory runs in about a minute on two cores; CI draws the same inputs."""

TABLES = ("disks", "disk_users", "api_tokens", "sandboxes", "checkpoints", "object_meta")
_VOLATILE = {"state.db", "state.db-wal", "state.db-shm", "server.json", "server.lock", "api_key"}


@dataclass
class Tally:
    """The inputs tried, per entry point, and how each call ended."""

    tried: set[tuple[str, str]] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)

    def report(self) -> dict[str, Any]:
        per_entry = Counter(entry for entry, _ in self.tried)
        return {
            "distinct_inputs": len(self.tried),
            "entry_points": len(per_entry),
            "outcomes": dict(self.outcomes),
            "per_entry_point": dict(sorted(per_entry.items())),
        }


TALLY = Tally()


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if not TALLY.tried:
        return
    report = TALLY.report()
    terminalreporter.write_sep("-", "bad input")
    terminalreporter.write_line(
        f"{report['distinct_inputs']} distinct bad inputs tried on "
        f"{report['entry_points']} entry points; outcomes: {report['outcomes']}"
    )


@pytest.fixture(scope="session", autouse=True)
def _count_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    if TALLY.tried:
        path = tmp_path_factory.getbasetemp() / "badinput-count.json"
        path.write_text(json.dumps(TALLY.report(), indent=2))


class Server:
    """The local control plane under test and a view of its state."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.local = LocalServer(root / "data", stop_grace=2.0)

    @property
    def data(self) -> Path:
        return self.local.data_dir

    def rows(self) -> dict[str, int]:
        db = sqlite3.connect(f"file:{self.data / 'state.db'}?mode=ro", uri=True, timeout=30)
        try:
            return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
        finally:
            db.close()

    def files(self) -> tuple[frozenset[str], frozenset[str]]:
        """The files of the data directory and around it: ``(disks and the rest, caches)``.

        The first set has every file of every disk, every other file of the data
        directory and whatever sits beside it. The second has the entries of the server's
        own bookkeeping, which a call that works may add to: built images, layers,
        sandbox roots, process output and the gateway's multipart records.
        """
        found: set[str] = {f"../{p.name}" for p in self.root.iterdir() if p.name != "data"}
        caches: set[str] = set()
        for top in self.data.iterdir():
            if top.name in _VOLATILE:
                continue
            if top.name in ("sandbox-images", "layers", "runtime"):
                caches |= {f"{top.name}/{p.name}" for p in top.iterdir()}
                continue
            if top.name == "processes":  # processes/<sandbox>/<process>...
                caches |= {f"processes/{p.parent.name}/{p.name}" for p in top.glob("*/*")}
                continue
            if top.is_file():
                found.add(top.name)
                continue
            for dirpath, _, filenames in os.walk(top):
                rel = os.path.relpath(dirpath, self.data)
                names = {f"{rel}/{name}" for name in filenames}
                if rel.startswith(("disks/.multipart", "disks/.uploads")):
                    caches |= names
                else:
                    found |= names
        return frozenset(found), frozenset(caches)

    def state(self) -> tuple[dict[str, int], frozenset[str], frozenset[str]]:
        return (self.rows(), *self.files())


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("badinput"))
    srv.local.start()
    try:
        yield srv
    finally:
        srv.local.stop()


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[archil.Archil]:
    with archil.Archil(
        api_key=server.local.api_key, base_url=server.local.base_url, max_retries=0
    ) as c:
        yield c


@pytest.fixture(scope="session")
def disk(client: archil.Archil) -> str:
    """A disk that exists, with one object in it."""
    disk_id = client.disks.create(name="badinput").id
    client.objects.put(disk_id, "kept.txt", b"kept")
    return disk_id


Outcome = str


def attempt(
    server: Server,
    entry: str,
    value: Any,
    call: Callable[[], Any],
    fields: tuple[str, ...],
    *,
    cleanup: Callable[[Any], None] | None = None,
) -> Outcome:
    """Call ``call`` with the input ``value`` and check the property; returns how it ended.

    - ``"rejected"``: a ``ValueError`` naming one of ``fields``, before any request;
    - ``"refused"``: a 4xx answer naming one of ``fields`` (404 for a well-formed id that
      names nothing need not name it);
    - ``"ok"``: it worked; ``cleanup`` (given the result) undoes what it made.

    In every case the server's rows and files are afterwards what they were before
    (a call that worked may have warmed the server's caches).
    """
    TALLY.tried.add((entry, repr(value)))
    before = server.state()
    outcome: Outcome
    try:
        result = call()
    except archil.APIStatusError as exc:
        assert 400 <= exc.status_code < 500 and exc.status_code not in (401, 403), (
            entry,
            value,
            exc,
        )
        if exc.status_code != 404:
            _names_a_field(entry, value, str(exc), fields)
        outcome = "refused" if exc.status_code != 404 else "absent"
    except archil.ProcessError as exc:
        # The process protocol's refusal to start a process (its 4xx).
        assert exc.code == "spawn_failed", (entry, value, exc)
        _names_a_field(entry, value, str(exc), fields)
        outcome = "refused"
    except ValueError as exc:
        _names_a_field(entry, value, str(exc), fields)
        outcome = "rejected"
    else:
        outcome = "ok"
        if cleanup is not None:
            cleanup(result)
    TALLY.outcomes[outcome] += 1
    after = server.state()
    assert after[0] == before[0], (entry, value, outcome, before[0], after[0])
    assert after[1] == before[1], (entry, value, outcome, sorted(after[1] ^ before[1])[:10])
    if outcome != "ok":
        assert after[2] == before[2], (entry, value, outcome, sorted(after[2] ^ before[2])[:10])
    return outcome


def _names_a_field(entry: str, value: Any, message: str, fields: tuple[str, ...]) -> None:
    assert any(f in message for f in fields), (
        f"{entry}({value!r}): the error does not name {' or '.join(fields)}: {message}"
    )
