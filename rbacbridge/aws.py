"""The AWS part: IAM policies, roles, the instance profile and its association with the nodes.

Desired resources are small models built from the configuration (article steps 1-7); the planner
functions compare each with live state and return steps. Teardown walks the same list backwards.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from rbacbridge import MANAGED_BY_KEY, MANAGED_BY_VALUE
from rbacbridge.config import Config
from rbacbridge.errors import RbacbridgeError, UsageError
from rbacbridge.plan import CONFLICT, CREATE, DELETE, LEFT_ALONE, RESTORE, UNCHANGED, UPDATE, Step
from rbacbridge.templating import render_json

SYSTEM = "aws"
OWNED_TAG = {"Key": MANAGED_BY_KEY, "Value": MANAGED_BY_VALUE}
# Recorded on an instance before rbacbridge associates its profile: the profile ARN that was
# there (or "none"), so teardown can put it back.
PREVIOUS_PROFILE_TAG = "rbacbridge:previous-instance-profile"
NO_PREVIOUS_PROFILE = "none"


# --- talking to AWS ---------------------------------------------------------------------------


class AwsError(RbacbridgeError):
    def __init__(self, operation: str, code: str, message: str):
        super().__init__(f"AWS {operation}: {code}: {message}")
        self.operation = operation
        self.code = code


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
            import botocore.exceptions

            try:
                self._session = boto3.Session(profile_name=self.config.profile, region_name=self.config.region)
            except botocore.exceptions.ProfileNotFound:
                raise UsageError(f"AWS profile {self.config.profile!r} not found in the AWS config files") from None
        return self._session

    def client(self, service: str):
        if service not in self._clients:
            from botocore.config import Config as BotoConfig

            retries = {"mode": os.environ.get("AWS_RETRY_MODE", "standard"), "max_attempts": 10}
            kwargs: dict[str, Any] = {
                "region_name": self.config.region,
                "config": BotoConfig(retries=retries, connect_timeout=10, read_timeout=60),
            }
            if self.config.endpoint_url:
                kwargs["endpoint_url"] = self.config.endpoint_url
            self._clients[service] = self.session.client(service, **kwargs)
        return self._clients[service]

    def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        """One API call; every botocore failure becomes a one-line AwsError or UsageError."""
        import botocore.exceptions as bex
        from botocore.parsers import ResponseParserError

        method = getattr(self.client(service), operation)
        try:
            return method(**params)
        except bex.ClientError as exc:
            error = exc.response.get("Error", {})
            raise AwsError(operation, error.get("Code", "Unknown"), error.get("Message", "")) from None
        except (bex.NoCredentialsError, bex.PartialCredentialsError):
            raise UsageError("no AWS credentials found: set AWS_PROFILE / --profile, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
        except bex.EndpointConnectionError as exc:
            raise RbacbridgeError(f"cannot reach the AWS endpoint {exc.kwargs.get('endpoint_url', '')}") from None
        except ResponseParserError:
            # moto answers some wrong calls with HTTP 500 and no error document.
            raise AwsError(operation, "InternalError", "the server answered with an unparseable error") from None
        except bex.BotoCoreError as exc:
            raise RbacbridgeError(f"AWS {operation}: {exc}") from None

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
    kind = "iam-policy"


@dataclass(frozen=True)
class Role:
    name: str
    trust: dict
    policies: tuple[str, ...]  # managed policy names to attach
    description: str
    trusts_itself: bool = False  # must be created first, then trust its own ARN
    kind = "iam-role"


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
    """The roles kube2iam (the node role) may assume: the pod role and the role unannotated pods get.
    The node role's own ARN only when that default is the node role (kube2iam.default_role node/auto)."""
    arns = {config.role_arn(account, config.pod_role), config.role_arn(account, config.effective_default_role)}
    return sorted(arns)


def desired_resources(config: Config, account: str, instance_ids: list[str], teardown: bool = False) -> list[Any]:
    """Everything the AWS part owns, in the order it must be created.

    `teardown=True` also lists the dedicated default role when the configuration no longer uses it,
    so that a teardown after switching kube2iam.default_role still removes the role setup made
    (it is deleted only if it carries rbacbridge's tag)."""
    node_role_arn = config.role_arn(account, config.node_role)
    trusts_itself = config.default_is_node_role
    buckets = {"shared_bucket": config.shared_bucket, "tenant_bucket": config.tenant_bucket}
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
        ManagedPolicy(config.pod_policy, render_json("pod-policy.json.j2", **buckets),
                      "rbacbridge: pod role reads both buckets, writes the tenant bucket (step 4)"),
        Role(config.pod_role, render_json("pod-trust.json.j2", node_role_arn=node_role_arn),
             (config.pod_policy,), "rbacbridge: role kube2iam hands annotated pods (steps 4-5)"),
    ]
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


def _plan_policy(ctx, gw: AwsGateway, account: str, policy: ManagedPolicy) -> list[Step]:
    arn = ctx.config.policy_arn(account, policy.name)
    live = gw.get_or_none("iam", "get_policy", ("NoSuchEntity",), PolicyArn=arn)
    document = json.dumps(policy.document)
    if live is None:
        return [_step(CREATE, policy, f"create policy {policy.name}", run=lambda: gw.call(
            "iam", "create_policy", PolicyName=policy.name, PolicyDocument=document,
            Description=policy.description, Tags=[OWNED_TAG]))]
    steps: list[Step] = []
    conflict = _ownership(ctx, policy, live["Policy"].get("Tags"),
                          lambda: gw.call("iam", "tag_policy", PolicyArn=arn, Tags=[OWNED_TAG]))
    if conflict:
        steps.append(conflict)
        if conflict.action == CONFLICT:
            return steps
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
                            Description=role.description, Tags=[OWNED_TAG]))))
        if role.trusts_itself:
            steps.append(_step(UPDATE, role, f"let role {role.name} trust its own ARN",
                               "kube2iam's default role is the node role; a role can only name itself once it exists",
                               update_trust))
    else:
        conflict = _ownership(ctx, role, live["Role"].get("Tags"),
                              lambda: gw.call("iam", "tag_role", RoleName=role.name, Tags=[OWNED_TAG]))
        if conflict:
            steps.append(conflict)
            if conflict.action == CONFLICT:
                return steps
        current = _decode(live["Role"]["AssumeRolePolicyDocument"])
        if not documents_equal(role.trust, current):
            steps.append(_step(UPDATE, role, f"update trust policy of role {role.name}",
                               describe_difference("trust policy", role.trust, current), update_trust))
        attached = {p["PolicyName"] for p in _attached_policies(gw, role.name)}
    for name in role.policies:
        if name in attached:
            continue
        arn = config.policy_arn(account, name)
        steps.append(Step(SYSTEM, CREATE, "iam-attachment", f"{role.name}/{name}", f"attach policy {name} to role {role.name}",
                          run=lambda arn=arn: gw.call("iam", "attach_role_policy", RoleName=role.name, PolicyArn=arn)))
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


def _plan_profile(ctx, gw: AwsGateway, profile: InstanceProfile) -> list[Step]:
    live = gw.get_or_none("iam", "get_instance_profile", ("NoSuchEntity",), InstanceProfileName=profile.name)
    add_role = lambda: gw.call("iam", "add_role_to_instance_profile",  # noqa: E731
                               InstanceProfileName=profile.name, RoleName=profile.role)
    if live is None:
        return [
            _step(CREATE, profile, f"create instance profile {profile.name}", run=lambda: gw.call(
                "iam", "create_instance_profile", InstanceProfileName=profile.name, Tags=[OWNED_TAG])),
            _step(CREATE, profile, f"put role {profile.role} in instance profile {profile.name}", run=add_role),
        ]
    steps: list[Step] = []
    conflict = _ownership(ctx, profile, live["InstanceProfile"].get("Tags"), lambda: gw.call(
        "iam", "tag_instance_profile", InstanceProfileName=profile.name, Tags=[OWNED_TAG]))
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


def _association(gw: AwsGateway, instance_id: str) -> dict | None:
    found = gw.call("ec2", "describe_iam_instance_profile_associations",
                    Filters=[{"Name": "instance-id", "Values": [instance_id]},
                             {"Name": "state", "Values": ["associating", "associated"]}])
    associations = found.get("IamInstanceProfileAssociations", [])
    return associations[0] if associations else None


def _instance_tags(gw: AwsGateway, instance_ids: list[str]) -> dict[str, dict[str, str]]:
    return {i: _tags_of(instance) for i, instance in _describe_instances(gw, instance_ids).items()}


def _tags_of(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def _describe_instances(gw: AwsGateway, instance_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not instance_ids:
        return {}
    try:
        found = gw.call("ec2", "describe_instances", InstanceIds=instance_ids)
    except AwsError as exc:
        if exc.code == "InvalidInstanceID.NotFound":
            raise UsageError(f"{exc} (region {gw.config.region})") from None
        if exc.code == "InvalidInstanceID.Malformed":
            raise UsageError(str(exc)) from None
        raise
    return {instance["InstanceId"]: instance for reservation in found["Reservations"] for instance in reservation["Instances"]}


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
    import re

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


def _plan_association(ctx, gw: AwsGateway, assoc: ProfileAssociation, tags: dict[str, str]) -> list[Step]:
    current = _association(gw, assoc.instance_id)
    current_arn = current["IamInstanceProfile"]["Arn"] if current else None
    if current_arn and _profile_name(current_arn) == assoc.profile:
        return [_step(UNCHANGED, assoc, f"instance {assoc.instance_id} uses instance profile {assoc.profile}")]
    steps: list[Step] = []
    previous = current_arn or NO_PREVIOUS_PROFILE
    if tags.get(PREVIOUS_PROFILE_TAG) != previous:
        steps.append(_step(CREATE, assoc, f"record on instance {assoc.instance_id} its current profile ({_profile_name(previous)})",
                           "so that teardown can restore it", lambda: gw.call(
                               "ec2", "create_tags", Resources=[assoc.instance_id],
                               Tags=[{"Key": PREVIOUS_PROFILE_TAG, "Value": previous}])))
    spec = {"Name": assoc.profile}
    if current is None:
        steps.append(_step(CREATE, assoc, f"associate instance profile {assoc.profile} with instance {assoc.instance_id}",
                           run=lambda: retry_eventual_consistency(lambda: gw.call(
                               "ec2", "associate_iam_instance_profile", IamInstanceProfile=spec, InstanceId=assoc.instance_id))))
    else:
        association_id = current["AssociationId"]
        steps.append(_step(UPDATE, assoc, f"replace instance profile {_profile_name(current_arn)} with {assoc.profile} on instance {assoc.instance_id}",
                           f"{_profile_name(current_arn)} is recorded and comes back on teardown",
                           lambda: retry_eventual_consistency(lambda: gw.call(
                               "ec2", "replace_iam_instance_profile_association", IamInstanceProfile=spec,
                               AssociationId=association_id))))
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


def plan_setup(ctx) -> list[Step]:
    gw = gateway(ctx)
    account = _checked_account(ctx, gw)
    ids = instance_ids(ctx)
    instances = _describe_instances(gw, ids)
    _note_metadata_options(ctx, instances)
    tags = {i: _tags_of(instance) for i, instance in instances.items()}
    steps: list[Step] = []
    for resource in desired_resources(ctx.config, account, ids):
        if isinstance(resource, ManagedPolicy):
            steps += _plan_policy(ctx, gw, account, resource)
        elif isinstance(resource, Role):
            steps += _plan_role(ctx, gw, account, resource)
        elif isinstance(resource, InstanceProfile):
            steps += _plan_profile(ctx, gw, resource)
        else:
            steps += _plan_association(ctx, gw, resource, tags.get(resource.instance_id, {}))
    return steps


# --- planning: teardown -----------------------------------------------------------------------


def _left_alone(resource: Any, why: str = "not tagged managed-by=rbacbridge (--force deletes it anyway)") -> Step:
    return _step(LEFT_ALONE, resource, f"leave {resource.kind} {resource.name}: not rbacbridge's", why)


def _teardown_instances(ctx, gw: AwsGateway, profile: str) -> list[str]:
    """Instances rbacbridge may have touched: configured, tagged by it, or using its profile."""
    ids = set(ctx.config.instance_ids)
    tagged = gw.call("ec2", "describe_instances", Filters=[{"Name": "tag-key", "Values": [PREVIOUS_PROFILE_TAG]}])
    ids |= {i["InstanceId"] for r in tagged["Reservations"] for i in r["Instances"]}
    paginator = gw.client("ec2").get_paginator("describe_iam_instance_profile_associations")
    try:
        for page in paginator.paginate(Filters=[{"Name": "state", "Values": ["associating", "associated"]}]):
            ids |= {a["InstanceId"] for a in page["IamInstanceProfileAssociations"]
                    if _profile_name(a["IamInstanceProfile"]["Arn"]) == profile}
    except Exception as exc:  # noqa: BLE001 - same one-line conversion as gw.call
        raise RbacbridgeError(f"AWS describe_iam_instance_profile_associations: {exc}") from None
    return sorted(ids)


def _plan_association_teardown(gw: AwsGateway, assoc: ProfileAssociation, tags: dict[str, str]) -> list[Step]:
    current = _association(gw, assoc.instance_id)
    current_arn = current["IamInstanceProfile"]["Arn"] if current else None
    recorded = tags.get(PREVIOUS_PROFILE_TAG)
    steps: list[Step] = []
    if current_arn and _profile_name(current_arn) == assoc.profile:
        association_id = current["AssociationId"]
        previous_exists = recorded not in (None, NO_PREVIOUS_PROFILE) and gw.get_or_none(
            "iam", "get_instance_profile", ("NoSuchEntity",), InstanceProfileName=_profile_name(recorded)) is not None
        if previous_exists:
            spec = {"Arn": recorded}
            steps.append(_step(RESTORE, assoc, f"give instance {assoc.instance_id} back its instance profile {_profile_name(recorded)}",
                               run=lambda: retry_eventual_consistency(lambda: gw.call(
                                   "ec2", "replace_iam_instance_profile_association",
                                   IamInstanceProfile=spec, AssociationId=association_id))))
        else:
            reason = f"its previous profile {_profile_name(recorded)} no longer exists" if recorded not in (None, NO_PREVIOUS_PROFILE) else "it had none before"
            steps.append(_step(DELETE, assoc, f"disassociate instance profile {assoc.profile} from instance {assoc.instance_id}",
                               reason, lambda: gw.call("ec2", "disassociate_iam_instance_profile", AssociationId=association_id)))
    if recorded is not None:
        steps.append(_step(DELETE, assoc, f"remove rbacbridge's record tag from instance {assoc.instance_id}",
                           run=lambda: gw.call("ec2", "delete_tags", Resources=[assoc.instance_id],
                                               Tags=[{"Key": PREVIOUS_PROFILE_TAG}])))
    return steps


def _plan_role_teardown(ctx, gw: AwsGateway, role: Role, own_profiles: set[str]) -> list[Step]:
    live = gw.get_or_none("iam", "get_role", ("NoSuchEntity",), RoleName=role.name)
    if live is None:
        return []
    if not _owned(live["Role"].get("Tags")) and not ctx.force:
        return [_left_alone(role)]
    steps = []
    for policy in _attached_policies(gw, role.name):
        steps.append(Step(SYSTEM, DELETE, "iam-attachment", f"{role.name}/{policy['PolicyName']}",
                          f"detach policy {policy['PolicyName']} from role {role.name}",
                          run=lambda arn=policy["PolicyArn"]: gw.call("iam", "detach_role_policy", RoleName=role.name, PolicyArn=arn)))
    for name in gw.call("iam", "list_role_policies", RoleName=role.name)["PolicyNames"]:
        steps.append(_step(DELETE, role, f"delete inline policy {name} of role {role.name}",
                           run=lambda name=name: gw.call("iam", "delete_role_policy", RoleName=role.name, PolicyName=name)))
    for profile in gw.call("iam", "list_instance_profiles_for_role", RoleName=role.name)["InstanceProfiles"]:
        if profile["InstanceProfileName"] in own_profiles:
            continue  # the profile's own teardown takes the role out
        steps.append(_step(DELETE, role, f"take role {role.name} out of instance profile {profile['InstanceProfileName']}",
                           run=lambda p=profile["InstanceProfileName"]: gw.call(
                               "iam", "remove_role_from_instance_profile", InstanceProfileName=p, RoleName=role.name)))
    steps.append(_step(DELETE, role, f"delete role {role.name}", run=lambda: gw.call("iam", "delete_role", RoleName=role.name)))
    return steps


def _plan_policy_teardown(ctx, gw: AwsGateway, account: str, policy: ManagedPolicy, roles_deleted: set[str]) -> list[Step]:
    arn = ctx.config.policy_arn(account, policy.name)
    live = gw.get_or_none("iam", "get_policy", ("NoSuchEntity",), PolicyArn=arn)
    if live is None:
        return []
    if not _owned(live["Policy"].get("Tags")) and not ctx.force:
        return [_left_alone(policy)]
    entities = gw.call("iam", "list_entities_for_policy", PolicyArn=arn)
    others = [("role", r["RoleName"]) for r in entities["PolicyRoles"] if r["RoleName"] not in roles_deleted]
    others += [("user", u["UserName"]) for u in entities["PolicyUsers"]]
    others += [("group", g["GroupName"]) for g in entities["PolicyGroups"]]
    steps: list[Step] = []
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


def _plan_profile_teardown(ctx, gw: AwsGateway, profile: InstanceProfile) -> list[Step]:
    live = gw.get_or_none("iam", "get_instance_profile", ("NoSuchEntity",), InstanceProfileName=profile.name)
    if live is None:
        return []
    if not _owned(live["InstanceProfile"].get("Tags")) and not ctx.force:
        return [_left_alone(profile)]
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
    ids = _teardown_instances(ctx, gw, ctx.config.instance_profile)
    tags = _instance_tags(gw, ids)
    resources = desired_resources(ctx.config, account, ids, teardown=True)
    own_profiles = {r.name for r in resources if isinstance(r, InstanceProfile)}
    steps: list[Step] = []
    roles_deleted: set[str] = set()
    for resource in reversed(resources):
        if isinstance(resource, ProfileAssociation):
            steps += _plan_association_teardown(gw, resource, tags.get(resource.instance_id, {}))
        elif isinstance(resource, Role):
            role_steps = _plan_role_teardown(ctx, gw, resource, own_profiles)
            if role_steps and role_steps[-1].action == DELETE:
                roles_deleted.add(resource.name)
            steps += role_steps
        elif isinstance(resource, ManagedPolicy):
            # Each policy comes after its roles in this reversed walk; their detach steps run first.
            steps += _plan_policy_teardown(ctx, gw, account, resource, roles_deleted)
        else:
            steps += _plan_profile_teardown(ctx, gw, resource)
    return steps

