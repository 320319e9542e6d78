"""The lab stand-ins' own, deliberately small, IAM and kube2iam decisions.

The lab checks rbacbridge, so its kube2iam and metadata stand-ins must not decide with rbacbridge's
code (rbacbridge.policy_eval, rbacbridge.verify): a bug there would then be agreed with, not caught.
This covers only what the lab's documents use: Allow/Deny statements, Action and Resource (no
NotAction/NotResource, no Condition — a statement with a Condition is never taken as granting), `*`/`?`
wildcards, principals by exact ARN or service.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any


def _list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _statements(document: Any) -> list[dict]:
    if isinstance(document, str):
        document = json.loads(document)
    return [s for s in _list((document or {}).get("Statement")) if isinstance(s, dict)]


def _matches(patterns: Any, value: str, case_insensitive: bool = False) -> bool:
    if case_insensitive:
        return any(fnmatch.fnmatchcase(value.lower(), str(p).lower()) for p in _list(patterns))
    return any(fnmatch.fnmatchcase(value, str(p)) for p in _list(patterns))


def _names_principal(statement: dict, arn: str | None, service: str | None) -> bool:
    principal = statement.get("Principal")
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    if arn is not None and (arn in _list(principal.get("AWS")) or "*" in _list(principal.get("AWS"))):
        return True
    return service is not None and service in _list(principal.get("Service"))


def trusts(trust: Any, arn: str | None = None, service: str | None = None) -> bool:
    """A role's trust policy lets `arn` (or the service) call sts:AssumeRole."""
    allowed = False
    for statement in _statements(trust):
        if not _names_principal(statement, arn, service) or not _matches(statement.get("Action"), "sts:AssumeRole", True):
            continue
        if statement.get("Effect") == "Deny":
            return False
        if statement.get("Effect") == "Allow" and not statement.get("Condition"):
            allowed = True
    return allowed


def permits(documents: list[Any], action: str, resource: str) -> bool:
    """Identity policies allow `action` on `resource` (explicit Deny wins, default deny)."""
    allowed = False
    for document in documents:
        for statement in _statements(document):
            if not (_matches(statement.get("Action"), action, True) and _matches(statement.get("Resource"), resource)):
                continue
            if statement.get("Effect") == "Deny":
                return False
            if statement.get("Effect") == "Allow" and not statement.get("Condition"):
                allowed = True
    return allowed


def namespace_allows(role_arn: str, patterns: list[str]) -> bool:
    """kube2iam's --namespace-restrictions: the annotation's globs against the role's name or full ARN."""
    name = role_arn.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(role_arn, p) or fnmatch.fnmatchcase(name, p) for p in patterns)
