"""The engine behind `rbacbridge iptables status|fix|remove`: the same inspection and per-node plan as
setup/teardown (rbacbridge.nodes.planning), then each node's changes in one guarded exec, the nodes side
by side; a report per node (rules before and after, what was kept, deleted, left alone, in conflict).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from rbacbridge.errors import RbacbridgeError, UsageError
from rbacbridge.nodes import verdicts
from rbacbridge.nodes.planning import NodePlan, NodeState, backend_notes, inspect_all, node_plan
from rbacbridge.nodes.rules import Kube2iamRule
from rbacbridge.nodes.scripts import run_ops
from rbacbridge.nodes.transport import close_sessions
from rbacbridge.plan import Plan


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
        report.rule = Kube2iamRule.of(state.desired).text()
    c = state.classification
    if c is not None:
        report.rules_before = [r.text for r in state.rules if r.metadata]
        report.kept = len(c.of(verdicts.KEEP))
        report.left_alone = len(c.of(verdicts.FOREIGN))
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
        backend_notes(ctx, states)
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
                final = verdicts.classify(after, state.desired, teardown=teardown, in_use=state.in_use or {},
                                          unproven=state.unproven)
                report.kept = len(final.of(verdicts.KEEP))
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
