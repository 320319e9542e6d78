"""Make moto's trust-policy check on sts:AssumeRole behave like AWS, for the stand-ins (tests only).

With IAM enforcement on, moto 5.2.1 checks the caller's identity policies for sts:AssumeRole and then
the target role's trust policy, but the trust check is not AWS's:
  - it compares the caller's exact ARN with the trusted principal, so a trust naming
    `arn:aws:iam::ACCT:role/R` refuses R's sessions (`arn:aws:sts::ACCT:assumed-role/R/S`), which AWS accepts;
  - a statement whose principal does not match DENIES the call (AWS: the statement does not apply);
  - a Service-only statement (`{"Service": "ec2.amazonaws.com"}`) crashes it (HTTP 500).
(moto 5.2.5 skips the trust check entirely; there the identity side is all moto decides.)

`patch()` replaces only the principal part of a statement's decision, in moto's own process: a
statement whose principal does not cover the caller is neutral; one that does is decided by moto as
before (action, resource, conditions). The matching is deliberately small and does not use
rbacbridge's policy evaluator, so a chain cell observed against moto is an independent observation.
"""

from __future__ import annotations

import re

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


def _principal_covers(principal, caller: str) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    entries = principal.get("AWS")
    if entries is None:
        return False  # Service / Federated principals never cover an IAM caller
    return any(covers(str(e), caller) for e in (entries if isinstance(entries, list) else [entries]))


def patch() -> None:
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
