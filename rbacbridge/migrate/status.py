"""`migrate status`: the phase the record says, and per workload kube2iam hands a role, the path its pods are on
(kube2iam, irsa, pod-identity: from the environment injected into its pods and its ServiceAccount) and whether it
was restarted since dual began. Read-only."""

from __future__ import annotations

from typing import Any

STATUS_SCHEMA = "rbacbridge.migrate-status/v1"


def migration_status(ctx) -> dict[str, Any]:
    from rbacbridge import aws, kube
    from rbacbridge.migrate import inventory as inv
    from rbacbridge.migrate.phases import RESTARTED_AT
    from rbacbridge.migrate.rollout import pod_path, workload_pods
    from rbacbridge.migrate.record import parse_stamp
    from rbacbridge.migrate.record import open_store

    aws_gw, kube_gw = aws.gateway(ctx), kube.gateway(ctx)
    account = aws_gw.account()
    record = open_store(ctx, aws_gw, account).record
    cluster = inv.read_cluster(kube_gw)
    notes: list[str] = []
    settings, role_key = inv.kube2iam_settings(cluster, ctx.config, account, notes)
    tenant_namespaces = {ns for t in ctx.config.tenants for ns in t.namespaces}
    inventory = inv.take_inventory(cluster, settings, tenant_namespaces, role_key)
    since = parse_stamp(record.dual_at) if record and record.dual_at else None
    rows = []
    for w in inventory.workloads:
        if not w.carried:
            continue
        pods = [] if w.kind in ("CronJob",) else (
            workload_pods(kube_gw, w.kind, w.namespace, w.name) if w.kind != "Pod" else
            [p for p in cluster.of("Pod") if (p.get("metadata") or {}).get("namespace") == w.namespace
             and (p.get("metadata") or {}).get("name") == w.name])
        paths = sorted({pod_path(p) for p in pods})
        obj = next((o for o in cluster.of(w.kind) if (o.get("metadata") or {}).get("namespace") == w.namespace
                    and (o.get("metadata") or {}).get("name") == w.name), {})
        stamp = ((inv.pod_template(w.kind, obj).get("metadata") or {}).get("annotations") or {}).get(RESTARTED_AT)
        restarted = None
        if since is not None:
            created = [(p.get("metadata") or {}).get("creationTimestamp") for p in pods]
            # creation times are whole seconds: a pod made in the second dual began is not known to be newer
            restarted = bool(pods) and all(c and parse_stamp(c) > since for c in created)
            if stamp:
                try:
                    restarted = restarted or parse_stamp(stamp) >= since
                except ValueError:
                    pass
        rows.append({"kind": w.kind, "namespace": w.namespace, "name": w.name, "service_account": w.service_account,
                     "role_arn": w.role_arn, "pods": len(pods),
                     "path": paths[0] if len(paths) == 1 else ("mixed: " + ", ".join(paths) if paths else "no pods"),
                     "restarted_since_dual": restarted})
    return {"schema": STATUS_SCHEMA, "account": account,
            "target": record.target if record else None,
            "phase": record.phase if record else "kube2iam",
            "state": record.state if record else None,
            "dual_at": record.dual_at if record else None,
            "workloads": rows, "notes": notes}


def print_status(status: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from rbacbridge.output import console

    out = console()
    phase = status["phase"]
    line = f"phase: {phase}" + (f" ({status['state']}) to {status['target']}, dual began {status['dual_at']}"
                                if status["target"] else " (no migration recorded)")
    out.print(escape(line))
    table = Table(title=f"workloads kube2iam hands a role ({len(status['workloads'])})", title_justify="left")
    for column in ("workload", "service account", "role", "path", "restarted since dual"):
        table.add_column(column, overflow="fold")
    for row in status["workloads"]:
        restarted = {True: "yes", False: "no", None: "-"}[row["restarted_since_dual"]]
        table.add_row(escape(f"{row['kind']} {row['namespace']}/{row['name']}"), escape(row["service_account"]),
                      escape(row["role_arn"]), escape(row["path"]), restarted)
    out.print(table)
