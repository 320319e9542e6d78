"""The factory: one session per node, reused by every step, over the transport this run uses.

`session_for` opens an SSH connection (rbacbridge.nodes.ssh) or a pod session (rbacbridge.nodes.pods),
`preflight` checks that transport's input before any node is contacted, `close_sessions` ends them.
Both transports are imported here lazily (paramiko and the kubernetes client stay unloaded until used).
"""

from __future__ import annotations

from typing import Any

from rbacbridge.nodes.session import Session
from rbacbridge.nodes.targets import NodeRef, node_refs, ssh_target, via

_SESSIONS = "nodes.sessions"


def preflight(ctx, refs: list[NodeRef] | None = None) -> None:
    """Check the SSH settings before any node is contacted (and, from the planner, before any other
    system is): a bad key, ssh config or known_hosts is bad input, exit 2, nothing changed.

    Without `refs`, nodes named in the config/flags are checked in full; nodes that will come from
    the cluster get the host-independent checks now and the full one in `inspect_all`.
    """
    from rbacbridge.nodes.ssh import check_settings
    from rbacbridge.nodes.ssh import preflight as check_target

    if via(ctx) == "kubernetes":
        if refs is not None:
            from rbacbridge.nodes.pods import prepare

            prepare(ctx, refs, read_only=bool(ctx.facts.get("nodes.read_only")))
        return
    if refs is None:
        if not ctx.config.node_hosts:
            check_settings(ssh_target(ctx, NodeRef(name="-", ssh_host="localhost")))
            return
        refs = node_refs(ctx)
    checked = ctx.facts.setdefault("nodes.preflight", set())
    notes = ctx.facts.setdefault("notes", [])
    for ref in refs:
        if ref.name in checked:
            continue
        for note in check_target(ssh_target(ctx, ref)):
            if note not in notes:
                notes.append(note)
        checked.add(ref.name)


def _sessions(ctx) -> dict[str, Any]:
    return ctx.gateway(_SESSIONS, dict)


def session_for(ctx, ref: NodeRef) -> Session:
    sessions = _sessions(ctx)
    session = sessions.get(ref.name)
    if via(ctx) == "kubernetes":  # the same scripts, carried by pod exec (rbacbridge.nodes.pods)
        if session is None:
            from rbacbridge.nodes.pods import open_session

            session = sessions[ref.name] = open_session(ctx, ref)
        return session
    if session is None or not session.is_open():
        from rbacbridge.nodes.ssh import connect

        ctx.reporter.progress(f"{ref.name}: connecting over SSH")
        session = connect(ssh_target(ctx, ref))
        sessions[ref.name] = session
    return session


def close_sessions(ctx) -> None:
    sessions = ctx.gateways.get(_SESSIONS) or {}
    for session in list(sessions.values()):
        try:
            session.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
    sessions.clear()
