"""`rbacbridge migrate plan`: what moving off kube2iam to IRSA or EKS Pod Identity would change (issue 26, item 1).

Read-only: Kubernetes lists and GETs (one list per kind, the issuer's discovery document), AWS reads only
(sts:GetCallerIdentity, iam:ListOpenIDConnectProviders, iam:GetRole per pod role).

    inventory  every workload kube2iam hands a role, resolved as kube2iam does, and its ServiceAccount
    mapping    per-pod roles -> per-ServiceAccount roles: dedicated ServiceAccounts where one would widen access
    trust      the statements each target adds to a role's trust, and their size
    blockers   what stops the migration before anything changes
    render     the tables

The plan's steps say which phase takes them: `apply --phase dual|cutover` (phases.py) runs them, `rollback`
(rollback.py) undoes them from the signed record (record.py), `status` (status.py) shows where each workload is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from rbacbridge.migrate.trust import IRSA, POD_IDENTITY, TARGETS

SCHEMA_ID = "rbacbridge.migrate-plan/v1"  # its JSON Schema: schema.json beside this module (load_schema)
OPENID_PATH = "/.well-known/openid-configuration"
__all__ = ["IRSA", "POD_IDENTITY", "SCHEMA_ID", "TARGETS", "MigratePlan", "load_schema", "plan_migration"]


@dataclass
class MigratePlan:
    target: str
    account: str
    kube2iam_source: str
    issuer: str | None
    cluster_name: str | None
    inventory: Any  # inventory.Inventory
    mapping: Any  # mapping.Mapping
    plan: Any  # rbacbridge.plan.Plan: the steps of the phases to come
    blockers: list[Any] = field(default_factory=list)
    trust: list[dict[str, Any]] = field(default_factory=list)
    # pod-identity: the cluster's associations, (namespace, ServiceAccount) -> {associationId, roleArn, createdAt};
    # None when the EKS API could not be read
    associations: dict[tuple[str, str], dict[str, Any]] | None = None

    @property
    def changes(self) -> list[Any]:
        return self.plan.changes

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_ID,
            "target": self.target,
            "cluster": {"account": self.account, "issuer": self.issuer, "cluster_name": self.cluster_name,
                        "kube2iam_settings": self.kube2iam_source},
            "workloads": [w.to_dict() for w in self.inventory.workloads],
            "service_accounts": [s.to_dict() for s in self.mapping.service_accounts],
            "workload_changes": [c.to_dict() for c in self.mapping.changes],
            "trust": self.trust,
            "blockers": [b.to_dict() for b in self.blockers],
            "steps": [s.to_dict() for s in self.plan.steps],
            "counts": {"workloads": len(self.inventory.workloads),
                       "carried": sum(1 for w in self.inventory.workloads if w.carried),
                       "changes": len(self.plan.changes), "blockers": len(self.blockers)},
            "notes": list(self.plan.notes),
        }


def load_schema() -> dict[str, Any]:
    from pathlib import Path

    return json.loads((Path(__file__).with_name("schema.json")).read_text(encoding="utf-8"))


def plan_migration(ctx, target: str, issuer: str | None = None, cluster_name: str | None = None) -> MigratePlan:
    from rbacbridge import aws, kube
    from rbacbridge.errors import IncompleteError, RbacbridgeError, UsageError
    from rbacbridge.migrate import blockers as blk
    from rbacbridge.migrate import inventory as inv
    from rbacbridge.migrate.mapping import map_service_accounts
    from rbacbridge.plan import Plan

    cfg = ctx.config
    kube_gw, aws_gw = kube.gateway(ctx), aws.gateway(ctx)
    try:
        cluster = inv.read_cluster(kube_gw)
    except kube.KubeApiError:
        raise  # the API server answered: a refusal (403) is exit 1, as a step's failure
    except UsageError:
        raise
    except RbacbridgeError as exc:  # not reached: no verdict, like AWS unreachable
        raise IncompleteError(str(exc)) from None
    account = aws_gw.account()
    if cfg.account_id and cfg.account_id != account:
        raise UsageError(f"--account-id {cfg.account_id} does not match the credentials in use (account {account})")
    partition = aws_gw.identity().get("Arn", "arn:aws:").split(":")[1] or "aws"
    plan = Plan()
    settings, role_key = inv.kube2iam_settings(cluster, cfg, account, plan.notes)
    tenant_namespaces = {ns for t in cfg.tenants for ns in t.namespaces}
    inventory = inv.take_inventory(cluster, settings, tenant_namespaces, role_key)
    mapping = map_service_accounts(inventory, target)
    result = MigratePlan(target, account, settings.source, None, cluster_name, inventory, mapping, plan)
    blockers = result.blockers
    provider = None
    if target == IRSA:
        result.issuer, error = issuer, None
        if not issuer:
            result.issuer, error = _read_issuer(kube_gw)
        blockers += blk.issuer_blockers(result.issuer, error)
        if result.issuer:
            provider = _provider_step(plan, aws_gw, account, partition, result.issuer, blockers)
    else:
        result.associations = _read_associations(aws_gw, cluster_name or "", blockers)
    blockers += blk.workload_blockers(inventory, account)
    blockers += [blk.Blocker(*p) for p in mapping.problems]
    _trust_steps(result, aws_gw, account, provider)
    _service_account_steps(result)
    return result


def _read_associations(aws_gw, cluster_name: str, blockers: list) -> dict | None:
    """The Pod Identity agent add-on and the cluster's associations (EKS reads), or a blocker saying why not."""
    from rbacbridge.errors import RbacbridgeError
    from rbacbridge.migrate import blockers as blk

    try:
        addon = aws_gw.get_or_none("eks", "describe_addon", ("ResourceNotFoundException",), clusterName=cluster_name,
                                   addonName=blk.POD_IDENTITY_AGENT)
        associations: dict = {}
        params: dict[str, Any] = {"clusterName": cluster_name}
        while True:
            page = aws_gw.call("eks", "list_pod_identity_associations", **params)
            for summary in page.get("associations", []):
                found = aws_gw.call("eks", "describe_pod_identity_association", clusterName=cluster_name,
                                    associationId=summary["associationId"])["association"]
                associations[(found["namespace"], found["serviceAccount"])] = found
            if not page.get("nextToken"):
                break
            params["nextToken"] = page["nextToken"]
    except RbacbridgeError as exc:
        code = getattr(exc, "code", None)
        reason = f"{exc.operation} answered {code}" if code else str(exc).removeprefix("AWS ")
        blockers += blk.pod_identity_blockers(cluster_name, None, reason)
        return None
    blockers += blk.pod_identity_blockers(cluster_name, (addon or {}).get("addon"), None)
    return associations


def _read_issuer(kube_gw) -> tuple[str | None, str | None]:
    from rbacbridge.errors import RbacbridgeError

    try:
        answer = kube_gw.request("GET", OPENID_PATH)
    except RbacbridgeError as exc:
        return None, str(exc)
    if not isinstance(answer, dict) or not answer.get("issuer"):
        return None, f"the API server does not serve {OPENID_PATH}"
    return str(answer["issuer"]), None


def _provider_step(plan, aws_gw, account: str, partition: str, issuer: str, blockers: list) -> str:
    from rbacbridge.migrate import blockers as blk
    from rbacbridge.migrate.trust import issuer_host, provider_arn
    from rbacbridge.plan import UNCHANGED, Step

    provider = provider_arn(account, issuer, partition)
    providers = [p["Arn"] for p in aws_gw.call("iam", "list_open_id_connect_providers").get("OpenIDConnectProviderList", [])]
    found = blk.provider_blockers(issuer, provider, providers)
    blockers += found
    if not found:
        plan.steps.append(Step("aws", UNCHANGED, "iam-oidc-provider", issuer_host(issuer),
                               f"IAM OIDC provider for {issuer_host(issuer)} exists", details={"phase": "dual"}))
    return provider


def _trust_steps(result: MigratePlan, aws_gw, account: str, provider: str | None) -> None:
    from rbacbridge.migrate import blockers as blk
    from rbacbridge.migrate.trust import TRUST_LIMIT, merged_trust, policy_size, statements_for
    from rbacbridge.plan import UNCHANGED, UPDATE, Step
    from rbacbridge.policy_eval import account_of

    for role_arn, pairs in result.mapping.pairs.items():
        if account_of(role_arn) != account or (result.target == IRSA and not result.issuer):
            continue  # a blocker already says why
        name = role_arn.rsplit("/", 1)[-1]
        live = aws_gw.get_or_none("iam", "get_role", ("NoSuchEntity",), RoleName=name)
        if live is None:
            result.blockers.append(blk.Blocker("role-missing", f"Role {role_arn}", "does not exist in the account: "
                                               "kube2iam cannot hand it out today either"))
            continue
        document = live["Role"]["AssumeRolePolicyDocument"]
        if isinstance(document, str):
            document = json.loads(unquote(document))
        wanted = statements_for(result.target, pairs, provider, result.issuer)
        after, added = merged_trust(document, wanted)
        before_size, after_size = policy_size(document), policy_size(after)
        result.trust.append({"role_arn": role_arn, "service_accounts": [f"{ns}/{sa}" for ns, sa in pairs],
                             "size_before": before_size, "size_after": after_size, "limit": TRUST_LIMIT,
                             "add": added})
        found = blk.trust_blocker(role_arn, before_size, after_size, len(added))
        if found:
            result.blockers.append(found)
        message = (f"dual: add {len(added)} trust statement(s) to role {name} for {', '.join(f'{ns}/{sa}' for ns, sa in pairs)} "
                   f"({before_size} -> {after_size} of {TRUST_LIMIT} characters)" if added
                   else f"dual: role {name} already trusts {', '.join(f'{ns}/{sa}' for ns, sa in pairs)}")
        result.plan.steps.append(Step("aws", UPDATE if added else UNCHANGED, "iam-role-trust", name, message,
                                      reason="beside the node role's statement: kube2iam keeps serving",
                                      details={"phase": "dual"}))


def _service_account_steps(result: MigratePlan) -> None:
    from rbacbridge.migrate.mapping import IRSA_ANNOTATION
    from rbacbridge.plan import CREATE, UNCHANGED, UPDATE, Step

    steps = result.plan.steps
    for sa in result.mapping.service_accounts:
        ref = f"{sa.namespace}/{sa.name}"
        role = sa.role_arn.rsplit("/", 1)[-1]
        if sa.action == "create":
            annotated = f" annotated {IRSA_ANNOTATION}={sa.role_arn}" if result.target == IRSA else f" for role {role}"
            steps.append(Step("kube", CREATE, "ServiceAccount", ref, f"dual: create ServiceAccount {ref}{annotated}",
                              reason=sa.reason, details={"phase": "dual"}))
        elif sa.action == "annotate":
            steps.append(Step("kube", UPDATE, "ServiceAccount", ref,
                              f"dual: annotate ServiceAccount {ref} {IRSA_ANNOTATION}={sa.role_arn}", details={"phase": "dual"}))
        elif sa.action == "unchanged":
            steps.append(Step("kube", UNCHANGED, "ServiceAccount", ref, f"ServiceAccount {ref} already has {role}",
                              details={"phase": "dual"}))
        if result.target != IRSA and sa.action != "taken":
            steps.append(_association_step(result, sa, ref, role))
    if result.target != IRSA and result.associations is not None:
        from rbacbridge.migrate.blockers import association_quota_blocker

        new = sum(1 for s in steps if s.kind == "pod-identity-association" and s.action == CREATE)
        result.blockers += association_quota_blocker(result.cluster_name or "", len(result.associations), new)
    for change in result.mapping.changes:
        ref = f"{change.namespace}/{change.name}"
        steps.append(Step("kube", UPDATE, change.kind, ref, f"cutover: {change.kind} {ref}: {change.how}",
                          reason="its pods then run as a ServiceAccount that carries only their role",
                          details={"phase": "cutover"}))
    moved = {(c.kind, c.namespace, c.name) for c in result.mapping.changes}
    for w in result.inventory.workloads:
        if not w.carried or (w.kind, w.namespace, w.name) in moved or w.kind in ("Job", "CronJob"):
            continue  # a Job's next run starts with the new path; nothing to restart
        ref = f"{w.namespace}/{w.name}"
        how = "recreate the pod" if w.kind == "Pod" else "restart its pods (as kubectl rollout restart does)"
        steps.append(Step("kube", UPDATE, w.kind, ref, f"cutover: {w.kind} {ref}: {how}",
                          reason="running pods keep kube2iam's path until they restart", details={"phase": "cutover"}))


def _association_step(result: MigratePlan, sa, ref: str, role: str):
    from rbacbridge.migrate.blockers import Blocker
    from rbacbridge.plan import CREATE, UNCHANGED, Step

    if result.associations is None:
        return Step("aws", CREATE, "pod-identity-association", ref, f"dual: associate {ref} with role {role} in cluster "
                    f"{result.cluster_name} (existing associations not read: EKS API not readable)", details={"phase": "dual"})
    live = result.associations.get((sa.namespace, sa.name))
    if live is None:
        return Step("aws", CREATE, "pod-identity-association", ref,
                    f"dual: associate {ref} with role {role} in cluster {result.cluster_name}",
                    details={"phase": "dual", "role_arn": sa.role_arn})
    if live.get("roleArn") != sa.role_arn:
        result.blockers.append(Blocker("association", f"Pod Identity association {ref}",
                                       f"exists with role {live.get('roleArn')} ({live.get('associationId')}): its pods "
                                       f"would get that role, not {role}; rbacbridge does not change it"))
    return Step("aws", UNCHANGED, "pod-identity-association", ref, f"{ref} is already associated with role "
                f"{live.get('roleArn', '').rsplit('/', 1)[-1]} ({live.get('associationId')})",
                details={"phase": "dual", "association_id": live.get("associationId"), "created_at": str(live.get("createdAt"))})
