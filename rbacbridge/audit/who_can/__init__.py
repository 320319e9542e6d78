"""`rbacbridge audit --who-can`: who can end up holding which AWS role through kube2iam.

    audit's reads (namespaces, pods, DaemonSets, nodes; IAM roles and policies)
      + one list per RBAC kind (Roles, ClusterRoles, RoleBindings, ClusterRoleBindings)
    -> rbac (subjects' grants) -> join (per subject: namespaces, roles, chains, node role) -> rules (findings)

    matching  kube2iam's own role matching (glob/regexp, base ARN), pure
    rbac      RBAC rules reduced to what matters here, aggregation, groups
    join      the in-memory join
    rules     the findings
    render    the who-can table
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_ID = "rbacbridge.who-can/v1"


@dataclass
class WhoCan:
    answers: list[Any]  # join.SubjectAnswer
    kube2iam: Any  # matching.Kube2iamSettings | None
    node_roles: list[str]
    node_role_reach: dict[str, list[str]] = field(default_factory=dict)  # role -> path from the node role
    counts: dict[str, int] = field(default_factory=dict)
    iam_read: bool = True

    def to_dict(self) -> dict[str, Any]:
        settings = self.kube2iam
        return {
            "schema": SCHEMA_ID,
            "kube2iam": None if settings is None else {
                "source": settings.source, "namespace_restrictions": settings.restrictions, "format": settings.format,
                "base_role_arn": settings.base_arn, "default_role": settings.default_role_arn},
            "node_roles": self.node_roles,
            "node_role_reach": [{"role": role, "path": path} for role, path in sorted(self.node_role_reach.items())],
            "iam_read": self.iam_read,
            "subjects": [a.to_dict() for a in self.answers],
            "counts": dict(self.counts),
        }


def run(ctx, result, config_given: bool) -> WhoCan | None:
    """Adds the who-can answer and its findings to an audit result (reads: the four RBAC lists)."""
    from rbacbridge.audit.who_can import rules
    from rbacbridge.errors import RbacbridgeError, UsageError

    inputs = ctx.facts.get("audit.inputs")
    if inputs is None or "kube" not in ctx.parts:
        raise UsageError("--who-can needs the kube part (drop --only, or include kube)")
    if inputs.kube is None:
        result.errors.append("who-can: not answered (the cluster could not be read)")
        return None
    from rbacbridge import kube

    try:
        gw = kube.gateway(ctx)
        objects = {kind: gw.list(kind) for kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")}
    except UsageError:
        raise
    except RbacbridgeError as exc:
        result.errors.append(f"who-can: {exc}")
        return None
    world, tenancy, intended, notes = build_world(inputs, objects, config_given, result.findings)
    from rbacbridge.audit.who_can.join import run_join

    join, answers = run_join(world)
    result.findings.extend(rules.findings(join, answers, tenancy, intended))
    checked = [k for k in rules.KIND_IDS if tenancy.known or k not in rules.TENANT_KINDS]
    result.checked = list(dict.fromkeys(result.checked + checked))
    result.notes.extend(n for n in notes if n not in result.notes)
    counts = {"roles": len(objects["Role"]), "cluster_roles": len(objects["ClusterRole"]),
              "role_bindings": len(objects["RoleBinding"]), "cluster_role_bindings": len(objects["ClusterRoleBinding"]),
              "subjects": len(answers)}
    result.counts.update({f"rbac_{k}": v for k, v in counts.items() if k != "subjects"})
    who_can = WhoCan(answers, world.kube2iam, sorted(join.node_arns), join.node_role_reach(), counts,
                     iam_read=world.roles is not None)
    result.who_can = who_can
    return who_can


def build_world(inputs, objects: dict[str, list[dict[str, Any]]], config_given: bool, audit_findings: list[Any] = ()):
    """The join's World from the audit's reads: (world, tenancy, intended allowed roles, notes)."""
    from rbacbridge import policy_eval
    from rbacbridge.audit.checks import Outcome, node_roles
    from rbacbridge.audit.kube2iam import find_interceptors
    from rbacbridge.audit.who_can.join import IamRole, World
    from rbacbridge.audit.who_can.matching import Kube2iamSettings, allowed_patterns, role_arn, settings_from_flags
    from rbacbridge.audit.who_can.rbac import read_rbac
    from rbacbridge.audit.who_can.rules import Tenancy

    cfg, kube, aws = inputs.config, inputs.kube, inputs.aws
    notes: list[str] = []
    account = (aws.account if aws is not None else "") or cfg.account_id or ""
    roles = nodes = None
    node_arns: list[str] = []
    if aws is not None:
        roles = [IamRole(r.name, r.arn, r.trust, tuple(aws.documents(r))) for r in aws.roles.values()]
        scratch = Outcome()
        nodes = [IamRole(r.name, r.arn, r.trust, tuple(aws.documents(r))) for r in node_roles(inputs, scratch)]
        notes.extend(f"who-can: {n}" for n in scratch.notes)
        node_arns = [r.arn for r in nodes]
    elif config_given and account:
        node_arns = [cfg.role_arn(account, cfg.node_role)]
        notes.append("who-can: IAM not read (the aws part is not selected): roles from the configuration and the "
                     "namespaces' exact allowed-roles, their trust and policies not checked, no chains")
    else:
        notes.append("who-can: IAM not read and no configuration: roles named exactly in allowed-roles only, no chains")
    kube2iams = [i for i in find_interceptors(kube.daemonsets) if i.tool == "kube2iam"]
    settings: Kube2iamSettings | None = None
    if kube2iams:
        first = kube2iams[0]
        settings = settings_from_flags(first.flags, first.ref, node_arns[0] if node_arns else None, account or None)
        if len(kube2iams) > 1:
            notes.append(f"who-can: kube2iam's settings read from {first.ref}, the first of {len(kube2iams)} kube2iam DaemonSets")
    gaps = sorted({f.objects[0].split(" ", 1)[1] for f in audit_findings if f.kind == "node-without-kube2iam"})
    candidates: list[str] = []
    if roles is None:
        base = settings.base_arn if settings else (cfg.partition.iam_arn(account, "role/") if account else None)
        if config_given:
            candidates += [cfg.tenant_role_arn(t, account) for t in cfg.tenants] + node_arns
        for namespace in kube.namespaces:
            raw = ((namespace.get("metadata") or {}).get("annotations") or {}).get(
                settings.namespace_key if settings else "iam.amazonaws.com/allowed-roles")
            candidates += [role_arn(p, base) for p in allowed_patterns(raw) or [] if "*" not in p]
        if settings and settings.default_role_arn:
            candidates.append(settings.default_role_arn)
    rbac = read_rbac(objects["Role"], objects["ClusterRole"], objects["RoleBinding"], objects["ClusterRoleBinding"])
    world = World(namespaces=kube.namespaces, pods=kube.pods, rbac=rbac, kube2iam=settings, nodes_without_kube2iam=gaps,
                  roles=roles, node_roles=nodes or [], node_role_arns=node_arns, candidate_arns=candidates,
                  account=account or (policy_eval.account_of(settings.base_arn) if settings and settings.base_arn else "") or "")
    tenancy, intended = Tenancy(), None
    if config_given:
        tenancy = Tenancy.from_config(cfg, account)
        intended = {ns: {cfg.tenant_role_arn(t, account)} for t in cfg.tenants for ns in t.namespaces}
    else:
        notes.append("who-can: tenants unknown (no -c): other tenants' roles, chains into them and allowed-roles "
                     "broader than the configuration not checked")
    notes.append("who-can: admission other than Pod Security (webhooks, Kyverno, Gatekeeper), RBAC escalate/bind/"
                 "impersonate and the cluster's Pod Security defaults are not read")
    return world, tenancy, intended, notes

