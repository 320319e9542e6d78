"""The who-can answer as a table (after audit's findings table); JSON is WhoCan.to_dict."""

from __future__ import annotations

from typing import Any


def _fold(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit})" if len(items) > limit else "") if items else "-"


def _role(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def print_who_can(who_can: Any, out: Any) -> None:
    """`out` is a rich Console (audit's)."""
    from rich.markup import escape
    from rich.table import Table

    answers = who_can.answers
    if not answers:
        out.print("who can: no subject can run pods, exec into pods or edit namespaces")
        return
    table = Table(title=f"who can obtain which role ({len(answers)} subjects)", title_justify="left", show_lines=True,
                  expand=True)
    table.add_column("subject", overflow="fold", ratio=2)
    table.add_column("pods in", overflow="fold", ratio=2)
    table.add_column("roles (direct; by chain)", overflow="fold", ratio=3)
    table.add_column("node role", overflow="fold", ratio=2)
    for answer in answers:
        subject = escape(answer.name) + (" [dim](admin)[/dim]" if answer.admin else "")
        where = _fold(sorted(answer.run))
        if answer.exec:
            where += f"\nexec: {_fold(sorted(answer.exec))}"
        if answer.edit_allowed_roles:
            where += f"\nedits allowed-roles: {_fold(sorted(answer.edit_allowed_roles))}"
        roles = _fold([_role(a) for a in sorted(answer.direct)], 4)
        if answer.chained:
            roles += "\nchain: " + "; ".join(" -> ".join(_role(a) for a in r.path) for _, r in sorted(answer.chained.items())[:3])
            if len(answer.chained) > 3:
                roles += f" (+{len(answer.chained) - 3})"
        node = "[bold red]yes[/bold red]: " + escape(_fold(answer.node_role, 2)) if answer.node_role else "no"
        table.add_row(subject, escape(where), escape(roles), node)
    out.print(table)
