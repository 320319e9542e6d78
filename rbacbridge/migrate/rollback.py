"""`migrate rollback`: back one phase, from the signed migration record alone (cutover -> dual, dual -> kube2iam).

cutover: each workload the record names back on the ServiceAccount it had, restarted. dual: each role's trust
policy recorded before dual, restored exactly (a conflict when someone else changed it since, beyond rbacbridge's
statements), the ServiceAccounts whose uid the record names deleted, the annotations dual added removed, the Pod
Identity associations whose id it names deleted, the OIDC provider deleted when the record says dual created it;
then the record itself is erased.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from rbacbridge.errors import UsageError
from rbacbridge.migrate.phases import (RESTARTABLE, PhasePlan, _annotator, _repointer, _service_account, _trust_document,
                                       _write)
from rbacbridge.migrate.rollout import wait_for_rollouts
from rbacbridge.plan import CONFLICT, DELETE, RESTORE, UNCHANGED, UPDATE, Plan, Step


def plan_rollback(ctx, timeout: float) -> PhasePlan:
    from rbacbridge import aws, kube
    from rbacbridge.migrate.record import open_store

    aws_gw, kube_gw = aws.gateway(ctx), kube.gateway(ctx)
    store = open_store(ctx, aws_gw, aws_gw.account())
    record = store.record
    if record is None:
        raise UsageError("nothing to roll back: no migration is recorded for this install")
    if record.phase == "cutover":
        return _rollback_cutover(store, record, kube_gw, timeout)
    return _rollback_dual(store, record, aws_gw, kube_gw, timeout)


def _rollback_cutover(store, record, kube_gw, timeout: float) -> PhasePlan:
    from rbacbridge.migrate.record import stamp

    result = PhasePlan("rollback-cutover", Plan(), store)
    keys = []
    for ref, entry in sorted(record.workloads.items()):
        kind, _, rest = ref.partition(" ")
        namespace, name = rest.split("/", 1)
        live = kube_gw.get(kind, name, namespace)
        if live is None:
            result.plan.steps.append(Step("kube", UNCHANGED, kind, rest, f"{ref} is gone: nothing to point back",
                                      details={"phase": "cutover"}))
            continue
        current = _service_account(kind, live)
        restart = kind in RESTARTABLE
        if entry["from"] == entry["to"]:
            result.plan.steps.append(Step("kube", UNCHANGED, kind, rest, f"{ref} keeps ServiceAccount {current}, annotated "
                                          "by dual: its pods stay on the new path until dual is rolled back too"))
            continue
        if current == entry["from"] and not restart:
            result.plan.steps.append(Step("kube", UNCHANGED, kind, rest, f"{ref} already runs as {current}"))
            continue
        how = (f"serviceAccountName {current} -> {entry['from']}" if current != entry["from"] else f"keep {current}")
        result.plan.steps.append(Step("kube", RESTORE, kind, rest, f"rollback cutover: {ref}: {how}"
                                      + (", restart its pods" if restart else ""),
                                      reason="back to kube2iam's path: its pods lose the new path's environment on restart",
                                      run=_repointer(kube_gw, kind, namespace, name, entry["from"] if current != entry["from"] else None,
                                                     stamp() if restart else None), details={"phase": "cutover"}))
        if restart:  # a rollback stopped half-way restarts it again when re-run: it converges
            keys.append((kind, namespace, name))

    def after() -> None:
        record.workloads = {}
        record.phase, record.state = "dual", "done"
        store.write(record)

    result.before = _write(store, record, state="running")
    result.after = after
    result.waits.append(lambda reporter: wait_for_rollouts(kube_gw, keys, timeout, reporter))
    return result


def _rollback_dual(store, record, aws_gw, kube_gw, timeout: float) -> PhasePlan:
    """In this order: the annotations off, the workloads whose pods were given the web identity restarted back onto
    kube2iam (before their role stops trusting the token), the trust restored, then what dual created deleted."""
    from rbacbridge.migrate.trust import SID_PREFIX, _canonical

    result = PhasePlan("rollback-dual", Plan(), store)
    steps: list[Step] = []
    for role, entry in sorted(record.trust.items()):
        original = entry.get("dual")
        if original is None:
            continue
        live = aws_gw.get_or_none("iam", "get_role", ("NoSuchEntity",), RoleName=role)
        if live is None:
            steps.append(Step("aws", UNCHANGED, "iam-role-trust", role, f"role {role} is gone: nothing to restore"))
            continue
        document = _trust_document(aws_gw, role)
        if _canonical_document(document) == _canonical_document(original):
            steps.append(Step("aws", UNCHANGED, "iam-role-trust", role, f"role {role} already has its trust from before dual"))
            continue
        others = [s for s in _statements(document) if not str(s.get("Sid", "")).startswith(SID_PREFIX)]
        if sorted(_canonical(s) for s in others) != sorted(_canonical(s) for s in _statements(original)):
            steps.append(Step("aws", CONFLICT, "iam-role-trust", role,
                              f"role {role}'s trust changed since dual beyond rbacbridge's statements: not restored",
                              reason="restoring the recorded document would undo someone else's change; remove the "
                                     f"statements with Sid {SID_PREFIX}* by hand"))
            continue
        steps.append(Step("aws", RESTORE, "iam-role-trust", role, f"rollback dual: restore role {role}'s trust policy "
                          "recorded before dual (removes rbacbridge's statements)",
                          run=_trust_restorer(aws_gw, role, original)))
    trust_steps, steps = steps, []
    unannotate: list[Step] = []
    for ref, entry in sorted(record.accounts.items()):
        namespace, name = ref.split("/", 1)
        live = kube_gw.get("ServiceAccount", name, namespace)
        meta = (live or {}).get("metadata") or {}
        if entry.get("created"):
            if live is None:
                steps.append(Step("kube", UNCHANGED, "ServiceAccount", ref, f"ServiceAccount {ref} is already gone"))
            elif entry.get("uid") and meta.get("uid") == entry["uid"]:
                steps.append(Step("kube", DELETE, "ServiceAccount", ref, f"rollback dual: delete ServiceAccount {ref} "
                                  "(created by dual: its uid is in the record)",
                                  run=_deleter(kube_gw, namespace, name, entry["uid"])))
            else:
                steps.append(Step("kube", UNCHANGED, "ServiceAccount", ref, f"ServiceAccount {ref} is not the one dual "
                                  "created (another uid): left alone"))
        elif entry.get("annotated") and live is not None:
            from rbacbridge.migrate.mapping import IRSA_ANNOTATION

            if IRSA_ANNOTATION in (meta.get("annotations") or {}):
                unannotate.append(Step("kube", UPDATE, "ServiceAccount", ref, f"rollback dual: remove {IRSA_ANNOTATION} from "
                                       f"ServiceAccount {ref}", run=_annotator(kube_gw, namespace, name, {IRSA_ANNOTATION: None})))
    for ref, entry in sorted(record.associations.items()):
        if not entry.get("id"):
            continue
        live = aws_gw.get_or_none("eks", "describe_pod_identity_association", ("ResourceNotFoundException",),
                                  clusterName=record.cluster_name, associationId=entry["id"])
        if live is None:
            unannotate.append(Step("aws", UNCHANGED, "pod-identity-association", ref, f"association {entry['id']} of {ref} is already gone"))
            continue
        unannotate.append(Step("aws", DELETE, "pod-identity-association", ref, f"rollback dual: delete the Pod Identity "
                               f"association {entry['id']} of {ref} (made by dual: its id is in the record)",
                               run=_association_deleter(aws_gw, record.cluster_name, entry["id"])))
    restarts = _restarts_off_the_new_path(kube_gw, set(record.accounts) | set(record.associations), timeout)
    steps = unannotate + restarts + trust_steps + steps
    provider = record.provider
    if provider.get("created") and provider.get("arn"):
        live = aws_gw.get_or_none("iam", "get_open_id_connect_provider", ("NoSuchEntity",),
                                  OpenIDConnectProviderArn=provider["arn"])
        if live is not None:
            steps.append(Step("aws", DELETE, "iam-oidc-provider", provider["arn"].split("oidc-provider/", 1)[-1],
                              "rollback dual: delete the IAM OIDC provider dual created",
                              run=lambda: aws_gw.call("iam", "delete_open_id_connect_provider",
                                                      OpenIDConnectProviderArn=provider["arn"])))
    result.plan.steps.extend(steps)
    result.before = _write(store, record, state="running")
    result.after = store.erase
    if not result.plan.changes:
        steps.append(Step("aws", DELETE, "migration-record", record.install, "rollback dual: erase the migration record",
                          run=lambda: None))
    return result


def _restarts_off_the_new_path(kube_gw, accounts: set[str], timeout: float) -> list[Step]:
    """Workloads running as a ServiceAccount dual annotated, created or associated whose pods were given the new path
    (a restart since dual): restarted once the annotation or association is gone, and waited for, so no pod holds
    a token its role no longer trusts."""
    from rbacbridge.migrate.rollout import pod_path, wait_for_rollouts, workload_pods
    from rbacbridge.migrate.record import stamp

    steps = []
    namespaces = sorted({ref.split("/", 1)[0] for ref in accounts})
    for namespace in namespaces:
        for kind in RESTARTABLE:
            for obj in kube_gw.list(kind, namespace):
                name = obj["metadata"]["name"]
                if f"{namespace}/{_service_account(kind, obj)}" not in accounts:
                    continue
                if all(pod_path(p) == "kube2iam" for p in workload_pods(kube_gw, kind, namespace, name)):
                    continue

                def run(kind=kind, name=name, namespace=namespace) -> None:
                    _repointer(kube_gw, kind, namespace, name, None, stamp())()
                    wait_for_rollouts(kube_gw, [(kind, namespace, name)], timeout, _Quiet())
                steps.append(Step("kube", RESTORE, kind, f"{namespace}/{name}", f"rollback dual: {kind} {namespace}/{name}: "
                                  "restart its pods (they were given the new path) and wait for them",
                                  reason="before its role stops trusting their token", run=run))
    return steps


class _Quiet:
    def progress(self, message: str) -> None:
        pass


def _association_deleter(aws_gw, cluster: str | None, association_id: str) -> Callable[[], None]:
    def delete() -> None:
        aws_gw.call("eks", "delete_pod_identity_association", clusterName=cluster, associationId=association_id)
    return delete


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    statements = document.get("Statement") or []
    return [statements] if isinstance(statements, dict) else list(statements)


def _canonical_document(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True)


def _trust_restorer(aws_gw, role: str, original: dict[str, Any]) -> Callable[[], None]:
    def restore() -> None:
        aws_gw.call("iam", "update_assume_role_policy", RoleName=role, PolicyDocument=json.dumps(original))
    return restore


def _deleter(kube_gw, namespace: str, name: str, uid: str) -> Callable[[], None]:
    def delete() -> None:
        kube_gw.request("DELETE", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}",
                        body={"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}})
    return delete
