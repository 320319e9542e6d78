"""Ownership: the signed record decides whether a live resource is this install's.

A resource is this install's when the verified record names its unique id, or names it as pending
(setup signed the intent to create it) and AWS's CreateDate falls in the window after that intent.
Tags never make anything ours: managed-by=rbacbridge on a resource the record does not name is a
conflict to report (docs/ownership.md), and another install's tag makes it one even for --adopt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from rbacbridge import MANAGED_BY_KEY, MANAGED_BY_VALUE
from rbacbridge.aws.record import INSTALL_TAG, accept_pending
from rbacbridge.aws.record_store import Draft
from rbacbridge.aws.resources import _step, resource_tags
from rbacbridge.errors import shown
from rbacbridge.plan import CONFLICT, LEFT_ALONE, UPDATE, Step

KINDS = {"iam-role": "role", "iam-policy": "policy", "iam-instance-profile": "profile"}


@dataclass
class Claim:
    ours: bool
    why: str = ""  # why it is not provably ours
    adoptable: bool = False  # --adopt may record it (not another install's)
    accepted: bool = False  # a pending create of this run's install, found: its id goes into the record


def _live_parts(kind: str, live: dict) -> dict:
    return live[{"role": "Role", "policy": "Policy", "profile": "InstanceProfile"}[kind]]


def _unique_id(kind: str, info: dict) -> str:
    return info[{"role": "RoleId", "policy": "PolicyId", "profile": "InstanceProfileId"}[kind]]


def claim(draft: Draft, kind: str, name: str, info: dict) -> Claim:
    """Is this live resource (get_role's Role, get_policy's Policy, get_instance_profile's
    InstanceProfile) this install's?"""
    record = draft.key.record
    unique_id = _unique_id(kind, info)
    if record is not None and record.owner(kind, unique_id):
        return Claim(True)
    pending = record.pending_for(kind, name) if record is not None else None
    if pending is not None and accept_pending(pending.at, info.get("CreateDate")):
        return Claim(True, accepted=True)
    tags = _tag_map(info.get("Tags"))
    install = tags.get(INSTALL_TAG)
    if install and install != draft.key.install:
        return Claim(False, f"tagged {INSTALL_TAG}={install}: another install's (not in this install's signed record)")
    if pending is not None:
        created = info.get("CreateDate")
        return Claim(False, f"this install signed the intent to create it at {pending.at}, but AWS created it at "
                            f"{created.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}: not provably this install's"
                     if isinstance(created, datetime)
                     else f"this install signed the intent to create it at {pending.at}; AWS gives no creation time", True)
    if tags.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE:
        return Claim(False, f"tagged {MANAGED_BY_KEY}={MANAGED_BY_VALUE} but not in this install's signed record "
                            "(a tag proves nothing: anyone allowed to tag can write it)", True)
    return Claim(False, "not rbacbridge's: not in this install's signed record", True)


def _created_id(draft: Draft, resource: Any, kind: str, response: dict) -> dict:
    """A create step's response: its unique id goes into the record (setup's last record write)."""
    info = _live_parts(kind, response)
    draft.created(kind, _unique_id(kind, info), info.get({"role": "RoleName", "policy": "PolicyName",
                                                          "profile": "InstanceProfileName"}[kind], resource.name),
                  getattr(resource, "tenant", None))
    return response


def _ownership(ctx, draft: Draft, resource: Any, info: dict, tag: Callable[[], Any]) -> Step | None:
    """None when the live resource is this install's; else a conflict (or, with --adopt, the adoption)."""
    kind = KINDS[resource.kind]
    found = claim(draft, kind, resource.name, info)
    if found.ours:
        if found.accepted:
            draft.claim(kind, _unique_id(kind, info), resource.name, getattr(resource, "tenant", None))
        return None
    unique_id = _unique_id(kind, info)
    created = info.get("CreateDate")
    when = f", created {created:%Y-%m-%d}" if isinstance(created, datetime) else ""
    if ctx.adopt and found.adoptable:
        draft.claim(kind, unique_id, resource.name, getattr(resource, "tenant", None))
        return _step(UPDATE, resource, f"adopt {resource.kind} {resource.name} (id {unique_id}{when}): record it as this "
                     f"install's and tag it", f"{found.why}; --adopt given: teardown will delete it", tag)
    hint = ("rename it in the config, or pass --adopt to take it over (recorded; teardown then deletes it)"
            if found.adoptable else "rename it in the config (set a different name for this install)")
    return _step(CONFLICT, resource, f"{resource.kind} {resource.name} (id {unique_id}) exists and is not this install's",
                 f"{found.why}: {hint}")


def _ownership_steps(ctx, draft: Draft, resource: Any, info: dict, tag: Callable[[], Any]) -> tuple[list[Step], bool]:
    """An existing resource's ownership steps (the adoption, or the missing tags of this install's), and
    whether it is a conflict (then nothing else is planned for it)."""
    conflict = _ownership(ctx, draft, resource, info, tag)
    if conflict:
        return [conflict], conflict.action == CONFLICT
    return _tags_step(resource, info.get("Tags"), draft.key.install, tag), False


def _tags_step(resource: Any, live_tags: list[dict] | None, install: str, tag: Callable[[], Any]) -> list[Step]:
    """This install's resource without (or with other) managed-by / rbacbridge:install / tenant tags gets them."""
    tags = _tag_map(live_tags)
    missing = [t for t in resource_tags(resource, install) if tags.get(t["Key"]) != t["Value"]]
    if not missing:
        return []
    why = ", ".join(f"{t['Key']} is {shown(tags[t['Key']])}" if t["Key"] in tags else f"no {t['Key']}" for t in missing)
    return [_step(UPDATE, resource, f"tag {resource.kind} {resource.name} " + " ".join(f"{t['Key']}={t['Value']}" for t in missing),
                  f"{why} (made by an earlier version, or retagged)", tag)]


def _tag_map(tags: list[dict] | None) -> dict[str, str]:
    return {t.get("Key"): t.get("Value") for t in tags or []}


def _left_alone(resource: Any, why: str = "not in this install's signed record (--force deletes it anyway)") -> Step:
    return _step(LEFT_ALONE, resource, f"leave {resource.kind} {resource.name}: not this install's", why)
