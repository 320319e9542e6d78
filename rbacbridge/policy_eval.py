"""A small IAM policy evaluator for the documents rbacbridge manages.

Identity policies: explicit Deny overrides Allow, anything not allowed is denied (default deny),
Action/NotAction and Resource/NotResource with `*` and `?` wildcards. Action names match
case-insensitively (as AWS does); resource ARNs match case-sensitively. Conditions are not
evaluated: a statement with a Condition is reported as such and treated as not matching, so an
Allow that depends on one never counts as granted (the documents rbacbridge renders have none).

Trust policies: does a principal ARN satisfy a trust document's Principal for sts:AssumeRole
(exact ARN, the account root `arn:aws:iam::ACCT:root` or a bare account id, `*`; a role ARN also
covers that role's sessions `arn:aws:sts::ACCT:assumed-role/ROLE/SESSION`, as in AWS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable

ALLOW = "Allow"
EXPLICIT_DENY = "ExplicitDeny"
IMPLICIT_DENY = "ImplicitDeny"


@dataclass
class Documents:
    """Trust and identity policy documents per role name (what setup wants, or what IAM has now)."""

    trust: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    result: str  # ALLOW | EXPLICIT_DENY | IMPLICIT_DENY
    statement: str | None = None  # Sid (or "#index") of the deciding statement

    @property
    def allowed(self) -> bool:
        return self.result == ALLOW

    def __str__(self) -> str:
        where = f" by statement {self.statement}" if self.statement else ""
        return {ALLOW: f"allowed{where}", EXPLICIT_DENY: f"explicitly denied{where}",
                IMPLICIT_DENY: "not allowed by any statement (default deny)"}[self.result]


@lru_cache(maxsize=512)
def _pattern(text: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in text)
    return re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def wildcard_match(pattern: str, value: str, ignore_case: bool = False) -> bool:
    return bool(_pattern(pattern, ignore_case).match(value))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in _as_list(document.get("Statement")) if isinstance(s, dict)]


def _label(statement: dict[str, Any], index: int) -> str:
    return str(statement.get("Sid") or f"#{index}")


def _matches_action(statement: dict[str, Any], action: str) -> bool:
    if "Action" in statement:
        return any(wildcard_match(str(p), action, ignore_case=True) for p in _as_list(statement["Action"]))
    if "NotAction" in statement:
        return not any(wildcard_match(str(p), action, ignore_case=True) for p in _as_list(statement["NotAction"]))
    return False


def _matches_resource(statement: dict[str, Any], resource: str) -> bool:
    if "Resource" in statement:
        return any(wildcard_match(str(p), resource) for p in _as_list(statement["Resource"]))
    if "NotResource" in statement:
        return not any(wildcard_match(str(p), resource) for p in _as_list(statement["NotResource"]))
    return False


def evaluate(documents: Iterable[dict[str, Any]], action: str, resource: str) -> Decision:
    """Identity-policy decision for one action on one resource across all of a role's policies."""
    allow: str | None = None
    for document in documents:
        for index, statement in enumerate(statements(document)):
            if "Condition" in statement:
                continue
            if not (_matches_action(statement, action) and _matches_resource(statement, resource)):
                continue
            effect = statement.get("Effect")
            if effect == "Deny":
                return Decision(EXPLICIT_DENY, _label(statement, index))
            if effect == "Allow" and allow is None:
                allow = _label(statement, index)
    return Decision(ALLOW, allow) if allow else Decision(IMPLICIT_DENY)


def is_allowed(documents: Iterable[dict[str, Any]], action: str, resource: str) -> bool:
    return evaluate(documents, action, resource).allowed


def allows_all(documents: Iterable[dict[str, Any]], actions: Iterable[str], resource: str) -> bool:
    docs = list(documents)
    return all(is_allowed(docs, a, resource) for a in actions)


# --- S3 helpers: bucket ARN vs object ARN -------------------------------------------------------

def bucket_arn(bucket: str, partition: str = "aws") -> str:
    return f"arn:{partition}:s3:::{bucket}"


def object_arn(bucket: str, key: str, partition: str = "aws") -> str:
    return f"arn:{partition}:s3:::{bucket}/{key}"


READ_ACTIONS = ("s3:ListBucket",)  # on the bucket ARN
WRITE_ACTIONS = ("s3:PutObject", "s3:DeleteObject")  # on the object ARN


def can_read(documents: Iterable[dict[str, Any]], bucket: str, partition: str = "aws") -> bool:
    return allows_all(documents, READ_ACTIONS, bucket_arn(bucket, partition))


def can_write(documents: Iterable[dict[str, Any]], bucket: str, key: str, partition: str = "aws") -> bool:
    return allows_all(documents, WRITE_ACTIONS, object_arn(bucket, key, partition))


# --- trust policies -----------------------------------------------------------------------------

_ROLE_ARN = re.compile(r"^arn:(aws[\w-]*):iam::(\d{12}):role/(?:.*/)?([\w+=,.@-]+)$")
_SESSION_ARN = re.compile(r"^arn:(aws[\w-]*):sts::(\d{12}):assumed-role/([\w+=,.@-]+)/[^/]+$")
_ANY_ARN = re.compile(r"^arn:aws[\w-]*:(?:iam|sts)::(\d{12}):")


def account_of(arn: str) -> str | None:
    m = _ANY_ARN.match(arn)
    return m.group(1) if m else None


def role_of_session(arn: str) -> str | None:
    """`arn:aws:sts::ACCT:assumed-role/ROLE/SESSION` -> ROLE (None for anything else)."""
    m = _SESSION_ARN.match(arn)
    return m.group(3) if m else None


def role_name_of(arn: str) -> str | None:
    """Role name from a role ARN or an assumed-role session ARN."""
    m = _ROLE_ARN.match(arn)
    if m:
        return m.group(3)
    return role_of_session(arn)


def _principal_matches(entry: str, principal_arn: str) -> bool:
    if entry == "*":
        return True
    account = account_of(principal_arn)
    if re.fullmatch(r"\d{12}", entry) or re.fullmatch(r"arn:aws[\w-]*:iam::\d{12}:root", entry):
        return account is not None and entry.split(":")[4 if entry.startswith("arn:") else 0] == account
    if entry == principal_arn:
        return True
    # A trusted role ARN covers that role's sessions (AWS does; moto does not).
    session_role = role_of_session(principal_arn)
    entry_role = _ROLE_ARN.match(entry)
    return bool(session_role and entry_role and entry_role.group(2) == account and entry_role.group(3) == session_role)


def _statement_principal_matches(statement: dict[str, Any], principal_arn: str | None, service: str | None) -> bool:
    principal = statement.get("Principal")
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    if service is not None:
        return any(s == "*" or s == service for s in _as_list(principal.get("Service")))
    if principal_arn is None:
        return False
    return any(_principal_matches(str(e), principal_arn) for e in _as_list(principal.get("AWS")))


def trust_decision(trust: dict[str, Any], principal_arn: str | None = None, service: str | None = None,
                   action: str = "sts:AssumeRole") -> Decision:
    """May `principal_arn` (or AWS service `service`) perform `action` under this trust document?"""
    allow: str | None = None
    for index, statement in enumerate(statements(trust)):
        if "Condition" in statement or "NotPrincipal" in statement:
            continue
        if not _matches_action(statement, action):
            continue
        if not _statement_principal_matches(statement, principal_arn, service):
            continue
        if statement.get("Effect") == "Deny":
            return Decision(EXPLICIT_DENY, _label(statement, index))
        if statement.get("Effect") == "Allow" and allow is None:
            allow = _label(statement, index)
    return Decision(ALLOW, allow) if allow else Decision(IMPLICIT_DENY)


def trust_allows(trust: dict[str, Any], principal_arn: str, action: str = "sts:AssumeRole") -> bool:
    return trust_decision(trust, principal_arn=principal_arn, action=action).allowed


def trust_allows_service(trust: dict[str, Any], service: str) -> bool:
    return trust_decision(trust, service=service).allowed


def trusted_principals(trust: dict[str, Any]) -> list[str]:
    """The AWS principals an Allow statement names (for messages)."""
    out: list[str] = []
    for statement in statements(trust):
        if statement.get("Effect") != "Allow":
            continue
        principal = statement.get("Principal")
        if principal == "*":
            out.append("*")
        elif isinstance(principal, dict):
            out.extend(str(e) for e in _as_list(principal.get("AWS")))
    return out
