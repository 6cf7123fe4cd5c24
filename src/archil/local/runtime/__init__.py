"""Boot sandboxes and run processes in them (the local control plane's runtime engine).

A sandbox is a set of Linux namespaces (mount, PID, UTS; user where not root) with a
private root filesystem, booted by a warm helper and served by an agent that is PID 1
of its PID namespace (see :mod:`archil.local._agent` for the processes and the protocol).

Root filesystem
---------------
``/`` is an overlay of the session's ``upper/rootfs`` over each committed layer's
``rootfs``, the image's layer and a shared skeleton (empty mountpoint directories and the
host's merged-usr symlinks such as ``bin -> usr/bin``). ``/usr``, ``/etc``, ``/var`` and
``/opt`` (and any of ``/bin``, ``/lib``... that is a real directory on the host) each get
their own overlay: the session's ``upper/<dir>`` over the layers' ``<dir>``, the image
layer's ``<dir>`` and the host's ``/<dir>``. So a sandbox sees the host's userland, may
write anywhere, and its writes stay in its session. ``/dev`` is the host's (with a private
``/dev/shm``), ``/sys`` a read-only bind, ``/proc`` the sandbox's own. The image's binds
are mounted read-only at their paths; each :class:`MountSpec` at its target
(``read_only`` ones refuse writes with ``EROFS``). Everything else of the host, this
runtime's directory included, is not there.

Process mode
------------
Where namespaces do not work (or with ``namespaces=False``), the same helper and agent
run processes directly on the host: the disk is at ``ARCHIL_DISK_PATH`` (the host
directory), read-only mounts are not enforced, and every process carries
``ARCHIL_SANDBOX_TOKEN`` so that stopping a sandbox finds all of its descendants.

Threads
-------
Each sandbox has a thread that reads its agent's messages (exits, spawn results, its
end); one thread per runtime pumps every process's output and runs the timeouts.
``on_output`` and ``on_exit`` come from those threads, ``on_end`` from the sandbox's
own; they must return quickly. ``stop()`` and ``kill()`` called from one of them start
the stop and return at once.

Parts
-----
- :mod:`archil.local.runtime._runtime`: :class:`Runtime`, which detects what this machine
  allows, boots sandboxes (one prepared ahead), gives them cgroups and shuts them down.
- :mod:`archil.local.runtime._environment`: :class:`Environment`, one sandbox: its API
  (spawn, freeze, stop, kill) and its life from its helper's fork to its clean-up.
- :mod:`archil.local.runtime._sandbox`: the base of :class:`Environment`: its state, what
  its helper and agent report, its kills (and how they are scoped), each process's set-up
  and the ``ARCHIL_*`` variables every process gets.
- :mod:`archil.local.runtime._process`: :class:`RunningProcess`, a process in a sandbox.
- :mod:`archil.local.runtime._zygote`: the zygote, the thread that starts it and the
  messages of the runtime's sockets.
"""

from __future__ import annotations

from archil.local.mounts import BootError
from archil.local.runtime._environment import (
    _FREEZE_TIMEOUT,
    _SPAWN_TIMEOUT,
    Environment,
    _PreparedGone,
)
from archil.local.runtime._process import (
    _DRAIN_GRACE,
    _TIMEOUT_GRACE,
    BASE_PATH,
    RunningProcess,
    SpawnError,
)
from archil.local.runtime._runtime import (
    _BOOT_TIMEOUT,
    Runtime,
    _probe_cache,
    _probe_lock,
    logger,
)
from archil.local.runtime._sandbox import _archil_env, _Resources, _to_host
from archil.local.runtime._zygote import _MAX_MSG, _recv, _send, _Spawner, _Zygote

__all__ = [
    "BASE_PATH",
    "_BOOT_TIMEOUT",
    "_DRAIN_GRACE",
    "_FREEZE_TIMEOUT",
    "_MAX_MSG",
    "_SPAWN_TIMEOUT",
    "_TIMEOUT_GRACE",
    "BootError",
    "Environment",
    "RunningProcess",
    "Runtime",
    "SpawnError",
    "_PreparedGone",
    "_Resources",
    "_Spawner",
    "_Zygote",
    "_archil_env",
    "_probe_cache",
    "_probe_lock",
    "_recv",
    "_send",
    "_to_host",
    "logger",
]
