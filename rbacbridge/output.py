"""Rendering only: plans, outcomes and results as rich tables or JSON. No work happens here."""

from __future__ import annotations

import json
import sys
from typing import Any

from rbacbridge.plan import CONFLICT, CREATE, DELETE, LEFT_ALONE, RESTORE, UNCHANGED, UPDATE, Plan, Step

FORMATS = ("table", "json")

_ACTION_STYLE = {
    CREATE: ("+", "green"),
    UPDATE: ("~", "yellow"),
    DELETE: ("-", "red"),
    RESTORE: ("<", "cyan"),
    UNCHANGED: ("=", "dim"),
    LEFT_ALONE: ("!", "magenta"),
    CONFLICT: ("x", "bold red"),
}


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def dump_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def plan_table(plan: Plan, title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("", no_wrap=True)
    table.add_column("part", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("what", overflow="fold")
    from rich.markup import escape

    for step in plan.steps:
        mark, style = _ACTION_STYLE.get(step.action, ("?", ""))
        # escape: field paths like containers[kube2iam].args are not markup
        what = escape(step.message) + (f"\n[dim]{escape(step.reason)}[/dim]" if step.reason else "")
        table.add_row(f"[{style}]{mark} {step.action}[/{style}]", step.system, step.kind, escape(step.name), what)
    return table


def summary_line(plan: Plan) -> str:
    counts = plan.counts()
    changes = len(plan.changes)
    parts = [f"{counts.get(a, 0)} to {a}" for a in (CREATE, UPDATE, DELETE, RESTORE) if counts.get(a)]
    text = f"{changes} change{'s' if changes != 1 else ''}" + (f" ({', '.join(parts)})" if parts else "")
    if counts.get(UNCHANGED):
        text += f", {counts[UNCHANGED]} unchanged"
    if counts.get(LEFT_ALONE):
        text += f", {counts[LEFT_ALONE]} left alone (not rbacbridge's)"
    if counts.get(CONFLICT):
        text += f", {counts[CONFLICT]} conflict{'s' if counts[CONFLICT] != 1 else ''}"
    return text


def print_plan(plan: Plan, title: str, to_stderr: bool = False) -> None:
    out = console(stderr=to_stderr)
    if plan.steps:
        out.print(plan_table(plan, title))
    else:
        out.print(f"{title}: nothing to do")
    for note in plan.notes:
        out.print(f"[dim]note:[/dim] {note}")
    out.print(summary_line(plan))


def step_line(step: Step, done: bool) -> str:
    mark, _ = _ACTION_STYLE.get(step.action, ("?", ""))
    from rich.markup import escape

    return f"{'done' if done else '....'} {mark} {escape(step.message)}"
