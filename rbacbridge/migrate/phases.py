"""`migrate apply --phase dual|cutover` and `migrate rollback`: the plan's steps of one phase, with what runs them.

The steps are `migrate plan`'s (rbacbridge.migrate.plan_migration: the same reads, the same messages), given a
`run` here; steps already done (the record and live state agree) become `unchanged`, so a re-run is "no
changes" and a run stopped half-way (kill -9) is finished by running it again. Before the first change of a
phase the record (rbacbridge.migrate.record) is written with what the phase will replace (each role's trust
policy as it is now, kept from an earlier stopped run if there is one) and what it intends to create (so an
object created just before a kill is claimed by the re-run on its creation time); after the last, with the
uids created and `state: done`.

rollback (rbacbridge.migrate.rollback) undoes the last phase from the record alone; rollout waits after cutover
and checks the new pods. `finish` is not built yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import unquote

from rbacbridge import MANAGED_BY_KEY, MANAGED_BY_VALUE
from rbacbridge.errors import RbacbridgeError, UsageError
from rbacbridge.plan import CREATE, UNCHANGED, UPDATE, Plan, Step

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
RESTARTABLE = ("Deployment", "StatefulSet", "DaemonSet")


@dataclass
class PhasePlan:
    """A phase's plan and what the executor does around its steps."""

    phase: str  # dual | cutover | rollback-dual | rollback-cutover
    plan: Plan
    store: Any  # MigrationStore
    before: Callable[[], None] | None = None  # the record's first write (before any change)
    after: Callable[[], None] | None = None  # the record's last write (after every change)
    waits: list[Callable[[Any], None]] = field(default_factory=list)  # rollout and checks, given the reporter
    blockers: list[Any] = field(default_factory=list)


def _trust_document(aws_gw, role: str) -> dict[str, Any]:
    document = aws_gw.call("iam", "get_role", RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    return json.loads(unquote(document)) if isinstance(document, str) else document


def plan_phase(ctx, target: str, phase: str, issuer: str | None, cluster_name: str | None, timeout: float) -> PhasePlan:
    from rbacbridge import aws, kube
    from rbacbridge.migrate import plan_migration
    from rbacbridge.migrate.record import MigrationRecord, open_store

    migration = plan_migration(ctx, target, issuer=issuer, cluster_name=cluster_name)
    aws_gw, kube_gw = aws.gateway(ctx), kube.gateway(ctx)
    store = open_store(ctx, aws_gw, migration.account)
    record = store.record
    if record is not None and record.target != target:
        raise UsageError(f"the migration under way is to {record.target}, not {target}: roll it back first")
    expected = {"dual": (None, "dual"), "cutover": ("dual", "cutover")}[phase]
    current = record.phase if record else None
    if current not in expected or (current == "cutover" and phase == "dual"):
        raise UsageError(f"cannot apply {phase}: the migration is at {current or 'kube2iam (no phase applied)'}"
                         + (" (apply dual first)" if phase == "cutover" else " (roll back first)"))
    if phase == "cutover" and record and record.phase == "dual" and record.state != "done":
        raise UsageError("cannot apply cutover: the dual phase did not finish (run `migrate apply --phase dual` again)")
    if record is None:
        from rbacbridge.migrate.record import stamp

        record = MigrationRecord(store.key.install, migration.account, target, "dual", "running", migration.issuer,
                                 cluster_name, stamp())
    blockers = [b for b in migration.blockers if not (phase == "dual" and b.kind == "oidc-provider")]
    result = PhasePlan(phase, Plan(notes=list(migration.plan.notes)), store, blockers=blockers)
    if phase == "dual":
        _dual(result, migration, record, aws_gw, kube_gw)
    else:
        _cutover(result, migration, record, kube_gw, timeout)
    return result


def _write(store, record, **changes) -> Callable[[], None]:
    def write() -> None:
        for name, value in changes.items():
            setattr(record, name, value)
        store.write(record)
    return write


def _dual(result: PhasePlan, migration, record, aws_gw, kube_gw) -> None:
    from rbacbridge.migrate.mapping import IRSA_ANNOTATION
    from rbacbridge.migrate.record import created_after_intent, stamp
    from rbacbridge.migrate.trust import IRSA, merged_trust, statements_for

    steps = result.plan.steps
    intents: list[Callable[[], None]] = []
    if migration.target == IRSA and migration.issuer and any(b.kind == "oidc-provider" for b in migration.blockers):
        if not any(b.kind == "provider-quota" for b in migration.blockers):
            steps.append(_provider_create(aws_gw, record, migration.issuer, _provider_arn(migration, aws_gw), intents))
    elif migration.target == IRSA and record.provider.get("intent") and not record.provider.get("created"):
        # a run stopped between the intent and its last write: the provider AWS made after the intent is ours
        arn = record.provider.get("arn") or ""
        live = arn and aws_gw.get_or_none("iam", "get_open_id_connect_provider", ("NoSuchEntity",), OpenIDConnectProviderArn=arn)
        if live and created_after_intent(record.provider["intent"], live.get("CreateDate")):
            record.provider["created"] = True
    by_name = {t["role_arn"].rsplit("/", 1)[-1]: t for t in migration.trust}
    for step in migration.plan.steps:
        if step.details.get("phase") != "dual":
            continue
        if step.kind == "pod-identity-association":
            _association(step, record, aws_gw, migration.cluster_name or "", intents, created_after_intent)
            steps.append(step)
            continue
        if step.kind == "iam-role-trust" and step.action == UPDATE:
            entry = by_name[step.name]
            pairs = migration.mapping.pairs[entry["role_arn"]]
            wanted = statements_for(migration.target, pairs, _provider_arn(migration, aws_gw), migration.issuer)
            intents.append(_keep_original(aws_gw, record, step.name))
            step.run = _trust_adder(aws_gw, step.name, wanted, merged_trust)
        elif step.kind == "ServiceAccount" and step.action in (CREATE, UPDATE):
            namespace, name = step.name.split("/", 1)
            sa = next(s for s in migration.mapping.service_accounts if (s.namespace, s.name) == (namespace, name))
            annotations = {IRSA_ANNOTATION: sa.role_arn} if migration.target == IRSA else {}
            if step.action == CREATE:
                intents.append(_intend_account(record, step.name, stamp))
                step.run = _account_creator(kube_gw, record, namespace, name, annotations)
            else:
                intents.append(_intend_annotation(record, step.name))
                step.run = _annotator(kube_gw, namespace, name, annotations)
        elif step.kind == "ServiceAccount" and step.action == UNCHANGED:
            _claim_account(kube_gw, record, step.name, created_after_intent)
        steps.append(step)
    changes = [s for s in steps if s.changes]
    if changes and not result.store.key.exists:
        steps.insert(0, Step("aws", CREATE, "kms-key", result.store.key.alias,
                             f"dual: create the install's KMS key {result.store.key.alias} (ECC_NIST_P256, SIGN_VERIFY): it "
                             "signs the migration record", reason="no rbacbridge setup made one in this account and region",
                             run=lambda: None, details={"phase": "dual"}))  # created by the record's first write

    def before() -> None:
        for intent in intents:
            intent()
        record.phase, record.state = "dual", "running"
        result.store.write(record)

    result.before = before
    result.after = _write(result.store, record, phase="dual", state="done")
    if not changes and record.state != "done" and result.store.record is not None:
        steps.append(Step("aws", UPDATE, "migration-record", record.install, "dual: record the dual phase as done",
                          run=lambda: None))


def _association(step: Step, record, aws_gw, cluster: str, intents: list, created_after_intent) -> None:
    """A Pod Identity association dual makes (its id recorded), or one a stopped run made (claimed by its creation time)."""
    from rbacbridge.migrate.record import stamp as now

    namespace, name = step.name.split("/", 1)
    entry = record.associations.get(step.name)
    if step.action == UNCHANGED:
        if entry and not entry.get("id") and created_after_intent(entry.get("intent"), _eks_time(step.details.get("created_at"))):
            entry["id"] = step.details.get("association_id")
        return
    if step.action != CREATE or "role_arn" not in step.details:
        return

    def intend() -> None:
        if not (record.associations.get(step.name) or {}).get("id"):
            record.associations[step.name] = {"id": None, "intent": now()}

    def create() -> None:
        made = aws_gw.call("eks", "create_pod_identity_association", clusterName=cluster, namespace=namespace,
                           serviceAccount=name, roleArn=step.details["role_arn"], tags={MANAGED_BY_KEY: MANAGED_BY_VALUE})
        record.associations[step.name]["id"] = made["association"]["associationId"]
    intents.append(intend)
    step.run = create


def _eks_time(text: str | None):
    from datetime import datetime

    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _provider_arn(migration, aws_gw) -> str | None:
    from rbacbridge.migrate.trust import provider_arn

    if not migration.issuer:
        return None
    partition = aws_gw.identity().get("Arn", "arn:aws:").split(":")[1] or "aws"
    return provider_arn(migration.account, migration.issuer, partition)


def _provider_create(aws_gw, record, issuer: str, arn: str | None, intents: list) -> Step:
    from rbacbridge.migrate.record import stamp
    from rbacbridge.migrate.trust import issuer_host

    host = issuer_host(issuer)

    def intend() -> None:
        record.provider = {"arn": arn, "created": False, "intent": stamp()}

    def create() -> None:
        made = aws_gw.call("iam", "create_open_id_connect_provider", Url=f"https://{host}", ClientIDList=["sts.amazonaws.com"],
                           Tags=[{"Key": MANAGED_BY_KEY, "Value": MANAGED_BY_VALUE}])
        record.provider.update(arn=made["OpenIDConnectProviderArn"], created=True)

    intents.append(intend)
    return Step("aws", CREATE, "iam-oidc-provider", host,
                f"dual: create IAM OIDC provider for {host} (audience sts.amazonaws.com; recorded as created by rbacbridge)",
                reason="IRSA: AWS STS trusts the cluster's service-account tokens through it", run=create,
                details={"phase": "dual"})


def _keep_original(aws_gw, record, role: str) -> Callable[[], None]:
    def keep() -> None:
        entry = record.trust.setdefault(role, {})
        if "dual" not in entry:  # an earlier stopped run's is the original: never replaced by live state
            entry["dual"] = _trust_document(aws_gw, role)
    return keep


def _trust_adder(aws_gw, role: str, wanted: list, merged_trust) -> Callable[[], None]:
    def add() -> None:
        after, added = merged_trust(_trust_document(aws_gw, role), wanted)
        if added:
            aws_gw.call("iam", "update_assume_role_policy", RoleName=role, PolicyDocument=json.dumps(after))
    return add


def _intend_account(record, ref: str, stamp) -> Callable[[], None]:
    def intend() -> None:
        entry = record.accounts.get(ref) or {}
        if not entry.get("uid"):
            record.accounts[ref] = {"uid": None, "created": True, "intent": stamp(), "annotated": False}
    return intend


def _intend_annotation(record, ref: str) -> Callable[[], None]:
    def intend() -> None:
        record.accounts.setdefault(ref, {"uid": None, "created": False, "intent": "", "annotated": True})
    return intend


def _account_creator(kube_gw, record, namespace: str, name: str, annotations: dict) -> Callable[[], None]:
    def create() -> None:
        made = kube_gw.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", body={
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY_KEY: MANAGED_BY_VALUE},
                         "annotations": annotations}})
        record.accounts[f"{namespace}/{name}"]["uid"] = made["metadata"]["uid"]
    return create


def _annotator(kube_gw, namespace: str, name: str, annotations: dict) -> Callable[[], None]:
    def annotate() -> None:
        kube_gw.merge_patch("ServiceAccount", name, {"metadata": {"annotations": annotations}}, namespace)
    return annotate


def _claim_account(kube_gw, record, ref: str, created_after_intent) -> None:
    """A ServiceAccount created by a run killed before its last write: ours when created after the signed intent."""
    entry = record.accounts.get(ref)
    if not entry or not entry.get("created") or entry.get("uid"):
        return
    namespace, name = ref.split("/", 1)
    live = kube_gw.get("ServiceAccount", name, namespace)
    meta = (live or {}).get("metadata") or {}
    if live and created_after_intent(entry.get("intent"), meta.get("creationTimestamp")):
        entry["uid"] = meta.get("uid")


# -- cutover --

def _cutover(result: PhasePlan, migration, record, kube_gw, timeout: float) -> None:
    from rbacbridge.migrate.record import stamp

    steps = result.plan.steps
    moves = {(c.kind, c.namespace, c.name): c for c in migration.mapping.changes}
    carried = {(w.kind, w.namespace, w.name): w for w in migration.inventory.workloads if w.carried}
    intents: list[Callable[[], None]] = []
    restarted: list[tuple[str, str, str]] = []
    for step in migration.plan.steps:
        if step.details.get("phase") != "cutover":
            continue
        namespace, name = step.name.split("/", 1)
        key = (step.kind, namespace, name)
        ref = f"{step.kind} {namespace}/{name}"
        move = moves.get(key)
        if step.kind == "Pod":
            result.plan.notes.append(f"{ref} is a bare pod: recreate it yourself"
                                     + (f" with serviceAccountName {move.to_service_account}" if move else "")
                                     + " (rbacbridge does not delete pods it did not create)")
            continue
        if step.kind in ("Job",):
            result.plan.notes.append(f"{ref}: a Job's pod template cannot change; its next run (or a new Job) gets the new path")
            continue
        live = kube_gw.get(step.kind, name, namespace) or {}
        entry = record.workloads.get(ref)
        template_meta = ((_template(step.kind, live).get("metadata")) or {})
        if entry and (template_meta.get("annotations") or {}).get(RESTARTED_AT) == entry.get("restarted_at") \
                and _service_account(step.kind, live) == entry["to"]:
            steps.append(Step("kube", UNCHANGED, step.kind, step.name, f"{ref} already runs as {entry['to']} and was "
                              f"restarted at {entry['restarted_at']}", details={"phase": "cutover"}))
            if step.kind in RESTARTABLE:
                restarted.append(key)
            continue
        to_sa = move.to_service_account if move else carried[key].service_account
        from_sa = (entry or {}).get("from") or _service_account(step.kind, live)
        at = stamp()
        intents.append(_intend_workload(record, ref, from_sa, to_sa, at))
        restart = step.kind in RESTARTABLE
        step.run = _repointer(kube_gw, step.kind, namespace, name, to_sa if move else None, at if restart else None)
        steps.append(step)
        if restart:
            restarted.append(key)

    def before() -> None:
        for intent in intents:
            intent()
        record.phase, record.state = "cutover", "running"
        result.store.write(record)

    result.before = before
    result.after = _write(result.store, record, phase="cutover", state="done")
    wanted = {key: (moves[key].to_service_account if key in moves else carried[key].service_account, carried[key].role_arn)
              for key in restarted}
    from rbacbridge.migrate.rollout import check_new_path, wait_for_rollouts

    result.waits.append(lambda reporter: wait_for_rollouts(kube_gw, list(wanted), timeout, reporter))
    result.waits.append(lambda reporter: check_new_path(kube_gw, wanted, record, migration.target, reporter))
    if not [s for s in steps if s.changes] and record.phase == "cutover" and record.state != "done":
        steps.append(Step("aws", UPDATE, "migration-record", record.install, "cutover: record the cutover phase as done",
                          run=lambda: None))


def _template(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    from rbacbridge.migrate.inventory import pod_template

    return pod_template(kind, obj)


def _service_account(kind: str, obj: dict[str, Any]) -> str:
    spec = _template(kind, obj).get("spec") or {}
    return spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"


def _intend_workload(record, ref: str, from_sa: str, to_sa: str, at: str) -> Callable[[], None]:
    def intend() -> None:
        previous = record.workloads.get(ref) or {}
        record.workloads[ref] = {"from": previous.get("from", from_sa), "to": to_sa, "restarted_at": at}
    return intend


def template_patch(kind: str, service_account: str | None, restarted_at: str | None) -> dict[str, Any]:
    """The merge patch that points a workload's pods at a ServiceAccount and/or restarts them as
    `kubectl rollout restart` does (the restartedAt annotation on the pod template)."""
    template: dict[str, Any] = {}
    if restarted_at:
        template["metadata"] = {"annotations": {RESTARTED_AT: restarted_at}}
    if service_account:
        template["spec"] = {"serviceAccountName": service_account}
    if kind == "CronJob":
        return {"spec": {"jobTemplate": {"spec": {"template": template}}}}
    return {"spec": {"template": template}}


def _repointer(kube_gw, kind: str, namespace: str, name: str, service_account: str | None, restarted_at: str | None):
    def run() -> None:
        kube_gw.merge_patch(kind, name, template_patch(kind, service_account, restarted_at), namespace)
    return run


KILL_HOOK = "RBACBRIDGE_TEST_KILL_AFTER_STEPS"  # tests only: SIGKILL this process after that many steps ran


def _kill_hook(step_done: Callable[[Step], None]) -> Callable[[Step], None]:
    import os

    limit = os.environ.get(KILL_HOOK, "")
    if not limit.isdigit():
        return step_done
    count = [0]

    def done(step: Step) -> None:
        step_done(step)
        count[0] += 1
        if count[0] >= int(limit):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
    return done


def run_phase(phase_plan: PhasePlan, reporter) -> Any:
    """Execute: the record's first write, the steps in order, the waits, the record's last write."""
    from rbacbridge.plan import Execution, execute

    changes = phase_plan.plan.changes
    if changes and phase_plan.before:
        phase_plan.before()
    execution = execute(phase_plan.plan.steps, on_start=reporter.step_started, on_done=_kill_hook(reporter.step_done))
    if not execution.ok:
        return execution
    try:
        for wait in phase_plan.waits:
            wait(reporter)
    except RbacbridgeError as exc:
        return Execution(done=execution.done, failed=Step("kube", "wait", "rollout", phase_plan.phase, "checking the rollout"),
                         error=exc)
    if (changes or (phase_plan.store.record and phase_plan.store.record.state != "done")) and phase_plan.after:
        phase_plan.after()
    return execution
