"""The sandbox's AWS: an embedded moto server, made to decide trust as AWS does, and checked with
known-answer probes before any of its answers is believed.

The demo's matrix is computed by moto (IAM enforcement on). When a moto release answers an IAM question
differently from AWS (moto 5.2.6 denies an S3 listing that an s3:ListBucket grant allows), verify would
blame rbacbridge's own layers for the backend's fault. So before the demo tells its story (and once per
test run, tests/fixtures_aws.py), `check_backend` asks moto questions whose AWS answer is documented and
stops with one line (exit 3) at the first wrong answer.

`aws_like_trust` fixes moto's trust check on sts:AssumeRole (it compares the caller's exact ARN with the
trusted principal, so a trust policy naming a role refuses that role's sessions, which AWS accepts; and a
statement that does not name the caller denies instead of not applying). Its matching is small and its
own: it does not use rbacbridge's policy evaluator, so what moto then decides is an independent answer.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

from rbacbridge.errors import IncompleteError

# The moto release requirements.lock pins (tests/test_sandbox_backend.py keeps the two equal).
LOCKED_MOTO = "5.2.5"
ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
_DUMMY = {"aws_access_key_id": "sandbox", "aws_secret_access_key": "sandbox"}


class BackendMismatch(IncompleteError):
    """The sandbox's backend answered a known-answer probe unlike AWS: no verdict (exit 3)."""


def moto_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("moto")
    except PackageNotFoundError:
        return "?"


def start_moto():
    """An embedded moto server on 127.0.0.1 (a free port), trust decided as AWS does: (server, url)."""
    from rbacbridge.errors import UsageError

    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        from rbacbridge.installation import extra_hint

        raise UsageError("the sandbox needs moto (the [sandbox] extra), not installed with this rbacbridge; add it with "
                         + extra_hint("sandbox", "moto[server]")) from None
    aws_like_trust()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def post(url: str, path: str, body: bytes = b"") -> None:
    """A moto control call (`/moto-api/reset`, `/moto-api/reset-auth`)."""
    request = urllib.request.Request(url.rstrip("/") + path, data=body, method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def set_enforcement(url: str, on: bool) -> None:
    """moto's IAM enforcement: body 0 = enforce from the next request, inf = never."""
    post(url, "/moto-api/reset-auth", b"0" if on else b"inf")


# --- trust as AWS decides it (moto's own check compares exact ARNs) -------------------------------------

_ROLE = re.compile(r"^arn:aws[\w-]*:iam::(\d{12}):role/(?:.*/)?([^/]+)$")
_SESSION = re.compile(r"^arn:aws[\w-]*:sts::(\d{12}):assumed-role/([^/]+)/[^/]+$")
_ACCOUNT = re.compile(r"^arn:aws[\w-]*:(?:iam|sts)::(\d{12}):")


def covers(entry: str, caller: str) -> bool:
    """Does one AWS principal entry of a trust policy cover the calling identity, as AWS decides?"""
    if entry in ("*", caller):
        return True
    caller_account = _ACCOUNT.match(caller)
    account = caller_account.group(1) if caller_account else None
    if re.fullmatch(r"\d{12}", entry) or re.fullmatch(r"arn:aws[\w-]*:iam::\d{12}:root", entry):
        return account is not None and re.search(r"\d{12}", entry).group(0) == account
    role, session = _ROLE.match(entry), _SESSION.match(caller)
    return bool(role and session and role.groups() == session.groups())


def _principal_covers(principal: Any, caller: str) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    entries = principal.get("AWS")
    if entries is None:
        return False  # Service / Federated principals never cover an IAM caller
    return any(covers(str(e), caller) for e in (entries if isinstance(entries, list) else [entries]))


def aws_like_trust() -> None:
    """Replace only the principal part of moto's decision on a trust statement, in this process: a statement
    whose principal does not cover the caller is neutral; one that does is decided by moto as before."""
    from moto.iam import access_control

    statement = access_control.IAMPolicyStatement
    if getattr(statement, "_rbacbridge_trust_patch", False):
        return
    original = statement.is_action_permitted

    def is_action_permitted(self, action, resource="*", principal=None, incoming_condition_values=None):
        if principal is not None and "Principal" in self._statement:
            if not _principal_covers(self._statement["Principal"], principal):
                return access_control.PermissionResult.NEUTRAL
            principal = None  # covered: let moto decide the rest of the statement as before
        return original(self, action, resource, principal, incoming_condition_values)

    statement.is_action_permitted = is_action_permitted
    statement._rbacbridge_trust_patch = True


# --- known-answer probes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    name: str  # what is asked, in AWS's words
    aws_allows: bool  # AWS's documented answer
    call: Callable[[], Any]


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _allow(action: str | list[str], resource: str | list[str]) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource}


def _trusting(principal_arn: str) -> str:
    return _policy({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": principal_arn}})


def _allowed(call: Callable[[], Any]) -> tuple[bool, str]:
    from botocore.exceptions import ClientError

    try:
        call()
        return True, "allowed"
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        if code in ("AccessDenied", "AccessDeniedException", "InvalidClientTokenId"):
            return False, f"denied ({code})"
        raise


def check_backend(url: str, account: str = ACCOUNT) -> int:
    """Ask the moto server at `url` questions whose AWS answer is documented; raise BackendMismatch at the
    first answer that differs. Everything it creates is removed again and enforcement is left off.
    Returns the number of probes asked."""
    import boto3

    tag = "rbacbridge-backend-check-" + secrets.token_hex(3)
    granted, other = f"{tag}-granted", f"{tag}-other"
    role_arn = f"arn:aws:iam::{account}:role/{{}}"
    caller, trusting, distrusting = f"{tag}-caller", f"{tag}-trusting", f"{tag}-distrusting"
    admin = boto3.Session(region_name=REGION, **_DUMMY)
    iam, s3 = admin.client("iam", endpoint_url=url), admin.client("s3", endpoint_url=url)
    set_enforcement(url, False)
    created_roles: list[str] = []
    try:
        for bucket in (granted, other):
            s3.create_bucket(Bucket=bucket)
        iam.create_role(RoleName=caller, AssumeRolePolicyDocument=_trusting(f"arn:aws:iam::{account}:root"))
        created_roles.append(caller)
        iam.put_role_policy(RoleName=caller, PolicyName="grants", PolicyDocument=_policy(
            _allow("s3:ListBucket", f"arn:aws:s3:::{granted}"),
            _allow(["s3:PutObject", "s3:DeleteObject"], f"arn:aws:s3:::{granted}/prefix/*"),
            _allow("sts:AssumeRole", [role_arn.format(trusting), role_arn.format(distrusting)])))
        iam.create_role(RoleName=trusting, AssumeRolePolicyDocument=_trusting(role_arn.format(caller)))
        created_roles.append(trusting)
        iam.create_role(RoleName=distrusting, AssumeRolePolicyDocument=_trusting(role_arn.format(f"{tag}-someone-else")))
        created_roles.append(distrusting)
        credentials = admin.client("sts", endpoint_url=url).assume_role(
            RoleArn=role_arn.format(caller), RoleSessionName="backend-check")["Credentials"]
        session = boto3.Session(region_name=REGION, aws_access_key_id=credentials["AccessKeyId"],
                                aws_secret_access_key=credentials["SecretAccessKey"],
                                aws_session_token=credentials["SessionToken"])
        s3_as, sts_as = session.client("s3", endpoint_url=url), session.client("sts", endpoint_url=url)
        probes = [
            Probe("s3:ListBucket granted on bucket B: ListObjectsV2 on B", True,
                  lambda: s3_as.list_objects_v2(Bucket=granted, MaxKeys=1)),
            Probe("s3:ListBucket granted on B only: ListObjectsV2 on another bucket", False,
                  lambda: s3_as.list_objects_v2(Bucket=other, MaxKeys=1)),
            Probe("s3:PutObject granted on B/prefix/*: PutObject B/prefix/k", True,
                  lambda: s3_as.put_object(Bucket=granted, Key="prefix/probe", Body=b"x")),
            Probe("s3:DeleteObject granted on B/prefix/*: DeleteObject B/prefix/k", True,
                  lambda: s3_as.delete_object(Bucket=granted, Key="prefix/probe")),
            Probe("s3:PutObject granted on B/prefix/* only: PutObject B/elsewhere/k", False,
                  lambda: s3_as.put_object(Bucket=granted, Key="elsewhere/probe", Body=b"x")),
            Probe("s3:PutObject granted on B/prefix/* only: PutObject on another bucket", False,
                  lambda: s3_as.put_object(Bucket=other, Key="prefix/probe", Body=b"x")),
            Probe("sts:AssumeRole granted and the target trusts the caller's role ARN: AssumeRole from a session of that role", True,
                  lambda: sts_as.assume_role(RoleArn=role_arn.format(trusting), RoleSessionName="backend-check")),
            Probe("sts:AssumeRole granted but the target trusts another role: AssumeRole", False,
                  lambda: sts_as.assume_role(RoleArn=role_arn.format(distrusting), RoleSessionName="backend-check")),
        ]
        set_enforcement(url, True)
        try:
            for probe in probes:
                allowed, answer = _allowed(probe.call)
                if allowed != probe.aws_allows:
                    raise BackendMismatch(
                        f"the sandbox's AWS backend (moto {moto_version()}) answered a known-answer probe unlike AWS: "
                        f"{probe.name}: AWS {'allows' if probe.aws_allows else 'denies'} it, moto {answer}; "
                        f"install the locked version: pip install 'moto[server]=={LOCKED_MOTO}'")
        finally:
            set_enforcement(url, False)
        return len(probes)
    finally:
        _clean(iam, s3, created_roles, (granted, other))


def _clean(iam, s3, roles: list[str], buckets: tuple[str, ...]) -> None:
    """Best effort: a backend that answers wrongly may refuse this too, and must not hide its first wrong answer."""
    from botocore.exceptions import ClientError

    for role in roles:
        try:
            for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
                iam.delete_role_policy(RoleName=role, PolicyName=name)
            iam.delete_role(RoleName=role)
        except ClientError:
            pass
    for bucket in buckets:
        try:
            for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"])
            s3.delete_bucket(Bucket=bucket)
        except ClientError:
            pass
