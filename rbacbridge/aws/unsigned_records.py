"""What versions before the signed record left behind: never trusted, only quoted.

Versions up to 0.1 recorded the replaced profile in an EC2 tag on the instance (later ones, unsigned, in
the instance profile's tags). Anyone allowed to tag can write either: teardown only quotes them so that
the operator can give a profile back by hand (docs/ownership.md, upgrading).
"""

from __future__ import annotations

import re

from rbacbridge.aws.record import RECORD_TAG

PREVIOUS_PROFILE_TAG = "rbacbridge:previous-instance-profile"
NO_PREVIOUS_PROFILE = "none"


def old_claims(profile_tags: list[dict] | None, ec2_tags: dict[str, str]) -> dict[str, str]:
    """What an unsigned record of an earlier version says each instance had (instance -> ARN or "none").
    Never acted on: teardown quotes it so that the operator can give a profile back by hand."""
    tags = {t["Key"]: t["Value"] for t in profile_tags or []}
    claims = dict(ec2_tags)
    for key, value in tags.items():
        if not key.startswith(RECORD_TAG) or not re.fullmatch(r"[1-9][0-9]{0,2}", key[len(RECORD_TAG):]):
            continue
        for token in value.split():
            parts = token.split("=")
            if len(parts) == 2 and parts[1] == "none":
                claims[parts[0]] = "none"
            elif len(parts) == 3:
                claims[parts[0]] = tags.get(f"rbacbridge:profile:{parts[2]}", f"profile id {parts[2]}")
    return claims


def has_old_record(profile_tags: list[dict] | None) -> bool:
    return any(t["Key"].startswith(("rbacbridge:record:", "rbacbridge:profile:", "rbacbridge:tenant:")) for t in profile_tags or [])
