"""Reads for the audit, and nothing but reads.

Kubernetes: one list request per kind (DaemonSets, pods, namespaces, nodes), across all namespaces.
AWS: `sts:GetCallerIdentity`, one paginated `iam:GetAccountAuthorizationDetails` (every role with its
trust, attached and inline policies and instance profiles, every customer managed policy with its
versions), `iam:GetPolicy`/`GetPolicyVersion` only for AWS managed policies attached to the roles
that matter, and `ec2:DescribeInstances` in batches of 200 instance ids (MetadataOptions, profile).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rbacbridge import policy_eval

INSTANCE_BATCH = 200


@dataclass
class KubeState:
    daemonsets: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    namespaces: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)


def read_kube(gw) -> KubeState:
    return KubeState(daemonsets=gw.list("DaemonSet"), pods=gw.list("Pod"), namespaces=gw.list("Namespace"),
                     nodes=gw.list("Node"))


@dataclass
class RoleInfo:
    name: str
    arn: str
    trust: dict[str, Any]
    attached: list[str]  # policy ARNs
    inline: list[dict[str, Any]]  # documents
    profiles: list[str]  # instance profile ARNs holding the role


class ByIamName(dict):
    """Roles by name, looked up as IAM does: names are not distinguished by case."""

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name.casefold(), value)

    def __getitem__(self, name: str) -> Any:
        return super().__getitem__(name.casefold())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.casefold())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.casefold(), default)


@dataclass
class AwsState:
    account: str = ""
    partition: str = "aws"  # the configured region's (ARNs rbacbridge expects are built in it)
    roles: dict[str, RoleInfo] = field(default_factory=ByIamName)  # by name, whatever its case
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)  # ARN -> default version document
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)  # instance id -> description
    unreadable: set[str] = field(default_factory=set)  # attached policies that could not be read
    _gw: Any = None

    def role_by_arn(self, arn: str) -> RoleInfo | None:
        name = policy_eval.role_name_of(arn)
        role = self.roles.get(name or "")
        return role if role is not None and role.arn == arn else None

    def roles_of_profile(self, profile_arn: str) -> list[RoleInfo]:
        return [r for r in self.roles.values() if profile_arn in r.profiles]

    def documents(self, role: RoleInfo) -> list[dict[str, Any]]:
        """The role's identity policies (attached default versions + inline)."""
        docs = []
        for arn in role.attached:
            if arn not in self.policies and self._gw is not None:  # an AWS managed policy: fetch it
                self.policies[arn] = _policy_document(self._gw, arn)
            if self.policies.get(arn) is not None:
                docs.append(self.policies[arn])
            else:
                self.unreadable.add(arn)
        return docs + list(role.inline)


def _decode(document: Any) -> dict[str, Any]:
    from rbacbridge.aws import _decode as decode

    return decode(document)


def _policy_document(gw, arn: str) -> dict[str, Any] | None:
    found = gw.get_or_none("iam", "get_policy", ("NoSuchEntity",), PolicyArn=arn)
    if found is None:
        return None
    version = found["Policy"]["DefaultVersionId"]
    return _decode(gw.call("iam", "get_policy_version", PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"])


def read_aws(gw, instance_ids: list[str], partition: str = "aws") -> AwsState:
    state = AwsState(_gw=gw, partition=partition)
    state.account = gw.account()
    marker = None
    while True:
        page = gw.call("iam", "get_account_authorization_details", Filter=["Role", "LocalManagedPolicy"],
                       **({"Marker": marker} if marker else {}))
        for role in page.get("RoleDetailList", []):
            state.roles[role["RoleName"]] = RoleInfo(
                name=role["RoleName"], arn=role["Arn"], trust=_decode(role.get("AssumeRolePolicyDocument") or {}),
                attached=[p["PolicyArn"] for p in role.get("AttachedManagedPolicies", [])],
                inline=[_decode(p["PolicyDocument"]) for p in role.get("RolePolicyList", [])],
                profiles=[p["Arn"] for p in role.get("InstanceProfileList", [])])
        for policy in page.get("Policies", []):
            default = next((v for v in policy.get("PolicyVersionList", []) if v.get("IsDefaultVersion")), None)
            if default is not None:
                state.policies[policy["Arn"]] = _decode(default["Document"])
        if not page.get("IsTruncated"):
            break
        marker = page["Marker"]
    ids = sorted(set(instance_ids))
    for start in range(0, len(ids), INSTANCE_BATCH):
        batch = ids[start:start + INSTANCE_BATCH]
        token = None
        while True:
            page = gw.call("ec2", "describe_instances", Filters=[{"Name": "instance-id", "Values": batch}],
                           **({"NextToken": token} if token else {}))
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    state.instances[instance["InstanceId"]] = instance
            token = page.get("NextToken")
            if not token:
                break
    return state
