"""Explaining a blamed cell on real AWS: iam:SimulatePrincipalPolicy quotes the deciding statement (issue 25).

For a read or write cell blamed on permissions, verify asks AWS's policy simulator, as the operator, how the role's
policies decide the cell's actions on its resource, with the bucket's policy passed as `ResourcePolicy` (AWS then
needs `ResourceOwner`, the account, and a `CallerArn`, which it takes only as an IAM user's ARN: a stand-in user
of the account, `CALLER_STAND_IN`, so bucket-policy statements naming the role itself are not matched; say so).
The deciding statement is quoted from the document AWS points at (line and column), read back raw.

One simulate call per distinct (role, action, resource), cached for the run (the live run compares twice). Where the
operator may not call it (AccessDenied), where the endpoint lacks it (moto answers HTTP 500: not implemented), or
on any other failure, the simulator is not asked again in this run and rbacbridge's evaluator (policy_eval) explains,
as before; the report says which explained each blamed cell (Blame.explained_by) and why the simulator did not."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from rbacbridge.errors import one_line

SIMULATE_ACTION = "iam:SimulatePrincipalPolicy"
CALLER_STAND_IN = "rbacbridge-verify-simulated-caller"
# Botocore turns these into dicts; the statement positions AWS gives refer to the raw text.
_DECODED_EVENT = "after-call.iam"
_DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")
# An explanation only sharpens a blame: a throttled simulator is given up quickly (the evaluator explains).
EXPLAIN_RETRIES = {"mode": "standard", "total_max_attempts": 3}


@dataclass(frozen=True)
class Answer:
    decision: str  # allowed | explicitDeny | implicitDeny
    statements: tuple[str, ...]  # the deciding statements, quoted


class Simulator:
    """iam:SimulatePrincipalPolicy for the blamed cells of one verify run (see the module's docstring).

    `iam` and `s3`: clients with the operator's credentials (the IAM one with botocore's policy decoding off);
    `account` owns the roles and, assumed, the buckets."""

    def __init__(self, iam: Any, s3: Any, account: str, partition: str = "aws"):
        self.iam, self.s3, self.account, self.partition = iam, s3, account, partition
        self.unavailable: str | None = None  # why the simulator is not asked (any more) in this run
        self.calls = 0
        self.notes: list[str] = []
        self._answers: dict[tuple[str, str, str], Answer] = {}
        self._bucket_policies: dict[str, str | None] = {}
        self._documents: dict[tuple[str, str, str], str | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_gateway(cls, gateway: Any, account: str, partition: str) -> "Simulator":
        """Clients made the SDK way from the gateway's session (profile, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_IAM,
        aws.endpoint_url), but their own: the IAM client returns policy documents raw; at most EXPLAIN_RETRIES."""
        from botocore.config import Config as BotoConfig
        from botocore.handlers import json_decode_policies

        from rbacbridge.aws.client import CONNECT_TIMEOUT, READ_TIMEOUT, check_environment

        check_environment()
        config = gateway.config
        settings = BotoConfig(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT, retries=dict(EXPLAIN_RETRIES))
        kwargs = {"region_name": config.region, "config": settings,
                  **({"endpoint_url": config.endpoint_url} if config.endpoint_url else {})}
        iam = gateway.session.client("iam", **kwargs)
        iam.meta.events.unregister(_DECODED_EVENT, json_decode_policies)
        return cls(iam, gateway.session.client("s3", **kwargs), account, partition)

    def explain(self, role_arn: str, actions: tuple[str, ...], resource: str, bucket: str | None = None) -> str | None:
        """In words, how AWS decides each action on `resource` for the role, quoting the deciding statements;
        None when the simulator cannot say (rbacbridge's evaluator explains then)."""
        with self._lock:
            if self.unavailable is not None:
                return None
            missing = [a for a in actions if (role_arn, a, resource) not in self._answers]
            if missing and not self._simulate(role_arn, tuple(missing), resource, bucket):
                return None
            parts = []
            for action in actions:
                answer = self._answers[(role_arn, action, resource)]
                quoted = "; ".join(answer.statements)
                why = f" by {quoted}" if quoted else " (no statement allows it)" if answer.decision == "implicitDeny" else ""
                parts.append(f"{action} {answer.decision}{why}")
            return "AWS's policy simulator: " + ", ".join(parts)

    def _simulate(self, role_arn: str, actions: tuple[str, ...], resource: str, bucket: str | None) -> bool:
        params: dict[str, Any] = {"PolicySourceArn": role_arn, "ActionNames": list(actions), "ResourceArns": [resource]}
        policy = self._bucket_policy(bucket) if bucket else None
        if policy:
            params.update(ResourcePolicy=policy, ResourceOwner=f"arn:{self.partition}:iam::{self.account}:root",
                          CallerArn=f"arn:{self.partition}:iam::{self.account}:user/{CALLER_STAND_IN}")
        try:
            self.calls += 1
            results = self.iam.simulate_principal_policy(**params)["EvaluationResults"]
        except Exception as exc:  # noqa: BLE001 - any failure: the evaluator explains, and the report says why
            self.unavailable = _why_not(exc)
            self.notes.append(f"{SIMULATE_ACTION} not used: {self.unavailable}; blamed cells explained by rbacbridge's "
                              "evaluator (identity policies only)")
            return False
        for result in results:
            action = result.get("EvalActionName", "")
            matched = list(result.get("MatchedStatements") or [])
            for specific in result.get("ResourceSpecificResults") or []:
                matched += [m for m in specific.get("MatchedStatements") or [] if m not in matched]
            quoted = tuple(self._quote(role_arn, m, policy) for m in matched)
            self._answers[(role_arn, action, resource)] = Answer(str(result.get("EvalDecision", "?")), quoted)
        for action in actions:  # an answer that left an action out: said so, not guessed
            self._answers.setdefault((role_arn, action, resource), Answer("not evaluated by the simulator", ()))
        return True

    def _bucket_policy(self, bucket: str) -> str | None:
        if bucket not in self._bucket_policies:
            try:
                self._bucket_policies[bucket] = self.s3.get_bucket_policy(Bucket=bucket)["Policy"]
            except Exception as exc:  # noqa: BLE001 - NoSuchBucketPolicy: none; else simulated without it, said
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
                if code != "NoSuchBucketPolicy":
                    self.notes.append(f"could not read the bucket policy of {bucket} ({code}): simulated without it")
                self._bucket_policies[bucket] = None
        return self._bucket_policies[bucket]

    def _quote(self, role_arn: str, matched: dict[str, Any], resource_policy: str | None) -> str:
        source = str(matched.get("SourcePolicyId") or "?")
        kind = str(matched.get("SourcePolicyType") or "")
        text = resource_policy if kind == "resource" or (resource_policy and source == "ResourcePolicy") else \
            self._document(role_arn, source, kind)
        where = "the bucket policy" if text is resource_policy and resource_policy else f"policy {source}"
        statement = _cut(text, matched.get("StartPosition"), matched.get("EndPosition")) if text else None
        if statement is None:
            start = matched.get("StartPosition") or {}
            return f"{where}, statement at line {start.get('Line', '?')} column {start.get('Column', '?')}"
        return f"{where}: {one_line(statement, 300)}"

    def _document(self, role_arn: str, name: str, kind: str) -> str | None:
        """The raw text of a role's policy named by the simulator (inline: kind "role"; else attached, managed)."""
        key = (role_arn, name, kind)
        if key not in self._documents:
            role = role_arn.rsplit("/", 1)[-1]
            try:
                if kind == "role":
                    doc = self.iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
                else:
                    attached = self.iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
                    arn = next(p["PolicyArn"] for p in attached if p["PolicyName"] == name)
                    version = self.iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
                    doc = self.iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
                self._documents[key] = _raw(doc)
            except Exception:  # noqa: BLE001 - the position is quoted instead
                self._documents[key] = None
        return self._documents[key]


def _raw(document: Any) -> str:
    from urllib.parse import unquote

    if isinstance(document, str):
        return unquote(document) if document.lstrip().startswith("%7B") else document
    return json.dumps(document)


def _cut(text: str, start: Any, end: Any) -> str | None:
    """The statement between AWS's positions (1-based line and column; end inclusive), compact if it is JSON."""
    try:
        lines = text.splitlines(keepends=True)
        begin = sum(len(line) for line in lines[:int(start["Line"]) - 1]) + int(start["Column"]) - 1
        stop = sum(len(line) for line in lines[:int(end["Line"]) - 1]) + int(end["Column"])
    except (TypeError, KeyError, ValueError):
        return None
    piece = text[begin:stop].strip().rstrip(",")
    if not piece:
        return None
    try:
        return json.dumps(json.loads(piece), separators=(",", ":"))
    except ValueError:
        return " ".join(piece.split())


def _why_not(exc: Exception) -> str:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
    status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") if hasattr(exc, "response") else None
    if code in _DENIED:
        return f"the credentials in use may not call it ({code}; `rbacbridge permissions` lists it, optional)"
    if code:
        return f"the endpoint answered {code}" + (f" (HTTP {status})" if status else "")
    if type(exc).__name__ == "ResponseParserError" or "500" in str(exc)[:400]:
        return "the endpoint does not implement it (HTTP 500, no AWS error document; moto lacks it)"
    return f"{type(exc).__name__}"


__all__ = ["CALLER_STAND_IN", "SIMULATE_ACTION", "Simulator"]
