"""The AWS part: IAM policies, roles, the instance profile and its association with the nodes.

Desired resources are small models built from the configuration (article steps 1-7); the planner
functions compare each with live state and return steps. Teardown walks the same list backwards.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from rbacbridge import MANAGED_BY_KEY, MANAGED_BY_VALUE, permission_set
from rbacbridge.config import Config, Tenant, grant_bucket, grant_objects_arn
from rbacbridge.errors import RbacbridgeError, UsageError, one_line, shown
from rbacbridge.plan import (CONFLICT, CREATE, DELETE, LEFT_ALONE, RESTORE, UNCHANGED, UPDATE, Execution, Step,
                             execute_in_parallel)
from rbacbridge.templating import render_json

SYSTEM = "aws"
OWNED_TAG = {"Key": MANAGED_BY_KEY, "Value": MANAGED_BY_VALUE}
TENANT_TAG = "rbacbridge:tenant"  # on a tenant's role and policy: which tenant they serve
# Versions up to 0.1 recorded the replaced profile in this EC2 tag on the instance. Anyone with
# ec2:CreateTags can write it, so it is no longer trusted: "none" is migrated (it can only ever
# lead to a disassociation), a profile ARN is refused and reported (see docs/aws.md).
PREVIOUS_PROFILE_TAG = "rbacbridge:previous-instance-profile"
NO_PREVIOUS_PROFILE = "none"
ASSOCIATED_STATES = ("associating", "associated")
# Associations are independent per instance: this many run at once (each with its own retries).
ASSOCIATION_WORKERS = 16


# --- talking to AWS ---------------------------------------------------------------------------


_DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess")


class AwsError(RbacbridgeError):
    def __init__(self, operation: str, code: str, message: str, service: str = ""):
        self.operation = operation
        self.code = code
        self.service = service
        self.denied = code in _DENIED
        if self.denied:
            action = f"{service}:{_camel(operation)}" if service else _camel(operation)
            message = (f"the credentials in use may not call {action} (`rbacbridge permissions` prints the policy "
                       f"rbacbridge needs); AWS said: {one_line(message, 120)}")
        super().__init__(f"AWS {operation}: {code}: {one_line(message, 200)}")


def _camel(operation: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in operation.split("_"))


RETRY_MODES = ("legacy", "standard", "adaptive")
DEFAULT_REGION = "us-east-1"


class _SetupErrors:
    """botocore's set-up failures (profile, config file, credentials, endpoint, retry mode) as
    one-line UsageErrors: they are bad input, found before anything is changed."""

    def __init__(self, profile: str | None = None, broad: bool = True):
        self.profile = profile
        self.broad = broad  # creating a session or client: any botocore error there is set-up

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        import botocore.exceptions as bex

        if isinstance(exc, bex.ProfileNotFound):
            name = exc.kwargs.get("profile") or self.profile or os.environ.get("AWS_PROFILE")
            raise UsageError(f"AWS profile {shown(name)} not found in the AWS config files "
                             f"({shown(os.environ.get('AWS_CONFIG_FILE', '~/.aws/config'))})") from None
        if isinstance(exc, bex.ConfigParseError):
            raise UsageError(f"cannot parse the AWS config file {shown(exc.kwargs.get('path', ''))}: not INI") from None
        if isinstance(exc, bex.PartialCredentialsError):
            raise UsageError(f"partial AWS credentials in {exc.kwargs.get('provider', 'the environment')}: "
                             f"{exc.kwargs.get('cred_var', 'a variable')} is missing") from None
        if isinstance(exc, bex.NoCredentialsError):
            raise UsageError("no AWS credentials found: set AWS_PROFILE / --profile, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
        if isinstance(exc, bex.InvalidRegionError):
            raise UsageError(f"invalid AWS region {shown(exc.kwargs.get('region_name', ''))}: not an AWS region name (like us-east-1)") from None
        if isinstance(exc, (bex.InvalidRetryModeError, bex.InvalidMaxRetryAttemptsError)):
            raise UsageError(f"invalid AWS retry setting: {one_line(str(exc), 160)}") from None
        if not self.broad:
            return False
        if isinstance(exc, bex.BotoCoreError) and not isinstance(exc, (bex.EndpointConnectionError, bex.ConnectionError)):
            raise UsageError(f"AWS set-up failed: {one_line(str(exc), 200)}") from None
        if isinstance(exc, ValueError) and "endpoint" in str(exc).lower():
            raise UsageError(f"invalid AWS endpoint: {one_line(str(exc), 160)}") from None
        return False


def check_environment() -> None:
    """The AWS_* variables botocore reads, checked the way flags are (one line, exit 2)."""
    from rbacbridge import config as config_module

    for name, value in sorted(os.environ.items()):
        if not value:
            continue
        if name == "AWS_ENDPOINT_URL" or name.startswith("AWS_ENDPOINT_URL_"):
            config_module.endpoint_url(name, value)
        elif name == "AWS_RETRY_MODE" and value not in RETRY_MODES:
            raise UsageError(f"invalid AWS_RETRY_MODE {shown(value)}: choose from {', '.join(RETRY_MODES)}")
        elif name == "AWS_MAX_ATTEMPTS" and not (value.isascii() and value.isdigit() and 1 <= int(value) <= 100):
            raise UsageError(f"invalid AWS_MAX_ATTEMPTS {shown(value)}: a whole number 1-100")


def resolve_region(config: Config) -> tuple[Config, str]:
    """The region the way the aws CLI finds it: --region, then aws.region in the config, then
    AWS_REGION, then AWS_DEFAULT_REGION, then the profile's region, then us-east-1.
    Returns the config with that region and where it came from."""
    from dataclasses import replace

    from rbacbridge import config as config_module

    check_environment()
    if "region" in config.explicit:
        return config, "--region / aws.region"
    found, source = None, None
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(name):
            found, source = config_module.region(name, os.environ[name]), name
            break
    if found is None:
        profile = config.profile or os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
        if profile or os.path.exists(os.path.expanduser(os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"))):
            import botocore.session

            with _SetupErrors(profile):
                session = botocore.session.Session(profile=profile)
                value = session.get_scoped_config().get("region")
            if value:
                label = f"region of AWS profile {profile or 'default'}"
                found, source = config_module.region(label, value), label
    if found is None:
        found, source = DEFAULT_REGION, "default"
    return replace(config, region=found), source


class AwsGateway:
    """boto3 clients built the SDK way (profile, env, instance role; AWS_ENDPOINT_URL honoured)."""

    def __init__(self, config: Config, session: Any = None):
        self.config = config
        self._session = session
        self._clients: dict[str, Any] = {}
        self._identity: dict[str, str] | None = None

    @property
    def session(self):
        if self._session is None:
            import boto3

            with _SetupErrors(self.config.profile):
                self._session = boto3.Session(profile_name=self.config.profile, region_name=self.config.region)
        return self._session

    def client(self, service: str):
        if service not in self._clients:
            from botocore.config import Config as BotoConfig

            mode = os.environ.get("AWS_RETRY_MODE") or "standard"
            if mode not in RETRY_MODES:
                raise UsageError(f"invalid AWS_RETRY_MODE {shown(mode)}: choose from {', '.join(RETRY_MODES)}")
            kwargs: dict[str, Any] = {
                "region_name": self.config.region,
                "config": BotoConfig(retries={"mode": mode, "max_attempts": 10}, connect_timeout=10, read_timeout=60,
                                     max_pool_connections=ASSOCIATION_WORKERS + 4),
            }
            if self.config.endpoint_url:
                kwargs["endpoint_url"] = self.config.endpoint_url
            with _SetupErrors(self.config.profile):
                self._clients[service] = self.session.client(service, **kwargs)
        return self._clients[service]

    def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        """One API call; every botocore failure becomes a one-line AwsError or UsageError."""
        import botocore.exceptions as bex
        from botocore.parsers import ResponseParserError

        method = getattr(self.client(service), operation)
        try:
            with _SetupErrors(self.config.profile, broad=False):
                return method(**params)
        except bex.ClientError as exc:
            error = exc.response.get("Error", {})
            raise AwsError(operation, error.get("Code", "Unknown"), error.get("Message", ""), service) from None
        except bex.EndpointConnectionError as exc:
            raise RbacbridgeError(f"cannot reach the AWS endpoint {shown(exc.kwargs.get('endpoint_url', ''))}") from None
        except ResponseParserError:
            # moto answers some wrong calls with HTTP 500 and no error document.
            raise AwsError(operation, "InternalError", "the server answered with an unparseable error", service) from None
        except bex.BotoCoreError as exc:
            raise RbacbridgeError(f"AWS {operation}: {one_line(str(exc), 200)}") from None

    def get_or_none(self, service: str, operation: str, missing: tuple[str, ...], **params: Any) -> dict | None:
        try:
            return self.call(service, operation, **params)
        except AwsError as exc:
            if exc.code in missing:
                return None
            raise

    def identity(self) -> dict[str, str]:
        if self._identity is None:
            self._identity = self.call("sts", "get_caller_identity")
        return self._identity

    def account(self) -> str:
        return self.identity()["Account"]


def gateway(ctx) -> AwsGateway:
    return ctx.gateway("aws", lambda: AwsGateway(ctx.config))


_EVENTUALLY_CONSISTENT = (
    ("InvalidParameterValue", "Invalid IAM Instance Profile"),
    ("InvalidParameterValue", "iamInstanceProfile"),
    ("MalformedPolicyDocument", "Invalid principal"),
)


def retry_eventual_consistency(action: Callable[[], Any], attempts: int = 8) -> Any:
    """IAM changes take seconds to reach EC2 and STS: a profile or principal created a moment ago
    can be rejected as invalid. Retry those (only those) with bounded exponential backoff."""
    base = float(os.environ.get("RBACBRIDGE_RETRY_BASE_SECONDS", "1.0"))
    for attempt in range(attempts):
        try:
            return action()
        except AwsError as exc:
            transient = any(exc.code == code and text in str(exc) for code, text in _EVENTUALLY_CONSISTENT)
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(min(base * 2**attempt, 20 * base) * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")


# --- desired resources ------------------------------------------------------------------------


@dataclass(frozen=True)
class ManagedPolicy:
    name: str
    document: dict
    description: str
    tenant: str | None = None  # the tenant it serves (tagged rbacbridge:tenant=<name>)
    kind = "iam-policy"


@dataclass(frozen=True)
class Role:
    name: str
    trust: dict
    policies: tuple[str, ...]  # managed policy names to attach
    description: str
    trusts_itself: bool = False  # must be created first, then trust its own ARN
    tenant: str | None = None  # the tenant it serves (tagged rbacbridge:tenant=<name>)
    kind = "iam-role"


def resource_tags(resource: Any) -> list[dict[str, str]]:
    """The tags setup gives a resource: managed-by, and the tenant of a tenant's role or policy."""
    tenant = getattr(resource, "tenant", None)
    return [OWNED_TAG] + ([{"Key": TENANT_TAG, "Value": tenant}] if tenant else [])


@dataclass(frozen=True)
class InstanceProfile:
    name: str
    role: str
    kind = "iam-instance-profile"


@dataclass(frozen=True)
class ProfileAssociation:
    instance_id: str
    profile: str
    kind = "profile-association"

    @property
    def name(self) -> str:
        return self.instance_id


def assumable_role_arns(config: Config, account: str) -> list[str]:
    """The roles kube2iam (the node role) may assume: every tenant's role (existing ones included) and
    the role unannotated pods get. The node role's own ARN only when that default is the node role
    (kube2iam.default_role node/auto)."""
    arns = {t.role_arn(account) for t in config.tenants} | {config.role_arn(account, config.effective_default_role)}
    return sorted(arns)


def tenant_policy_document(tenant: Tenant) -> dict:
    """Least privilege for a tenant's grants: s3:ListBucket on each bucket, GetObject on bucket/* or the
    prefix, Put/DeleteObject on the write grants only. Order as configured (read first), no repeats."""
    grants = tenant.read + tenant.write
    return render_json("tenant-policy.json.j2",
                       bucket_arns=list(dict.fromkeys(f"arn:aws:s3:::{grant_bucket(g)}" for g in grants)),
                       read_arns=list(dict.fromkeys(grant_objects_arn(g) for g in grants)),
                       write_arns=list(dict.fromkeys(grant_objects_arn(g) for g in tenant.write)))


def tenant_resources(config: Config, account: str, tenant: Tenant) -> list[Any]:
    """A managed tenant's policy (when it has grants) and role, trusting the node role's exact ARN."""
    if not tenant.managed:
        return []
    node_role_arn = config.role_arn(account, config.node_role)
    if tenant.legacy:  # the descriptions earlier versions gave (IAM cannot change them in place)
        policy_text = "rbacbridge: pod role reads both buckets, writes the tenant bucket (step 4)"
        role_text = "rbacbridge: role kube2iam hands annotated pods (steps 4-5)"
    else:
        policy_text = f"rbacbridge: S3 access of tenant {tenant.name}"
        role_text = f"rbacbridge: role kube2iam hands the pods of tenant {tenant.name}"
    out: list[Any] = []
    if tenant.policy:
        out.append(ManagedPolicy(tenant.policy, tenant_policy_document(tenant), policy_text, tenant.name))
    out.append(Role(tenant.role, render_json("pod-trust.json.j2", node_role_arn=node_role_arn),
                    (tenant.policy,) if tenant.policy else (), role_text, tenant=tenant.name))
    return out


def desired_resources(config: Config, account: str, instance_ids: list[str], teardown: bool = False) -> list[Any]:
    """Everything the AWS part owns, in the order it must be created.

    `teardown=True` also lists the dedicated default role when the configuration no longer uses it,
    so that a teardown after switching kube2iam.default_role still removes the role setup made
    (it is deleted only if it carries rbacbridge's tag)."""
    node_role_arn = config.role_arn(account, config.node_role)
    trusts_itself = config.default_is_node_role
    buckets = {"shared_bucket": config.shared_bucket}
    resources: list[Any] = [
        ManagedPolicy(config.node_policy, render_json("node-policy.json.j2", **buckets),
                      "rbacbridge: node role reads the shared bucket (kube2iam article step 1)"),
        ManagedPolicy(config.kube2iam_policy, render_json(
            "kube2iam-node-policy.json.j2", assumable_role_arns=assumable_role_arns(config, account)),
            "rbacbridge: kube2iam on the node may assume the pod roles"),
        Role(config.node_role,
             render_json("node-trust.json.j2", self_trust=trusts_itself, node_role_arn=node_role_arn),
             (config.node_policy, config.kube2iam_policy),
             "rbacbridge: Kubernetes worker node role (kube2iam article step 2)", trusts_itself),
        InstanceProfile(config.instance_profile, config.node_role),
    ]
    for tenant in config.tenants:
        resources += tenant_resources(config, account, tenant)
    if config.manages_default_role or teardown:
        # Unannotated pods get this role, not the node role: the article's read-only access without
        # the node role's sts:AssumeRole on the pod roles (no sts:* at all).
        resources.append(Role(config.pod_default_role, render_json("pod-trust.json.j2", node_role_arn=node_role_arn),
                              (config.node_policy,), "rbacbridge: role kube2iam hands unannotated pods (read-only S3, no sts)"))
    resources += [ProfileAssociation(i, config.instance_profile) for i in instance_ids]
    return resources


# --- policy documents -------------------------------------------------------------------------


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _atoms(document: dict) -> set[tuple]:
    """A document as a set of (effect, action, target) facts, so order and list/str forms don't matter."""
    atoms: set[tuple] = set()
    for statement in _as_list(document.get("Statement", [])):
        effect = statement.get("Effect", "")
        actions = [("Action", a) for a in _as_list(statement.get("Action", []))] + [
            ("NotAction", a) for a in _as_list(statement.get("NotAction", []))]
        targets: list[tuple] = []
        for key in ("Resource", "NotResource"):
            targets += [(key, r) for r in _as_list(statement.get(key, []))]
        principal = statement.get("Principal")
        if isinstance(principal, dict):
            targets += [(f"Principal.{k}", p) for k, v in principal.items() for p in _as_list(v)]
        elif principal is not None:
            targets.append(("Principal", principal))
        condition = json.dumps(statement.get("Condition", {}), sort_keys=True)
        for action in actions:
            for target in targets or [("", "")]:
                atoms.add((effect, action, target, condition))
    return atoms


def documents_equal(desired: dict, live: dict) -> bool:
    return _atoms(desired) == _atoms(live)


def describe_difference(what: str, desired: dict, live: dict) -> str:
    missing = sorted(_atoms(desired) - _atoms(live))
    extra = sorted(_atoms(live) - _atoms(desired))

    def say(atom: tuple) -> str:
        effect, (akind, action), (tkind, target), _ = atom
        label = tkind.split(".")[0].lower() or "target"
        return f"{effect} {action} on {label} {target}" if akind == "Action" else f"{effect} NotAction {action} on {target}"

    parts = []
    if missing:
        parts.append("missing " + "; ".join(say(a) for a in missing[:3]) + (" …" if len(missing) > 3 else ""))
    if extra:
        parts.append("unexpected " + "; ".join(say(a) for a in extra[:3]) + (" …" if len(extra) > 3 else ""))
    return f"{what} differs: " + ", ".join(parts)


def _decode(document: Any) -> dict:
    if isinstance(document, str):
        from urllib.parse import unquote

        return json.loads(unquote(document))
    return document


def _owned(tags: list[dict] | None) -> bool:
    return any(t.get("Key") == MANAGED_BY_KEY and t.get("Value") == MANAGED_BY_VALUE for t in tags or [])


# --- planning: setup --------------------------------------------------------------------------


def _step(action: str, resource: Any, message: str, reason: str = "", run: Callable | None = None, **details) -> Step:
    return Step(SYSTEM, action, resource.kind, resource.name, message, reason, run, details)


def _ownership(ctx, resource, live_tags, tag: Callable[[], Any]) -> Step | None:
    """A same-named resource without rbacbridge's tag blocks setup, unless --adopt tags it."""
    if _owned(live_tags):
        return None
    if ctx.adopt:
        return _step(UPDATE, resource, f"adopt {resource.kind} {resource.name}: tag it managed-by=rbacbridge",
                     "exists without rbacbridge's tag; --adopt given", tag)
    return _step(CONFLICT, resource, f"{resource.kind} {resource.name} exists and is not rbacbridge's",
                 "not tagged managed-by=rbacbridge: rename it in the config, or pass --adopt to take it over")


def _tenant_tag_step(resource: Any, live_tags: list[dict] | None, tag: Callable[[], Any]) -> list[Step]:
    """An owned tenant resource without (or with another) rbacbridge:tenant tag gets its tenant's."""
    if resource.tenant is None:
        return []
    current = next((t["Value"] for t in live_tags or [] if t["Key"] == TENANT_TAG), None)
    if current == resource.tenant:
        return []
    why = "made by an earlier version, before tenants were tagged" if current is None else f"tagged for tenant {current}"
    return [_step(UPDATE, resource, f"tag {resource.kind} {resource.name} {TENANT_TAG}={resource.tenant}", why, tag)]


def _plan_policy(ctx, gw: AwsGateway, account: str, policy: ManagedPolicy) -> list[Step]:
    arn = ctx.config.policy_arn(account, policy.name)
    live = gw.get_or_none("iam", "get_policy", ("NoSuchEntity",), PolicyArn=arn)
    document = json.dumps(policy.document)
    if live is None:
        return [_step(CREATE, policy, f"create policy {policy.name}", run=lambda: gw.call(
            "iam", "create_policy", PolicyName=policy.name, PolicyDocument=document,
            Description=policy.description, Tags=resource_tags(policy)))]
    steps: list[Step] = []
    tag = lambda: gw.call("iam", "tag_policy", PolicyArn=arn, Tags=resource_tags(policy))  # noqa: E731
    conflict = _ownership(ctx, policy, live["Policy"].get("Tags"), tag)
    if conflict:
        steps.append(conflict)
        if conflict.action == CONFLICT:
            return steps
    else:
        steps += _tenant_tag_step(policy, live["Policy"].get("Tags"), tag)
    default = live["Policy"]["DefaultVersionId"]
    current = _decode(gw.call("iam", "get_policy_version", PolicyArn=arn, VersionId=default)["PolicyVersion"]["Document"])
    if documents_equal(policy.document, current):
        steps.append(_step(UNCHANGED, policy, f"policy {policy.name} is up to date"))
        return steps
    versions = gw.call("iam", "list_policy_versions", PolicyArn=arn)["Versions"]
    if len(versions) >= 5:  # IAM keeps at most 5: make room, oldest first
        oldest = min((v for v in versions if not v["IsDefaultVersion"]), key=lambda v: v["CreateDate"])
        steps.append(_step(DELETE, policy, f"delete old version {oldest['VersionId']} of policy {policy.name}",
                           "IAM keeps at most 5 versions", lambda v=oldest["VersionId"]: gw.call(
                               "iam", "delete_policy_version", PolicyArn=arn, VersionId=v)))
    steps.append(_step(UPDATE, policy, f"update policy {policy.name} (new default version)",
                       describe_difference("policy document", policy.document, current),
                       lambda: gw.call("iam", "create_policy_version", PolicyArn=arn,
                                       PolicyDocument=document, SetAsDefault=True)))
    return steps


def _trust_without_self(role: Role, account: str, config: Config) -> dict:
    own_arn = config.role_arn(account, role.name)
    statements = [s for s in role.trust["Statement"]
                  if own_arn not in _as_list((s.get("Principal") or {}).get("AWS", []))]
    return {**role.trust, "Statement": statements}


def _plan_role(ctx, gw: AwsGateway, account: str, role: Role) -> list[Step]:
    config = ctx.config
    live = gw.get_or_none("iam", "get_role", ("NoSuchEntity",), RoleName=role.name)
    trust = json.dumps(role.trust)
    update_trust = lambda: retry_eventual_consistency(lambda: gw.call(  # noqa: E731
        "iam", "update_assume_role_policy", RoleName=role.name, PolicyDocument=trust))
    steps: list[Step] = []
    attached: set[str] = set()
    if live is None:
        first_trust = _trust_without_self(role, account, config) if role.trusts_itself else role.trust
        steps.append(_step(CREATE, role, f"create role {role.name} ({_principals(role.trust)})", run=lambda: retry_eventual_consistency(
            lambda: gw.call("iam", "create_role", RoleName=role.name, AssumeRolePolicyDocument=json.dumps(first_trust),
                            Description=role.description, Tags=resource_tags(role)))))
        if role.trusts_itself:
            steps.append(_step(UPDATE, role, f"let role {role.name} trust its own ARN",
                               "kube2iam's default role is the node role; a role can only name itself once it exists",
                               update_trust))
    else:
        tag = lambda: gw.call("iam", "tag_role", RoleName=role.name, Tags=resource_tags(role))  # noqa: E731
        conflict = _ownership(ctx, role, live["Role"].get("Tags"), tag)
        if conflict:
            steps.append(conflict)
            if conflict.action == CONFLICT:
                return steps
        else:
            steps += _tenant_tag_step(role, live["Role"].get("Tags"), tag)
        current = _decode(live["Role"]["AssumeRolePolicyDocument"])
        if not documents_equal(role.trust, current):
            steps.append(_step(UPDATE, role, f"update trust policy of role {role.name}",
                               describe_difference("trust policy", role.trust, current), update_trust))
        live_attached = _attached_policies(gw, role.name)
        attached = {p["PolicyName"] for p in live_attached}
    for name in role.policies:
        if name in attached:
            continue
        arn = config.policy_arn(account, name)
        steps.append(Step(SYSTEM, CREATE, "iam-attachment", f"{role.name}/{name}", f"attach policy {name} to role {role.name}",
                          run=lambda arn=arn: gw.call("iam", "attach_role_policy", RoleName=role.name, PolicyArn=arn)))
    if live is not None:  # the role's whole permission set: nothing but what setup attaches (item 8)
        steps += permission_set.extra_policy_steps(ctx, gw, account, role, live_attached, _decode)
    if not steps:
        steps.append(_step(UNCHANGED, role, f"role {role.name} is up to date"))
    return steps


def _principals(trust: dict) -> str:
    names = []
    for statement in trust.get("Statement", []):
        for kind, value in (statement.get("Principal") or {}).items():
            names += [f"{v}" for v in _as_list(value)]
    return "trusts " + ", ".join(names)


def _attached_policies(gw: AwsGateway, role: str) -> list[dict]:
    out: list[dict] = []
    marker = None
    while True:
        page = gw.call("iam", "list_attached_role_policies", RoleName=role, **({"Marker": marker} if marker else {}))
        out += page["AttachedPolicies"]
        if not page.get("IsTruncated"):
            return out
        marker = page["Marker"]


def live_documents(iam, roles: list[str]):
    """Trust, attached and inline policies of each role as IAM has them now (a boto3 IAM client; read-only).
    Roles that do not exist are left out. Returns rbacbridge.policy_eval.Documents."""
    from rbacbridge.policy_eval import Documents

    docs = Documents()
    for role in roles:
        try:
            docs.trust[role] = _decode(iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"])
        except iam.exceptions.NoSuchEntityException:
            continue
        policies = []
        for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
            arn = attached["PolicyArn"]
            version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
            policies.append(_decode(iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]))
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            policies.append(_decode(iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]))
        docs.policies[role] = policies
    return docs


def _plan_profile(ctx, gw: AwsGateway, profile: InstanceProfile, live: dict | None) -> list[Step]:
    add_role = lambda: gw.call("iam", "add_role_to_instance_profile",  # noqa: E731
                               InstanceProfileName=profile.name, RoleName=profile.role)
    if live is None:
        return [
            _step(CREATE, profile, f"create instance profile {profile.name}", run=lambda: gw.call(
                "iam", "create_instance_profile", InstanceProfileName=profile.name, Tags=[OWNED_TAG])),
            _step(CREATE, profile, f"put role {profile.role} in instance profile {profile.name}", run=add_role),
        ]
    steps: list[Step] = []
    foreign_record = [t["Key"] for t in live["InstanceProfile"].get("Tags", [])
                      if t["Key"].startswith(_RECORD_KEYS + (TENANT_RECORD_PREFIX,))]

    def adopt() -> None:
        gw.call("iam", "tag_instance_profile", InstanceProfileName=profile.name, Tags=[OWNED_TAG])
        if foreign_record:  # written while it was not ours: never trusted as rbacbridge's record
            gw.call("iam", "untag_instance_profile", InstanceProfileName=profile.name, TagKeys=foreign_record)

    conflict = _ownership(ctx, profile, live["InstanceProfile"].get("Tags"), adopt)
    if conflict:
        steps.append(conflict)
        if conflict.action == CONFLICT:
            return steps
    roles = [r["RoleName"] for r in live["InstanceProfile"].get("Roles", [])]
    for other in roles:
        if other != profile.role:  # a profile holds one role
            steps.append(_step(UPDATE, profile, f"take role {other} out of instance profile {profile.name}",
                               f"the profile must hold {profile.role}", lambda other=other: gw.call(
                                   "iam", "remove_role_from_instance_profile",
                                   InstanceProfileName=profile.name, RoleName=other)))
    if profile.role not in roles:
        steps.append(_step(UPDATE, profile, f"put role {profile.role} in instance profile {profile.name}", run=add_role))
    return steps or [_step(UNCHANGED, profile, f"instance profile {profile.name} holds role {profile.role}")]


# --- the restore record -----------------------------------------------------------------------
#
# What setup replaced on each instance lives in IAM tags on rbacbridge's own instance profile:
# writing them needs iam:TagInstanceProfile on that profile (EC2 tags would need only
# ec2:CreateTags on the instance). Two kinds of tag (IAM allows 50 per profile, 256 characters a value):
#   rbacbridge:record:<n>          "<instance>=<association id>=<profile id> <instance>=none ..." (3 entries a tag)
#   rbacbridge:profile:<profile id> the ARN of that previous profile (one tag per distinct profile)
# An entry is written before the association changes, from the association EC2 reported.

RECORD_PREFIX = "rbacbridge:record:"
PROFILE_PREFIX = "rbacbridge:profile:"
_RECORD_KEYS = (RECORD_PREFIX, PROFILE_PREFIX)
TAG_VALUE_MAX = 256
TAGS_PER_RESOURCE = 50
_ENTRY = re.compile(r"(i-[0-9a-f]{8,17})=(?:none|(iip-assoc-[0-9a-f]{8,17})=([A-Za-z0-9]{16,32}))")
_ENTRY_INSTANCE = re.compile(r"(i-[0-9a-f]{8,17})=")
_PROFILE_ID = re.compile(r"[A-Za-z0-9]{16,32}")
_PROFILE_ARN = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):instance-profile/(?:[\w+=.@-]+/)*([\w+=.@-]{1,128})")
_RECORD_INDEX = re.compile(r"[1-9][0-9]{0,2}")


@dataclass(frozen=True)
class Previous:
    """One instance's entry: the association setup replaced, or none."""

    instance_id: str
    association_id: str | None = None
    profile_id: str | None = None
    profile_arn: str | None = None

    @property
    def token(self) -> str:
        if self.association_id is None:
            return f"{self.instance_id}={NO_PREVIOUS_PROFILE}"
        return f"{self.instance_id}={self.association_id}={self.profile_id}"

    @property
    def profile_name(self) -> str:
        return _profile_name(self.profile_arn) if self.profile_arn else NO_PREVIOUS_PROFILE

    def storable(self) -> bool:
        if self.association_id is None:
            return True
        return (len(self.profile_arn or "") <= TAG_VALUE_MAX and _PROFILE_ARN.fullmatch(self.profile_arn or "") is not None
                and _ENTRY.fullmatch(self.token) is not None)


class RecordFull(RbacbridgeError):
    pass


@dataclass
class Record:
    """rbacbridge's restore record as read from its instance profile's tags."""

    tags: dict[str, str] = field(default_factory=dict)  # the record's own tags, as read
    other_tags: int = 0  # tags on the profile that are not the record's (managed-by, the user's)
    entries: dict[str, Previous] = field(default_factory=dict)  # consistent entries
    tampered: dict[str, str] = field(default_factory=dict)  # instance -> why its entry is not trusted
    unreadable: list[str] = field(default_factory=list)  # problems that name no instance

    def distrust(self, instance_id: str, why: str) -> None:
        self.entries.pop(instance_id, None)
        self.tampered.setdefault(instance_id, why)


def parse_record(tags: list[dict] | None, account: str) -> Record:
    """Read the record; every inconsistency puts the instance it names in `tampered`."""
    record = Record()
    for tag in tags or []:
        if tag["Key"].startswith(_RECORD_KEYS):
            record.tags[tag["Key"]] = tag["Value"]
        else:
            record.other_tags += 1
    profiles: dict[str, str | None] = {}  # id -> ARN, or None when the ARN cannot be trusted
    for key, value in record.tags.items():
        if key.startswith(PROFILE_PREFIX):
            profile_id = key[len(PROFILE_PREFIX):]
            match = _PROFILE_ARN.fullmatch(value)
            good = _PROFILE_ID.fullmatch(profile_id) and match and match.group(1) == account
            profiles[profile_id] = value if good else None
            if not good:
                record.unreadable.append(f"tag {key} = {value!r} is not an instance profile ARN of account {account}")
        elif not _RECORD_INDEX.fullmatch(key[len(RECORD_PREFIX):]):
            record.unreadable.append(f"unexpected record tag {key}")
    seen: set[str] = set()
    for key in sorted(k for k in record.tags if k.startswith(RECORD_PREFIX)):
        for token in record.tags[key].split(" "):
            if not token:
                continue
            match = _ENTRY.fullmatch(token)
            if match is None:
                named = _ENTRY_INSTANCE.match(token)
                if named:
                    seen.add(named.group(1))
                    record.distrust(named.group(1), f"malformed entry {token!r} in tag {key}")
                else:
                    record.unreadable.append(f"tag {key}: entry {token!r} names no instance")
                continue
            instance_id, association_id, profile_id = match.groups()
            if instance_id in seen:
                record.distrust(instance_id, "the record names it more than once")
                continue
            seen.add(instance_id)
            if association_id is None:
                record.entries[instance_id] = Previous(instance_id)
            elif profile_id not in profiles:
                record.distrust(instance_id, f"entry {token!r} names profile id {profile_id}, which the record does not list")
            elif profiles[profile_id] is None:
                record.distrust(instance_id, f"the record's ARN for profile id {profile_id} is not an instance profile ARN of this account")
            else:
                record.entries[instance_id] = Previous(instance_id, association_id, profile_id, profiles[profile_id])
    return record


def check_evidence(record: Record, history: dict[str, dict], own_arn: str) -> None:
    """An association EC2 still lists under a recorded id must be that instance's, and hold the
    recorded profile (replaced, kept as history) or rbacbridge's (EC2 kept the id on replace)."""
    for instance_id, previous in list(record.entries.items()):
        seen = history.get(previous.association_id or "")
        if seen is None:
            continue
        if seen["InstanceId"] != instance_id:
            record.distrust(instance_id, f"association {previous.association_id} belongs to instance {seen['InstanceId']}")
        elif seen["IamInstanceProfile"]["Arn"] not in (previous.profile_arn, own_arn):
            record.distrust(instance_id, f"association {previous.association_id} held {seen['IamInstanceProfile']['Arn']}, "
                                         f"not the recorded {previous.profile_arn}")


def record_changes(record: Record, updates: list[Previous]) -> dict[str, str]:
    """The record tags to write so that each update replaces its instance's entry. Entries stay in
    the tag they are in (one TagInstanceProfile call; an interrupted write leaves no duplicate)."""
    values = {k: [t for t in v.split(" ") if t] for k, v in record.tags.items() if k.startswith(RECORD_PREFIX)}
    changed: dict[str, str] = {}
    for update in updates:
        placed = False
        for key, tokens in values.items():
            mine = [n for n, t in enumerate(tokens) if t.startswith(update.instance_id + "=")]
            if not mine:
                continue
            kept = [t for n, t in enumerate(tokens) if n not in mine[1:]]
            kept[mine[0]] = update.token if not placed else None
            values[key] = [t for t in kept if t]
            placed, changed[key] = True, ""
        if not placed:
            key = next((k for k, t in values.items() if len(" ".join(t + [update.token])) <= TAG_VALUE_MAX), None)
            if key is None:
                used = {int(k[len(RECORD_PREFIX):]) for k in values if _RECORD_INDEX.fullmatch(k[len(RECORD_PREFIX):])}
                key = RECORD_PREFIX + str(next(n for n in range(1, 1000) if n not in used))
                values[key] = []
            values[key].append(update.token)
            changed[key] = ""
        if update.profile_id and record.tags.get(PROFILE_PREFIX + update.profile_id) != update.profile_arn:
            changed[PROFILE_PREFIX + update.profile_id] = update.profile_arn or ""
    for key in changed:
        if key.startswith(RECORD_PREFIX):
            changed[key] = " ".join(values[key])
            if len(changed[key]) > TAG_VALUE_MAX:
                raise RecordFull(f"record tag {key} would exceed {TAG_VALUE_MAX} characters")
    total = record.other_tags + len(set(record.tags) | set(changed))
    if total > TAGS_PER_RESOURCE:
        raise RecordFull(f"the record needs {total} tags on the instance profile, IAM allows {TAGS_PER_RESOURCE}")
    return changed


# --- planning: associations (setup) -------------------------------------------------------------


# --- the tenant record ------------------------------------------------------------------------
#
# Which tenants' roles and policies setup created, in IAM tags on rbacbridge's own instance profile
# (like the restore record: writing them needs iam:TagInstanceProfile on that profile, which tenants
# and most principals lack; a tag on the role itself could be written by anyone allowed to tag roles).
#   rbacbridge:tenant:<tenant name>   "role=<role> policy=<policy>" (policy= absent without grants)
# Written before a tenant's resources are created (with the old names too while they change); an
# entry goes only after what it names is deleted. Removing a tenant from the config deletes what its
# entry names, and only what also carries managed-by=rbacbridge and rbacbridge:tenant=<that tenant>.

TENANT_RECORD_PREFIX = "rbacbridge:tenant:"
_TENANT_TOKEN = re.compile(r"(role|policy)=([A-Za-z0-9_+=.@-]{1,128})")
_TENANT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class TenantEntry:
    tenant: str
    roles: tuple[str, ...]
    policies: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return TENANT_RECORD_PREFIX + self.tenant

    @property
    def value(self) -> str:
        return " ".join([f"role={r}" for r in self.roles] + [f"policy={p}" for p in self.policies])

    def union(self, other: "TenantEntry | None") -> "TenantEntry":
        if other is None:
            return self
        return TenantEntry(self.tenant, tuple(dict.fromkeys(other.roles + self.roles)),
                           tuple(dict.fromkeys(other.policies + self.policies)))

    def describe(self) -> str:
        parts = [f"role {', '.join(self.roles)}"] + ([f"policy {', '.join(self.policies)}"] if self.policies else [])
        return f"{self.tenant} ({'; '.join(parts)})"


def parse_tenant_record(tags: list[dict] | None) -> tuple[dict[str, TenantEntry], list[str]]:
    """The entries of the tenant record, and what in it cannot be read (never acted on)."""
    entries: dict[str, TenantEntry] = {}
    problems: list[str] = []
    for tag in tags or []:
        key, value = tag["Key"], tag["Value"]
        if not key.startswith(TENANT_RECORD_PREFIX):
            continue
        name = key[len(TENANT_RECORD_PREFIX):]
        tokens = [_TENANT_TOKEN.fullmatch(t) for t in value.split(" ") if t]
        if not _TENANT_NAME.fullmatch(name) or not tokens or None in tokens or not any(t.group(1) == "role" for t in tokens):
            problems.append(f"tag {key} = {shown(value)} is not a tenant entry")
            continue
        entries[name] = TenantEntry(name, tuple(t.group(2) for t in tokens if t.group(1) == "role"),
                                    tuple(t.group(2) for t in tokens if t.group(1) == "policy"))
    return entries, problems


def desired_tenant_record(config: Config) -> dict[str, TenantEntry]:
    # IAM tag values hold no ','; IAM names may (iam.pod_role of the article's tenant): such a tenant is not
    # recorded, so it is never removed as a tenant (teardown still removes it as configured).
    return {t.name: TenantEntry(t.name, (t.role,), (t.policy,) if t.policy else ()) for t in config.tenants
            if t.managed and "," not in t.role + (t.policy or "")}


def _record_resource(profile: str) -> InstanceProfile:
    return InstanceProfile(profile, "")


def _tenant_record_start(ctx, gw: AwsGateway, live_profile: dict | None) -> tuple[list[Step], dict[str, TenantEntry]]:
    """Before any tenant resource is created: record every configured managed tenant (old names kept
    while they change). Returns the steps and the record as it will stand (the live entries, trusted)."""
    config = ctx.config
    info = live_profile["InstanceProfile"] if live_profile else None
    owned = info is not None and _owned(info.get("Tags"))
    if info is not None and not owned and not ctx.adopt:
        return [], {}  # the profile's conflict blocks the run
    tags = (info.get("Tags") or []) if owned else []
    live, problems = parse_tenant_record(tags)
    steps = [Step(SYSTEM, LEFT_ALONE, "tenant-record", config.instance_profile,
                  f"tenant record on instance profile {config.instance_profile} looks tampered with: {p}",
                  "nothing is deleted on the strength of this tag") for p in problems]
    changes: dict[str, str] = {}
    added: list[TenantEntry] = []
    for name, wanted in desired_tenant_record(config).items():
        entry = wanted.union(live.get(name))
        if len(entry.value) > TAG_VALUE_MAX:
            steps.append(Step(SYSTEM, CONFLICT, "tenant-record", config.instance_profile,
                              f"cannot record tenant {name}: old and new role and policy names exceed {TAG_VALUE_MAX} characters",
                              "rename in two runs (role first, then policy), or remove the tenant and add it again"))
            continue
        if live.get(name) is None or live[name].value != entry.value:
            changes[entry.key] = entry.value
            added.append(entry)
    if changes:
        total = len({t["Key"] for t in tags} | set(changes)) + (0 if owned else 1)
        if total > TAGS_PER_RESOURCE:
            steps.append(Step(SYSTEM, CONFLICT, "tenant-record", config.instance_profile,
                              f"cannot record {len(added)} more tenant(s) on instance profile {config.instance_profile}",
                              f"it would need {total} tags, IAM allows {TAGS_PER_RESOURCE} (the restore record shares them)"))
        else:
            items = [{"Key": k, "Value": v} for k, v in sorted(changes.items())]
            steps.append(Step(SYSTEM, UPDATE if live else CREATE, "tenant-record", config.instance_profile,
                              f"record on instance profile {config.instance_profile} the tenants whose resources setup manages: "
                              + "; ".join(e.describe() for e in added),
                              "IAM tags on rbacbridge's own profile: removing a tenant later deletes only what is recorded",
                              lambda: gw.call("iam", "tag_instance_profile", InstanceProfileName=config.instance_profile, Tags=items),
                              {"tenants": sorted(e.tenant for e in added)}))
    return steps, live


def _tenant_evidence(live_tags: list[dict] | None, tenant: str) -> str | None:
    """Why a recorded tenant resource is not provably ours (None: it is)."""
    tags = {t["Key"]: t["Value"] for t in live_tags or []}
    if tags.get(MANAGED_BY_KEY) != MANAGED_BY_VALUE:
        return "not tagged managed-by=rbacbridge"
    if tags.get(TENANT_TAG) != tenant:
        return f"not tagged {TENANT_TAG}={tenant}"
    return None


def _plan_removed_tenants(ctx, gw: AwsGateway, account: str, recorded: dict[str, TenantEntry],
                          keep_roles: set[str], keep_policies: set[str], teardown: bool) -> tuple[list[Step], set[str]]:
    """Delete the recorded tenant roles and policies the configuration no longer has (all of them on
    teardown), on evidence: the record, plus rbacbridge's tags naming that tenant. Detach before delete.
    Returns the steps and the tenants whose entry can go once they have run."""
    steps: list[Step] = []
    settled: set[str] = set()
    why_gone = "teardown" if teardown else "no longer in the config"
    for name, entry in sorted(recorded.items()):
        label = f"tenant {name} ({why_gone})" if teardown or name not in desired_tenant_record(ctx.config) else f"tenant {name} (renamed resource)"
        deleted_roles: set[str] = set()
        for role_name in entry.roles:
            if role_name in keep_roles:
                continue
            live = gw.get_or_none("iam", "get_role", ("NoSuchEntity",), RoleName=role_name)
            if live is None:
                continue
            role = Role(role_name, {}, (), "", tenant=name)
            refused = _tenant_evidence(live["Role"].get("Tags"), name)
            if refused:
                steps.append(_step(LEFT_ALONE, role, f"{label}: leave role {role_name}, recorded for it", refused))
                continue
            part = _plan_role_teardown(ctx, gw, role, set(), set())
            if part and part[-1].action == DELETE:
                deleted_roles.add(role_name)
            steps += [_named(s, label) for s in part]
        for policy_name in entry.policies:
            if policy_name in keep_policies:
                continue
            arn = ctx.config.policy_arn(account, policy_name)
            live = gw.get_or_none("iam", "get_policy", ("NoSuchEntity",), PolicyArn=arn)
            if live is None:
                continue
            policy = ManagedPolicy(policy_name, {}, "", name)
            refused = _tenant_evidence(live["Policy"].get("Tags"), name)
            if refused:
                steps.append(_step(LEFT_ALONE, policy, f"{label}: leave policy {policy_name}, recorded for it", refused))
                continue
            part = _plan_policy_teardown(ctx, gw, account, policy, deleted_roles, detach_roles=set(entry.roles) & keep_roles)
            steps += [_named(s, label) for s in part]
        settled.add(name)
    return steps, settled


def _named(step: Step, label: str) -> Step:
    step.message = f"{label}: {step.message}"
    step.details = {**step.details, "tenant": label.split(" ")[1]}
    return step


def _tenant_record_end(ctx, gw: AwsGateway, recorded: dict[str, TenantEntry], settled: set[str]) -> list[Step]:
    """After the removals: each settled entry back to what the config has, or gone."""
    profile = ctx.config.instance_profile
    desired = desired_tenant_record(ctx.config)
    rewrite = {desired[n].key: desired[n].value for n in settled if n in desired and desired[n].value != recorded[n].value}
    forget = sorted(recorded[n].key for n in settled if n not in desired)
    steps: list[Step] = []
    if rewrite:
        items = [{"Key": k, "Value": v} for k, v in sorted(rewrite.items())]
        steps.append(Step(SYSTEM, UPDATE, "tenant-record", profile,
                          f"record on instance profile {profile} only the current names of tenant(s) "
                          + ", ".join(k[len(TENANT_RECORD_PREFIX):] for k in sorted(rewrite)),
                          run=lambda: gw.call("iam", "tag_instance_profile", InstanceProfileName=profile, Tags=items)))
    if forget:
        steps.append(Step(SYSTEM, DELETE, "tenant-record", profile,
                          "forget " + ", ".join(f"tenant {k[len(TENANT_RECORD_PREFIX):]}" for k in forget)
                          + f" in the record on instance profile {profile}",
                          "once its recorded resources are deleted (any not provably rbacbridge's is left alone, above)",
                          lambda: gw.call("iam", "untag_instance_profile", InstanceProfileName=profile, TagKeys=forget)))
    return steps


def _kept_names(config: Config, account: str) -> tuple[set[str], set[str]]:
    """Role and policy names the configuration still uses (never deleted as a removed tenant's)."""
    roles = {t.role for t in config.tenants} | {config.node_role, config.pod_default_role, config.effective_default_role}
    policies = {t.policy for t in config.tenants if t.policy} | {config.node_policy, config.kube2iam_policy}
    return roles, policies


# --- what the instances' metadata options mean for kube2iam ------------------------------------


def metadata_finding(instance_id: str, options: dict[str, Any]) -> dict[str, Any]:
    """What an instance's MetadataOptions mean for pods (HttpTokens, HttpPutResponseHopLimit, HttpEndpoint).

    `pods_blocked_without_rule`: with IMDSv2 tokens required and a hop limit of 1, the token a pod asks
    for is dropped one hop (the pod's network namespace) short of it, and tokenless calls get 401: pods
    cannot reach the metadata service even if kube2iam's iptables rule is missing. kube2iam itself runs on
    the host network and is not affected."""
    tokens = options.get("HttpTokens") or "optional"
    hops = options.get("HttpPutResponseHopLimit")
    endpoint = options.get("HttpEndpoint") or "enabled"  # AWS's default; moto omits it after a modify
    blocked = False
    if endpoint == "disabled":
        meaning = ("the instance metadata service is disabled: kube2iam cannot get the node role's credentials, "
                   "so no pod gets a role (enable HttpEndpoint)")
        blocked = True
    elif tokens == "required" and hops == 1:
        meaning = ("IMDSv2 tokens required, hop limit 1: pods cannot reach the metadata service even without "
                   "kube2iam's iptables rule (good); kube2iam on the host network still can")
        blocked = True
    elif tokens == "required":
        meaning = (f"IMDSv2 tokens required but hop limit {hops}: a pod can fetch a token itself, so kube2iam's "
                   "iptables rule is the only barrier between pods and the node role (hop limit 1 adds a second)")
    else:
        meaning = ("IMDSv1 allowed (HttpTokens optional): a plain GET from any pod reaches the node role's credentials "
                   "wherever kube2iam's iptables rule is missing: the rule is the only barrier "
                   "(HttpTokens required with hop limit 1 adds a second)")
    return {"instance_id": instance_id, "http_tokens": tokens, "hop_limit": hops, "http_endpoint": endpoint,
            "pods_blocked_without_rule": blocked, "meaning": meaning}


def _image_without_imdsv2(image: str) -> bool:
    """Upstream kube2iam images before 0.13.0 have no IMDSv2 support (0.12.0 was never published)."""
    match = re.fullmatch(r"(?:docker\.io/)?jtblin/kube2iam:v?(\d+)\.(\d+)(?:\.\d+)?", image)
    return bool(match) and (int(match.group(1)), int(match.group(2))) < (0, 13)


def _note_metadata_options(ctx, instances: dict[str, dict[str, Any]]) -> None:
    findings = [metadata_finding(i, instances[i].get("MetadataOptions") or {}) for i in sorted(instances)]
    if not findings:
        return
    ctx.facts["metadata_options"] = findings
    notes = ctx.facts.setdefault("notes", [])
    for finding in findings:
        notes.append(f"instance {finding['instance_id']}: {finding['meaning']}")
    image = ctx.config.kube2iam_image
    requiring = [f["instance_id"] for f in findings if f["http_tokens"] == "required"]
    if requiring and _image_without_imdsv2(image):
        ctx.facts.setdefault("warnings", []).append(
            f"kube2iam image {image} has no IMDSv2 support: it crash-loops (401 getting the instance id) on "
            f"{', '.join(requiring)}, which require tokens; use jtblin/kube2iam:0.13.0 or later (kube2iam.image)")


def _profile_name(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _live_profile(gw: AwsGateway, name: str) -> dict | None:
    return gw.get_or_none("iam", "get_instance_profile", ("NoSuchEntity",), InstanceProfileName=name)


def _describe_instances(gw: AwsGateway, instance_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The given instances, one call (paginated); a missing instance is bad input."""
    if not instance_ids:
        return {}
    instances: dict[str, dict[str, Any]] = {}
    try:
        for chunk in _chunks(instance_ids, 1000):
            for page in _pages(gw, "ec2", "describe_instances", "NextToken", InstanceIds=chunk):
                for reservation in page["Reservations"]:
                    for instance in reservation["Instances"]:
                        instances[instance["InstanceId"]] = instance
    except AwsError as exc:
        if exc.code == "InvalidInstanceID.NotFound":
            raise UsageError(f"{exc} (region {gw.config.region})") from None
        if exc.code == "InvalidInstanceID.Malformed":
            raise UsageError(str(exc)) from None
        raise
    return instances


def _tags_of(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[n:n + size] for n in range(0, len(items), size)]


def _pages(gw: AwsGateway, service: str, operation: str, token: str, **params: Any):
    """Every page of a paginated read, each through gw.call (same error handling)."""
    while True:
        page = gw.call(service, operation, **params)
        yield page
        if not page.get(token):
            return
        params[token] = page[token]


def _associations(gw: AwsGateway, instance_ids: list[str] | None = None, states: tuple[str, ...] | None = ASSOCIATED_STATES) -> list[dict]:
    """Instance profile associations, for the given instances (else all), in one call per 200 ids."""
    filters = [{"Name": "state", "Values": list(states)}] if states else []
    groups = _chunks(instance_ids, 200) if instance_ids is not None else [None]
    found: list[dict] = []
    for group in groups:
        extra = [{"Name": "instance-id", "Values": group}] if group is not None else []
        params: dict[str, Any] = {"Filters": filters + extra} if filters + extra else {}
        for page in _pages(gw, "ec2", "describe_iam_instance_profile_associations", "NextToken", **params):
            found += page.get("IamInstanceProfileAssociations", [])
    return found


def _describe_previous(previous: Previous) -> str:
    if previous.association_id is None:
        return f"{previous.instance_id} had none"
    return f"{previous.instance_id} had {previous.profile_name} ({previous.association_id})"


def _record_step(gw: AwsGateway, profile: str, record: Record, updates: list[Previous]) -> Step:
    resource = InstanceProfile(profile, "")
    try:
        changes = record_changes(record, updates)
    except RecordFull as exc:
        return Step(SYSTEM, CONFLICT, "restore-record", profile, f"cannot record what setup replaces: {exc}",
                    "associate these instances in smaller batches after a teardown, or use fewer distinct previous profiles")
    tags = [{"Key": k, "Value": v} for k, v in sorted(changes.items())]
    return Step(SYSTEM, UPDATE if record.tags else CREATE, "restore-record", resource.name,
                f"record on instance profile {profile} what setup replaces: " + "; ".join(_describe_previous(u) for u in updates),
                "IAM tags on rbacbridge's own profile (iam:TagInstanceProfile), written before any association changes",
                lambda: gw.call("iam", "tag_instance_profile", InstanceProfileName=profile, Tags=tags),
                {"record": {u.instance_id: u.profile_arn or NO_PREVIOUS_PROFILE for u in updates}})


def _plan_associations(ctx, gw: AwsGateway, account: str, ids: list[str], live_profile: dict | None,
                       instances: dict[str, dict[str, Any]]) -> list[Step]:
    """Associate rbacbridge's profile with each instance, recording first what it replaces."""
    if not ids:
        return []
    name = ctx.config.instance_profile
    tags = {i: _tags_of(instance) for i, instance in instances.items()}
    info = live_profile["InstanceProfile"] if live_profile else None
    owned = info is not None and _owned(info.get("Tags"))
    if info is not None and not owned and not ctx.adopt:
        return []  # the profile's conflict blocks the run; nothing to associate
    own_arn = info["Arn"] if info else f"arn:aws:iam::{account}:instance-profile/{name}"
    tags_now = (info.get("Tags") or []) if info else []
    record = parse_record(tags_now if owned else [t for t in tags_now if not t["Key"].startswith(_RECORD_KEYS)], account)
    current = {a["InstanceId"]: a for a in _associations(gw, ids)}
    updates: list[Previous] = []
    migrated: list[str] = []
    steps: list[Step] = []
    for instance_id in ids:
        assoc = ProfileAssociation(instance_id, name)
        live = current.get(instance_id)
        old_tag = tags.get(instance_id, {}).get(PREVIOUS_PROFILE_TAG)
        if live and live["IamInstanceProfile"]["Arn"] == own_arn:
            if instance_id in record.entries:
                steps.append(_step(UNCHANGED, assoc, f"instance {instance_id} uses instance profile {name} "
                                   f"(recorded: it had {record.entries[instance_id].profile_name})"))
                if old_tag == NO_PREVIOUS_PROFILE:
                    migrated.append(instance_id)  # an interrupted migration: finish it
            elif instance_id in record.tampered:
                steps.append(_step(LEFT_ALONE, assoc, f"record for instance {instance_id} looks tampered with: "
                                   f"{record.tampered[instance_id]}", "teardown will restore nothing on it"))
            elif old_tag == NO_PREVIOUS_PROFILE:
                updates.append(Previous(instance_id))
                migrated.append(instance_id)
            elif old_tag is not None:
                steps.append(_step(LEFT_ALONE, assoc, f"old-style record on instance {instance_id} (EC2 tag {PREVIOUS_PROFILE_TAG}"
                                   f"={old_tag}) is not trusted and not migrated",
                                   "anyone with ec2:CreateTags can write it: teardown will restore nothing on this instance"))
            else:
                steps.append(_step(LEFT_ALONE, assoc, f"instance {instance_id} holds instance profile {name} but rbacbridge has no record of it",
                                   "associated outside rbacbridge: teardown leaves it (--force disassociates)"))
            continue
        previous = Previous(instance_id, live["AssociationId"], live["IamInstanceProfile"]["Id"],
                            live["IamInstanceProfile"]["Arn"]) if live else Previous(instance_id)
        if not previous.storable():
            steps.append(_step(CONFLICT, assoc, f"cannot record instance {instance_id}'s profile {previous.profile_arn}",
                               "its ARN does not fit an IAM tag value (length or characters): associate it by hand"))
            continue
        if record.entries.get(instance_id) != previous:
            updates.append(previous)
        if old_tag is not None:
            migrated.append(instance_id)  # superseded by the record written just before
        spec = {"Name": name}
        if live is None:
            steps.append(_step(CREATE, assoc, f"associate instance profile {name} with instance {instance_id}",
                               run=lambda i=instance_id: retry_eventual_consistency(lambda: gw.call(
                                   "ec2", "associate_iam_instance_profile", IamInstanceProfile=spec, InstanceId=i))))
        else:
            steps.append(_step(UPDATE, assoc, f"replace instance profile {previous.profile_name} with {name} on instance {instance_id}",
                               f"{previous.profile_name} is recorded and comes back on teardown",
                               lambda a=live["AssociationId"]: retry_eventual_consistency(lambda: gw.call(
                                   "ec2", "replace_iam_instance_profile_association", IamInstanceProfile=spec, AssociationId=a))))
    first: list[Step] = [_record_step(gw, name, record, updates)] if updates else []
    if migrated:
        first.append(Step(SYSTEM, DELETE, "old-style-record", ", ".join(migrated),
                          f"remove the old-style record tag {PREVIOUS_PROFILE_TAG} from instance(s) {', '.join(migrated)}",
                          "superseded by the record on the instance profile (written first)",
                          run=lambda: gw.call("ec2", "delete_tags", Resources=migrated, Tags=[{"Key": PREVIOUS_PROFILE_TAG}])))
    return first + steps


def instance_ids(ctx) -> list[str]:
    """Configured instance ids, else those of the cluster's nodes (spec.providerID)."""
    if ctx.config.instance_ids:
        return list(ctx.config.instance_ids)
    if "kube" not in ctx.parts:
        ctx.facts.setdefault("notes", []).append(
            "no --instance-id given and the kube part is not selected: the instance profile is not associated with any instance")
        return []

    def from_cluster() -> list[str]:
        from rbacbridge.kube import cluster_nodes

        nodes = cluster_nodes(ctx)
        without = [n.name for n in nodes if not n.instance_id]
        if without:
            ctx.facts.setdefault("notes", []).append(
                f"nodes without an AWS providerID, not associated: {', '.join(without)}")
        return sorted({n.instance_id for n in nodes if n.instance_id})

    return ctx.fact("instance_ids", from_cluster)


def _checked_account(ctx, gw: AwsGateway) -> str:
    account = gw.account()
    if ctx.config.account_id and ctx.config.account_id != account:
        raise UsageError(f"--account-id {ctx.config.account_id} does not match the credentials in use "
                         f"(account {account}): refusing to touch the wrong account")
    return account


def plan_setup(ctx) -> list[Step]:
    gw = gateway(ctx)
    account = _checked_account(ctx, gw)
    ids = instance_ids(ctx)
    instances = _describe_instances(gw, ids)  # one describe: validation, metadata options, old-style tags
    _note_metadata_options(ctx, instances)
    steps: list[Step] = []
    live_profile = None
    recorded: dict[str, TenantEntry] = {}
    for resource in desired_resources(ctx.config, account, []):
        if isinstance(resource, ManagedPolicy):
            steps += _plan_policy(ctx, gw, account, resource)
        elif isinstance(resource, Role):
            steps += _plan_role(ctx, gw, account, resource)
        elif isinstance(resource, InstanceProfile):
            live_profile = _live_profile(gw, resource.name)
            steps += _plan_profile(ctx, gw, resource, live_profile)
            record_steps, recorded = _tenant_record_start(ctx, gw, live_profile)
            steps += record_steps  # before any tenant's role or policy is created
    keep_roles, keep_policies = _kept_names(ctx.config, account)
    removal, settled = _plan_removed_tenants(ctx, gw, account, recorded, keep_roles, keep_policies, teardown=False)
    steps += removal
    steps += _tenant_record_end(ctx, gw, recorded, settled)
    steps += _plan_associations(ctx, gw, account, ids, live_profile, instances)
    return permission_set.without_repeats(steps)


# --- planning: teardown -----------------------------------------------------------------------


def _left_alone(resource: Any, why: str = "not tagged managed-by=rbacbridge (--force deletes it anyway)") -> Step:
    return _step(LEFT_ALONE, resource, f"leave {resource.kind} {resource.name}: not rbacbridge's", why)


def _plan_associations_teardown(ctx, gw: AwsGateway, account: str, live_profile: dict | None) -> tuple[list[Step], str | None]:
    """Give each instance rbacbridge recorded back what setup replaced, while it still holds
    rbacbridge's profile. Returns the steps and, when the profile must stay (instances hold it
    without a record), why."""
    if live_profile is None:
        return [], None
    info = live_profile["InstanceProfile"]
    name, own_arn = info["InstanceProfileName"], info["Arn"]
    owned = _owned(info.get("Tags"))
    history = _associations(gw, states=None)
    holders = {a["InstanceId"]: a for a in history
               if a["State"] in ASSOCIATED_STATES and a["IamInstanceProfile"]["Arn"] == own_arn}
    steps: list[Step] = []
    if not owned and not ctx.force:
        for instance_id in sorted(holders):
            steps.append(_step(LEFT_ALONE, ProfileAssociation(instance_id, name),
                               f"leave instance {instance_id} with instance profile {name}: the profile is not rbacbridge's",
                               "rbacbridge has no record of this association (--force disassociates and deletes the profile)"))
        return steps, None
    record = parse_record(info.get("Tags") if owned else [], account)
    check_evidence(record, {a["AssociationId"]: a for a in history}, own_arn)
    for problem in record.unreadable:
        steps.append(Step(SYSTEM, LEFT_ALONE, "restore-record", name, f"record on instance profile {name} looks tampered with: {problem}",
                          "no instance is restored from this part of the record"))
    old_tags = {i["InstanceId"]: t["Value"]
                for page in _pages(gw, "ec2", "describe_instances", "NextToken",
                                   Filters=[{"Name": "tag-key", "Values": [PREVIOUS_PROFILE_TAG]}])
                for r in page["Reservations"] for i in r["Instances"]
                for t in i.get("Tags", []) if t["Key"] == PREVIOUS_PROFILE_TAG}
    unrecorded: list[str] = []
    previous_profiles: dict[str, dict | None] = {}
    for instance_id in sorted(set(holders) | set(record.tampered)):
        assoc = ProfileAssociation(instance_id, name)
        if instance_id not in holders:
            steps.append(_step(LEFT_ALONE, assoc, f"record for instance {instance_id} looks tampered with: {record.tampered[instance_id]}",
                               f"it does not hold {name}: nothing to undo there"))
            continue
        association_id = holders[instance_id]["AssociationId"]
        disassociate = lambda a=association_id: gw.call("ec2", "disassociate_iam_instance_profile", AssociationId=a)  # noqa: E731
        remove = f"disassociate instance profile {name} from instance {instance_id}"
        previous = record.entries.get(instance_id)
        if previous is not None:
            if old_tags.get(instance_id) == NO_PREVIOUS_PROFILE:
                steps.append(_step(DELETE, assoc, f"remove the old-style record tag from instance {instance_id}", "superseded by the record",
                                   run=lambda i=instance_id: gw.call("ec2", "delete_tags", Resources=[i], Tags=[{"Key": PREVIOUS_PROFILE_TAG}])))
            elif instance_id in old_tags:
                steps.append(_step(LEFT_ALONE, assoc, f"ignore EC2 tag {PREVIOUS_PROFILE_TAG}={old_tags[instance_id]} on instance {instance_id}",
                                   "not rbacbridge's record (anyone with ec2:CreateTags can write it); the IAM record decides"))
            if previous.association_id is None:
                steps.append(_step(DELETE, assoc, remove, "recorded: it had no instance profile before setup", disassociate))
                continue
            pname = previous.profile_name
            if pname not in previous_profiles:
                previous_profiles[pname] = _live_profile(gw, pname)
            live = previous_profiles[pname]
            if live is None:
                steps.append(_step(DELETE, assoc, remove, f"its recorded previous profile {pname} no longer exists", disassociate))
            elif (live["InstanceProfile"]["InstanceProfileId"], live["InstanceProfile"]["Arn"]) != (previous.profile_id, previous.profile_arn):
                steps.append(_step(LEFT_ALONE, assoc, f"do not give instance {instance_id} the profile now named {pname}",
                                   f"it is not the recorded one (id {previous.profile_id}, {previous.profile_arn}): nothing restored"))
                steps.append(_step(DELETE, assoc, remove, "its recorded previous profile was deleted and re-created", disassociate))
            else:
                spec = {"Arn": previous.profile_arn}
                steps.append(_step(RESTORE, assoc, f"give instance {instance_id} back its instance profile {pname} ({previous.profile_arn})",
                                   f"recorded by setup: association {previous.association_id} of profile id {previous.profile_id}",
                                   lambda a=association_id, spec=spec: retry_eventual_consistency(lambda: gw.call(
                                       "ec2", "replace_iam_instance_profile_association", IamInstanceProfile=spec, AssociationId=a)),
                                   restore=previous.profile_arn))
        elif instance_id in record.tampered:
            steps.append(_step(LEFT_ALONE, assoc, f"record for instance {instance_id} looks tampered with: {record.tampered[instance_id]}",
                               "nothing is restored on it; the profile it had (if any) must be given back by hand"))
            steps.append(_step(DELETE, assoc, remove, "rbacbridge's own association; its record is not trusted", disassociate))
        elif old_tags.get(instance_id) == NO_PREVIOUS_PROFILE:
            steps.append(_step(DELETE, assoc, remove, "old-style record (EC2 tag, migrated): it had no instance profile", disassociate))
            steps.append(_step(DELETE, assoc, f"remove the old-style record tag from instance {instance_id}",
                               run=lambda i=instance_id: gw.call("ec2", "delete_tags", Resources=[i], Tags=[{"Key": PREVIOUS_PROFILE_TAG}])))
        elif instance_id in old_tags:
            steps.append(_step(LEFT_ALONE, assoc, f"refuse the old-style record on instance {instance_id}: "
                               f"EC2 tag {PREVIOUS_PROFILE_TAG}={old_tags[instance_id]}",
                               "anyone with ec2:CreateTags can write it, so nothing is restored; if you trust it, associate "
                               "that profile by hand after teardown (the tag is left in place)"))
            steps.append(_step(DELETE, assoc, remove, "rbacbridge's own association (old-style record)", disassociate))
        elif ctx.force:
            steps.append(_step(DELETE, assoc, remove, "--force: associated without a record of rbacbridge's", disassociate))
        else:
            unrecorded.append(instance_id)
            steps.append(_step(LEFT_ALONE, assoc, f"leave instance {instance_id} with instance profile {name}: rbacbridge has no record of associating it",
                               "--force disassociates it"))
    keep = None
    if unrecorded:
        keep = f"still associated with {', '.join(unrecorded)} without rbacbridge's record (--force disassociates and deletes)"
    return steps, keep


def _plan_role_teardown(ctx, gw: AwsGateway, role: Role, own_profiles: set[str], kept_profiles: set[str]) -> list[Step]:
    live = gw.get_or_none("iam", "get_role", ("NoSuchEntity",), RoleName=role.name)
    if live is None:
        return []
    if not _owned(live["Role"].get("Tags")) and not ctx.force:
        return [_left_alone(role)]
    profiles = gw.call("iam", "list_instance_profiles_for_role", RoleName=role.name)["InstanceProfiles"]
    kept = [p["InstanceProfileName"] for p in profiles if p["InstanceProfileName"] in kept_profiles]
    if kept:
        return [_left_alone(role, f"still in instance profile {', '.join(kept)}, which stays (see above)")]
    steps = []
    for policy in _attached_policies(gw, role.name):
        steps.append(Step(SYSTEM, DELETE, "iam-attachment", f"{role.name}/{policy['PolicyName']}",
                          f"detach policy {policy['PolicyName']} from role {role.name}",
                          run=lambda arn=policy["PolicyArn"]: gw.call("iam", "detach_role_policy", RoleName=role.name, PolicyArn=arn)))
    for name in gw.call("iam", "list_role_policies", RoleName=role.name)["PolicyNames"]:
        steps.append(_step(DELETE, role, f"delete inline policy {name} of role {role.name}",
                           run=lambda name=name: gw.call("iam", "delete_role_policy", RoleName=role.name, PolicyName=name)))
    for profile in profiles:
        if profile["InstanceProfileName"] in own_profiles:
            continue  # the profile's own teardown takes the role out
        steps.append(_step(DELETE, role, f"take role {role.name} out of instance profile {profile['InstanceProfileName']}",
                           run=lambda p=profile["InstanceProfileName"]: gw.call(
                               "iam", "remove_role_from_instance_profile", InstanceProfileName=p, RoleName=role.name)))
    steps.append(_step(DELETE, role, f"delete role {role.name}", run=lambda: gw.call("iam", "delete_role", RoleName=role.name)))
    return steps


def _plan_policy_teardown(ctx, gw: AwsGateway, account: str, policy: ManagedPolicy, roles_deleted: set[str],
                          detach_roles: set[str] = frozenset()) -> list[Step]:
    """Delete the policy. `roles_deleted` detach it themselves (their steps come first); `detach_roles`
    are rbacbridge's roles that stay (a tenant's role keeps, its policy goes): detached here."""
    arn = ctx.config.policy_arn(account, policy.name)
    live = gw.get_or_none("iam", "get_policy", ("NoSuchEntity",), PolicyArn=arn)
    if live is None:
        return []
    if not _owned(live["Policy"].get("Tags")) and not ctx.force:
        return [_left_alone(policy)]
    entities = gw.call("iam", "list_entities_for_policy", PolicyArn=arn)
    roles = [r["RoleName"] for r in entities["PolicyRoles"] if r["RoleName"] not in roles_deleted]
    others = [("role", r) for r in roles if r not in detach_roles]
    others += [("user", u["UserName"]) for u in entities["PolicyUsers"]]
    others += [("group", g["GroupName"]) for g in entities["PolicyGroups"]]
    steps: list[Step] = [
        Step(SYSTEM, DELETE, "iam-attachment", f"{r}/{policy.name}", f"detach policy {policy.name} from role {r}",
             run=lambda r=r: gw.call("iam", "detach_role_policy", RoleName=r, PolicyArn=arn))
        for r in roles if r in detach_roles]
    if others:
        names = ", ".join(f"{k} {n}" for k, n in others)
        if not ctx.force:
            return [_left_alone(policy, f"still attached to {names} (--force detaches and deletes)")]
        detach = {"role": ("detach_role_policy", "RoleName"), "user": ("detach_user_policy", "UserName"),
                  "group": ("detach_group_policy", "GroupName")}
        for kind, name in others:
            operation, key = detach[kind]
            steps.append(_step(DELETE, policy, f"detach policy {policy.name} from {kind} {name}", "--force",
                               lambda op=operation, k=key, n=name: gw.call("iam", op, PolicyArn=arn, **{k: n})))
    for version in gw.call("iam", "list_policy_versions", PolicyArn=arn)["Versions"]:
        if not version["IsDefaultVersion"]:
            steps.append(_step(DELETE, policy, f"delete version {version['VersionId']} of policy {policy.name}",
                               run=lambda v=version["VersionId"]: gw.call("iam", "delete_policy_version", PolicyArn=arn, VersionId=v)))
    steps.append(_step(DELETE, policy, f"delete policy {policy.name}", run=lambda: gw.call("iam", "delete_policy", PolicyArn=arn)))
    return steps


def _plan_profile_teardown(ctx, gw: AwsGateway, profile: InstanceProfile, live: dict | None, keep: str | None) -> list[Step]:
    if live is None:
        return []
    if not _owned(live["InstanceProfile"].get("Tags")) and not ctx.force:
        return [_left_alone(profile)]
    if keep:
        return [_left_alone(profile, keep)]
    steps = [_step(DELETE, profile, f"take role {r['RoleName']} out of instance profile {profile.name}",
                   run=lambda r=r["RoleName"]: gw.call("iam", "remove_role_from_instance_profile",
                                                      InstanceProfileName=profile.name, RoleName=r))
             for r in live["InstanceProfile"].get("Roles", [])]
    steps.append(_step(DELETE, profile, f"delete instance profile {profile.name}",
                       run=lambda: gw.call("iam", "delete_instance_profile", InstanceProfileName=profile.name)))
    return steps


def plan_teardown(ctx) -> list[Step]:
    gw = gateway(ctx)
    account = _checked_account(ctx, gw)
    resources = desired_resources(ctx.config, account, [], teardown=True)
    profiles = {r.name: _live_profile(gw, r.name) for r in resources if isinstance(r, InstanceProfile)}
    steps: list[Step] = []
    keep: dict[str, str | None] = {}
    for name, live in profiles.items():
        association_steps, keep[name] = _plan_associations_teardown(ctx, gw, account, live)
        steps += association_steps
    # A profile that is not deleted keeps its role (taking the role out would break its instances).
    kept_profiles = {n for n, live in profiles.items() if live is not None and (keep[n] or not (
        ctx.force or _owned(live["InstanceProfile"].get("Tags"))))}
    own_profiles = set(profiles) - kept_profiles
    # Tenants recorded on rbacbridge's profile but no longer configured: theirs go first.
    live = profiles.get(ctx.config.instance_profile)
    recorded = parse_tenant_record(live["InstanceProfile"].get("Tags"))[0] if live and _owned(
        live["InstanceProfile"].get("Tags")) else {}
    configured_roles = {r.name for r in resources if isinstance(r, Role)} | {ctx.config.node_role}
    configured_policies = {r.name for r in resources if isinstance(r, ManagedPolicy)}
    removal, _ = _plan_removed_tenants(ctx, gw, account, recorded, configured_roles, configured_policies, teardown=True)
    steps += removal
    roles_deleted: set[str] = set()
    for resource in reversed(resources):
        if isinstance(resource, Role):
            role_steps = _plan_role_teardown(ctx, gw, resource, own_profiles, kept_profiles)
            if role_steps and role_steps[-1].action == DELETE:
                roles_deleted.add(resource.name)
            steps += role_steps
        elif isinstance(resource, ManagedPolicy):
            # Each policy comes after its roles in this reversed walk; their detach steps run first.
            steps += _plan_policy_teardown(ctx, gw, account, resource, roles_deleted)
        elif isinstance(resource, InstanceProfile):
            steps += _plan_profile_teardown(ctx, gw, resource, profiles[resource.name], keep[resource.name])
    return steps


# --- running the steps -------------------------------------------------------------------------


def execute(ctx, steps: list[Step]) -> Execution:
    """Run the AWS steps in plan order, except that a run of consecutive association steps (one
    group per instance; the record is written before them) goes through a bounded pool. Stops at
    the first failure, after the other instances of that batch have finished."""
    reporter = ctx.reporter
    result = Execution()
    batch: list[Step] = []

    def run(part: Execution) -> bool:
        result.done += part.done
        if not part.ok:
            result.failed, result.error = part.failed, part.error
        return part.ok

    def flush() -> bool:
        if not batch:
            return True
        part = execute_in_parallel(list(batch), lambda step: step.name, ASSOCIATION_WORKERS,
                                   reporter.step_started, reporter.step_done)
        batch.clear()
        return run(part)

    from rbacbridge.plan import execute as in_order

    for step in steps:
        if not step.changes or step.run is None:
            continue
        if step.kind == ProfileAssociation.kind:
            batch.append(step)
            continue
        if not flush() or not run(in_order([step], reporter.step_started, reporter.step_done)):
            return result
    flush()
    return result
