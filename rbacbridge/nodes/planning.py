"""Planning the nodes part: inspect every node (in parallel, one session each), classify its rules,
and turn that into steps.

Per node, in one exec (rbacbridge.nodes.scripts.look): the iptables backend, nat PREROUTING and the
listeners. Every rule for 169.254.169.254 is classified (rbacbridge.nodes.verdicts, with the port
evidence of rbacbridge.nodes.evidence), and the plan is

- setup:    UNCHANGED for the kept rule, DELETE for stale rules (first) and duplicates, LEFT_ALONE
            for other tools' rules (rules to other ports unless named in nodes.stale_ports /
            --stale-port), CONFLICT for a rule a running interceptor uses (then nothing else on that
            node changes; `--force` deletes it), and for a missing rule a note (kube2iam adds it once
            it runs) or, with add_missing, a CREATE;
- teardown: DELETE for every rule to this node's host IP and the configured port, and for rules to
            ports named stale that nothing uses; rules of running interceptors are left alone (`--force`
            deletes).

The rule's host IP: `nodes.host_ip` / `--host-ip`, else the node's InternalIP, else the address the
session reached on the node (SSH_CONNECTION's server address, or the pod's host IP).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from rbacbridge.errors import RbacbridgeError, UsageError
from rbacbridge.nodes import verdicts
from rbacbridge.nodes.evidence import desired_interface, port_evidence, read_daemonsets, stale_ports
from rbacbridge.nodes.rules import Desired, Kube2iamRule, ListedRule
from rbacbridge.nodes.scripts import Op, look, run_ops
from rbacbridge.nodes.session import NodeError
from rbacbridge.nodes.targets import NodeRef, iptables_ipv4, node_refs
from rbacbridge.nodes.transport import close_sessions, preflight, session_for
from rbacbridge.plan import CONFLICT, CREATE, DELETE, LEFT_ALONE, UNCHANGED, Execution, Step, execute_in_parallel

SYSTEM = "nodes"
KIND = "iptables-rule"


@dataclass
class NodeState:
    ref: NodeRef
    session: Any = None
    host_ip: str | None = None
    desired: Desired | None = None
    rules: list[ListedRule] = field(default_factory=list)
    classification: verdicts.Classification | None = None
    error: str | None = None
    backend: str = ""  # the node's iptables backend (`iptables -V`): nf_tables, legacy, or unknown
    listeners: dict[int, str] | None = None  # port -> who listens (None: could not tell)
    hidden: list[str] = field(default_factory=list)  # metadata rules in the other backend (not seen, not changed)
    in_use: dict[int, str] | None = None  # port -> who uses it and is not rbacbridge's kube2iam (verdicts.classify)
    unproven: dict[int, str] = field(default_factory=dict)  # configured port -> a listener nobody could attribute


def inspect(ctx, ref: NodeRef, teardown: bool) -> NodeState:
    state = NodeState(ref)
    try:
        state.session = session_for(ctx, ref)
        state.host_ip = ctx.config.host_ip or ref.internal_ip or state.session.peer_address()
        if not iptables_ipv4(state.host_ip):
            raise NodeError(f"{ref.name}: cannot tell the node's IPv4 address (got {state.host_ip!r}); use --host-ip")
        interface = None if teardown else desired_interface(ctx)
        state.desired = Desired(interface, state.host_ip, ctx.config.kube2iam_port)
        ctx.reporter.progress(f"{ref.name}: listing nat PREROUTING")
        state.backend, state.rules, state.listeners, state.hidden = look(state.session)
        state.in_use, moving, state.unproven = port_evidence(ctx, state, state.desired, teardown)
        state.classification = verdicts.classify(state.rules, state.desired, teardown=teardown, in_use=state.in_use,
                                                  moving=moving, force=ctx.force, stale_ports=stale_ports(ctx),
                                                  unproven=state.unproven)
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
    stale_ports(ctx)  # bad input: one line, exit 2, before any node is contacted
    preflight(ctx, refs)  # before the first connection and its progress line
    if not teardown:
        desired_interface(ctx)  # once, before the threads
    read_daemonsets(ctx)
    workers = max(1, min(ctx.config.node_parallelism, len(refs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="node") as pool:
        states = list(pool.map(lambda ref: inspect(ctx, ref, teardown), refs))
    ctx.facts["nodes.states"] = states
    return states


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

    def details(item: verdicts.Classified, verdict: str) -> dict[str, Any]:
        out = {"node": node, "rule": item.rule.text, "position": item.rule.position, "verdict": verdict}
        if item.used_by:
            out["used_by"] = item.used_by
        if item.forced:
            out["force"] = True
        if state.backend:
            out["backend"] = state.backend
        return out

    for item in c.of(verdicts.KEEP):
        steps.append(Step(SYSTEM, UNCHANGED, KIND, node, f"keep on {node}: {item.rule.text}", item.reason, details=details(item, verdicts.KEEP)))
    for item in c.of(verdicts.FOREIGN):
        steps.append(Step(SYSTEM, LEFT_ALONE, KIND, node, f"leave alone on {node}: {item.rule.text}", item.reason, details=details(item, verdicts.FOREIGN)))
    for item in c.conflicts:
        steps.append(Step(SYSTEM, CONFLICT, KIND, node, f"conflict on {node}: {item.rule.text}", item.reason,
                          details=details(item, verdicts.CONFLICT)))
    if c.port_conflict and not c.conflicts:
        # no rule points at the configured port, but another interceptor uses it: rbacbridge's rule would send
        # the pods to it, and rbacbridge's kube2iam cannot listen there
        rule = Kube2iamRule.of(c.desired)
        steps.append(Step(SYSTEM, CONFLICT, KIND, node, f"conflict on {node}: port {rule.port} (kube2iam.port) is in use",
                          f"port {rule.port} is used by {c.port_conflict}, not rbacbridge's kube2iam: rbacbridge's rule "
                          f"({rule.text()}) would send the pods to it; nothing on this node changes until it is resolved",
                          details={"node": node, "rule": rule.text(), "verdict": verdicts.CONFLICT,
                                   "used_by": c.port_conflict}))
    # Stale rules go first: deleting a duplicate removes the *first* identical copy, so a stale rule
    # sitting between copies would otherwise come first for a moment.
    for verdict in (verdicts.STALE, verdicts.DUPLICATE):
        for item in c.of(verdict):
            shape = item.rule.kube2iam
            ours = state.desired is not None and shape.port == state.desired.port
            what = "stale" if verdict == verdicts.STALE else "duplicate"
            if item.forced:
                what = "in-use (--force)"
            elif teardown and ours:
                what = "rbacbridge's"
            dead = shape.port if (verdict == verdicts.STALE and not item.forced and state.desired is not None
                                  and shape.port != state.desired.port) else None
            op = Op(shape, 2 if verdict == verdicts.DUPLICATE else 1, dead)
            step = Step(SYSTEM, DELETE, KIND, node, f"delete {what} rule on {node}: {item.rule.text}", item.reason,
                        run=_runner(session, op), details=details(item, "kube2iam" if teardown and ours else verdict))
            ops.append((step, op))
    if not teardown and c.missing:
        rule = Kube2iamRule.of(c.desired)
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
    backend_notes(ctx, states)
    return [step for state in states for step in steps_for(ctx, state, teardown=False)]


def plan_teardown(ctx) -> list[Step]:
    ctx.facts["nodes.kube2iam_changing"] = "kube" in ctx.parts  # --via kubernetes: its pods go before these steps run
    states = inspect_all(ctx, teardown=True)
    _failed_notes(ctx, states)
    backend_notes(ctx, states)
    return [step for state in states for step in steps_for(ctx, state, teardown=True)]


def backend_notes(ctx, states: list[NodeState]) -> None:
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
