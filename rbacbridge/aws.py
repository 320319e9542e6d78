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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from rbacbridge import MANAGED_BY_KEY, MANAGED_BY_VALUE, permission_set
from rbacbridge.aws_record import (DELETION_WINDOW_DAYS, INSTALL_TAG, KEY_SPEC, KEY_USAGE, KMS_TAGS_PER_KEY, Draft, RecordKey, Replaced, accept_pending,
                                   encode, has_old_record, old_claims)
from rbacbridge.config import Config, Tenant, grant_bucket, grant_objects_arn, iam_key
from rbacbridge.errors import RbacbridgeError, UsageError, one_line, shown
from rbacbridge.plan import (CONFLICT, CREATE, DELETE, LEFT_ALONE, RESTORE, UNCHANGED, UPDATE, Execution, Step,
                             execute_in_parallel)
from rbacbridge.templating import render_json

SYSTEM = "aws"
OWNED_TAG = {"Key": MANAGED_BY_KEY, "Value": MANAGED_BY_VALUE}
TENANT_TAG = "rbacbridge:tenant"  # on a tenant's role and policy: which tenant they serve
# Versions up to 0.1 recorded the replaced profile in this EC2 tag on the instance (later ones, unsigned,
# in the instance profile's tags). Anyone allowed to tag can write either: never trusted, only quoted by
# teardown so that the operator can give a profile back by hand (docs/ownership.md, upgrading).
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


def resource_tags(resource: Any, install: str) -> list[dict[str, str]]:
    """The tags setup gives a resource: managed-by, the install, and the tenant of a tenant's role or
    policy. They say whose it is meant to be; they are never evidence that it is (the record is)."""
    tenant = getattr(resource, "tenant", None)
    return [OWNED_TAG, {"Key": INSTALL_TAG, "Value": install}] + ([{"Key": TENANT_TAG, "Value": tenant}] if tenant else [])


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


# --- planning: setup --------------------------------------------------------------------------


def _step(action: str, resource: Any, message: str, reason: str = "", run: Callable | None = None, **details) -> Step:
    return Step(SYSTEM, action, resource.kind, resource.name, message, reason, run, details)


def _tag_map(tags: list[dict] | None) -> dict[str, str]:
    return {t.get("Key"): t.get("Value") for t in tags or []}


# --- ownership: the signed record decides ---------------------------------------------------------
#
# A resource is this install's when the verified record names its unique id, or names it as pending
# (setup signed the intent to create it) and AWS's CreateDate falls in the window after that intent.
# Tags never make anything ours: managed-by=rbacbridge on a resource the record does not name is a
# conflict to report (docs/ownership.md), and another install's tag makes it one even for --adopt.

KINDS = {"iam-role": "role", "iam-policy": "policy", "iam-instance-profile": "profile"}


@dataclass
class Claim:
    ours: bool
    why: str = ""  # why it is not provably ours
    adoptable: bool = False  # --adopt may record it (not another install's)
    accepted: bool = False  # a pending create of this run's install, found: its id goes into the record


def _live_parts(kind: str, live: dict) -> dict:
    return live[{"role": "Role", "policy": "Policy", "profile": "InstanceProfile"}[kind]]


def _unique_id(kind: str, info: dict) -> str:
    return info[{"role": "RoleId", "policy": "PolicyId", "profile": "InstanceProfileId"}[kind]]


def claim(draft: Draft, kind: str, name: str, info: dict) -> Claim:
    """Is this live resource (get_role's Role, get_policy's Policy, get_instance_profile's
    InstanceProfile) this install's?"""
    record = draft.key.record
    unique_id = _unique_id(kind, info)
    if record is not None and record.owner(kind, unique_id):
        return Claim(True)
    pending = record.pending_for(kind, name) if record is not None else None
    if pending is not None and accept_pending(pending.at, info.get("CreateDate")):
        return Claim(True, accepted=True)
    tags = _tag_map(info.get("Tags"))
    install = tags.get(INSTALL_TAG)
    if install and install != draft.key.install:
        return Claim(False, f"tagged {INSTALL_TAG}={install}: another install's (not in this install's signed record)")
    if pending is not None:
        created = info.get("CreateDate")
        return Claim(False, f"this install signed the intent to create it at {pending.at}, but AWS created it at "
                            f"{created.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}: not provably this install's"
                     if isinstance(created, datetime)
                     else f"this install signed the intent to create it at {pending.at}; AWS gives no creation time", True)
    if tags.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE:
        return Claim(False, f"tagged {MANAGED_BY_KEY}={MANAGED_BY_VALUE} but not in this install's signed record "
                            "(a tag proves nothing: anyone allowed to tag can write it)", True)
    return Claim(False, "not rbacbridge's: not in this install's signed record", True)


def _created_id(draft: Draft, resource: Any, kind: str, response: dict) -> dict:
    """A create step's response: its unique id goes into the record (setup's last record write)."""
    info = _live_parts(kind, response)
    draft.created(kind, _unique_id(kind, info), info.get({"role": "RoleName", "policy": "PolicyName",
                                                          "profile": "InstanceProfileName"}[kind], resource.name),
                  getattr(resource, "tenant", None))
    return response


def _ownership(ctx, draft: Draft, resource: Any, info: dict, tag: Callable[[], Any]) -> Step | None:
    """None when the live resource is this install's; else a conflict (or, with --adopt, the adoption)."""
    kind = KINDS[resource.kind]
    found = claim(draft, kind, resource.name, info)
    if found.ours:
        if found.accepted:
            draft.claim(kind, _unique_id(kind, info), resource.name, getattr(resource, "tenant", None))
        return None
    unique_id = _unique_id(kind, info)
    created = info.get("CreateDate")
    when = f", created {created:%Y-%m-%d}" if isinstance(created, datetime) else ""
    if ctx.adopt and found.adoptable:
        draft.claim(kind, unique_id, resource.name, getattr(resource, "tenant", None))
        return _step(UPDATE, resource, f"adopt {resource.kind} {resource.name} (id {unique_id}{when}): record it as this "
                     f"install's and tag it", f"{found.why}; --adopt given: teardown will delete it", tag)
    hint = ("rename it in the config, or pass --adopt to take it over (recorded; teardown then deletes it)"
            if found.adoptable else "rename it in the config (set a different name for this install)")
    return _step(CONFLICT, resource, f"{resource.kind} {resource.name} (id {unique_id}) exists and is not this install's",
                 f"{found.why}: {hint}")


def _tags_step(resource: Any, live_tags: list[dict] | None, install: str, tag: Callable[[], Any]) -> list[Step]:
    """This install's resource without (or with other) managed-by / rbacbridge:install / tenant tags gets them."""
    tags = _tag_map(live_tags)
    missing = [t for t in resource_tags(resource, install) if tags.get(t["Key"]) != t["Value"]]
    if not missing:
        return []
    why = ", ".join(f"{t['Key']} is {shown(tags[t['Key']])}" if t["Key"] in tags else f"no {t['Key']}" for t in missing)
    return [_step(UPDATE, resource, f"tag {resource.kind} {resource.name} " + " ".join(f"{t['Key']}={t['Value']}" for t in missing),
                  f"{why} (made by an earlier version, or retagged)", tag)]


def _plan_policy(ctx, gw: AwsGateway, account: str, policy: ManagedPolicy, draft: Draft) -> list[Step]:
    name = draft.key.record.recorded_name("policy", policy.name) if draft.key.record else policy.name
    arn = ctx.config.policy_arn(account, name)
    live = gw.get_or_none("iam", "get_policy", ("NoSuchEntity",), PolicyArn=arn)
    document = json.dumps(policy.document)
    install = draft.key.install
    if live is None:
        draft.intend("policy", policy.name, policy.tenant)
        return [_step(CREATE, policy, f"create policy {policy.name}", run=lambda: _created_id(draft, policy, "policy", gw.call(
            "iam", "create_policy", PolicyName=policy.name, PolicyDocument=document,
            Description=policy.description, Tags=resource_tags(policy, install))))]
    steps: list[Step] = []
    tag = lambda: gw.call("iam", "tag_policy", PolicyArn=arn, Tags=resource_tags(policy, install))  # noqa: E731
    conflict = _ownership(ctx, draft, policy, live["Policy"], tag)
    if conflict:
        steps.append(conflict)
        if conflict.action == CONFLICT:
            return steps
    else:
        steps += _tags_step(policy, live["Policy"].get("Tags"), install, tag)
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


def _plan_role(ctx, gw: AwsGateway, account: str, role: Role, draft: Draft) -> list[Step]:
    config = ctx.config
    name = draft.key.record.recorded_name("role", role.name) if draft.key.record else role.name
    live = gw.get_or_none("iam", "get_role", ("NoSuchEntity",), RoleName=name)
    trust = json.dumps(role.trust)
    update_trust = lambda: retry_eventual_consistency(lambda: gw.call(  # noqa: E731
        "iam", "update_assume_role_policy", RoleName=name, PolicyDocument=trust))
    steps: list[Step] = []
    attached: set[str] = set()
    if live is None:
        first_trust = _trust_without_self(role, account, config) if role.trusts_itself else role.trust
        draft.intend("role", role.name, role.tenant)
        steps.append(_step(CREATE, role, f"create role {role.name} ({_principals(role.trust)})", run=lambda: retry_eventual_consistency(
            lambda: _created_id(draft, role, "role", gw.call(
                "iam", "create_role", RoleName=role.name, AssumeRolePolicyDocument=json.dumps(first_trust),
                Description=role.description, Tags=resource_tags(role, draft.key.install))))))
        if role.trusts_itself:
            steps.append(_step(UPDATE, role, f"let role {role.name} trust its own ARN",
                               "kube2iam's default role is the node role; a role can only name itself once it exists",
                               update_trust))
    else:
        tag = lambda: gw.call("iam", "tag_role", RoleName=name, Tags=resource_tags(role, draft.key.install))  # noqa: E731
        conflict = _ownership(ctx, draft, role, live["Role"], tag)
        if conflict:
            steps.append(conflict)
            if conflict.action == CONFLICT:
                return steps
        else:
            steps += _tags_step(role, live["Role"].get("Tags"), draft.key.install, tag)
        current = _decode(live["Role"]["AssumeRolePolicyDocument"])
        if not documents_equal(role.trust, current):
            steps.append(_step(UPDATE, role, f"update trust policy of role {role.name}",
                               describe_difference("trust policy", role.trust, current), update_trust))
        live_attached = _attached_policies(gw, name)
        attached = {iam_key(p["PolicyName"]) for p in live_attached}
    for policy_name in role.policies:
        if iam_key(policy_name) in attached:
            continue
        arn = config.policy_arn(account, policy_name)
        steps.append(Step(SYSTEM, CREATE, "iam-attachment", f"{role.name}/{policy_name}", f"attach policy {policy_name} to role {role.name}",
                          run=lambda arn=arn: gw.call("iam", "attach_role_policy", RoleName=name, PolicyArn=arn)))
    if live is not None:  # the role's whole permission set: nothing but what setup attaches (issue 22, item 8)
        steps += permission_set.extra_policy_steps(ctx, gw, account, role, live_attached, _decode, live_name=name)
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


def _plan_profile(ctx, gw: AwsGateway, profile: InstanceProfile, live: dict | None, draft: Draft) -> list[Step]:
    add_role = lambda: gw.call("iam", "add_role_to_instance_profile",  # noqa: E731
                               InstanceProfileName=profile.name, RoleName=profile.role)
    install = draft.key.install
    if live is None:
        draft.intend("profile", profile.name, None)
        return [
            _step(CREATE, profile, f"create instance profile {profile.name}", run=lambda: _created_id(draft, profile, "profile", gw.call(
                "iam", "create_instance_profile", InstanceProfileName=profile.name, Tags=resource_tags(profile, install)))),
            _step(CREATE, profile, f"put role {profile.role} in instance profile {profile.name}", run=add_role),
        ]
    steps: list[Step] = []
    info = live["InstanceProfile"]
    tag = lambda: gw.call("iam", "tag_instance_profile", InstanceProfileName=profile.name, Tags=resource_tags(profile, install))  # noqa: E731
    conflict = _ownership(ctx, draft, profile, info, tag)
    if conflict:
        steps.append(conflict)
        if conflict.action == CONFLICT:
            return steps
    else:
        steps += _tags_step(profile, info.get("Tags"), install, tag)
    if has_old_record(info.get("Tags")):
        steps.append(_step(LEFT_ALONE, profile, f"ignore the unsigned record in the tags of instance profile {profile.name}",
                           "written by rbacbridge before the signed record (or by anyone allowed to tag it): "
                           "never trusted; teardown only quotes it"))
    roles = [r["RoleName"] for r in info.get("Roles", [])]
    for other in roles:
        if iam_key(other) != iam_key(profile.role):  # a profile holds one role
            steps.append(_step(UPDATE, profile, f"take role {other} out of instance profile {profile.name}",
                               f"the profile must hold {profile.role}", lambda other=other: gw.call(
                                   "iam", "remove_role_from_instance_profile",
                                   InstanceProfileName=profile.name, RoleName=other)))
    if iam_key(profile.role) not in {iam_key(r) for r in roles}:
        steps.append(_step(UPDATE, profile, f"put role {profile.role} in instance profile {profile.name}", run=add_role))
    return steps or [_step(UNCHANGED, profile, f"instance profile {profile.name} holds role {profile.role}")]


# --- the record in the plan ----------------------------------------------------------------------
#
# This install's record (rbacbridge/aws_record.py, docs/ownership.md) lives in the tags of its KMS key
# and is signed with it. Setup creates the key first (unless record.kms_key pins one), writes the record
# before creating or associating anything (intents, adoptions, what each instance had) and again at the
# end (the unique ids the creates returned, what it deleted). Teardown only reads it, and deletes the key
# last, once nothing the record names is left.


def _key_steps(key: RecordKey) -> list[Step]:
    if key.exists:
        return []
    return [Step(SYSTEM, CREATE, "kms-key", key.alias, f"create KMS key {key.alias} ({KEY_SPEC}, {KEY_USAGE}), "
                 f"tagged {MANAGED_BY_KEY}={MANAGED_BY_VALUE} {INSTALL_TAG}={key.install}",
                 "it signs this install's record: only principals IAM allows kms:Sign on it can write a record that verifies",
                 key.create)]


def _describe_replaced(instance: str, entry: Replaced) -> str:
    if entry.unknown:
        return f"{instance} held it already (had: unknown)"
    if entry.had_none:
        return f"{instance} had none"
    return f"{instance} had {entry.profile_name} ({entry.association_id})"


def _record_steps(draft: Draft) -> tuple[list[Step], list[Step]]:
    """Setup's two record writes (each a kms:Sign and a kms:TagResource), or a conflict when the record would not fit."""
    key = draft.key
    chunks, room = len(encode(draft.projected())[0]), key.room()
    if chunks > room:
        return [Step(SYSTEM, CONFLICT, "record", key.ref, f"cannot record this setup: the record would need {chunks} tags "
                     f"on KMS key {key.arn or key.alias}, which has room for {room} (KMS allows {KMS_TAGS_PER_KEY} tags a key)",
                     "set up fewer instances or tenants per install (docs/ownership.md, limits), or remove other tags from the key")], []
    first: list[Step] = []
    if draft.first_needed:
        said = [f"{p.kind} {p.name}" for p in draft.intents]
        parts = ([f"will create {', '.join(said)}"] if said else []) + \
            ([f"this install's: {', '.join(f'{k} {o.name} ({i})' for k, i, o in draft.claimed)}"] if draft.claimed else []) + \
            [_describe_replaced(i, e) for i, e in sorted(draft.replaced.items())]
        first.append(Step(SYSTEM, UPDATE if key.record else CREATE, "record", key.ref,
                          "sign and store this install's record: " + "; ".join(parts or ["association ids"]),
                          "in the tags of its KMS key, before anything is created or associated",
                          draft.write_first, {"record": {i: e.profile_arn or ("unknown" if e.unknown else "none")
                                                         for i, e in sorted(draft.replaced.items())}}))
    last: list[Step] = []
    if draft.last_needed:
        last.append(Step(SYSTEM, UPDATE, "record", key.ref,
                         "sign and store the unique ids of what setup created and associated"
                         + (f", forget the {len(draft.removed)} resource(s) it deleted" if draft.removed else ""),
                         "setup's last step: from then on only these ids make a resource this install's", draft.write_last))
    return first, last


def _label(owned_tenant: str, config: Config, teardown: bool) -> str:
    if not owned_tenant:
        return "teardown" if teardown else "no longer in the config"
    gone = teardown or all(t.name != owned_tenant for t in config.tenants)
    return f"tenant {owned_tenant} ({'teardown' if teardown else 'no longer in the config' if gone else 'renamed resource'})"


def _plan_removed(ctx, gw: AwsGateway, account: str, draft: Draft, keep_roles: set[str], keep_policies: set[str],
                  teardown: bool, own_profiles: set[str] = frozenset(), kept_profiles: set[str] = frozenset()) -> list[Step]:
    """Delete what the record names that the configuration no longer has: a removed (or renamed) tenant's
    role and policy on setup; on teardown every recorded role and policy the configured walk does not
    cover. Only by unique id: a same-named resource with another id is not the recorded one."""
    record = draft.key.record
    if record is None:
        return []
    steps: list[Step] = []
    deleted_roles: set[str] = set()
    for unique_id, owned in sorted(record.owned["role"].items(), key=lambda item: item[1].name):
        if iam_key(owned.name) in keep_roles or not (teardown or owned.tenant):
            continue
        live = gw.get_or_none("iam", "get_role", ("NoSuchEntity",), RoleName=owned.name)
        label = _label(owned.tenant, ctx.config, teardown)
        if live is None or live["Role"]["RoleId"] != unique_id:
            draft.removed.append(("role", unique_id))
            if live is not None:
                steps.append(_named(_left_alone(Role(owned.name, {}, (), ""), f"the recorded role (id {unique_id}) is gone; "
                                                f"this one (id {live['Role']['RoleId']}) is another"), label))
            continue
        part = _plan_role_teardown(ctx, gw, Role(owned.name, {}, (), "", tenant=owned.tenant or None), draft, own_profiles,
                                   kept_profiles, live)
        if part and part[-1].action == DELETE:
            deleted_roles.add(iam_key(owned.name))
            draft.removed.append(("role", unique_id))
        steps += [_named(s, label) for s in part]
    kept_roles = {iam_key(o.name) for o in record.owned["role"].values() if iam_key(o.name) in keep_roles}
    for unique_id, owned in sorted(record.owned["policy"].items(), key=lambda item: item[1].name):
        if iam_key(owned.name) in keep_policies or not (teardown or owned.tenant):
            continue
        live = gw.get_or_none("iam", "get_policy", ("NoSuchEntity",), PolicyArn=ctx.config.policy_arn(account, owned.name))
        label = _label(owned.tenant, ctx.config, teardown)
        if live is None or live["Policy"]["PolicyId"] != unique_id:
            draft.removed.append(("policy", unique_id))
            if live is not None:
                steps.append(_named(_left_alone(ManagedPolicy(owned.name, {}, ""), f"the recorded policy (id {unique_id}) is "
                                                f"gone; this one (id {live['Policy']['PolicyId']}) is another"), label))
            continue
        part = _plan_policy_teardown(ctx, gw, account, ManagedPolicy(owned.name, {}, "", owned.tenant or None), draft,
                                     deleted_roles, detach_roles=kept_roles, live=live)
        if part and part[-1].action == DELETE:
            draft.removed.append(("policy", unique_id))
        steps += [_named(s, label) for s in part]
    return steps


def _named(step: Step, label: str) -> Step:
    step.message = f"{label}: {step.message}"
    if label.startswith("tenant "):
        step.details = {**step.details, "tenant": label.split(" ")[1]}
    return step


def _kept_names(config: Config, account: str) -> tuple[set[str], set[str]]:
    """Role and policy names the configuration still uses (iam_key), never deleted as a removed tenant's."""
    roles = {t.role for t in config.tenants} | {config.node_role, config.pod_default_role, config.effective_default_role}
    policies = {t.policy for t in config.tenants if t.policy} | {config.node_policy, config.kube2iam_policy}
    return {iam_key(r) for r in roles}, {iam_key(p) for p in policies}


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


def _holds(association: dict | None, own_id: str | None, own_arn: str) -> bool:
    """Does this association hold the install's profile (by id; by ARN only before the profile exists)?"""
    if association is None:
        return False
    profile = association["IamInstanceProfile"]
    return profile.get("Id") == own_id if own_id and profile.get("Id") else profile["Arn"] == own_arn


def _plan_associations(ctx, gw: AwsGateway, account: str, ids: list[str], live_profile: dict | None, draft: Draft) -> list[Step]:
    """Associate the install's profile with each instance. What an instance had goes into the signed
    record first (the record write precedes every association step); the association id comes last."""
    if not ids:
        return []
    name = ctx.config.instance_profile
    info = live_profile["InstanceProfile"] if live_profile else None
    own_id = info["InstanceProfileId"] if info else None
    own_arn = info["Arn"] if info else f"arn:aws:iam::{account}:instance-profile/{name}"
    record = draft.key.record
    current = {a["InstanceId"]: a for a in _associations(gw, ids)}
    steps: list[Step] = []
    for instance_id in ids:
        assoc = ProfileAssociation(instance_id, name)
        live = current.get(instance_id)
        if _holds(live, own_id, own_arn):
            entry = record.replaced.get(instance_id) if record else None
            if entry is not None:
                steps.append(_step(UNCHANGED, assoc, f"instance {instance_id} uses instance profile {name} "
                                   f"(recorded: it had {'an unknown profile' if entry.unknown else entry.profile_name})"))
                if record.associations.get(instance_id) != live["AssociationId"]:
                    draft.associations[instance_id] = live["AssociationId"]  # an interrupted setup's, or re-issued by EC2
            elif ctx.adopt:
                draft.replaced[instance_id] = Replaced(unknown=True)
                draft.associations[instance_id] = live["AssociationId"]
                steps.append(_step(UPDATE, assoc, f"record instance {instance_id}, which already holds instance profile {name}, "
                                   "in this install's record", "--adopt: what it had before is unknown, so teardown "
                                   "disassociates it and gives nothing back (it quotes an unsigned record's claim, if any)"))
            else:
                steps.append(_step(LEFT_ALONE, assoc, f"instance {instance_id} holds instance profile {name} but this install's "
                                   "record does not name it", "associated outside rbacbridge, or by a version before the signed "
                                   "record: teardown leaves it (`setup --adopt` records it, `teardown --force` disassociates)"))
            continue
        previous = Replaced(live["AssociationId"], live["IamInstanceProfile"].get("Id"),
                            live["IamInstanceProfile"]["Arn"]) if live else Replaced()
        if not previous.storable():
            steps.append(_step(CONFLICT, assoc, f"cannot record instance {instance_id}'s profile {previous.profile_arn}",
                               "its association, id or ARN is not in a form the record holds: associate it by hand"))
            continue
        draft.replaced[instance_id] = previous
        spec = {"Name": name}
        remember = draft.associated
        if live is None:
            steps.append(_step(CREATE, assoc, f"associate instance profile {name} with instance {instance_id}",
                               "the record says it had none", run=lambda i=instance_id: remember(i, retry_eventual_consistency(lambda: gw.call(
                                   "ec2", "associate_iam_instance_profile", IamInstanceProfile=spec, InstanceId=i))
                                   ["IamInstanceProfileAssociation"]["AssociationId"])))
        else:
            steps.append(_step(UPDATE, assoc, f"replace instance profile {previous.profile_name} with {name} on instance {instance_id}",
                               f"{previous.profile_name} is recorded and comes back on teardown",
                               lambda i=instance_id, a=live["AssociationId"]: remember(i, retry_eventual_consistency(lambda: gw.call(
                                   "ec2", "replace_iam_instance_profile_association", IamInstanceProfile=spec, AssociationId=a))
                                   ["IamInstanceProfileAssociation"]["AssociationId"])))
    return steps


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


def record_key(ctx, gw: AwsGateway, account: str) -> RecordKey:
    """This install's KMS key and its verified record (RecordInvalid: exit 1, before anything changes)."""
    return RecordKey(gw, ctx.config, account).load()


def plan_setup(ctx) -> list[Step]:
    gw = gateway(ctx)
    account = _checked_account(ctx, gw)
    ids = instance_ids(ctx)
    instances = _describe_instances(gw, ids)  # one describe: validation and metadata options
    _note_metadata_options(ctx, instances)
    key = record_key(ctx, gw, account)
    if key.state == "PendingDeletion":
        raise RbacbridgeError(f"KMS key {key.arn} ({key.ref}) is pending deletion: " + (
            "pin another key (record.kms_key), or cancel the deletion (aws kms cancel-key-deletion, enable-key)" if key.pinned
            else "run `rbacbridge teardown` again to finish it, or cancel the deletion (aws kms cancel-key-deletion, enable-key)"))
    draft = Draft(key)
    steps: list[Step] = []
    live_profile, profile_ok = None, True
    for resource in desired_resources(ctx.config, account, []):
        if isinstance(resource, ManagedPolicy):
            steps += _plan_policy(ctx, gw, account, resource, draft)
        elif isinstance(resource, Role):
            steps += _plan_role(ctx, gw, account, resource, draft)
        elif isinstance(resource, InstanceProfile):
            name = key.record.recorded_name("profile", resource.name) if key.record else resource.name
            live_profile = _live_profile(gw, name)
            profile_steps = _plan_profile(ctx, gw, resource, live_profile, draft)
            profile_ok = not any(s.action == CONFLICT for s in profile_steps)
            steps += profile_steps
    keep_roles, keep_policies = _kept_names(ctx.config, account)
    steps += _plan_removed(ctx, gw, account, draft, keep_roles, keep_policies, teardown=False)
    if profile_ok:  # else the profile's conflict blocks the run: nothing to associate
        steps += _plan_associations(ctx, gw, account, ids, live_profile, draft)
    first, last = _record_steps(draft)
    return permission_set.without_repeats(_key_steps(key) + first + steps + last)


# --- planning: teardown -----------------------------------------------------------------------


def _left_alone(resource: Any, why: str = "not in this install's signed record (--force deletes it anyway)") -> Step:
    return _step(LEFT_ALONE, resource, f"leave {resource.kind} {resource.name}: not this install's", why)


def _claims_note(claims: dict[str, str], instance_id: str) -> str:
    claimed = claims.get(instance_id)
    if claimed is None:
        return ""
    if claimed == NO_PREVIOUS_PROFILE:
        return "; an unsigned record of an earlier version claims it had none"
    return (f"; an unsigned record of an earlier version claims it had {claimed} (never trusted: if you trust it, "
            f"`aws ec2 associate-iam-instance-profile --instance-id {instance_id} --iam-instance-profile Arn={claimed}`)")


def _plan_associations_teardown(ctx, gw: AwsGateway, account: str, live_profile: dict | None,
                                draft: Draft) -> tuple[list[Step], str | None]:
    """Give each instance the record names back what setup replaced, while it still holds the install's
    profile. Returns the steps and, when the profile must stay (instances hold it without a record), why."""
    if live_profile is None:
        return [], None
    info = live_profile["InstanceProfile"]
    name, own_arn, own_id = info["InstanceProfileName"], info["Arn"], info["InstanceProfileId"]
    ours = claim(draft, "profile", name, info).ours
    holders = {a["InstanceId"]: a for a in _associations(gw, states=None)
               if a["State"] in ASSOCIATED_STATES and _holds(a, own_id, own_arn)}
    steps: list[Step] = []
    if not ours and not ctx.force:
        for instance_id in sorted(holders):
            steps.append(_step(LEFT_ALONE, ProfileAssociation(instance_id, name),
                               f"leave instance {instance_id} with instance profile {name}: the profile is not this install's",
                               "not in this install's signed record (--force disassociates and deletes the profile)"))
        return steps, None
    record = draft.key.record
    entries = record.replaced if record else {}
    untrusted = [i for i in holders if i not in entries or entries[i].unknown]
    claims: dict[str, str] = {}
    if untrusted:
        old_tags = {i["InstanceId"]: t["Value"]
                    for page in _pages(gw, "ec2", "describe_instances", "NextToken",
                                       Filters=[{"Name": "tag-key", "Values": [PREVIOUS_PROFILE_TAG]}])
                    for r in page["Reservations"] for i in r["Instances"]
                    for t in i.get("Tags", []) if t["Key"] == PREVIOUS_PROFILE_TAG}
        claims = old_claims(info.get("Tags"), old_tags)
    unrecorded: list[str] = []
    previous_profiles: dict[str, dict | None] = {}
    for instance_id in sorted(holders):
        assoc = ProfileAssociation(instance_id, name)
        association_id = holders[instance_id]["AssociationId"]
        disassociate = lambda a=association_id: gw.call("ec2", "disassociate_iam_instance_profile", AssociationId=a)  # noqa: E731
        remove = f"disassociate instance profile {name} from instance {instance_id}"
        entry = entries.get(instance_id)
        if entry is None:
            if ctx.force:
                steps.append(_step(DELETE, assoc, remove, "--force: associated without this install's record" + _claims_note(claims, instance_id),
                                   disassociate))
            else:
                unrecorded.append(instance_id)
                steps.append(_step(LEFT_ALONE, assoc, f"leave instance {instance_id} with instance profile {name}: this install's "
                                   "record does not name it", "--force disassociates it" + _claims_note(claims, instance_id)))
            continue
        if entry.unknown:
            steps.append(_step(DELETE, assoc, remove, "recorded by `setup --adopt`: what it had before is unknown, nothing is "
                               "given back" + _claims_note(claims, instance_id), disassociate))
            continue
        if entry.had_none:
            steps.append(_step(DELETE, assoc, remove, "recorded: it had no instance profile before setup", disassociate))
            continue
        pname = entry.profile_name
        if pname not in previous_profiles:
            previous_profiles[pname] = _live_profile(gw, pname)
        live = previous_profiles[pname]
        if live is None:
            steps.append(_step(DELETE, assoc, remove, f"its recorded previous profile {pname} no longer exists", disassociate))
        elif (live["InstanceProfile"]["InstanceProfileId"], live["InstanceProfile"]["Arn"]) != (entry.profile_id, entry.profile_arn):
            steps.append(_step(LEFT_ALONE, assoc, f"do not give instance {instance_id} the profile now named {pname}",
                               f"it is not the recorded one (id {entry.profile_id}, {entry.profile_arn}): nothing restored"))
            steps.append(_step(DELETE, assoc, remove, "its recorded previous profile was deleted and re-created", disassociate))
        else:
            spec = {"Arn": entry.profile_arn}
            steps.append(_step(RESTORE, assoc, f"give instance {instance_id} back its instance profile {pname} ({entry.profile_arn})",
                               f"signed record: association {entry.association_id} of profile id {entry.profile_id}",
                               lambda a=association_id, spec=spec: retry_eventual_consistency(lambda: gw.call(
                                   "ec2", "replace_iam_instance_profile_association", IamInstanceProfile=spec, AssociationId=a)),
                               restore=entry.profile_arn))
    keep = None
    if unrecorded:
        keep = f"still associated with {', '.join(unrecorded)} without this install's record (--force disassociates and deletes)"
    return steps, keep


def _plan_role_teardown(ctx, gw: AwsGateway, role: Role, draft: Draft, own_profiles: set[str], kept_profiles: set[str],
                        live: dict | None = None) -> list[Step]:
    name = draft.key.record.recorded_name("role", role.name) if draft.key.record else role.name
    live = live or gw.get_or_none("iam", "get_role", ("NoSuchEntity",), RoleName=name)
    if live is None:
        return []
    found = claim(draft, "role", name, live["Role"])
    if not found.ours and not ctx.force:
        return [_left_alone(role, f"{found.why} (--force deletes it anyway)")]
    name = live["Role"]["RoleName"]
    profiles = gw.call("iam", "list_instance_profiles_for_role", RoleName=name)["InstanceProfiles"]
    kept = [p["InstanceProfileName"] for p in profiles if iam_key(p["InstanceProfileName"]) in kept_profiles]
    if kept:
        draft.kept.append(f"role {name}")
        return [_left_alone(role, f"still in instance profile {', '.join(kept)}, which stays (see above)")]
    steps = []
    for policy in _attached_policies(gw, name):
        steps.append(Step(SYSTEM, DELETE, "iam-attachment", f"{name}/{policy['PolicyName']}",
                          f"detach policy {policy['PolicyName']} from role {name}",
                          run=lambda arn=policy["PolicyArn"]: gw.call("iam", "detach_role_policy", RoleName=name, PolicyArn=arn)))
    for inline in gw.call("iam", "list_role_policies", RoleName=name)["PolicyNames"]:
        steps.append(_step(DELETE, role, f"delete inline policy {inline} of role {name}",
                           run=lambda inline=inline: gw.call("iam", "delete_role_policy", RoleName=name, PolicyName=inline)))
    for profile in profiles:
        if iam_key(profile["InstanceProfileName"]) in own_profiles:
            continue  # the profile's own teardown takes the role out
        steps.append(_step(DELETE, role, f"take role {name} out of instance profile {profile['InstanceProfileName']}",
                           run=lambda p=profile["InstanceProfileName"]: gw.call(
                               "iam", "remove_role_from_instance_profile", InstanceProfileName=p, RoleName=name)))
    steps.append(_step(DELETE, role, f"delete role {name}", "this install's (signed record)" if found.ours else "--force",
                       run=lambda: gw.call("iam", "delete_role", RoleName=name)))
    return steps


def _plan_policy_teardown(ctx, gw: AwsGateway, account: str, policy: ManagedPolicy, draft: Draft, roles_deleted: set[str],
                          detach_roles: set[str] = frozenset(), live: dict | None = None) -> list[Step]:
    """Delete the policy. `roles_deleted` detach it themselves (their steps come first); `detach_roles`
    are the install's roles that stay (a tenant's role keeps, its policy goes): detached here (iam_key names)."""
    name = draft.key.record.recorded_name("policy", policy.name) if draft.key.record else policy.name
    arn = ctx.config.policy_arn(account, name)
    live = live or gw.get_or_none("iam", "get_policy", ("NoSuchEntity",), PolicyArn=arn)
    if live is None:
        return []
    found = claim(draft, "policy", name, live["Policy"])
    if not found.ours and not ctx.force:
        return [_left_alone(policy, f"{found.why} (--force deletes it anyway)")]
    entities = gw.call("iam", "list_entities_for_policy", PolicyArn=arn)
    roles = [r["RoleName"] for r in entities["PolicyRoles"] if iam_key(r["RoleName"]) not in roles_deleted]
    others = [("role", r) for r in roles if iam_key(r) not in detach_roles]
    others += [("user", u["UserName"]) for u in entities["PolicyUsers"]]
    others += [("group", g["GroupName"]) for g in entities["PolicyGroups"]]
    steps: list[Step] = [
        Step(SYSTEM, DELETE, "iam-attachment", f"{r}/{name}", f"detach policy {name} from role {r}",
             run=lambda r=r: gw.call("iam", "detach_role_policy", RoleName=r, PolicyArn=arn))
        for r in roles if iam_key(r) in detach_roles]
    if others:
        names = ", ".join(f"{k} {n}" for k, n in others)
        if not ctx.force:
            draft.kept.append(f"policy {name}")
            return [_left_alone(policy, f"still attached to {names} (--force detaches and deletes)")]
        detach = {"role": ("detach_role_policy", "RoleName"), "user": ("detach_user_policy", "UserName"),
                  "group": ("detach_group_policy", "GroupName")}
        for kind, other in others:
            operation, key = detach[kind]
            steps.append(_step(DELETE, policy, f"detach policy {name} from {kind} {other}", "--force",
                               lambda op=operation, k=key, n=other: gw.call("iam", op, PolicyArn=arn, **{k: n})))
    for version in gw.call("iam", "list_policy_versions", PolicyArn=arn)["Versions"]:
        if not version["IsDefaultVersion"]:
            steps.append(_step(DELETE, policy, f"delete version {version['VersionId']} of policy {name}",
                               run=lambda v=version["VersionId"]: gw.call("iam", "delete_policy_version", PolicyArn=arn, VersionId=v)))
    steps.append(_step(DELETE, policy, f"delete policy {name}", "this install's (signed record)" if found.ours else "--force",
                       run=lambda: gw.call("iam", "delete_policy", PolicyArn=arn)))
    return steps


def _plan_profile_teardown(ctx, gw: AwsGateway, profile: InstanceProfile, live: dict | None, keep: str | None,
                           draft: Draft) -> list[Step]:
    if live is None:
        return []
    found = claim(draft, "profile", profile.name, live["InstanceProfile"])
    if not found.ours and not ctx.force:
        return [_left_alone(profile, f"{found.why} (--force deletes it anyway)")]
    if keep:
        draft.kept.append(f"instance profile {profile.name}")
        return [_left_alone(profile, keep)]
    name = live["InstanceProfile"]["InstanceProfileName"]
    steps = [_step(DELETE, profile, f"take role {r['RoleName']} out of instance profile {name}",
                   run=lambda r=r["RoleName"]: gw.call("iam", "remove_role_from_instance_profile",
                                                      InstanceProfileName=name, RoleName=r))
             for r in live["InstanceProfile"].get("Roles", [])]
    steps.append(_step(DELETE, profile, f"delete instance profile {name}",
                       run=lambda: gw.call("iam", "delete_instance_profile", InstanceProfileName=name)))
    return steps


def _key_teardown(ctx, key: RecordKey, draft: Draft) -> list[Step]:
    """The key goes last, only when rbacbridge made it and nothing the record names is left."""
    if not key.exists:
        return []
    if key.pinned:
        return [Step(SYSTEM, LEFT_ALONE, "kms-key", key.ref, f"keep KMS key {key.ref} (record.kms_key)",
                     "a pinned key is never deleted by rbacbridge; this install's record stays in its tags")]
    if draft.kept:
        return [Step(SYSTEM, LEFT_ALONE, "kms-key", key.alias, f"keep KMS key {key.alias}: its record names what teardown leaves",
                     f"{', '.join(draft.kept)} (see above)")]
    if key.state != "PendingDeletion" and not key.created_by_rbacbridge:
        return [Step(SYSTEM, LEFT_ALONE, "kms-key", key.alias, f"keep KMS key {key.arn} behind alias {key.alias}",
                     f"it lacks the tags setup gives the key it creates ({MANAGED_BY_KEY}={MANAGED_BY_VALUE}, {INSTALL_TAG}={key.install})")]
    schedule = key.state != "PendingDeletion"
    return [Step(SYSTEM, DELETE, "kms-key", key.alias,
                 (f"schedule deletion of KMS key {key.arn} in {DELETION_WINDOW_DAYS} days, then " if schedule else "")
                 + f"delete its alias {key.alias}",
                 "teardown's last step: nothing this install's record names is left" if schedule
                 else "the key is already pending deletion (an interrupted teardown)", key.delete)]


def plan_teardown(ctx) -> list[Step]:
    gw = gateway(ctx)
    account = _checked_account(ctx, gw)
    key = record_key(ctx, gw, account)
    draft = Draft(key)
    resources = desired_resources(ctx.config, account, [], teardown=True)
    record = key.record

    def looked_up(r: Any) -> dict | None:
        return _live_profile(gw, record.recorded_name("profile", r.name) if record else r.name)

    profiles = {r.name: looked_up(r) for r in resources if isinstance(r, InstanceProfile)}
    steps: list[Step] = []
    keep: dict[str, str | None] = {}
    for name, live in profiles.items():
        association_steps, keep[name] = _plan_associations_teardown(ctx, gw, account, live, draft)
        steps += association_steps
    # A profile that is not deleted keeps its role (taking the role out would break its instances).
    kept_profiles = {iam_key(n) for n, live in profiles.items() if live is not None and (keep[n] or not (
        ctx.force or claim(draft, "profile", n, live["InstanceProfile"]).ours))}
    own_profiles = {iam_key(n) for n in profiles} - kept_profiles
    # What the record names that the configuration does not (a removed tenant's, a renamed role): first.
    configured_roles = {iam_key(r.name) for r in resources if isinstance(r, Role)} | {iam_key(ctx.config.node_role)}
    configured_policies = {iam_key(r.name) for r in resources if isinstance(r, ManagedPolicy)}
    steps += _plan_removed(ctx, gw, account, draft, configured_roles, configured_policies, teardown=True,
                           own_profiles=own_profiles, kept_profiles=kept_profiles)
    roles_deleted: set[str] = set()
    for resource in reversed(resources):
        if isinstance(resource, Role):
            role_steps = _plan_role_teardown(ctx, gw, resource, draft, own_profiles, kept_profiles)
            if role_steps and role_steps[-1].action == DELETE:
                roles_deleted.add(iam_key(resource.name))
            steps += role_steps
        elif isinstance(resource, ManagedPolicy):
            # Each policy comes after its roles in this reversed walk; their detach steps run first.
            steps += _plan_policy_teardown(ctx, gw, account, resource, draft, roles_deleted)
        elif isinstance(resource, InstanceProfile):
            steps += _plan_profile_teardown(ctx, gw, resource, profiles[resource.name], keep[resource.name], draft)
    return steps + _key_teardown(ctx, key, draft)


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
