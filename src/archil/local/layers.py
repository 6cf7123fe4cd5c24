"""Sandbox filesystem layers: per-session writable directories and committed layers.

A sandbox's root is an overlay of its session's ``upper`` over committed layers, the
image's layer and the host (see :mod:`archil.local.runtime`). The runtime keeps
one upper/work pair per overlay mount inside the session's ``upper`` and ``work``
directories (``rootfs`` for ``/``, ``usr``, ``etc``, ... for the host directories), so a
committed layer is simply a former ``upper``: used as a lower, each of its
subdirectories goes under the mount of the same name.

Layout under ``root``::

    sessions/<sandbox id>.<8 hex>/upper    this session's writes
    sessions/<sandbox id>.<8 hex>/work     overlayfs scratch space
    layers/ckpt-<16 hex>/                  committed layers (never modified again)
    trash/                                 what is being deleted

Everything is on one filesystem, so :meth:`LayerStore.commit` is a ``rename``, and so
is a removal: the directory is renamed into ``trash/`` at once and deleted by a
background thread (deleting files can be slow, and nobody waits for it). Which
sandbox uses which layer is the caller's business (it keeps that in its database).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

from archil.local.spec import RootSpec

__all__ = ["LayerError", "LayerStore", "delete_tree"]

_LAYER_RE = re.compile(r"^ckpt-[0-9a-f]{16}$")
_SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class LayerError(RuntimeError):
    """A layer operation failed (a missing layer, a copy that did not complete...)."""


def _new_id() -> str:
    return "ckpt-" + uuid.uuid4().hex[:16]


class LayerStore:
    """Session directories and committed layers under ``root`` (see the module docs)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._sessions = self.root / "sessions"
        self._layers = self.root / "layers"
        self._trash = self.root / "trash"
        for d in (self._sessions, self._layers, self._trash):
            d.mkdir(parents=True, exist_ok=True)
        self._doomed: queue.SimpleQueue[Path] = queue.SimpleQueue()
        self._emptied = threading.Condition()
        self._pending = 0
        self._collector: threading.Thread | None = None
        for leftover in self._trash.iterdir():
            self._discard(leftover)

    def new_session(self, sandbox_id: str) -> RootSpec:
        """Fresh, empty ``upper`` and ``work`` directories for one boot of ``sandbox_id``.

        The returned :class:`RootSpec` has no lowers; the caller adds them with
        :func:`dataclasses.replace`.
        """
        if not _SESSION_RE.match(sandbox_id):
            raise ValueError(f"invalid sandbox_id {sandbox_id!r}")
        session = self._sessions / f"{sandbox_id}.{uuid.uuid4().hex[:8]}"
        session.mkdir(mode=0o700)
        (session / "upper").mkdir(mode=0o755)
        (session / "work").mkdir(mode=0o700)
        return RootSpec(upper=session / "upper", work=session / "work")

    def _session_of(self, upper: Path) -> Path:
        upper = Path(upper)
        session = upper.parent
        if session.parent != self._sessions or upper.name != "upper":
            raise ValueError(f"{upper} is not the upper directory of a session of {self.root}")
        return session

    def commit(self, upper: Path) -> str:
        """Turn a session's ``upper`` (no longer mounted) into a committed layer; its id.

        The session's ``upper`` is gone afterwards (renamed into the layer store); the
        session directory itself stays until :meth:`remove_session`.
        """
        self._session_of(upper)
        layer_id = _new_id()
        try:
            os.rename(upper, self._layers / layer_id)
        except OSError as e:
            raise LayerError(f"cannot commit {upper}: {e.strerror or e}") from e
        return layer_id

    def snapshot(self, upper: Path) -> str:
        """Copy a (possibly still mounted) ``upper`` into a new committed layer; its id.

        The copy keeps overlayfs whiteouts (0/0 character devices), opaque-directory
        extended attributes, symlinks, owners and modes (``cp -a``). Pause the sandbox
        first for a consistent copy: files written during the copy may be caught halfway.
        """
        upper = Path(upper)
        if not upper.is_dir():
            raise LayerError(f"cannot snapshot {upper}: not a directory")
        layer_id = _new_id()
        tmp = self._layers / f".tmp-{layer_id}"
        proc = subprocess.run(
            ["cp", "-a", "--", str(upper), str(tmp)],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            err = proc.stderr.decode(errors="replace").strip()
            raise LayerError(f"cannot snapshot {upper}: {err or f'cp exited {proc.returncode}'}")
        os.rename(tmp, self._layers / layer_id)
        return layer_id

    def path(self, layer_id: str) -> Path:
        """The directory of a committed layer (raises :class:`LayerError` when there is none)."""
        if not self.exists(layer_id):
            raise LayerError(f"no layer {layer_id!r}")
        return self._layers / layer_id

    def exists(self, layer_id: str) -> bool:
        """True when ``layer_id`` is a committed layer of this store."""
        return bool(_LAYER_RE.match(layer_id)) and (self._layers / layer_id).is_dir()

    def remove(self, layer_id: str) -> None:
        """Delete a committed layer (a no-op when it does not exist)."""
        if not _LAYER_RE.match(layer_id):
            raise ValueError(f"invalid layer id {layer_id!r}")
        self._rmtree(self._layers / layer_id)

    def remove_session(self, root: RootSpec | Path) -> None:
        """Delete a session's directories (its upper, unless committed, and its work dir)."""
        upper = root.upper if isinstance(root, RootSpec) else Path(root)
        self._rmtree(self._session_of(upper))

    def sessions_of(self, sandbox_id: str) -> list[RootSpec]:
        """The session directories a sandbox has left (oldest first): after a crash, at most one."""
        prefix = sandbox_id + "."
        found = [p for p in self._sessions.iterdir() if p.name.startswith(prefix) and p.is_dir()]
        found.sort(key=lambda p: p.stat().st_mtime)
        return [RootSpec(upper=p / "upper", work=p / "work") for p in found]

    def layer_ids(self) -> list[str]:
        """Every committed layer of the store."""
        return sorted(p.name for p in self._layers.iterdir() if _LAYER_RE.match(p.name))

    def _rmtree(self, path: Path) -> None:
        """Move ``path`` into the trash at once; a background thread deletes it."""
        if not path.exists():
            return
        doomed = self._trash / f"{path.name}-{uuid.uuid4().hex[:6]}"
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return
        self._discard(doomed)

    def _discard(self, doomed: Path) -> None:
        with self._emptied:
            self._pending += 1
            if self._collector is None or not self._collector.is_alive():
                self._collector = threading.Thread(
                    target=self._collect, name="archil-layer-trash", daemon=True
                )
                self._collector.start()
        self._doomed.put(doomed)

    def _collect(self) -> None:
        while True:
            doomed = self._doomed.get()
            delete_tree(doomed)
            with self._emptied:
                self._pending -= 1
                if self._pending == 0:
                    self._emptied.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything removed so far is deleted from the disk; False on timeout."""
        with self._emptied:
            return self._emptied.wait_for(lambda: self._pending == 0, timeout)


def delete_tree(path: Path) -> None:
    """Remove a directory tree, including the mode-000 directories overlayfs leaves."""
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            # overlayfs leaves its work/work directory with mode 000.
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                with contextlib.suppress(OSError):
                    os.chmod(p, 0o700)
    shutil.rmtree(path, ignore_errors=True)
