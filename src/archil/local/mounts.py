"""A sandbox's root filesystem and mounts: the checks on a spec and the plan of mounts.

:func:`validate_sandbox_spec` rejects a malformed :class:`~archil.local.spec.SandboxSpec`
before anything starts; :func:`mount_plan` lists the mounts that make a sandbox's root, in
the order the agent performs them (see :mod:`archil.local.runtime` for the layout).
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from archil.local.spec import GUEST_DISK_PATH, SandboxSpec

__all__ = ["BootError", "check_env", "ensure_skeleton", "mount_plan", "validate_sandbox_spec"]

_SYSTEM_DIRS = ("usr", "etc", "var", "opt")
_MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_SKELETON_DIRS = (
    "proc",
    "dev",
    "sys",
    "tmp",
    "root",
    "home",
    "mnt",
    GUEST_DISK_PATH.lstrip("/"),
    "run",
    "srv",
    "usr",
    "etc",
    "var",
    "opt",
    "media",
    "boot",
)
_RESERVED = ("/proc", "/dev", "/sys")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$")
_ENV_RE = re.compile(r"^[^=\0]+$")


class BootError(RuntimeError):
    """A sandbox could not be booted; the message names what failed."""


# -- validation ------------------------------------------------------------------------------


def check_env(field: str, env: dict[str, str]) -> None:
    """Reject an environment whose names or values the kernel cannot take, naming ``field``."""
    for k, v in env.items():
        if not isinstance(k, str) or not _ENV_RE.match(k):
            raise ValueError(f"{field}: invalid environment variable name {k!r}")
        if not isinstance(v, str) or "\0" in v:
            raise ValueError(f"{field}: invalid value for {k}")


def _check_guest_path(field: str, path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise ValueError(f"{field} must be an absolute path, not {path!r}")
    if ".." in path.split("/"):
        raise ValueError(f"{field} must not contain '..': {path!r}")
    norm = posixpath.normpath(path)
    if norm == "/":
        raise ValueError(f"{field} must be below /")
    return norm


def _check_host_dir(field: str, path: Path, *, overlay: bool = False) -> None:
    if not os.path.isabs(path):
        raise BootError(f"{field} must be an absolute path, not {str(path)!r}")
    if overlay and any(c in str(path) for c in ",:\\"):
        raise BootError(f"{field} {path} contains ',', ':' or '\\', which overlayfs cannot take")
    if not os.path.isdir(path):
        raise BootError(f"{field} {path} does not exist or is not a directory")


def validate_sandbox_spec(spec: SandboxSpec) -> None:
    """Reject a malformed :class:`SandboxSpec` (``ValueError``) or missing directories
    (:class:`BootError`), naming the field, before anything is started."""
    if not isinstance(spec.sandbox_id, str) or not _ID_RE.match(spec.sandbox_id):
        raise ValueError(f"sandbox_id: invalid id {spec.sandbox_id!r}")
    if not _HOST_RE.match(spec.hostname or ""):
        raise ValueError(f"hostname: invalid hostname {spec.hostname!r}")
    if not isinstance(spec.vcpu_count, int) or spec.vcpu_count < 1:
        raise ValueError(f"vcpu_count must be at least 1, not {spec.vcpu_count!r}")
    if not isinstance(spec.mem_size_mib, int) or spec.mem_size_mib < 16:
        raise ValueError(f"mem_size_mib must be at least 16, not {spec.mem_size_mib!r}")
    check_env("env", spec.env)
    check_env("image.env", spec.image.env)
    seen: set[str] = set()
    for i, m in enumerate(spec.mounts):
        target = _check_guest_path(f"mounts[{i}].target", m.target)
        if any(target == r or target.startswith(r + "/") for r in _RESERVED):
            raise ValueError(f"mounts[{i}].target {target} is reserved for the system")
        if target in seen:
            raise ValueError(f"mounts[{i}].target: two mounts at {target}")
        seen.add(target)
    for i, b in enumerate(spec.image.binds):
        _check_guest_path(f"image.binds[{i}]", str(b))
        if not os.path.exists(b):
            raise BootError(f"image.binds[{i}] {b} does not exist")
    for i, m in enumerate(spec.mounts):
        _check_host_dir(f"mounts[{i}].source", m.source)
    _check_host_dir("root.upper", spec.root.upper, overlay=True)
    _check_host_dir("root.work", spec.root.work, overlay=True)
    if os.stat(spec.root.upper).st_dev != os.stat(spec.root.work).st_dev:
        raise BootError("root.upper and root.work must be on one filesystem")
    for i, lower in enumerate(spec.root.lowers):
        _check_host_dir(f"root.lowers[{i}]", lower, overlay=True)
    if spec.image.layer is not None:
        _check_host_dir("image.layer", spec.image.layer, overlay=True)


# -- the root filesystem -------------------------------------------------------------------


def ensure_skeleton(root: Path) -> Path:
    """The shared skeleton under ``root`` (created once): mountpoints and merged-usr links."""
    skel = root / "skeleton"
    if skel.is_dir():
        return skel
    tmp = root / f".skeleton-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    for d in _SKELETON_DIRS:
        (tmp / d).mkdir(mode=0o755, exist_ok=True)
    os.chmod(tmp / "tmp", 0o1777)
    os.chmod(tmp / "root", 0o700)
    for name in _MERGED_USR:
        host = Path("/") / name
        if host.is_symlink():
            os.symlink(os.readlink(host), tmp / name)
        elif host.is_dir():
            (tmp / name).mkdir(mode=0o755)
    try:
        os.rename(tmp, skel)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not skel.is_dir():
            raise
    return skel


def _host_dirs() -> list[str]:
    """Host directories that get an overlay of their own (``usr``, ``etc``, ...)."""
    out = [d for d in _SYSTEM_DIRS if os.path.isdir(f"/{d}") and not os.path.islink(f"/{d}")]
    out += [d for d in _MERGED_USR if os.path.isdir(f"/{d}") and not os.path.islink(f"/{d}")]
    return out


def _overlay(
    target: str, lower: list[str], upper: Path, work: Path, userns: bool
) -> dict[str, Any]:
    upper.mkdir(mode=0o755, exist_ok=True)
    work.mkdir(mode=0o700, exist_ok=True)
    options = ["userxattr"] if userns else []
    data = ",".join(
        ["lowerdir=" + ":".join(lower), f"upperdir={upper}", f"workdir={work}", *options]
    )
    limit = os.sysconf("SC_PAGE_SIZE") - 1
    if len(data.encode()) > limit:
        raise BootError(
            f"cannot mount {target}: the overlay options for {len(lower)} layers are "
            f"{len(data.encode())} bytes, more than the kernel's limit of {limit}; "
            "commit fewer layers or use shorter paths"
        )
    return {
        "kind": "overlay",
        "target": target,
        "lower": lower,
        "upper": str(upper),
        "work": str(work),
        "options": options,
        "what": f"cannot mount {target}",
    }


def _hidden_paths(spec: SandboxSpec, runtime_root: Path, visible: list[str]) -> list[str]:
    """Host directories of the control plane that would show through an overlaid host dir."""
    cands = {runtime_root, spec.root.upper.parent.parent, spec.root.work.parent.parent}
    cands |= {lower.parent for lower in spec.root.lowers}
    cands |= {m.source.parent for m in spec.mounts}
    out: set[str] = set()
    for c in cands:
        real = os.path.realpath(c)
        if any(real.startswith(f"/{d}/") for d in visible):
            out.add(real)
    # A hidden directory inside another hidden one adds nothing.
    return sorted(p for p in out if not any(p.startswith(q + "/") for q in out))


def mount_plan(
    spec: SandboxSpec, skeleton: Path, runtime_root: Path, *, userns: bool
) -> list[dict[str, Any]]:
    """The mounts that make a sandbox's root, in order (see the module documentation)."""
    upper, work, layers = Path(spec.root.upper), Path(spec.root.work), spec.root.lowers
    image = spec.image.layer
    lower = [str(p / "rootfs") for p in layers if (p / "rootfs").is_dir()]
    lower += [str(image)] if image is not None else []
    plan = [_overlay("/", [*lower, str(skeleton)], upper / "rootfs", work / "rootfs", userns)]
    visible = _host_dirs()
    for d in visible:
        lower = [str(p / d) for p in layers if (p / d).is_dir()]
        lower += [str(image / d)] if image is not None and (image / d).is_dir() else []
        plan.append(_overlay(f"/{d}", [*lower, f"/{d}"], upper / d, work / d, userns))
    plan += [
        {"kind": "bind", "source": "/dev", "target": "/dev", "recursive": True},
        {"kind": "tmpfs", "target": "/dev/shm", "data": "mode=1777"},
        {"kind": "bind", "source": "/sys", "target": "/sys", "recursive": userns},
        {"kind": "proc", "target": "/proc"},
    ]
    plan[-2]["readonly"] = True
    for h in _hidden_paths(spec, runtime_root, visible):
        plan.append({"kind": "tmpfs", "target": h, "data": "mode=0755,size=64k"})
    binds = [(str(b), str(b), True) for b in spec.image.binds]
    binds += [(str(m.source), posixpath.normpath(m.target), m.read_only) for m in spec.mounts]
    for source, target, ro in sorted(binds, key=lambda b: b[1].count("/")):
        plan.append({"kind": "bind", "source": source, "target": target, "readonly": ro})
    for op in plan:
        op.setdefault("what", f"cannot mount {op['target']}")
    return plan
