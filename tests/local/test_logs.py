"""The per-container log store and the output chunker."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from archil.local.logs import LineChunker, LogStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    s = LogStore(tmp_path / "logs")
    yield s
    s.close()


def test_offsets_start_at_zero_and_increase_per_container(store: LogStore) -> None:
    assert store.append("c1", "stdout", "a\n") == 0
    assert store.append("c1", "stderr", "b\n") == 1
    assert store.append("c2", "system", "x\n") == 0
    assert store.append("c1", "system", "c\n") == 2
    assert store.count("c1") == 3
    assert store.count("c2") == 1
    assert store.count("unknown") == 0
    assert store.read("c1") == [
        {"stream": "stdout", "offset": 0, "data": "a\n"},
        {"stream": "stderr", "offset": 1, "data": "b\n"},
        {"stream": "system", "offset": 2, "data": "c\n"},
    ]


def test_read_from_offset_with_limit(store: LogStore) -> None:
    for i in range(10):
        store.append("c", "stdout", f"line {i}\n")
    assert [e["offset"] for e in store.read("c", 7)] == [7, 8, 9]
    assert [e["data"] for e in store.read("c", 3, limit=2)] == ["line 3\n", "line 4\n"]
    assert store.read("c", 10) == []
    assert store.read("c", 99) == []
    assert store.read("c", 0, limit=0) == []
    assert store.read("nothing") == []


def test_extend_writes_consecutive_entries(store: LogStore) -> None:
    store.append("c", "system", "first\n")
    assert store.extend("c", [("build", "b1\n"), ("build", "b2\n")]) == 1
    assert store.extend("c", []) == 3
    assert [e["data"] for e in store.read("c", 1)] == ["b1\n", "b2\n"]


def test_file_is_json_lines(store: LogStore) -> None:
    store.append("c", "stdout", 'quote " and newline\n and unicode é\n')
    lines = store.path_for("c").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {
        "stream": "stdout",
        "offset": 0,
        "data": 'quote " and newline\n and unicode é\n',
    }


def test_restart_rescans_and_continues_offsets(tmp_path: Path) -> None:
    first = LogStore(tmp_path / "logs")
    for i in range(5):
        first.append("c", "stdout", f"{i}\n")
    first.close()
    second = LogStore(tmp_path / "logs")
    assert second.count("c") == 5
    assert second.read("c", 3) == [
        {"stream": "stdout", "offset": 3, "data": "3\n"},
        {"stream": "stdout", "offset": 4, "data": "4\n"},
    ]
    assert second.append("c", "system", "after\n") == 5
    second.close()


def test_restart_drops_a_half_written_last_line(tmp_path: Path) -> None:
    first = LogStore(tmp_path / "logs")
    first.append("c", "stdout", "complete\n")
    first.close()
    with open(tmp_path / "logs" / "c.jsonl", "ab") as f:
        f.write(b'{"stream":"stdout","offs')
    second = LogStore(tmp_path / "logs")
    assert second.count("c") == 1
    assert second.append("c", "stdout", "next\n") == 1
    assert [e["data"] for e in second.read("c")] == ["complete\n", "next\n"]


def test_concurrent_appends_get_unique_offsets(store: LogStore) -> None:
    threads_n, per_thread = 8, 300
    got: dict[int, list[int]] = {}

    def worker(n: int) -> None:
        got[n] = [store.append("c", "stdout", f"{n}:{i}\n") for i in range(per_thread)]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    offsets = sorted(o for v in got.values() for o in v)
    assert offsets == list(range(threads_n * per_thread))
    entries = store.read("c")
    assert [e["offset"] for e in entries] == offsets
    for n in range(threads_n):
        mine = [e["data"] for e in entries if e["data"].startswith(f"{n}:")]
        assert mine == [f"{n}:{i}\n" for i in range(per_thread)]
        assert got[n] == sorted(got[n])


def test_concurrent_readers_and_writer(store: LogStore) -> None:
    total = 2000
    errors: list[str] = []

    def writer() -> None:
        for i in range(total):
            store.append("c", "stdout", f"{i}\n")

    def follower() -> None:
        pos = 0
        while pos < total:
            if not store.wait("c", pos, timeout=10):
                errors.append(f"stalled at {pos}")
                return
            for e in store.read("c", pos, limit=100):
                if e["data"] != f"{e['offset']}\n" or e["offset"] != pos:
                    errors.append(f"bad entry {e}")
                    return
                pos += 1

    readers = [threading.Thread(target=follower) for _ in range(3)]
    for r in readers:
        r.start()
    writer()
    for r in readers:
        r.join(30)
    assert errors == []


def test_wait_times_out_and_wakes_up(store: LogStore) -> None:
    assert store.wait("c", 0, timeout=0.05) is False
    timer = threading.Timer(0.05, lambda: store.append("c", "stdout", "x\n"))
    timer.start()
    assert store.wait("c", 0, timeout=5) is True
    timer.join()


def test_tail_text_keeps_only_stdout_and_stderr(store: LogStore) -> None:
    store.append("c", "build", "build line\n")
    for i in range(100):
        store.append("c", "stdout" if i % 2 else "stderr", f"out {i}\n")
        store.append("c", "system", f"sys {i}\n")
    tail = store.tail_text("c", max_lines=3)
    assert tail == "out 97\nout 98\nout 99"
    assert "sys" not in store.tail_text("c", max_lines=500)
    assert "build line" not in store.tail_text("c", max_lines=500)
    assert store.tail_text("c", max_lines=0) == ""
    assert store.tail_text("none") == ""


def test_tail_text_splits_multi_line_entries(store: LogStore) -> None:
    store.append("c", "stdout", "a\nb\nc\n")
    store.append("c", "stderr", "partial")
    assert store.tail_text("c", max_lines=2) == "c\npartial"


def test_delete_removes_the_log(store: LogStore) -> None:
    store.append("c", "stdout", "x\n")
    path = store.path_for("c")
    assert path.exists()
    store.delete("c")
    assert not path.exists()
    assert store.count("c") == 0
    assert store.append("c", "stdout", "again\n") == 0
    store.delete("never-existed")


def test_many_containers_beyond_open_file_limit(tmp_path: Path) -> None:
    s = LogStore(tmp_path / "logs", max_open_files=4)
    for round_ in range(3):
        for i in range(20):
            assert s.append(f"c{i}", "stdout", f"{round_}\n") == round_
    for i in range(20):
        assert [e["data"] for e in s.read(f"c{i}")] == ["0\n", "1\n", "2\n"]
    s.close()


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x" * 200])
def test_invalid_container_ids_are_rejected(store: LogStore, bad: str) -> None:
    with pytest.raises(ValueError):
        store.append(bad, "stdout", "x")


def test_invalid_stream_is_rejected(store: LogStore) -> None:
    with pytest.raises(ValueError):
        store.append("c", "stdin", "x")


def test_surrogates_do_not_break_the_log(store: LogStore) -> None:
    store.append("c", "stdout", "bad \udcff char\n")
    assert store.read("c")[0]["data"].startswith("bad ")


# -- LineChunker -------------------------------------------------------------------


def test_chunker_splits_lines_and_keeps_newlines() -> None:
    ch = LineChunker()
    assert ch.feed(b"one\ntw") == ["one\n"]
    assert ch.feed(b"o\nthree\n") == ["two\n", "three\n"]
    assert ch.feed(b"tail") == []
    assert ch.flush() == ["tail"]
    assert ch.flush() == []


def test_chunker_cuts_long_lines_at_max_chunk() -> None:
    ch = LineChunker(64 * 1024)
    data = b"x" * (64 * 1024 * 2 + 10) + b"\n"
    chunks = ch.feed(data) + ch.flush()
    assert [len(c) for c in chunks] == [65536, 65536, 11]
    assert "".join(chunks) == data.decode()


def test_chunker_keeps_multibyte_characters_whole_and_loses_nothing() -> None:
    text = ("é€😀 line\n" * 50) + "no newline é"
    raw = text.encode() + b"\xff\xfe invalid\n"
    pieces = [raw[i : i + 3] for i in range(0, len(raw), 3)]
    ch = LineChunker(16)
    out: list[str] = []
    for p in pieces:
        out.extend(ch.feed(p))
    out.extend(ch.flush())
    assert "".join(out) == raw.decode("utf-8", errors="replace")
    assert all(len(c) <= 16 + 3 for c in out)
    assert "\ufffd" in "".join(out)
