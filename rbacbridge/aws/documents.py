"""IAM policy documents: compared as sets of facts (order and list-or-string forms do not matter),
their difference said in a few words, decoded from IAM's URL-encoded form, and read live for verify."""

from __future__ import annotations

import json
from typing import Any


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


def _principals(trust: dict) -> str:
    names = []
    for statement in trust.get("Statement", []):
        for kind, value in (statement.get("Principal") or {}).items():
            names += [f"{v}" for v in _as_list(value)]
    return "trusts " + ", ".join(names)


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
