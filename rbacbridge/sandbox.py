"""The verification matrix in the sandbox (`rbacbridge demo`): moto computes the observed matrix.

There is no cluster in the sandbox, so each principal's calls are made with boto3 using the
credentials of the role it would get from kube2iam (or from the instance profile): the node role
through sts:AssumeRole, the pod role through sts:AssumeRole from the node role's session. With
moto's IAM enforcement on, S3 then allows or denies each call from the real policy documents.

Principals and the expected matrix come from the configuration's tenants (rbacbridge.verify.expected).
The sandbox's kube2iam stand-in is small and its own: a pod gets its annotated role if its namespace's
allowed-roles (as setup renders them, rbacbridge.kube.desired_objects) match it by glob, and the role's
live trust policy trusts the node role; an annotation cell asks it for another tenant's role the same way.

`fault` plants one fault (in the first tenant with workloads) so the demo can show verify catching it
and blaming the right layer:
  trust      the tenant role's trust policy names the wrong ARN              -> blamed on trust
  policy     the tenant policy grants write on the wrong bucket              -> blamed on permissions
  iptables   no interception: the tenant's pods get the node role           -> blamed on interception
  namespace  the tenant's namespace does not allow its role (kube2iam refuses) -> blamed on kube2iam
`starting_point` (stage before only) is the article's starting point instead: every tenant's grants
attached to the node role, no kube2iam, so every pod reaches every tenant's buckets (the breach).
Changes in IAM are undone at the end.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from typing import Any

from rbacbridge import policy_eval as pe
from rbacbridge.aws import live_documents  # noqa: F401 - also used by tests
from rbacbridge import verify as v
from rbacbridge.config import Config, Tenant
from rbacbridge.errors import UsageError
from rbacbridge.sandbox_backend import set_enforcement  # noqa: F401 - also used by tests
from rbacbridge.verify.inprocess import Boto3Backend  # noqa: F401 - the sandbox's principals; also used by tests, bench

FAULTS = ("trust", "policy", "iptables", "namespace")
# The layer each fault's own cells are blamed on (chain cells a fault opens are escalations: see fault_cells).
FAULT_LAYERS = {"trust": v.TRUST, "policy": v.PERMISSIONS, "iptables": v.INTERCEPTION, "namespace": v.KUBE2IAM}
ADMIN_USER = "rbacbridge-sandbox-admin"
_DUMMY = {"aws_access_key_id": "sandbox", "aws_secret_access_key": "sandbox"}


def _client(service: str, endpoint_url: str, region: str, credentials: dict[str, str]):
    import boto3

    return boto3.client(service, endpoint_url=endpoint_url, region_name=region, **credentials)


def _bootstrap_admin(endpoint_url: str, region: str) -> dict[str, str]:
    """While enforcement is off: an admin user with `*:*` and a fresh access key."""
    iam = _client("iam", endpoint_url, region, _DUMMY)
    try:
        iam.create_user(UserName=ADMIN_USER, Tags=[{"Key": "managed-by", "Value": "rbacbridge"}])
    except iam.exceptions.EntityAlreadyExistsException:
        for key in iam.list_access_keys(UserName=ADMIN_USER)["AccessKeyMetadata"]:
            iam.delete_access_key(UserName=ADMIN_USER, AccessKeyId=key["AccessKeyId"])
    iam.put_user_policy(UserName=ADMIN_USER, PolicyName="sandbox-admin", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


def _doc(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else value


def fault_tenant(config: Config, fault: str | None) -> Tenant | None:
    """The tenant a fault is planted in: the first with workloads (and a role, and for `policy` a policy,
    rbacbridge manages). The article's config: its one tenant, nginx-annotated."""
    if fault is None:
        return None
    for item in config.tenants:
        if item.workloads and (fault in ("iptables", "namespace") or item.managed) and (fault != "policy" or item.policy):
            return item
    raise UsageError(f"invalid --break {fault}: no tenant with workloads" + (" and a policy rbacbridge manages" if fault == "policy" else ""))


def wrong_trust(config: Config, account: str) -> dict[str, Any]:
    """The trust fault's document: it trusts a role that is not the node role."""
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {
        "AWS": config.role_arn(account, config.node_role + "-wrong")}}]}


def misdirected_writes(config: Config, document: dict[str, Any]) -> dict[str, Any]:
    """The policy fault's document: every statement granting s3:PutObject grants it on the shared bucket instead."""
    document = copy.deepcopy(document)
    for statement in pe.statements(document):
        if "s3:PutObject" in pe._as_list(statement.get("Action")):
            statement["Resource"] = [pe.object_arn(config.shared_bucket, "*", config.partition.name)]  # the wrong bucket
    return document


CellKey = tuple  # (principal, check, bucket or target role or None)


def expected_cells(expected: list[v.Expected]) -> dict[CellKey, Any]:
    """Every cell of an expected matrix with the value it wants: identity -> role (None: no credentials);
    read/write -> allowed; chain/annotation -> does the configuration grant it (the cell itself wants no)."""
    out: dict[CellKey, Any] = {}
    for exp in expected:
        name = exp.principal.name
        out[(name, v.IDENTITY, None)] = exp.role
        out.update({(name, op, location): allowed for (location, op), allowed in exp.access.items()})
        out.update({(name, v.CHAIN, target): bool(granted) for target, granted in exp.chains.items()})
        out.update({(name, v.ANNOTATION, target): bool(granted) for target, granted in exp.annotations.items()})
    return out


def cell_key(cell: v.Cell) -> CellKey:
    return (cell.principal, cell.check, cell.bucket if cell.check in (v.READ, v.WRITE) else cell.target)


def fault_cells(config: Config, account: str, fault: str) -> dict[CellKey, tuple[Any, str]]:
    """The cells a planted fault must break, from the fault's definition and the configuration only (never from
    what was observed): cell -> (the value the fault gives it, the layer verify must blame).

    The fault is applied to what setup wants (the documents, the allowed-roles, which pods kube2iam intercepts)
    and the expected matrix is computed twice, without and with it; the cells that differ are the fault's.
    A chain cell the fault opens (a pod left with the node role may assume the pod roles) is an escalation."""
    target = fault_tenant(config, fault)
    principals = v.with_probe_pods(config, v.configured_principals(config))
    clean_documents = v.managed_documents(config, account)
    documents, allowed, faulted_principals = copy.deepcopy(clean_documents), None, principals
    if fault == "trust":
        documents.trust[target.role] = wrong_trust(config, account)
    elif fault == "policy":
        documents.policies[target.role] = [misdirected_writes(config, d) for d in documents.policies[target.role]]
    elif fault == "namespace":
        allowed = {**v.intended_allowed_roles(config), **{ns: [] for ns in target.namespaces}}
    elif fault == "iptables":  # nothing intercepts the tenant's pods: they reach the instance profile like the host
        from dataclasses import replace

        faulted_principals = [replace(p, host_network=True) if p.tenant == target.name else p for p in principals]
    clean = expected_cells(v.expected_matrix(config, account, "after", principals, None, clean_documents))
    faulted = expected_cells(v.expected_matrix(config, account, "after", faulted_principals, allowed, documents))
    layers = {v.CHAIN: v.ESCALATION, v.ANNOTATION: v.KUBE2IAM}
    return {key: (value, layers.get(key[1], FAULT_LAYERS[fault])) for key, value in faulted.items()
            if key in clean and value != clean[key]}


def fault_differences(config: Config, account: str, fault: str, result: v.VerifyResult) -> list[str]:
    """How the observed mismatches differ from the ones the fault must cause (empty: exactly those)."""
    want = fault_cells(config, account, fault)
    got = {cell_key(c): c for c in result.mismatches}
    out = [f"{' '.join(filter(None, k))} did not mismatch" for k in want if k not in got]
    out += [f"{' '.join(filter(None, k))} mismatched too" for k in got if k not in want]
    for key in want.keys() & got.keys():
        value, layer = want[key]
        cell = got[key]
        if key[1] == v.IDENTITY and cell.observed != value:
            out.append(f"{' '.join(filter(None, key))}: observed {cell.observed or 'no credentials'}, the fault gives {value or 'no credentials'}")
        if cell.blame is None or cell.blame.layer != layer:
            out.append(f"{' '.join(filter(None, key))} blamed on {cell.blame.layer if cell.blame else 'nothing'}, not {layer}")
    return out


def _plant(iam, config: Config, account: str, fault: str | None) -> list:
    """Plant the fault; return the undo actions."""
    undo: list = []
    target = fault_tenant(config, fault)
    if fault == "trust":
        original = iam.get_role(RoleName=target.role)["Role"]["AssumeRolePolicyDocument"]
        iam.update_assume_role_policy(RoleName=target.role, PolicyDocument=json.dumps(wrong_trust(config, account)))
        undo.append(lambda: iam.update_assume_role_policy(RoleName=target.role, PolicyDocument=json.dumps(_doc(original))))
    elif fault == "policy":
        arn = config.policy_arn(account, target.policy)
        old = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        document = misdirected_writes(config, _doc(iam.get_policy_version(PolicyArn=arn, VersionId=old)["PolicyVersion"]["Document"]))
        new = iam.create_policy_version(PolicyArn=arn, PolicyDocument=json.dumps(document), SetAsDefault=True)["PolicyVersion"]["VersionId"]

        def restore():
            iam.set_default_policy_version(PolicyArn=arn, VersionId=old)
            iam.delete_policy_version(PolicyArn=arn, VersionId=new)

        undo.append(restore)
    return undo


def starting_point_policies(config: Config) -> list[str]:
    """The tenant policies the article's starting point gives the node role: every managed tenant's."""
    return [t.policy for t in config.tenants if t.managed and t.policy]


def _plant_starting_point(iam, config: Config, account: str) -> list:
    """The article's starting point: what each tenant needs, granted to the node's instance profile role."""
    undo: list = []
    for name in starting_point_policies(config):
        arn = config.policy_arn(account, name)
        iam.attach_role_policy(RoleName=config.node_role, PolicyArn=arn)
        undo.append(lambda arn=arn: iam.detach_role_policy(RoleName=config.node_role, PolicyArn=arn))
    return undo


def starting_point_documents(config: Config, account: str) -> v.Documents:
    """What the configuration says the node role holds at the starting point (expected, not read back)."""
    from rbacbridge.aws import tenant_policy_document

    docs = v.managed_documents(config, account)
    extra = [tenant_policy_document(t, config.partition.name) for t in config.tenants if t.managed and t.policy]
    docs.policies[config.node_role] = docs.policies.get(config.node_role, []) + extra
    return docs


def _assume(sts, role_arn: str, session: str) -> dict[str, str]:
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=session)["Credentials"]
    return {"aws_access_key_id": creds["AccessKeyId"], "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"]}


def sandbox_matrix(endpoint_url: str, config: Config, account: str, stage: str = "after", fault: str | None = None,
                   tenant: str | None = None, starting_point: bool = False,
                   probe_from: str = v.DEFAULT_PROBE_FROM, settle: float | None = None, paths: Any = None) -> v.VerifyResult:
    """Run the verification matrix against a moto server holding the resources `setup` creates.
    `tenant`: that tenant's pods only. `starting_point` (stage before): the article's starting point.
    `settle`: seconds of settle window (verify.settle); none unless asked (moto applies IAM changes at once).
    Blamed cells are explained by rbacbridge's evaluator (moto has no iam:SimulatePrincipalPolicy).
    `paths` (rbacbridge.demo_migrate.PodPaths): the migration demo's pods that take web identity credentials
    and whether kube2iam still serves the others."""
    if fault is not None and fault not in FAULTS:
        raise UsageError(f"invalid --break {fault!r}: choose from {', '.join(FAULTS)}")
    if stage not in v.STAGES:
        raise UsageError(f"invalid --stage {stage!r}: choose from {', '.join(v.STAGES)}")
    if starting_point and (stage != "before" or fault):
        raise UsageError("the starting point is a stage-before matrix without a planted fault")
    # an unknown tenant fails here, before any call; a tenant without workloads gets a probe pod (issue 28)
    principals = v.with_probe_pods(config, v.configured_principals(config, tenant), tenant)
    if paths is not None:
        principals = paths.admitted(principals)
    region = config.region
    set_enforcement(endpoint_url, False)
    admin = _bootstrap_admin(endpoint_url, region)
    iam = _client("iam", endpoint_url, region, admin)
    undo = _plant_starting_point(iam, config, account) if starting_point else _plant(iam, config, account, fault)
    try:
        live = live_documents(iam, list(v.role_arns(config, account)))
        diagnostics = v.Diagnostics(documents=live)
        allowed = rendered_allowed_roles(config, account)
        broken = fault_tenant(config, fault)
        if fault == "namespace":
            for namespace in broken.namespaces:
                allowed[namespace] = diagnostics.allowed_roles[namespace] = []
        credentials = _principal_credentials(endpoint_url, config, account, stage, fault, admin, live, principals, allowed,
                                             paths)
        targets = [(p, credentials[p.name]) for p in principals]
        documents = starting_point_documents(config, account) if starting_point else None
        set_enforcement(endpoint_url, True)
        try:
            from rbacbridge.verify.settle import settle_window

            result = v.run_matrix(config, account, stage, targets, documents=documents, diagnostics=diagnostics,
                                  probe_from=probe_from, endpoint_url=endpoint_url,
                                  settle_window=settle_window(settle) if settle is not None else None)
        finally:
            set_enforcement(endpoint_url, False)
        result.require_evidence()  # never triggers: every tenant has a workload's pod or a probe pod here
        result.notes.append("sandbox: calls made with each principal's role credentials; moto enforced the live policies")
        if starting_point:
            result.notes.append("sandbox: the article's starting point: every tenant's grants on the node role "
                                f"({', '.join(starting_point_policies(config)) or 'none'}), no kube2iam")
        if fault:
            result.notes.append(f"sandbox: fault planted: {fault} (tenant {broken.name})")
        for p in (p for p in principals if p.probe_pod):
            result.notes.append(f"tenant {p.tenant} has no workloads: checked from a probe pod ({p.name}) in namespace "
                                f"{p.namespace}, annotated with its role (live verify starts one the same way)")
        return result
    finally:
        for action in reversed(undo):
            action()


def rendered_allowed_roles(config: Config, account: str) -> dict[str, list[str]]:
    """The allowed-roles annotation of each namespace as setup applies it (templates/k8s, rendered)."""
    from dataclasses import replace

    from rbacbridge.kube import ALLOWED_ROLES, FALLBACK_INTERFACE, desired_objects

    out = {}
    for obj in desired_objects(replace(config, account_id=account), FALLBACK_INTERFACE):
        value = (obj["metadata"].get("annotations") or {}).get(ALLOWED_ROLES)
        if obj["kind"] == "Namespace" and value is not None:
            out[obj["metadata"]["name"]] = json.loads(value)
    return out


class PodBackend:
    """A pod in the sandbox: its calls go out with the credentials it was given; request_role asks the
    sandbox's kube2iam stand-in for another role (an annotation cell)."""

    def __init__(self, base: Any, ask: Any):
        self.base, self._ask = base, ask

    def identity(self) -> v.CallResult:
        return self.base.identity()

    def list_bucket(self, bucket: str) -> v.CallResult:
        return self.base.list_bucket(bucket)

    def put_object(self, bucket: str, key: str) -> v.CallResult:
        return self.base.put_object(bucket, key)

    def delete_object(self, bucket: str, key: str) -> v.CallResult:
        return self.base.delete_object(bucket, key)

    def assume_role(self, role_arn: str) -> v.CallResult:
        return self.base.assume_role(role_arn)

    def request_role(self, role: str, role_arn: str) -> v.CallResult:
        return self._ask(role, role_arn)

    def pod_credentials(self) -> tuple[v.CallResult, Any, str | None]:
        """--probe-from rbacbridge: the pod's identity and the credentials it was given (verify.inprocess)."""
        from rbacbridge.verify.inprocess import PodCredentials

        ident = self.base.identity()
        creds = getattr(self.base, "credentials", None)
        if not ident.ok or creds is None:
            return ident, None, None
        return ident, PodCredentials(creds["aws_access_key_id"], creds["aws_secret_access_key"],
                                     creds.get("aws_session_token")), None


def _principal_credentials(endpoint_url: str, config: Config, account: str, stage: str, fault: str | None,
                           admin: dict[str, str], live: v.Documents, principals: list[v.Principal],
                           allowed: dict[str, list[str]], paths: Any = None) -> dict[str, Any]:
    """Which role each principal would get here, and a backend holding that role's credentials.

    moto compares a trust policy's Principal with the caller's exact ARN, so a trust naming the
    node role's ARN would refuse the node role's *sessions* (AWS accepts them). The trust link is
    therefore evaluated here with rbacbridge.policy_eval, and the assume calls are made while
    enforcement is still off.
    """
    region = config.region
    node_arn = config.role_arn(account, config.node_role)
    node_trust = live.trust.get(config.node_role)
    if node_trust is None or not pe.trust_allows_service(node_trust, config.partition.ec2_principal):
        node_creds = None
        node_backend: Any = v.UnavailableBackend(v.NO_CREDENTIALS, f"the node role {config.node_role} is missing or EC2 may not take it")
    else:
        node_creds = _assume(_client("sts", endpoint_url, region, admin), node_arn, "rbacbridge-node")
        node_backend = Boto3Backend(endpoint_url, region, node_creds)
    node_policies = live.policies.get(config.node_role, [])
    arns = v.role_arns(config, account)
    broken = fault_tenant(config, fault)

    def via_kube2iam(role: str, session: str) -> Any:
        if node_creds is None:
            return v.UnavailableBackend(v.NO_CREDENTIALS, "kube2iam has no node credentials to assume roles with")
        arn = arns.get(role) or config.role_arn(account, role)
        trust = live.trust.get(role)
        if trust is None:
            return v.UnavailableBackend(v.ASSUME_DENIED, f"role {role} does not exist")
        if not pe.trust_allows(trust, node_arn):
            return v.UnavailableBackend(v.ASSUME_DENIED, f"AssumeRole {arn} denied: its trust policy does not trust {node_arn}")
        decision = pe.evaluate(node_policies, "sts:AssumeRole", arn)
        if not decision.allowed:
            return v.UnavailableBackend(v.ASSUME_DENIED, f"AssumeRole {arn} denied: node role's policies: {decision}")
        return Boto3Backend(endpoint_url, region, _assume(_client("sts", endpoint_url, region, node_creds), arn, session))

    def kube2iam(namespace: str | None, role: str, session: str) -> Any:
        """The stand-in's decision for a pod in `namespace` annotated with `role` (glob, as kube2iam does)."""
        if role == config.effective_default_role:
            return via_kube2iam(role, session)
        arn = arns.get(role) or config.role_arn(account, role)
        if config.namespace_restrictions and not any(
                fnmatch.fnmatchcase(role, p) or fnmatch.fnmatchcase(arn, p) for p in allowed.get(namespace or "") or []):
            return v.UnavailableBackend(v.NO_CREDENTIALS, f"kube2iam refused: namespace {namespace} does not allow {role}")
        return via_kube2iam(role, session)

    def asker(principal: v.Principal, intercepted: bool) -> Any:
        def ask(role: str, role_arn: str) -> v.CallResult:
            if paths is not None and not paths.kube2iam:
                return v.CallResult(False, v.NO_CREDENTIALS, "no kube2iam (migrate finish): the metadata path is closed to pods")
            if not intercepted:  # the instance metadata service only knows the instance profile's role
                return v.CallResult(False, v.NO_CREDENTIALS, f"no kube2iam: the metadata service has no role {role}")
            got = kube2iam(principal.namespace, role, "rbacbridge-ask-" + principal.name.replace("/", "-"))
            result = got.identity()
            return v.CallResult(True, detail="ok", value=result.value) if result.ok else result
        return ask

    backends: dict[str, Any] = {}
    for principal in principals:
        session = "rbacbridge-" + principal.name.replace("/", "-")
        if stage == "before" or principal.kind == "host" or principal.host_network:
            backends[principal.name] = node_backend
            continue
        intercepted = not (fault == "iptables" and principal.tenant == broken.name)
        if paths is not None and principal.name in paths.web_identity:
            base = paths.backend(endpoint_url, region, admin, live, principal)
        elif paths is not None and not paths.kube2iam:
            base = v.UnavailableBackend(v.NO_CREDENTIALS, "no kube2iam (migrate finish): the metadata path is closed to pods")
        elif principal.role_annotation is None:
            base = via_kube2iam(config.effective_default_role, session)
        elif not intercepted:
            base = node_backend  # nothing intercepts 169.254.169.254: the instance profile answers
        else:
            base = kube2iam(principal.namespace, v.expected._role_name(principal.role_annotation), session)
        backends[principal.name] = PodBackend(base, asker(principal, intercepted))
    return backends
