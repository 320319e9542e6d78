"""The one planner behind `plan`, `setup` and `teardown`.

Each outside system is a *part* (module `rbacbridge.<part>`) exposing:

    plan_setup(ctx) -> list[Step]       steps that bring live state to the desired state
    plan_teardown(ctx) -> list[Step]    steps that remove what rbacbridge owns, restoring what it replaced
    after_setup(ctx) -> None            optional: wait for the result (e.g. DaemonSet rollout)
    after_teardown(ctx) -> None         optional: wait until it is gone (e.g. kube2iam pods)
    execute(ctx, steps) -> Execution    optional: run its steps its own way (nodes: in parallel)

Planning only reads. Setup runs the parts in dependency order (AWS, then Kubernetes, then the
nodes' iptables, which kube2iam touches once it runs); teardown removes kube2iam before cleaning
the nodes, and the IAM roles last.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from rbacbridge.config import Config
from rbacbridge.errors import RbacbridgeError, UsageError
from rbacbridge.plan import Execution, Plan, Step, execute

PARTS = ("aws", "kube", "nodes")
SETUP_ORDER = ("aws", "kube", "nodes")
TEARDOWN_ORDER = ("kube", "nodes", "aws")


def parse_parts(text: str | None) -> tuple[str, ...]:
    if not text:
        return PARTS
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise UsageError(f"invalid --only {text!r}: choose from {', '.join(PARTS)} (comma-separated)")
    return parts


class Reporter:
    """Where progress goes. The CLI gives one that writes to stderr; tests may collect."""

    def progress(self, message: str) -> None:  # a slow thing is happening
        pass

    def step_started(self, step: Step) -> None:
        pass

    def step_done(self, step: Step) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def show_plan(self, plan: Plan, title: str) -> None:
        pass


@dataclass
class Context:
    config: Config
    parts: tuple[str, ...] = PARTS
    force: bool = False  # teardown: also delete same-named resources rbacbridge did not tag
    adopt: bool = False  # setup: take over same-named resources that exist untagged
    reporter: Reporter = field(default_factory=Reporter)
    # Lazily built gateways to the outside systems; tests may inject their own.
    gateways: dict[str, Any] = field(default_factory=dict)
    # Facts one part learns and another uses (e.g. cluster nodes -> instance ids, SSH targets).
    facts: dict[str, Any] = field(default_factory=dict)

    def gateway(self, name: str, factory: Callable[[], Any]) -> Any:
        if name not in self.gateways:
            self.gateways[name] = factory()
        return self.gateways[name]

    def fact(self, name: str, compute: Callable[[], Any]) -> Any:
        if name not in self.facts:
            self.facts[name] = compute()
        return self.facts[name]


def _part(name: str):
    return importlib.import_module(f"rbacbridge.{name}")


def plan_setup(ctx: Context, parts: tuple[str, ...] | None = None) -> Plan:
    plan = Plan()
    for name in SETUP_ORDER:
        if name in (parts or ctx.parts):
            plan.extend(_part(name).plan_setup(ctx))
    _collect(ctx, plan)
    warning = ctx.config.default_role_warning()
    if warning:
        plan.warnings.insert(0, warning)
    return plan


# Facts parts record for the plan's `-o json` (besides notes): fact name -> plan field.
PLAN_FACTS = ("metadata_options",)


def _collect(ctx: Context, plan: Plan) -> None:
    plan.notes.extend(ctx.facts.get("notes", []))
    plan.warnings.extend(ctx.facts.get("warnings", []))
    for name in PLAN_FACTS:
        if name in ctx.facts:
            plan.facts[name] = ctx.facts[name]


def plan_teardown(ctx: Context, parts: tuple[str, ...] | None = None) -> Plan:
    plan = Plan()
    for name in TEARDOWN_ORDER:
        if name in (parts or ctx.parts):
            plan.extend(_part(name).plan_teardown(ctx))
    _collect(ctx, plan)
    return plan


@dataclass
class Outcome:
    plan: Plan
    executions: list[Execution] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.executions)

    @property
    def done(self) -> list[Step]:
        return [s for e in self.executions for s in e.done]

    @property
    def failure(self) -> Execution | None:
        return next((e for e in self.executions if not e.ok), None)


def _run_part_steps(ctx: Context, module, steps: list[Step], outcome: Outcome) -> bool:
    # A part may run its steps its own way (the nodes part: one node per thread).
    runner = getattr(module, "execute", None)
    if runner is not None:
        execution = runner(ctx, steps)
    else:
        execution = execute(steps, on_start=ctx.reporter.step_started, on_done=ctx.reporter.step_done)
    outcome.executions.append(execution)
    return execution.ok


def run(ctx: Context, plan: Plan, teardown: bool = False) -> Outcome:
    """Execute a plan the user has seen, part by part, with each part's waiting in between.

    The nodes part is planned again after kube2iam has rolled out (or gone), because kube2iam
    changes the very rules it looks at; that new plan is shown before it runs.
    """
    outcome = Outcome(plan)
    order = TEARDOWN_ORDER if teardown else SETUP_ORDER
    for name in order:
        if name not in ctx.parts:
            continue
        module = _part(name)
        steps = [s for s in plan.steps if s.system == name]
        if name == "nodes" and outcome.executions:
            replanned = Plan(module.plan_teardown(ctx) if teardown else module.plan_setup(ctx))
            ctx.reporter.show_plan(replanned, "nodes, planned again now that kube2iam has " + ("gone" if teardown else "rolled out"))
            outcome.plan.steps = [s for s in outcome.plan.steps if s.system != "nodes"] + replanned.steps
            steps = replanned.steps
        if not _run_part_steps(ctx, module, steps, outcome):
            return outcome
        hook = getattr(module, "after_teardown" if teardown else "after_setup", None)
        if hook is not None:
            try:
                hook(ctx)
            except RbacbridgeError as exc:
                outcome.executions.append(Execution(failed=Step(name, "wait", name, name, str(exc)), error=exc))
                return outcome
    return outcome
