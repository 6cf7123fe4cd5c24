"""The root filesystem of a sandbox: its mount plan, resolved inside the new root."""

from __future__ import annotations

import errno
import os
import stat

from .linux import (
    KEEP_FLAGS,
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    mount,
    pivot_root,
    umount2,
)
from .wire import Msg


def resolve(root: str, path: str, create: str | None) -> str:
    """``path`` inside ``root`` with every symlink followed as if ``root`` were ``/``.

    ``create`` is ``"dir"`` or ``"file"`` to create what is missing (the last component as
    that kind, the others as directories). The result has no symlink below ``root``.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    cur, hops = root, 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            cur = cur if cur == root else os.path.dirname(cur)
            continue
        nxt = f"{cur}/{name}"
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            if create is None:
                raise
            if parts or create == "dir":
                os.mkdir(nxt, 0o755)
            else:
                os.close(os.open(nxt, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
            cur = nxt
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            link = os.readlink(nxt)
            cur = root if link.startswith("/") else cur
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            continue
        cur = nxt
    return cur


def _mount_one(root: str, op: Msg) -> None:
    kind = op["kind"]
    if kind == "overlay":
        target = resolve(root, op["target"], "dir")
        opts = [
            "lowerdir=" + ":".join(op["lower"]),
            "upperdir=" + op["upper"],
            "workdir=" + op["work"],
            *op.get("options", []),
        ]
        mount("overlay", target, "overlay", 0, ",".join(opts))
    elif kind == "bind":
        source = op["source"]
        target = resolve(root, op["target"], "dir" if os.path.isdir(source) else "file")
        mount(source, target, None, MS_BIND | (MS_REC if op.get("recursive") else 0), None)
        if op.get("readonly"):
            # Keep the flags a user namespace may not drop (statvfs's ST_* bits match
            # MS_* ones, but for ST_RELATIME).
            have = os.statvfs(target).f_flag
            keep = (have & KEEP_FLAGS) | (MS_RELATIME if have & os.ST_RELATIME else 0)
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep, None)
    elif kind == "tmpfs":
        target = resolve(root, op["target"], "dir")
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, op.get("data"))
    elif kind == "proc":
        target = resolve(root, op["target"], "dir")
        mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    else:
        raise OSError(errno.EINVAL, f"unknown mount kind {kind!r}")


def build_root(root: str, plan: list[Msg]) -> None:
    """Mount ``plan`` under ``root``, then make ``root`` the process's ``/``."""
    for op in plan:
        try:
            _mount_one(root, op)
        except OSError as e:
            raise OSError(e.errno, f"{op['what']}: {e.strerror}") from None
    try:
        os.chdir(root)
        pivot_root(".", ".")
        umount2(".", MNT_DETACH)
        os.chdir("/")
    except OSError as e:
        raise OSError(e.errno, f"cannot switch to the new root: {e.strerror}") from None
