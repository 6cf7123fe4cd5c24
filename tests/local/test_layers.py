"""The layer store: sessions, commits and snapshots (real directories, real overlay metadata)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from archil.local.layers import LayerError, LayerStore
from archil.local.spec import RootSpec

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and trusted xattrs need root")


@pytest.fixture
def store(tmp_path: Path) -> LayerStore:
    return LayerStore(tmp_path / "layers")


def test_new_session_gives_fresh_empty_directories_on_one_filesystem(store: LayerStore) -> None:
    a = store.new_session("sbx-1")
    b = store.new_session("sbx-1")
    assert isinstance(a, RootSpec) and a.lowers == ()
    assert a.upper != b.upper and a.work != b.work
    for d in (a.upper, a.work, b.upper, b.work):
        assert d.is_dir() and not list(d.iterdir())
    assert os.stat(a.upper).st_dev == os.stat(a.work).st_dev
    with pytest.raises(ValueError, match="sandbox_id"):
        store.new_session("../escape")


def test_commit_turns_an_upper_into_a_layer(store: LayerStore) -> None:
    session = store.new_session("sbx")
    (session.upper / "rootfs" / "root").mkdir(parents=True)
    (session.upper / "rootfs" / "root" / "f").write_text("data")
    ino = os.stat(session.upper / "rootfs" / "root" / "f").st_ino
    layer = store.commit(session.upper)
    assert re.fullmatch(r"ckpt-[0-9a-f]{16}", layer)
    assert store.exists(layer)
    path = store.path(layer)
    assert (path / "rootfs" / "root" / "f").read_text() == "data"
    assert os.stat(path / "rootfs" / "root" / "f").st_ino == ino, "a rename, not a copy"
    assert not session.upper.exists()
    store.remove_session(session)
    assert not session.work.exists() and not session.upper.parent.exists()
    assert store.exists(layer)


def test_commit_refuses_what_is_not_a_session_upper(store: LayerStore, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ValueError, match="not the upper directory"):
        store.commit(tmp_path / "elsewhere")
    session = store.new_session("sbx")
    with pytest.raises(ValueError):
        store.commit(session.work)


@root_only
def test_snapshot_keeps_whiteouts_opaque_dirs_symlinks_and_modes(store: LayerStore) -> None:
    session = store.new_session("live")
    up = session.upper / "rootfs"
    (up / "etc").mkdir(parents=True)
    os.mknod(up / "etc" / "deleted", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    (up / "opaque").mkdir()
    os.setxattr(up / "opaque", "trusted.overlay.opaque", b"y")
    (up / "opaque" / "only").write_text("x")
    os.symlink("/etc/passwd", up / "link")
    (up / "secret").write_text("s")
    os.chmod(up / "secret", 0o600)
    os.chown(up / "secret", 1234, 5678)
    layer = store.snapshot(session.upper)
    snap = store.path(layer) / "rootfs"
    wh = os.lstat(snap / "etc" / "deleted")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(snap / "opaque", "trusted.overlay.opaque") == b"y"
    assert (snap / "opaque" / "only").read_text() == "x"
    assert os.readlink(snap / "link") == "/etc/passwd"
    st = os.stat(snap / "secret")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1234, 5678)
    assert (up / "secret").exists(), "the live upper is left as it was"
    (up / "after").write_text("later")
    assert not (snap / "after").exists()


def test_snapshot_of_a_missing_directory_fails(store: LayerStore, tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="not a directory"):
        store.snapshot(tmp_path / "nope")


def test_path_exists_and_remove(store: LayerStore) -> None:
    session = store.new_session("sbx")
    (session.upper / "f").write_text("x")
    layer = store.commit(session.upper)
    assert store.exists(layer)
    store.remove(layer)
    assert not store.exists(layer)
    store.remove(layer)
    with pytest.raises(LayerError, match="no layer"):
        store.path(layer)
    assert not store.exists("../../etc")
    assert not store.exists("ckpt-0000000000000000")
    with pytest.raises(ValueError, match="invalid layer id"):
        store.remove("../sessions")


def test_remove_session_deletes_overlay_work_directories(store: LayerStore) -> None:
    session = store.new_session("sbx")
    locked = session.work / "rootfs" / "work"
    locked.mkdir(parents=True)
    (locked / "inner").mkdir()
    os.chmod(locked, 0o000)
    store.remove_session(session.upper)
    assert not session.upper.parent.exists()
    assert not [p for p in (store.root / "sessions").iterdir()]
