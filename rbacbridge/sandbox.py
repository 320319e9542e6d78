"""The verification matrix in the sandbox (`rbacbridge demo`): moto computes the observed matrix.

There is no cluster in the sandbox, so each principal's calls are made with boto3 using the
credentials of the role it would get from kube2iam (or from the instance profile): the node role
through sts:AssumeRole, the pod role through sts:AssumeRole from the node role's session. With
moto's IAM enforcement on, S3 then allows or denies each call from the real policy documents.

`fault` plants one fault so the demo can show verify catching it and blaming the right layer:
  trust      the pod role's trust policy names the wrong ARN            -> blamed on trust
  policy     the pod policy grants write on the wrong bucket            -> blamed on permissions
  iptables   no interception: the annotated pod gets the node role      -> blamed on interception
  namespace  the pod's namespace does not allow its role (kube2iam refuses) -> blamed on kube2iam
Faults in IAM are undone at the end.
"""

from __future__ import annotations

import copy
import json
import urllib.request
from typing import Any

from rbacbridge import policy_eval as pe
from rbacbridge.aws import live_documents  # noqa: F401 - also used by tests
from rbacbridge import verify as v
from rbacbridge.config import Config
from rbacbridge.errors import UsageError

FAULTS = ("trust", "policy", "iptables", "namespace")
ADMIN_USER = "rbacbridge-sandbox-admin"
_DUMMY = {"aws_access_key_id": "sandbox", "aws_secret_access_key": "sandbox"}


def set_enforcement(endpoint_url: str, on: bool) -> None:
    """moto's IAM enforcement: body 0 = enforce from the next request, inf = never."""
    request = urllib.request.Request(endpoint_url.rstrip("/") + "/moto-api/reset-auth", data=b"0" if on else b"inf",
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


class Boto3Backend:
    """The same probes as the AWS CLI backend, through boto3 with one principal's credentials."""

    def __init__(self, endpoint_url: str, region: str, credentials: dict[str, str]):
        import boto3
        from botocore.config import Config as BotoConfig

        session = boto3.session.Session(region_name=region, **credentials)
        cfg = BotoConfig(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30)
        self.sts = session.client("sts", endpoint_url=endpoint_url, config=cfg)
        self.s3 = session.client("s3", endpoint_url=endpoint_url, config=cfg)

    def _call(self, fn, **kwargs) -> v.CallResult:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ConnectTimeoutError, ReadTimeoutError

        try:
            return v.CallResult(True, detail="ok", value=fn(**kwargs))
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = error.get("Code", "?"), error.get("Message", "")
            text = f"An error occurred ({code}) when calling the {exc.operation_name} operation: {message}"
            return v.classify(254, "", text)
        except NoCredentialsError as exc:
            return v.CallResult(False, v.NO_CREDENTIALS, str(exc))
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
            return v.CallResult(False, v.NETWORK, str(exc))

    def identity(self) -> v.CallResult:
        result = self._call(self.sts.get_caller_identity)
        if result.ok:
            result.value = result.value["Arn"]
        return result

    def list_bucket(self, bucket: str) -> v.CallResult:
        return self._call(self.s3.list_objects_v2, Bucket=bucket, MaxKeys=1)

    def put_object(self, bucket: str, key: str) -> v.CallResult:
        return self._call(self.s3.put_object, Bucket=bucket, Key=key, Body=b"rbacbridge verify probe\n")

    def delete_object(self, bucket: str, key: str) -> v.CallResult:
        return self._call(self.s3.delete_object, Bucket=bucket, Key=key)

    def assume_role(self, role_arn: str) -> v.CallResult:
        """The principal itself calls sts:AssumeRole (a chain cell). moto, with enforcement on, checks the
        caller's identity policies for it but not the target's trust policy (see rbacbridge.verify)."""
        result = self._call(self.sts.assume_role, RoleArn=role_arn, RoleSessionName=v.CHAIN_SESSION)
        if result.ok:
            result.value = result.value["AssumedRoleUser"]["Arn"]  # the credentials go no further
        return result


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


def _plant(iam, config: Config, account: str, fault: str | None) -> list:
    """Plant the fault; return the undo actions."""
    undo: list = []
    if fault == "trust":
        original = iam.get_role(RoleName=config.pod_role)["Role"]["AssumeRolePolicyDocument"]
        wrong = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {
            "AWS": config.role_arn(account, config.node_role + "-wrong")}}]}
        iam.update_assume_role_policy(RoleName=config.pod_role, PolicyDocument=json.dumps(wrong))
        undo.append(lambda: iam.update_assume_role_policy(RoleName=config.pod_role, PolicyDocument=json.dumps(_doc(original))))
    elif fault == "policy":
        arn = config.policy_arn(account, config.pod_policy)
        old = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        document = copy.deepcopy(_doc(iam.get_policy_version(PolicyArn=arn, VersionId=old)["PolicyVersion"]["Document"]))
        for statement in pe.statements(document):
            if "s3:PutObject" in pe._as_list(statement.get("Action")):
                statement["Resource"] = [pe.object_arn(config.shared_bucket, "*")]  # the wrong bucket
        new = iam.create_policy_version(PolicyArn=arn, PolicyDocument=json.dumps(document), SetAsDefault=True)["PolicyVersion"]["VersionId"]

        def restore():
            iam.set_default_policy_version(PolicyArn=arn, VersionId=old)
            iam.delete_policy_version(PolicyArn=arn, VersionId=new)

        undo.append(restore)
    return undo


def _assume(sts, role_arn: str, session: str) -> dict[str, str]:
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=session)["Credentials"]
    return {"aws_access_key_id": creds["AccessKeyId"], "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"]}


def sandbox_matrix(endpoint_url: str, config: Config, account: str, stage: str = "after", fault: str | None = None) -> v.VerifyResult:
    """Run the verification matrix against a moto server holding the resources `setup` creates."""
    if fault is not None and fault not in FAULTS:
        raise UsageError(f"invalid --break {fault!r}: choose from {', '.join(FAULTS)}")
    if stage not in v.STAGES:
        raise UsageError(f"invalid --stage {stage!r}: choose from {', '.join(v.STAGES)}")
    region = config.region
    set_enforcement(endpoint_url, False)
    admin = _bootstrap_admin(endpoint_url, region)
    iam = _client("iam", endpoint_url, region, admin)
    undo = _plant(iam, config, account, fault)
    try:
        roles = list(dict.fromkeys([config.node_role, config.pod_role, config.effective_default_role]))
        live = live_documents(iam, roles)
        diagnostics = v.Diagnostics(documents=live)
        if fault == "namespace":
            diagnostics.allowed_roles[config.namespace] = []
        principals = v.default_principals(config)
        credentials = _principal_credentials(endpoint_url, config, account, stage, fault, admin, live, principals)
        targets = [(p, credentials[p.name]) for p in principals]
        set_enforcement(endpoint_url, True)
        try:
            result = v.run_matrix(config, account, stage, targets, diagnostics=diagnostics)
        finally:
            set_enforcement(endpoint_url, False)
        result.notes.append("sandbox: calls made with each principal's role credentials; moto enforced the live policies")
        if fault:
            result.notes.append(f"sandbox: fault planted: {fault}")
        return result
    finally:
        for action in reversed(undo):
            action()


def _principal_credentials(endpoint_url: str, config: Config, account: str, stage: str, fault: str | None,
                           admin: dict[str, str], live: v.Documents, principals: list[v.Principal]) -> dict[str, Any]:
    """Which role each principal would get here, and a backend holding that role's credentials.

    moto compares a trust policy's Principal with the caller's exact ARN, so a trust naming the
    node role's ARN would refuse the node role's *sessions* (AWS accepts them). The trust link is
    therefore evaluated here with rbacbridge.policy_eval, and the assume calls are made while
    enforcement is still off.
    """
    region = config.region
    node_arn = config.role_arn(account, config.node_role)
    node_trust = live.trust.get(config.node_role)
    if node_trust is None or not pe.trust_allows_service(node_trust, "ec2.amazonaws.com"):
        node_creds = None
        node_backend: Any = v.UnavailableBackend(v.NO_CREDENTIALS, f"the node role {config.node_role} is missing or EC2 may not take it")
    else:
        node_creds = _assume(_client("sts", endpoint_url, region, admin), node_arn, "rbacbridge-node")
        node_backend = Boto3Backend(endpoint_url, region, node_creds)
    node_policies = live.policies.get(config.node_role, [])

    def via_kube2iam(role: str, session: str) -> Any:
        if node_creds is None:
            return v.UnavailableBackend(v.NO_CREDENTIALS, "kube2iam has no node credentials to assume roles with")
        arn = config.role_arn(account, role)
        trust = live.trust.get(role)
        if trust is None:
            return v.UnavailableBackend(v.ASSUME_DENIED, f"role {role} does not exist")
        if not pe.trust_allows(trust, node_arn):
            return v.UnavailableBackend(v.ASSUME_DENIED, f"AssumeRole {arn} denied: its trust policy does not trust {node_arn}")
        decision = pe.evaluate(node_policies, "sts:AssumeRole", arn)
        if not decision.allowed:
            return v.UnavailableBackend(v.ASSUME_DENIED, f"AssumeRole {arn} denied: node role's policies: {decision}")
        return Boto3Backend(endpoint_url, region, _assume(_client("sts", endpoint_url, region, node_creds), arn, session))

    backends: dict[str, Any] = {}
    for principal in principals:
        if stage == "before" or principal.kind == "host" or principal.host_network:
            backends[principal.name] = node_backend
        elif principal.role_annotation is None:
            default = config.effective_default_role
            backends[principal.name] = via_kube2iam(default, "rbacbridge-" + principal.name)
        elif fault == "iptables":
            backends[principal.name] = node_backend  # nothing intercepts 169.254.169.254: the instance profile answers
        elif fault == "namespace":
            backends[principal.name] = v.UnavailableBackend(
                v.NO_CREDENTIALS, f"kube2iam refused: namespace {principal.namespace} does not allow {principal.role_annotation}")
        else:
            backends[principal.name] = via_kube2iam(principal.role_annotation, "rbacbridge-" + principal.name)
    return backends
