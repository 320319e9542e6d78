"""Rendering only: plans, outcomes and results as rich tables or JSON. No work happens here."""

from __future__ import annotations

import json
import sys
from typing import Any

from rbacbridge.plan import CONFLICT, CREATE, DELETE, FINDING, LEFT_ALONE, RESTORE, UNCHANGED, UPDATE, Plan, Step

FORMATS = ("table", "json")

_ACTION_STYLE = {
    CREATE: ("+", "green"),
    UPDATE: ("~", "yellow"),
    DELETE: ("-", "red"),
    RESTORE: ("<", "cyan"),
    UNCHANGED: ("=", "dim"),
    LEFT_ALONE: ("!", "magenta"),
    CONFLICT: ("x", "bold red"),
    FINDING: ("*", "bold red"),
}


_before_output: list[str] = []  # lines said on stderr just before the run's first output (the `config:` line)


def say_before_output(lines: list[str], replace: bool = True) -> None:
    """The lines said on stderr before the run's first output (rbacbridge.cli.options: which config was read,
    a deprecated flag): they replace the pending ones, or are added (`replace=False`)."""
    if replace:
        _before_output.clear()
    _before_output.extend(lines)


def flush_before_output(drop: bool = False) -> None:
    """Say them now (first output, or the end of a run), or forget them (`drop`: a failure is its one line)."""
    lines = list(_before_output)
    _before_output.clear()
    if not drop and lines:
        sys.stderr.write("".join(f"{line}\n" for line in lines))
        sys.stderr.flush()


PIPED_WIDTH = 80  # a pipe, a file or a CI log without COLUMNS: what rich, less and most terminals assume


def width(stream=None, most: int | None = None) -> int:
    """The one width policy of every table and line rbacbridge renders: COLUMNS when it is set (a positive
    number), else the terminal's width, else PIPED_WIDTH; at most `most` (a table that fills the line stays
    readable on a wide terminal)."""
    import os

    stream = stream or sys.stdout
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        chosen = int(columns)
    else:
        chosen = PIPED_WIDTH
        try:
            if stream.isatty():
                chosen = os.get_terminal_size(stream.fileno()).columns or PIPED_WIDTH
        except (AttributeError, OSError, ValueError):
            pass
    return min(chosen, most) if most else chosen


def console(stderr: bool = False, file=None, most: int | None = None):
    """A rich console on stdout (or stderr, or `file`) as wide as `width` says."""
    from rich.console import Console

    flush_before_output()
    stream = file or (sys.stderr if stderr else sys.stdout)
    return Console(file=file, stderr=stderr, highlight=False, width=width(stream, most))


def dump_json(data: Any) -> None:
    flush_before_output()
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def plan_table(plan: Plan, title: str):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("action", no_wrap=True)
    table.add_column("part", no_wrap=True)
    table.add_column("step (and why)", overflow="fold")
    for step in plan.steps:
        mark, style = _ACTION_STYLE.get(step.action, ("?", ""))
        what = escape(step.message) + (f"\n[dim]{escape(step.reason)}[/dim]" if step.reason else "")
        table.add_row(f"[{style}]{mark} {step.action}[/{style}]", step.system, what)
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
    if counts.get(FINDING):
        text += f", {counts[FINDING]} finding{'s' if counts[FINDING] != 1 else ''} (not rbacbridge's to change)"
    return text


def print_plan(plan: Plan, title: str, to_stderr: bool = False, notes_to=None) -> None:
    out = console(stderr=to_stderr)
    if plan.steps:
        out.print(plan_table(plan, title))
    else:
        out.print(f"{title}: nothing to do")
    print_notes(plan, to=notes_to)
    out.print(summary_line(plan))


def print_notes(plan: Plan, notes: bool = True, to=None) -> None:
    """Warnings (and notes) go to stderr, so stdout keeps only the plan: `plan | tee` and CI logs show both.
    `to`: another rich console (the demo keeps its whole story on stdout)."""
    if not plan.warnings and not (notes and plan.notes):
        return  # nothing to say: no console (rich stays unloaded for `-o json`)
    from rich.markup import escape

    err = to or console(stderr=True)
    for warning in plan.warnings:
        err.print(f"[bold yellow]warning:[/bold yellow] {escape(warning)}")
    if notes:
        for note in plan.notes:
            err.print(f"[dim]note:[/dim] {escape(note)}")


def step_line(step: Step, done: bool) -> str:
    mark, _ = _ACTION_STYLE.get(step.action, ("?", ""))
    from rich.markup import escape

    return f"{'done' if done else '....'} {mark} {escape(step.message)}"


def print_iptables(result) -> None:
    """Per-node table of `rbacbridge iptables status|fix|remove`."""
    from rich.table import Table

    out = console()
    verb = {"status": "status", "fix": "fixed" if result.applied else "not changed",
            "remove": "removed" if result.applied else "not changed"}[result.command]
    table = Table(title=f"kube2iam iptables rule per node ({verb})", title_justify="left")
    for column in ("node", "rule wanted (iface -> ip:port)" if result.command != "remove" else "address", "backend", "kept", "deleted", "missing", "other tools'", "conflict", "error"):
        table.add_column(column, overflow="fold")
    for r in result.reports:
        second = r.address
        if result.command != "remove" and r.rule:
            words = r.rule.split()
            second = f"{words[words.index('-i') + 1]} -> {words[-1]}"
        if result.command == "status" or not result.applied:
            deleted = f"{r.to_delete} to delete" if not r.error else "-"
        else:
            deleted = str(r.deleted)
        conflict = "; ".join(r.conflicts)
        table.add_row(
            r.node, second or "-", (r.backend or "-") + (f" [yellow](+{len(r.other_backend_rules)} in legacy, not changed)[/yellow]"
                                                         if r.other_backend_rules else ""),
            "-" if r.error else str(r.kept), deleted, r.missing,
            "-" if r.error else str(r.left_alone), f"[yellow]{conflict}[/yellow]" if conflict else "",
            f"[red]{r.error}[/red]" if r.error else "",
        )
    out.print(table)
    failed = sum(1 for r in result.reports if r.error)
    out.print(f"{len(result.reports)} node(s), {failed} failed")


def print_tenants(rows: list[dict[str, Any]]) -> None:
    """`rbacbridge tenant list` as a table."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="tenants", title_justify="left")
    for column in ("name", "namespaces", "role", "policy", "read", "write", "workloads"):
        table.add_column(column, overflow="fold")
    for row in rows:
        role = f"{row['existing_role_arn']} (existing)" if row["existing_role_arn"] else row["role"]
        table.add_row(*(escape(v) for v in (
            row["name"] + (" (legacy keys)" if row["from_legacy_keys"] else ""), ", ".join(row["namespaces"]), role,
            row["policy"] or "-", ", ".join(row["read"]) or "-", ", ".join(row["write"]) or "-",
            ", ".join(row["workloads"]) or "-")))
    out = console()
    if rows:
        out.print(table)
    else:
        out.print("no tenants (tenants: [])")
