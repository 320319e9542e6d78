"""A small, independent reading of an IAM role's trust policy, for the stand-ins that play AWS's side of
web identity (tests/oidc_issuer.py's STS proxy) and EKS Pod Identity (tests/eks_standin.py): moto does not
evaluate trust for those calls, so they ask here before forwarding.

    allowed, why = trust_allows(document, ("Federated", provider_arn), "sts:AssumeRoleWithWebIdentity",
                                {"issuer.example/id:sub": "system:serviceaccount:ns:sa"})

What it covers (and nothing more, on purpose): Allow/Deny statements, `Principal` as "*" or a dict of
principal kinds (AWS, Service, Federated) with a string or a list, `Action` with `*` wildcards
(case-insensitive), and conditions StringEquals, StringNotEquals, StringLike, StringNotLike,
StringEqualsIgnoreCase, each with an `...IfExists` form. An operator it does not know makes its statement not
apply (an Allow is then not granted): a stand-in must never allow more than AWS would.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any
from urllib.parse import unquote

_OPERATORS = {
    "StringEquals": lambda have, want: have == want,
    "StringNotEquals": lambda have, want: have != want,
    "StringEqualsIgnoreCase": lambda have, want: have.lower() == want.lower(),
    "StringLike": lambda have, want: fnmatch.fnmatchcase(have, want),
    "StringNotLike": lambda have, want: not fnmatch.fnmatchcase(have, want),
}
_NEGATED = {"StringNotEquals", "StringNotLike"}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def load(document: Any) -> dict[str, Any]:
    """A trust policy as boto3 returns it (a dict) or as text (JSON, possibly URL-encoded)."""
    if isinstance(document, dict):
        return document
    text = str(document)
    if text.lstrip().startswith("%7B") or "%22" in text:
        text = unquote(text)
    return json.loads(text)


def _principal_matches(principal: Any, kind: str, value: str) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    return any(entry in ("*", value) for entry in _as_list(principal.get(kind, [])))


def _action_matches(actions: Any, action: str) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), str(pattern).lower()) for pattern in _as_list(actions))


def _conditions_hold(conditions: dict[str, Any], context: dict[str, str]) -> bool:
    for operator, pairs in conditions.items():
        if_exists = operator.endswith("IfExists")
        base = operator[: -len("IfExists")] if if_exists else operator
        test = _OPERATORS.get(base)
        if test is None:
            return False  # unknown operator: the statement does not apply
        for key, wanted in pairs.items():
            have = next((v for k, v in context.items() if k.lower() == key.lower()), None)
            if have is None:
                if if_exists:
                    continue
                return False
            results = [test(have, str(w)) for w in _as_list(wanted)]
            if not (all(results) if base in _NEGATED else any(results)):
                return False
    return True


def trust_allows(document: Any, principal: tuple[str, str], action: str, context: dict[str, str]) -> tuple[bool, str]:
    """Would this trust policy let `principal` (kind, value) perform `action` with these condition values?
    Returns (allowed, a one-line reason)."""
    kind, value = principal
    policy = load(document)
    allowed_by = None
    for index, statement in enumerate(_as_list(policy.get("Statement", []))):
        if "NotPrincipal" in statement or "NotAction" in statement:
            continue  # not read here: such a statement never grants
        if not _principal_matches(statement.get("Principal"), kind, value) or not _action_matches(statement.get("Action", []), action):
            continue
        if not _conditions_hold(statement.get("Condition", {}), context):
            continue
        if statement.get("Effect") == "Deny":
            return False, f"statement {statement.get('Sid', index)} denies {action} to {kind} {value}"
        if statement.get("Effect") == "Allow" and allowed_by is None:
            allowed_by = statement.get("Sid", index)
    if allowed_by is None:
        return False, f"no statement allows {action} to {kind} {value} with these conditions"
    return True, f"statement {allowed_by} allows {action}"
