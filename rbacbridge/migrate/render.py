"""`migrate plan` as tables: the inventory, the steps (as every plan shows them), the blockers. Rendering only."""

from __future__ import annotations


def print_migrate_plan(result) -> None:
    from rich.markup import escape
    from rich.table import Table

    from rbacbridge.output import console, print_plan

    out = console()
    rows = result.inventory.workloads
    if rows:
        goes_to = {(c.kind, c.namespace, c.name): c.to_service_account for c in result.mapping.changes}
        table = Table(title=f"workloads kube2iam hands a role ({len(rows)})", title_justify="left")
        for column in ("workload", "service account", "role", "from", "after the migration"):
            table.add_column(column, overflow="fold")
        for w in rows:
            if not w.carried:
                after = f"[yellow]not carried[/yellow]: {escape(w.note)}"
            else:
                after = escape(goes_to.get((w.kind, w.namespace, w.name), w.service_account))
            table.add_row(escape(w.ref), escape(w.service_account), escape(w.role_arn), w.source, after)
        out.print(table)
    else:
        out.print("no workload gets a role from kube2iam")
    print_plan(result.plan, f"rbacbridge migrate plan --to {result.target}")
    if result.blockers:
        table = Table(title=f"blockers ({len(result.blockers)}): resolve them before any phase runs", title_justify="left")
        for column in ("kind", "object", "reason"):
            table.add_column(column, overflow="fold")
        for b in result.blockers:
            table.add_row(f"[bold red]{b.kind}[/bold red]", escape(b.object), escape(b.reason))
        out.print(table)
    out.print(f"{len(result.blockers)} blocker{'s' if len(result.blockers) != 1 else ''}")
