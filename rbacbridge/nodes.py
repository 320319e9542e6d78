"""The nodes part: exactly one kube2iam iptables rule per node (article step 14), none after teardown.

Per node, over one SSH connection and in one exec: `iptables -V` (the backend), `iptables -t nat -S
PREROUTING` and `ss -Htlnp` (who listens where). With a cluster configured, the DaemonSets of the cluster
that use ports on the nodes (kube2iam, kiam agents, any DaemonSet declaring a host port:
`rbacbridge.kube.port_users`) and rbacbridge's own kube2iam DaemonSet with its pods by owner UID
(`rbacbridge.kube.own_kube2iam`) say who uses each port (`_evidence`, listeners first). Every rule for
169.254.169.254 is classified (rbacbridge.iptables: a rule is rbacbridge's only when it points at this
node's host IP and no interceptor other than rbacbridge's own kube2iam uses its port), and the plan is

- setup:    UNCHANGED for the kept rule, DELETE for stale rules (first) and duplicates, LEFT_ALONE
            for other tools' rules (rules to other ports unless named in nodes.stale_ports /
            --stale-port), CONFLICT for a rule a running interceptor uses (then nothing else on that
            node changes; `--force` deletes it), and for a missing rule a note (kube2iam adds it once
            it runs) or, with add_missing, a CREATE;
- teardown: DELETE for every rule to this node's host IP and the configured port, and for rules to
            ports named stale that nothing uses; rules of running interceptors are left alone (`--force`
            deletes).

Changes go to the node as one guarded shell script (built from validated, quoted argv): before each
delete it lists the rules again and deletes by exact spec only if the rule is still there (a duplicate
only while another copy remains; a rule to a port named stale only while nothing listens on the port),
so an interrupted run re-plans and converges.

Nodes come from `nodes.hosts` / `--node`, else from the cluster (`rbacbridge.kube.cluster_nodes`).
The rule's host IP: `nodes.host_ip` / `--host-ip`, else the node's InternalIP, else the address the
SSH connection reached on the node (SSH_CONNECTION's server address). The interface:
`kube2iam.host_interface`, or for `auto` the network plugin's (`rbacbridge.kube.host_interface`)
when a cluster is configured, else the article's docker0.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from rbacbridge import iptables
from rbacbridge.errors import RbacbridgeError, UsageError
from rbacbridge.plan import CONFLICT, CREATE, DELETE, LEFT_ALONE, UNCHANGED, Execution, Plan, Step, execute_in_parallel

SYSTEM = "nodes"
KIND = "iptables-rule"
ARTICLE_INTERFACE = "docker0"
_NODE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,252})$")
_SESSIONS = "nodes.sessions"


class NodeError(RbacbridgeError):
    pass


@dataclass(frozen=True)
class NodeRef:
    name: str  # how reports name it (Kubernetes node name or the --node text)
    ssh_host: str  # address or ~/.ssh/config alias
    ssh_port: int | None = None
    internal_ip: str | None = None  # from the cluster


@dataclass
class NodeState:
    ref: NodeRef
    session: Any = None
    host_ip: str | None = None
    desired: iptables.Desired | None = None
    rules: list[iptables.ListedRule] = field(default_factory=list)
    classification: iptables.Classification | None = None
    error: str | None = None
    backend: str = ""  # the node's iptables backend (`iptables -V`): nf_tables, legacy, or unknown
    listeners: dict[int, str] | None = None  # port -> who listens (None: could not tell)
    hidden: list[str] = field(default_factory=list)  # metadata rules in the other backend (not seen, not changed)
    in_use: dict[int, str] | None = None  # port -> who uses it and is not rbacbridge's kube2iam (iptables.classify)
    unproven: dict[int, str] = field(default_factory=dict)  # configured port -> a listener nobody could attribute


# --- which nodes, and how to reach them --------------------------------------------------------


def check_node_name(value: str) -> str:
    if not isinstance(value, str) or not _NODE_NAME.fullmatch(value):
        raise UsageError(f"invalid node name {value!r}: letters, digits, '.', '_' and '-' only")
    return value


def via(ctx) -> str:
    """How scripts reach the nodes this run: "ssh" or "kubernetes" (rbacbridge.node_pods.resolve_via)."""
    from rbacbridge.node_pods import resolve_via

    return ctx.fact("nodes.via", lambda: resolve_via(ctx.config))


def node_refs(ctx) -> list[NodeRef]:
    def compute() -> list[NodeRef]:
        from rbacbridge.ssh import parse_host_port

        cfg = ctx.config
        if via(ctx) == "kubernetes":
            return _cluster_refs(ctx)
        if cfg.node_hosts:
            refs = []
            for text in cfg.node_hosts:
                host, port = parse_host_port(text)
                refs.append(NodeRef(name=text, ssh_host=check_node_name(host) if ":" not in host else host, ssh_port=port))
            return _unique(refs)
        try:
            from rbacbridge.kube import cluster_nodes  # only when no hosts are configured
        except ImportError:
            raise UsageError("no nodes: give --node HOST[:PORT] or nodes.hosts (cluster discovery is not available)") from None

        ctx.facts["nodes.from_cluster"] = True
        refs = []
        for node in cluster_nodes(ctx):
            name = check_node_name(node.name)
            host = getattr(node, "ssh_host", None) or node.internal_ip
            if not host:
                raise UsageError(f"node {name} has no address to SSH to (set nodes.hosts or --node)")
            ssh_host, port = parse_host_port(str(host))
            if ":" not in ssh_host:
                check_node_name(ssh_host)
            internal = node.internal_ip if iptables_ipv4(node.internal_ip) else None
            refs.append(NodeRef(name=name, ssh_host=ssh_host, ssh_port=port, internal_ip=internal))
        return _unique(refs)

    return ctx.fact("nodes.refs", compute)


def _cluster_refs(ctx) -> list[NodeRef]:
    """--via kubernetes: the cluster's nodes by name (nodes.hosts / --node, if given, name some of them)."""
    from rbacbridge.kube import cluster_nodes

    ctx.facts["nodes.from_cluster"] = True
    found = {node.name: node for node in cluster_nodes(ctx)}
    names = list(ctx.config.node_hosts) or list(found)
    unknown = [name for name in names if name not in found]
    if unknown:
        raise UsageError(f"--via kubernetes: no cluster node named {', '.join(unknown)} (--node / nodes.hosts name Kubernetes nodes here)")
    return _unique([NodeRef(name=check_node_name(name), ssh_host=found[name].internal_ip,
                            internal_ip=found[name].internal_ip if iptables_ipv4(found[name].internal_ip) else None)
                    for name in names])


def iptables_ipv4(value: str | None) -> bool:
    from rbacbridge.ssh import is_ipv4

    return is_ipv4(value)


def _unique(refs: list[NodeRef]) -> list[NodeRef]:
    seen, out = set(), []
    for ref in refs:
        if ref.name not in seen:
            seen.add(ref.name)
            out.append(ref)
    return out


def ssh_target(ctx, ref: NodeRef):
    from rbacbridge.ssh import SshTarget

    cfg = ctx.config
    return SshTarget(
        host=ref.ssh_host,
        port=ref.ssh_port or cfg.ssh_port,
        user=cfg.ssh_user,
        key_file=cfg.ssh_key,
        known_hosts=cfg.known_hosts,
        accept_new=cfg.accept_new_host_keys,
        ssh_config=cfg.ssh_config,
        connect_timeout=cfg.ssh_connect_timeout,
        command_timeout=cfg.ssh_command_timeout,
        label=ref.name,
    )


def preflight(ctx, refs: list[NodeRef] | None = None) -> None:
    """Check the SSH settings before any node is contacted (and, from the planner, before any other
    system is): a bad key, ssh config or known_hosts is bad input, exit 2, nothing changed.

    Without `refs`, nodes named in the config/flags are checked in full; nodes that will come from
    the cluster get the host-independent checks now and the full one in `inspect_all`.
    """
    from rbacbridge.ssh import check_settings
    from rbacbridge.ssh import preflight as check_target

    if via(ctx) == "kubernetes":
        if refs is not None:
            from rbacbridge.node_pods import prepare

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


def _cluster_configured(ctx) -> bool:
    return bool(ctx.facts.get("nodes.from_cluster") or ctx.config.kubeconfig or ctx.config.context)


def desired_interface(ctx) -> str:
    def compute() -> str:
        configured = ctx.config.host_interface
        if configured != "auto":
            return iptables.check_interface(configured)
        if _cluster_configured(ctx):
            try:
                from rbacbridge.kube import host_interface
            except ImportError:
                raise UsageError("kube2iam.host_interface is auto but the cluster cannot be asked: give --host-interface") from None

            iface, reason = host_interface(ctx)
            ctx.facts.setdefault("notes", []).append(f"iptables interface {iface}: {reason}")
            return iptables.check_interface(iface)
        ctx.facts.setdefault("notes", []).append(
            f"iptables interface {ARTICLE_INTERFACE}: kube2iam.host_interface is auto and no cluster is configured (the article's value)"
        )
        return ARTICLE_INTERFACE

    return ctx.fact("nodes.interface", compute)


# --- one connection per node, reused by every step ---------------------------------------------


def _sessions(ctx) -> dict[str, Any]:
    return ctx.gateway(_SESSIONS, dict)


def session_for(ctx, ref: NodeRef):
    sessions = _sessions(ctx)
    session = sessions.get(ref.name)
    if via(ctx) == "kubernetes":  # the same scripts, carried by pod exec (rbacbridge.node_pods)
        if session is None:
            from rbacbridge.node_pods import open_session

            session = sessions[ref.name] = open_session(ctx, ref)
        return session
    transport = session._client.get_transport() if session is not None else None
    if session is None or transport is None or not transport.is_active():
        from rbacbridge.ssh import connect

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


def list_rules(session) -> list[iptables.ListedRule]:
    return _parse_listing(session, *_run_listing(session))


def _run_listing(session) -> tuple[int, str, str]:
    return session.run(iptables.list_argv(), sudo=True)


def _parse_listing(session, rc: int, out: str, err: str) -> list[iptables.ListedRule]:
    if rc != 0:
        raise NodeError(f"{session.name}: listing the nat table failed: {_first_line(err) or f'exit {rc}'}")
    try:
        return iptables.parse(out)
    except iptables.IptablesOutputError as exc:
        raise NodeError(f"{session.name}: {exc}; nothing changed") from None


def _first_line(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.startswith("Could not chdir")]
    if any(l.startswith("sudo:") for l in lines):
        return next(l for l in lines if l.startswith("sudo:")) + " (the SSH user needs NOPASSWD sudo for iptables)"
    return lines[-1] if lines else ""


# --- what goes to a node: one exec to look, one guarded exec to change -------------------------

_MARK = "@@rbacbridge"
_LISTEN_ARGV = ["ss", "-Htlnp"]  # no sudo: listening sockets are visible to any user (names need root)


def _sudo(session) -> bool:
    return session.user != "root"


def _line(session, argv: list[str], sudo: bool) -> str:
    from rbacbridge.ssh import command_line

    return command_line(argv, sudo=sudo and _sudo(session))


def _sections(out: str) -> dict[str, tuple[str, int | None]]:
    """Split a script's stdout at `@@rbacbridge NAME` / `@@rbacbridge rc N` marker lines."""
    found: dict[str, tuple[str, int | None]] = {}
    name, lines = None, []
    for line in out.splitlines():
        if line.startswith(_MARK + " "):
            word = line[len(_MARK) + 1:].strip()
            if word.startswith("rc ") and name is not None:
                code = word[3:].strip()
                found[name] = ("\n".join(lines) + ("\n" if lines else ""), int(code) if code.isdigit() else None)
                name, lines = None, []
            else:
                name, lines = word, []
        elif name is not None:
            lines.append(line)
    return found


def _section_script(session, name: str, argv: list[str], sudo: bool, redirect: str = "") -> str:
    return f"echo '{_MARK} {name}'; {_line(session, argv, sudo)}{redirect}; echo \"{_MARK} rc $?\""


def _legacy_script(session) -> str:
    """The legacy backend's nat PREROUTING, only if a legacy nat table already exists (listing it with
    iptables-legacy would otherwise create one: a change). /proc/net/ip_tables_names is root-only."""
    listing = _line(session, ["iptables-legacy", *iptables.list_argv()[1:]], sudo=True)
    # read by the shell itself (a `grep` would be one more process on every node)
    has_nat = 'H=; { while read -r T; do [ "$T" = nat ] && H=1; done < /proc/net/ip_tables_names; } 2>/dev/null'
    return (f"echo '{_MARK} legacy'; {has_nat}; if [ -n \"$H\" ]; then {listing} 2>/dev/null; fi; "
            f"echo \"{_MARK} rc $?\"")


def look(session) -> tuple[str, list[iptables.ListedRule], dict[int, str] | None, list[str]]:
    """One exec: the iptables backend, the nat PREROUTING rules, the listening TCP ports, and (on an
    nf_tables node) metadata rules hiding in the legacy backend, which this node's iptables cannot see."""
    script = "; ".join([
        _section_script(session, "version", ["iptables", "-V"], sudo=True, redirect=" 2>&1"),
        _section_script(session, "list", iptables.list_argv(), sudo=True),
        _section_script(session, "listen", _LISTEN_ARGV, sudo=False, redirect=" 2>/dev/null"),
        _legacy_script(session),
    ])
    rc, out, err = session.run(["sh", "-c", script])
    sections = _sections(out)
    if "list" not in sections:
        raise NodeError(f"{session.name}: listing the nat table failed: {_first_line(err) or f'exit {rc}'}")
    listing, list_rc = sections["list"]
    rules = _parse_listing(session, list_rc if list_rc is not None else 1, listing, err)
    version, _ = sections.get("version", ("", None))
    listen_out, listen_rc = sections.get("listen", ("", None))
    listeners = iptables.parse_listeners(listen_out) if listen_rc == 0 else None
    backend = iptables.backend_of(version)
    hidden: list[str] = []
    legacy_out, legacy_rc = sections.get("legacy", ("", None))
    if backend == "nf_tables" and legacy_rc == 0 and legacy_out.strip():
        try:
            hidden = [r.text for r in iptables.parse(legacy_out) if r.metadata]
        except iptables.IptablesOutputError:
            hidden = []
    return backend, rules, listeners, hidden


@dataclass(frozen=True)
class Op:
    """One guarded change: delete `rule` while at least `need` copies are listed (and, for a dead-port
    rule, while nothing listens on `dead_port`); or add it (need 0) while no copy is listed."""

    rule: iptables.Kube2iamRule
    need: int  # 1: stale, 2: duplicate (one copy stays), 0: add
    dead_port: int | None = None


# Counting the copies of a rule in the listing $L with the shell's own pattern matching (no process):
# a copy is a whole line, so the listing is framed by newlines and each match consumes one framed line.
# (Newline comes from printf once per script: command lines never carry a raw newline.)
_COUNT_FN = ('NL=$(printf "\\n_"); NL=${NL%_}; '
             'rbb_count() { T="$NL$L$NL"; N=0; while :; do case "$T" in *"$NL$1$NL"*) '
             'T=${T#*"$NL$1$NL"}; T=$NL$T; N=$((N+1));; *) break;; esac; done; }')


def _op_script(session, index: int, op: Op) -> str:
    import shlex

    listing = _line(session, iptables.list_argv(), sudo=True)
    count = f"rbb_count {shlex.quote(op.rule.text())}"
    relist = f"L=$({listing}) || {{ echo '{_MARK} listfail {index}'; exit 3; }}; {count}"
    if op.need == 0:
        change, guard = _line(session, iptables.append_argv(op.rule), sudo=True), '[ "$N" -lt 1 ]'
    else:
        change, guard = _line(session, iptables.delete_argv(op.rule), sudo=True), f'[ "$N" -ge {op.need} ]'
        if op.dead_port is not None:
            probe = _line(session, ["ss", "-Htln", f"sport = :{int(op.dead_port)}"], sudo=False)
            guard += f' && [ -z "$({probe} 2>/dev/null)" ]'
    return (f"{relist}; if {guard}; then {change} || {{ echo '{_MARK} failed {index}'; exit 4; }}; "
            f"echo '{_MARK} changed {index}'; else echo '{_MARK} skipped {index}'; fi")


def run_ops(session, ops: list[Op], final_list: bool = False) -> tuple[list[bool], list[iptables.ListedRule] | None]:
    """One exec: every op in order, each re-listing first; optionally the rules afterwards.
    Returns which ops changed something, and the final rules. Raises NodeError on a failed op."""
    parts = [_op_script(session, i, op) for i, op in enumerate(ops)]
    if parts:
        parts.insert(0, _COUNT_FN)
    if final_list:
        parts.append(_section_script(session, "after", iptables.list_argv(), sudo=True))
    if not parts:
        return [], None
    rc, out, err = session.run(["sh", "-c", "; ".join(parts)])
    marks = [line[len(_MARK) + 1:].split() for line in out.splitlines() if line.startswith(_MARK + " ")]
    changed = [False] * len(ops)
    for mark in marks:
        if len(mark) == 2 and mark[1].isdigit() and int(mark[1]) < len(ops):
            verb, index = mark[0], int(mark[1])
            what = "adding" if ops[index].need == 0 else "deleting"
            if verb == "changed":
                changed[index] = True
            elif verb == "failed":
                raise NodeError(f"{session.name}: {what} {ops[index].rule.text()} failed: {_first_line(err) or 'exit 4'}")
            elif verb == "listfail":
                raise NodeError(f"{session.name}: listing the nat table failed: {_first_line(err) or 'exit 3'}")
    done = sum(1 for m in marks if m and m[0] in ("changed", "skipped"))
    if done < len(ops):
        raise NodeError(f"{session.name}: the change script stopped after {done} of {len(ops)} step(s): "
                        f"{_first_line(err) or f'exit {rc}'}")
    after = None
    if final_list:
        listing, list_rc = _sections(out).get("after", ("", None))
        after = _parse_listing(session, list_rc if list_rc is not None else 1, listing, err)
    return changed, after


_UNKNOWN = "unknown"  # nodes.own_kube2iam when the cluster could not be asked (403)


def stale_ports(ctx) -> dict[int, str]:
    """Ports the user names stale (nodes.stale_ports, --stale-port): port -> how it was named."""
    ports = tuple(getattr(ctx.config, "node_stale_ports", ()) or ())
    if ctx.config.kube2iam_port in ports:
        raise UsageError(f"invalid stale port {ctx.config.kube2iam_port} (--stale-port, nodes.stale_ports): it is kube2iam.port, "
                         "rbacbridge's current port; name only old ports")
    return {port: "named stale (nodes.stale_ports / --stale-port)" for port in ports}


def _evidence(ctx, state: NodeState, desired: iptables.Desired,
              teardown: bool) -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
    """Per port a rule to this node points at, listeners first: (in_use, moving, unproven) for iptables.classify.

    in_use: a port some DaemonSet other than rbacbridge's own declares (kube2iam's --app-port, a kiam
    agent's --port, a hostNetwork containerPort or hostPort), or where a process listens that is not
    rbacbridge's kube2iam pod on this node. A listener is rbacbridge's only when rbacbridge's DaemonSet
    (kube2iam.namespace/kube2iam, its labels) declares that port and a running pod whose controller is that
    DaemonSet's UID runs on this node (by node name or host IP). Without the cluster (or when it refuses
    to show that DaemonSet and its pods) a listener on the configured port is `unproven`, never ours.
    moving: rbacbridge's own DaemonSet's earlier port, which this setup moves off (remembered for the
    whole run, so the replan after the rollout still knows it)."""
    users = ctx.facts.get("nodes.port_users") or []
    own = ctx.facts.get("nodes.own_kube2iam")
    known = own is not _UNKNOWN and _cluster_configured(ctx)
    own = None if own is _UNKNOWN else own
    listeners = state.listeners
    own_pod = own.pod_on(state.ref.name, state.host_ip) if own is not None else None
    replacing = not teardown and bool(ctx.facts.get("nodes.setup_updates_kube2iam"))
    remembered = ctx.facts.setdefault("nodes.own_old_ports", {})
    in_use: dict[int, str] = {}
    moving: dict[int, str] = {}
    unproven: dict[int, str] = {}
    ports = {r.kube2iam.port for r in state.rules if r.kube2iam is not None and r.kube2iam.host_ip == desired.host_ip}
    for port in sorted(ports | {desired.port}):
        foreign = [ds for ds in users if not ds.managed and ds.uses(port)]
        ours = own is not None and own.port == port
        listener = listeners.get(port) if listeners is not None else None
        if foreign:
            in_use[port] = " and ".join(ds.describe() + ("" if ds.port is not None or not ds.tool else " (its port could not be read)")
                                        for ds in foreign)
            continue
        if port == desired.port:
            if listener is None and listeners is not None:
                continue  # nothing there yet: rbacbridge's by the configuration (this node's IP, its port)
            if known and ours and own_pod is not None:
                continue  # rbacbridge's own kube2iam pod on this node listens there
            if listener is None:  # `ss` gave no answer: cannot tell who (if anyone) listens
                unproven[port] = f"whatever may listen on {desired.host_ip}:{port} (`ss` gave no answer)"
                continue
            what = listener
            if known:
                why = (f"no running pod of rbacbridge's kube2iam DaemonSet {own.where} on this node" if own is not None and ours
                       else f"rbacbridge's kube2iam DaemonSet {own.where} uses port {own.port}" if own is not None
                       else "rbacbridge's kube2iam DaemonSet does not exist")
                in_use[port] = f"{what} ({why}: not rbacbridge's)"
            else:
                unproven[port] = what
            continue
        if ours or port in remembered:
            ours_listening = ours and own_pod is not None
            if listener is not None and not ours_listening:
                in_use[port] = f"{listener} (not a pod of rbacbridge's kube2iam DaemonSet on this node)"
            elif listeners is None and not ours_listening:
                in_use[port] = f"whatever may listen on {desired.host_ip}:{port} (cannot tell: `ss` gave no answer)"
            elif replacing:
                if port not in remembered:
                    remembered[port] = (f"rbacbridge's kube2iam DaemonSet {own.where} moves from port {port} "
                                        f"to {desired.port} in this setup")
                moving[port] = remembered[port]
            elif ours:
                in_use[port] = f"rbacbridge DaemonSet {own.where} (--app-port {port})"
            continue
        if listener:
            in_use[port] = listener
        elif listeners is None:
            in_use[port] = f"whatever may listen on {desired.host_ip}:{port} (cannot tell: `ss` gave no answer)"
    return in_use, moving, unproven


def inspect(ctx, ref: NodeRef, teardown: bool) -> NodeState:
    state = NodeState(ref)
    try:
        state.session = session_for(ctx, ref)
        state.host_ip = ctx.config.host_ip or ref.internal_ip or state.session.peer_address()
        if not iptables_ipv4(state.host_ip):
            raise NodeError(f"{ref.name}: cannot tell the node's IPv4 address (got {state.host_ip!r}); use --host-ip")
        interface = None if teardown else desired_interface(ctx)
        state.desired = iptables.Desired(interface, state.host_ip, ctx.config.kube2iam_port)
        ctx.reporter.progress(f"{ref.name}: listing nat PREROUTING")
        state.backend, state.rules, state.listeners, state.hidden = look(state.session)
        state.in_use, moving, state.unproven = _evidence(ctx, state, state.desired, teardown)
        state.classification = iptables.classify(state.rules, state.desired, teardown=teardown, in_use=state.in_use,
                                                  moving=moving, force=ctx.force, stale_ports=stale_ports(ctx),
                                                  unproven=state.unproven)
    except UsageError:
        raise
    except RbacbridgeError as exc:
        state.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - one node's surprise must not stop the others
        state.error = f"{ref.name}: {type(exc).__name__}: {exc}"
    return state


def _read_daemonsets(ctx) -> None:
    """What the cluster says about ports (fresh on every plan: setup's replan sees the new port): every
    DaemonSet that uses ports on the nodes, and rbacbridge's own kube2iam DaemonSet with its pods (by UID)."""
    ctx.facts["nodes.port_users"] = []
    ctx.facts["nodes.own_kube2iam"] = _UNKNOWN
    if not _cluster_configured(ctx):
        return
    try:
        from rbacbridge import kube
    except ImportError:  # pragma: no cover - the kubernetes client is a dependency
        raise UsageError("a cluster is configured but cannot be asked for its kube2iam DaemonSets") from None
    ctx.facts["nodes.port_users"] = kube.port_users(ctx)
    try:
        ctx.facts["nodes.own_kube2iam"] = kube.own_kube2iam(ctx)
    except kube.KubeApiError as exc:
        if exc.status != 403:
            raise
        _note(ctx, f"cannot read rbacbridge's kube2iam DaemonSet and its pods in {ctx.config.kube2iam_namespace} (403): a "
                   "process listening on kube2iam's port cannot be proven rbacbridge's, so rules to it are left alone "
                   "except duplicates")


def _note(ctx, text: str) -> None:
    notes = ctx.facts.setdefault("notes", [])
    if text not in notes:
        notes.append(text)


def inspect_all(ctx, teardown: bool) -> list[NodeState]:
    refs = node_refs(ctx)
    if not refs:
        return []
    stale_ports(ctx)  # bad input: one line, exit 2, before any node is contacted
    preflight(ctx, refs)  # before the first connection and its progress line
    if not teardown:
        desired_interface(ctx)  # once, before the threads
    _read_daemonsets(ctx)
    workers = max(1, min(ctx.config.node_parallelism, len(refs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="node") as pool:
        states = list(pool.map(lambda ref: inspect(ctx, ref, teardown), refs))
    ctx.facts["nodes.states"] = states
    return states


# --- steps -------------------------------------------------------------------------------------


@dataclass
class NodePlan:
    steps: list[Step]
    ops: list[tuple[Step, Op]]  # the changes, in order (stale before duplicates, then the add)
    held_back: int = 0  # changes not planned because of a conflict on this node


def node_plan(ctx, state: NodeState, teardown: bool) -> NodePlan:
    if state.error or state.classification is None:
        return NodePlan([], [])
    node, session = state.ref.name, state.session
    c = state.classification
    steps: list[Step] = []
    ops: list[tuple[Step, Op]] = []

    def details(item: iptables.Classified, verdict: str) -> dict[str, Any]:
        out = {"node": node, "rule": item.rule.text, "position": item.rule.position, "verdict": verdict}
        if item.used_by:
            out["used_by"] = item.used_by
        if item.forced:
            out["force"] = True
        if state.backend:
            out["backend"] = state.backend
        return out

    for item in c.of(iptables.KEEP):
        steps.append(Step(SYSTEM, UNCHANGED, KIND, node, f"keep on {node}: {item.rule.text}", item.reason, details=details(item, iptables.KEEP)))
    for item in c.of(iptables.FOREIGN):
        steps.append(Step(SYSTEM, LEFT_ALONE, KIND, node, f"leave alone on {node}: {item.rule.text}", item.reason, details=details(item, iptables.FOREIGN)))
    for item in c.conflicts:
        steps.append(Step(SYSTEM, CONFLICT, KIND, node, f"conflict on {node}: {item.rule.text}", item.reason,
                          details=details(item, iptables.CONFLICT)))
    if c.port_conflict and not c.conflicts:
        # no rule points at the configured port, but another interceptor uses it: rbacbridge's rule would send
        # the pods to it, and rbacbridge's kube2iam cannot listen there
        rule = iptables.Kube2iamRule.of(c.desired)
        steps.append(Step(SYSTEM, CONFLICT, KIND, node, f"conflict on {node}: port {rule.port} (kube2iam.port) is in use",
                          f"port {rule.port} is used by {c.port_conflict}, not rbacbridge's kube2iam: rbacbridge's rule "
                          f"({rule.text()}) would send the pods to it; nothing on this node changes until it is resolved",
                          details={"node": node, "rule": rule.text(), "verdict": iptables.CONFLICT,
                                   "used_by": c.port_conflict}))
    # Stale rules go first: deleting a duplicate removes the *first* identical copy, so a stale rule
    # sitting between copies would otherwise come first for a moment.
    for verdict in (iptables.STALE, iptables.DUPLICATE):
        for item in c.of(verdict):
            shape = item.rule.kube2iam
            ours = state.desired is not None and shape.port == state.desired.port
            what = "stale" if verdict == iptables.STALE else "duplicate"
            if item.forced:
                what = "in-use (--force)"
            elif teardown and ours:
                what = "rbacbridge's"
            dead = shape.port if (verdict == iptables.STALE and not item.forced and state.desired is not None
                                  and shape.port != state.desired.port) else None
            op = Op(shape, 2 if verdict == iptables.DUPLICATE else 1, dead)
            step = Step(SYSTEM, DELETE, KIND, node, f"delete {what} rule on {node}: {item.rule.text}", item.reason,
                        run=_runner(session, op), details=details(item, "kube2iam" if teardown and ours else verdict))
            ops.append((step, op))
    if not teardown and c.missing:
        rule = iptables.Kube2iamRule.of(c.desired)
        if ctx.config.add_missing:
            op = Op(rule, 0)
            step = Step(SYSTEM, CREATE, KIND, node, f"add on {node}: {rule.text()}", "missing; add_missing is on",
                        run=_runner(session, op), details={"node": node, "rule": rule.text(), "verdict": "missing"})
            ops.append((step, op))
        elif not c.port_conflict:
            ctx.facts.setdefault("notes", []).append(
                f"{node}: kube2iam's rule is missing ({rule.text()}); kube2iam adds it once it runs there, --add-missing adds it now"
            )
    held_back = 0
    if c.conflicts or c.port_conflict:
        # Nothing on a node with a conflict changes until the user resolves it.
        held_back, ops = len(ops), []
        if held_back:
            ctx.facts.setdefault("notes", []).append(
                f"{node}: {held_back} change(s) held back until the conflict on this node is resolved (or --force)")
    return NodePlan(steps + [step for step, _ in ops], ops, held_back)


def steps_for(ctx, state: NodeState, teardown: bool) -> list[Step]:
    return node_plan(ctx, state, teardown).steps


def _runner(session, op: Op) -> Callable[[], bool]:
    """A single step on its own (setup/teardown through the planner): one guarded exec."""
    def run() -> bool:
        changed, _ = run_ops(session, [op])
        return changed[0]

    return run


def _failed_notes(ctx, states: list[NodeState]) -> None:
    failed = [s for s in states if s.error]
    ctx.facts["nodes.failed"] = [s.error for s in failed]
    for state in failed:
        ctx.facts.setdefault("notes", []).append(f"node failed: {state.error}")


def plan_setup(ctx) -> list[Step]:
    # In a setup that also applies the Kubernetes part, rbacbridge's own DaemonSet moves to the
    # configured port: rules on its old port are stale even while the old pods still listen.
    ctx.facts["nodes.setup_updates_kube2iam"] = "kube" in ctx.parts
    ctx.facts["nodes.kube2iam_changing"] = "kube" in ctx.parts  # --via kubernetes: not in kube2iam's own pods
    try:
        states = inspect_all(ctx, teardown=False)
    finally:
        ctx.facts.pop("nodes.setup_updates_kube2iam", None)
    _failed_notes(ctx, states)
    _backend_notes(ctx, states)
    return [step for state in states for step in steps_for(ctx, state, teardown=False)]


def plan_teardown(ctx) -> list[Step]:
    ctx.facts["nodes.kube2iam_changing"] = "kube" in ctx.parts  # --via kubernetes: its pods go before these steps run
    states = inspect_all(ctx, teardown=True)
    _failed_notes(ctx, states)
    _backend_notes(ctx, states)
    return [step for state in states for step in steps_for(ctx, state, teardown=True)]


def _backend_notes(ctx, states: list[NodeState]) -> None:
    by_backend: dict[str, list[str]] = {}
    for state in states:
        if not state.error:
            by_backend.setdefault(state.backend or "unknown", []).append(state.ref.name)
    notes = ctx.facts.setdefault("notes", [])
    for node, where in sorted((ctx.facts.get("nodes.via_pods") or {}).items()):
        text = f"{node}: reached through Kubernetes, exec in {where}"
        if text not in notes:
            notes.append(text)
    for backend, names in sorted(by_backend.items()):
        text = f"iptables backend {backend} (`iptables -V`) on {', '.join(names)}"
        if text not in notes:
            notes.append(text)
    for state in states:
        if state.hidden:
            text = (f"{state.ref.name}: the legacy iptables backend also holds {len(state.hidden)} rule(s) for "
                    f"169.254.169.254, which this node's iptables ({state.backend}) neither lists nor changes: "
                    + "; ".join(state.hidden))
            if text not in notes:
                notes.append(text)


def execute(ctx, steps: list[Step]) -> Execution:
    """Nodes are independent: each node's steps run in order, the nodes side by side (bounded)."""
    return execute_in_parallel(steps, lambda step: step.name, ctx.config.node_parallelism,
                               ctx.reporter.step_started, ctx.reporter.step_done)


def _after(ctx) -> None:
    failed = ctx.facts.get("nodes.failed") or []
    close_sessions(ctx)
    if failed:
        raise NodeError(f"{len(failed)} node(s) failed (the others were done): " + "; ".join(failed))


def after_setup(ctx) -> None:
    _after(ctx)


def after_teardown(ctx) -> None:
    _after(ctx)


# --- the `rbacbridge iptables status|fix|remove` engine ---------------------------------------


@dataclass
class NodeReport:
    node: str
    address: str
    rule: str = ""  # the desired rule, or "" for remove
    kept: int = 0
    deleted: int = 0
    to_delete: int = 0  # planned deletions (held back ones not counted)
    missing: str = "-"  # "-", "yes", "added"
    left_alone: int = 0
    conflicts: list[str] = field(default_factory=list)  # "rule: reason" of each conflict (node left unchanged)
    backend: str = ""  # iptables backend used on the node (`iptables -V`)
    other_backend_rules: list[str] = field(default_factory=list)  # metadata rules in the legacy backend (unseen)
    error: str | None = None
    rules_before: list[str] = field(default_factory=list)
    rules_after: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class IptablesResult:
    command: str
    plan: Plan
    reports: list[NodeReport]
    applied: bool

    @property
    def ok(self) -> bool:
        return all(r.error is None for r in self.reports)

    @property
    def conflicted(self) -> list[NodeReport]:
        return [r for r in self.reports if r.conflicts]

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "ok": self.ok, "applied": self.applied,
                "plan": self.plan.to_dict(), "nodes": [r.to_dict() for r in self.reports]}


def _address(state: NodeState) -> str:
    return state.ref.ssh_host + (f":{state.ref.ssh_port}" if state.ref.ssh_port else "")


def _report(state: NodeState, teardown: bool, planned: NodePlan) -> NodeReport:
    report = NodeReport(state.ref.name, _address(state), error=state.error, backend=state.backend,
                        other_backend_rules=list(state.hidden))
    if state.desired is not None and not teardown:
        report.rule = iptables.Kube2iamRule.of(state.desired).text()
    c = state.classification
    if c is not None:
        report.rules_before = [r.text for r in state.rules if r.metadata]
        report.kept = len(c.of(iptables.KEEP))
        report.left_alone = len(c.of(iptables.FOREIGN))
        report.conflicts = [f"{item.rule.text}: {item.reason}" for item in c.conflicts]
        if c.port_conflict and not c.conflicts:
            report.conflicts.append(f"port {state.desired.port} (kube2iam.port) is used by {c.port_conflict}")
        report.to_delete = sum(1 for _, op in planned.ops if op.need)
        report.missing = "yes" if (not teardown and c.missing) else "-"
        report.rules_after = list(report.rules_before)
    return report


def run_iptables(
    ctx,
    command: str,
    show_plan: Callable[[Plan], None] | None = None,
    confirm: Callable[[Plan], bool] | None = None,
    dry_run: bool = False,
) -> IptablesResult:
    """status: report only. fix: keep one rule per node. remove: delete every rbacbridge rule.

    Nodes are inspected and changed in parallel (bounded pool), one connection each: one exec to look,
    one guarded exec that changes and lists the result. A node that fails is reported and does not stop
    the others; a node with a conflict is left unchanged (the others are still done).
    """
    if command not in ("status", "fix", "remove"):
        raise UsageError(f"unknown iptables command {command!r}")
    teardown = command == "remove"
    try:
        states = inspect_all(ctx, teardown=teardown)
        if not states:
            raise UsageError("no nodes: give --node HOST[:PORT], nodes.hosts in the config, or a cluster (--kubeconfig)")
        per_node = {s.ref.name: node_plan(ctx, s, teardown) for s in states}
        _backend_notes(ctx, states)
        plan = Plan([step for s in states for step in per_node[s.ref.name].steps], list(ctx.facts.get("notes", [])))
        plan.notes.extend(f"node failed: {s.error}" for s in states if s.error)
        reports = {s.ref.name: _report(s, teardown, per_node[s.ref.name]) for s in states}
        if command != "status" and show_plan is not None:
            show_plan(plan)
        if command == "status" or dry_run or not plan.changes or (confirm is not None and not confirm(plan)):
            return IptablesResult(command, plan, [reports[s.ref.name] for s in states], applied=False)

        def apply(state: NodeState) -> None:
            report = reports[state.ref.name]
            ops = per_node[state.ref.name].ops
            if state.error or not ops:
                return
            try:
                for step, _ in ops:
                    ctx.reporter.step_started(step)
                changed, after = run_ops(state.session, [op for _, op in ops], final_list=True)
                for (step, op), did in zip(ops, changed):
                    if did and op.need:
                        report.deleted += 1
                    if did and not op.need:
                        report.missing = "added"
                    ctx.reporter.step_done(step)
                after = after or []
                report.rules_after = [r.text for r in after if r.metadata]
                # Only rbacbridge's own rules to the configured port can be left to delete here (other ports: the
                # run re-checked each named one; a listener that started meanwhile keeps its rule).
                final = iptables.classify(after, state.desired, teardown=teardown, in_use=state.in_use or {},
                                          unproven=state.unproven)
                report.kept = len(final.of(iptables.KEEP))
                if final.to_delete:
                    report.error = f"{state.ref.name}: {len(final.to_delete)} rule(s) still to delete after the run (changed meanwhile?)"
            except RbacbridgeError as exc:
                report.error = str(exc)
            except Exception as exc:  # noqa: BLE001
                report.error = f"{state.ref.name}: {type(exc).__name__}: {exc}"

        workers = max(1, min(ctx.config.node_parallelism, len(states)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="node") as pool:
            list(pool.map(apply, states))
        return IptablesResult(command, plan, [reports[s.ref.name] for s in states], applied=True)
    finally:
        close_sessions(ctx)
