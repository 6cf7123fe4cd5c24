"""The zygote and the in-sandbox agent of the archil local runtime (standard library only).

The runtime runs this package's :func:`~_agent.zygote.main` once, as ``python -S -I -c``
with ``zygote <socket fd> <parent pid>`` (see :mod:`archil.local.runtime._zygote`): the
package is imported as a top-level ``_agent``, nothing here imports ``archil``, and
everything it needs is imported before any ``pivot_root``.

Modules: :mod:`.linux` (system calls and capabilities), :mod:`.wire` (messages),
:mod:`.rootfs` (the sandbox's root filesystem), :mod:`.agent` (PID 1 of a sandbox) and
:mod:`.zygote` (the zygote and each sandbox's helper).

Processes
---------
- **zygote** (one per runtime): forks a helper **C** for each ``create`` request that
  arrives on its socket, reaps the helpers and reports their end.
- **C** (host PID namespace): sets ``PR_SET_PDEATHSIG``, ``unshare``\\ s the mount, PID
  and UTS namespaces (and the user namespace when asked, mapping uid and gid 0 to its own),
  makes every mount private, forks **P**, reports P's pid, waits for it and exits with its
  status.
- **P** (the agent; PID 1 of the sandbox): waits for ``boot`` (so that the runtime can
  prepare a sandbox before it is asked for one), joins the sandbox's cgroups and CPUs,
  mounts the root from the plan it was given, mounts ``/proc``, ``pivot_root``\\ s into it,
  sets the hostname, reports ``ready`` (or ``error`` and exits 125), then spawns processes
  on request, reaps every child, orphans included, and reports the exits. In process mode
  (no namespaces) P mounts nothing and is a child subreaper instead.

The death of the server kills the zygote (its ``PDEATHSIG``), whose death kills every C,
whose death kills its P, whose death (PID 1) makes the kernel kill the whole sandbox.

Messages
--------
JSON objects, one per ``SOCK_SEQPACKET`` message; file descriptors ride along as
``SCM_RIGHTS``.

Runtime to zygote (zygote socket): ``create`` {``id``, ``config``: {``namespace``: bool,
``userns``: bool}} with fds ``[sandbox socket]``. Zygote to runtime: ``ready`` {``pid``}
once, ``ended`` {``id``, ``pid``, ``code``, ``signal``} for each helper it reaps.

Sandbox socket, helper and agent to runtime: ``init`` {``pid``: P's host pid} from C;
``ready`` or ``error`` {``message``} from P; ``spawned`` {``id``, ``pid``, ``cred``} (with
``cred`` true, the pid in the message's ``SCM_CREDENTIALS`` is the process's pid in the
receiver's namespace); ``spawn_failed`` {``id``, ``message``}; ``exited`` {``id``,
``code``, ``signal``} (one of them null); ``ended`` {``code``, ``signal``} from C when P is
gone; ``protocol_error`` {``message``}.

Runtime to agent: ``boot`` {``config``: {``hostname``, ``root`` (host directory of the new
root), ``plan`` (mounts, below), ``cpus`` (list or null), ``agent_cgroups``: n, ``marker``
("NAME=value" in every process of a process-mode sandbox, or null)}} with fds
``[*n cgroup files the agent joins, *cgroup files each user process joins]``, once;
``spawn`` {``id``, ``argv``, ``env``, ``cwd``, ``tty``: bool, ``marker``
("NAME=value" or null)} with fds ``[stdin, stdout, stderr]`` or ``[tty slave]``;
``signal`` {``id``, ``signal``, ``tree``: bool}; ``signal_all`` {``signal``};
``freeze`` / ``thaw`` (SIGSTOP / SIGCONT to every process but the agent, for machines
without a freezer cgroup; answered ``frozen`` / ``thawed``); ``shutdown`` {``grace``}:
SIGTERM to everything, SIGKILL to what is left after ``grace`` seconds, then exit.

A mount plan is a list of {``kind``, ``target`` (a path inside the sandbox, resolved
without leaving the new root), ``what`` (for error messages), ...}: ``overlay``
{``lower``: [dirs], ``upper``, ``work``, ``options``: [str]}, ``bind`` {``source``,
``recursive``, ``readonly``}, ``tmpfs`` {``data``}, ``proc``.
"""
