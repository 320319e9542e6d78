"""The nodes part: exactly one kube2iam iptables rule per node (article step 14), none after teardown.

Per node, over one SSH connection: list `iptables -t nat -S PREROUTING`, classify every rule for
169.254.169.254 (rbacbridge.iptables), and plan

- setup:    UNCHANGED for the kept rule, DELETE for stale rules (first) and duplicates, LEFT_ALONE
            for other tools' rules, and for a missing rule a note (kube2iam adds it once it runs)
            or, with add_missing, a CREATE;
- teardown: DELETE for every kube2iam-shaped rule.

Each step's `run` lists the rules again and deletes by exact spec only if the rule is still there
(a duplicate only while another copy remains), so an interrupted run re-plans and converges.

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
from rbacbridge.plan import CREATE, DELETE, LEFT_ALONE, UNCHANGED, Execution, Plan, Step, execute_in_parallel

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


# --- which nodes, and how to reach them --------------------------------------------------------


def check_node_name(value: str) -> str:
    if not isinstance(value, str) or not _NODE_NAME.fullmatch(value):
        raise UsageError(f"invalid node name {value!r}: letters, digits, '.', '_' and '-' only")
    return value


def node_refs(ctx) -> list[NodeRef]:
    def compute() -> list[NodeRef]:
        from rbacbridge.ssh import parse_host_port

        cfg = ctx.config
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
    rc, out, err = session.run(iptables.list_argv(), sudo=True)
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


def inspect(ctx, ref: NodeRef, teardown: bool) -> NodeState:
    state = NodeState(ref)
    try:
        state.session = session_for(ctx, ref)
        if not teardown:
            state.host_ip = ctx.config.host_ip or ref.internal_ip or state.session.peer_address()
            if not iptables_ipv4(state.host_ip):
                raise NodeError(f"{ref.name}: cannot tell the node's IPv4 address (got {state.host_ip!r}); use --host-ip")
            state.desired = iptables.Desired(desired_interface(ctx), state.host_ip, ctx.config.kube2iam_port)
        ctx.reporter.progress(f"{ref.name}: listing nat PREROUTING")
        state.rules = list_rules(state.session)
        state.classification = iptables.classify(state.rules, state.desired)
    except UsageError:
        raise
    except RbacbridgeError as exc:
        state.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - one node's surprise must not stop the others
        state.error = f"{ref.name}: {type(exc).__name__}: {exc}"
    return state


def inspect_all(ctx, teardown: bool) -> list[NodeState]:
    refs = node_refs(ctx)
    if not refs:
        return []
    preflight(ctx, refs)  # before the first connection and its progress line
    if not teardown:
        desired_interface(ctx)  # once, before the threads
    workers = max(1, min(ctx.config.node_parallelism, len(refs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="node") as pool:
        states = list(pool.map(lambda ref: inspect(ctx, ref, teardown), refs))
    ctx.facts["nodes.states"] = states
    return states


# --- steps -------------------------------------------------------------------------------------


def steps_for(ctx, state: NodeState, teardown: bool) -> list[Step]:
    if state.error or state.classification is None:
        return []
    node, session = state.ref.name, state.session
    c = state.classification
    steps: list[Step] = []
    details = lambda item, verdict: {"node": node, "rule": item.rule.text, "position": item.rule.position, "verdict": verdict}  # noqa: E731
    for item in c.of(iptables.KEEP):
        steps.append(Step(SYSTEM, UNCHANGED, KIND, node, f"keep on {node}: {item.rule.text}", item.reason, details=details(item, iptables.KEEP)))
    for item in c.of(iptables.FOREIGN):
        steps.append(Step(SYSTEM, LEFT_ALONE, KIND, node, f"leave alone on {node}: {item.rule.text}", item.reason, details=details(item, iptables.FOREIGN)))
    # Stale rules go first: deleting a duplicate removes the *first* identical copy, so a stale rule
    # sitting between copies would otherwise come first for a moment.
    for verdict in (iptables.STALE, iptables.DUPLICATE):
        for item in c.of(verdict):
            what = "stale" if verdict == iptables.STALE else "duplicate"
            if teardown:
                what = "kube2iam"
            steps.append(Step(
                SYSTEM, DELETE, KIND, node, f"delete {what} rule on {node}: {item.rule.text}", item.reason,
                run=_deleter(session, item.rule.kube2iam, keep_one=verdict == iptables.DUPLICATE),
                details=details(item, verdict if not teardown else "kube2iam"),
            ))
    if not teardown and c.missing:
        rule = iptables.Kube2iamRule.of(c.desired)
        if ctx.config.add_missing:
            steps.append(Step(SYSTEM, CREATE, KIND, node, f"add on {node}: {rule.text()}", "missing; add_missing is on",
                              run=_adder(session, rule), details={"node": node, "rule": rule.text(), "verdict": "missing"}))
        else:
            ctx.facts.setdefault("notes", []).append(
                f"{node}: kube2iam's rule is missing ({rule.text()}); kube2iam adds it once it runs there, --add-missing adds it now"
            )
    return steps


def _deleter(session, rule: iptables.Kube2iamRule, keep_one: bool) -> Callable[[], bool]:
    def run() -> bool:
        present = iptables.count(list_rules(session), rule)
        if present < (2 if keep_one else 1):
            return False  # already gone (an earlier, interrupted run)
        rc, _, err = session.run(iptables.delete_argv(rule), sudo=True)
        if rc != 0:
            raise NodeError(f"{session.name}: deleting {rule.text()} failed: {_first_line(err) or f'exit {rc}'}")
        return True

    return run


def _adder(session, rule: iptables.Kube2iamRule) -> Callable[[], bool]:
    def run() -> bool:
        if iptables.count(list_rules(session), rule):
            return False
        rc, _, err = session.run(iptables.append_argv(rule), sudo=True)
        if rc != 0:
            raise NodeError(f"{session.name}: adding {rule.text()} failed: {_first_line(err) or f'exit {rc}'}")
        return True

    return run


def _failed_notes(ctx, states: list[NodeState]) -> None:
    failed = [s for s in states if s.error]
    ctx.facts["nodes.failed"] = [s.error for s in failed]
    for state in failed:
        ctx.facts.setdefault("notes", []).append(f"node failed: {state.error}")


def plan_setup(ctx) -> list[Step]:
    states = inspect_all(ctx, teardown=False)
    _failed_notes(ctx, states)
    return [step for state in states for step in steps_for(ctx, state, teardown=False)]


def plan_teardown(ctx) -> list[Step]:
    states = inspect_all(ctx, teardown=True)
    _failed_notes(ctx, states)
    return [step for state in states for step in steps_for(ctx, state, teardown=True)]


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
    missing: str = "-"  # "-", "yes", "added"
    left_alone: int = 0
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

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "ok": self.ok, "applied": self.applied,
                "plan": self.plan.to_dict(), "nodes": [r.to_dict() for r in self.reports]}


def _address(state: NodeState) -> str:
    return state.ref.ssh_host + (f":{state.ref.ssh_port}" if state.ref.ssh_port else "")


def _report(state: NodeState, teardown: bool) -> NodeReport:
    report = NodeReport(state.ref.name, _address(state), error=state.error)
    if state.desired is not None:
        report.rule = iptables.Kube2iamRule.of(state.desired).text()
    c = state.classification
    if c is not None:
        report.rules_before = [r.text for r in state.rules if r.metadata]
        report.kept = len(c.of(iptables.KEEP))
        report.left_alone = len(c.of(iptables.FOREIGN))
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
    """status: report only. fix: keep one rule per node. remove: delete every kube2iam rule.

    Nodes are inspected and changed in parallel (bounded pool), one connection each; a node that
    fails is reported and does not stop the others.
    """
    if command not in ("status", "fix", "remove"):
        raise UsageError(f"unknown iptables command {command!r}")
    teardown = command == "remove"
    try:
        states = inspect_all(ctx, teardown=teardown)
        if not states:
            raise UsageError("no nodes: give --node HOST[:PORT], nodes.hosts in the config, or a cluster (--kubeconfig)")
        per_node = {s.ref.name: steps_for(ctx, s, teardown) for s in states}
        plan = Plan([step for s in states for step in per_node[s.ref.name]], list(ctx.facts.get("notes", [])))
        plan.notes.extend(f"node failed: {s.error}" for s in states if s.error)
        reports = {s.ref.name: _report(s, teardown) for s in states}
        if command != "status" and show_plan is not None:
            show_plan(plan)
        if command == "status" or dry_run or not plan.changes or (confirm is not None and not confirm(plan)):
            return IptablesResult(command, plan, [reports[s.ref.name] for s in states], applied=False)

        def apply(state: NodeState) -> None:
            report = reports[state.ref.name]
            steps = [s for s in per_node[state.ref.name] if s.changes]
            if state.error or not steps:
                return
            try:
                for step in steps:
                    ctx.reporter.step_started(step)
                    changed = step.run()
                    if changed and step.action == DELETE:
                        report.deleted += 1
                    if changed and step.action == CREATE:
                        report.missing = "added"
                    ctx.reporter.step_done(step)
                after = list_rules(state.session)
                report.rules_after = [r.text for r in after if r.metadata]
                final = iptables.classify(after, state.desired)
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
