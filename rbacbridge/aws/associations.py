"""The instance profile's associations with the worker instances, and giving them back.

Setup records what each instance had (in the signed record, before any association step) and then
associates or replaces; teardown gives each instance the record names back what it had, while it still
holds the install's profile. What the record does not name is left alone (`--force` disassociates).
"""

from __future__ import annotations

from typing import Any

from rbacbridge.aws.client import AwsGateway, _chunks, _pages, retry_eventual_consistency
from rbacbridge.aws.iam import _live_profile
from rbacbridge.aws.ownership import claim
from rbacbridge.aws.record import Replaced
from rbacbridge.aws.record_store import Draft
from rbacbridge.aws.resources import ProfileAssociation, _step
from rbacbridge.aws.unsigned_records import NO_PREVIOUS_PROFILE, PREVIOUS_PROFILE_TAG, old_claims
from rbacbridge.plan import CONFLICT, CREATE, DELETE, LEFT_ALONE, RESTORE, UNCHANGED, UPDATE, Step

ASSOCIATED_STATES = ("associating", "associated")


def _associations(gw: AwsGateway, instance_ids: list[str] | None = None, states: tuple[str, ...] | None = ASSOCIATED_STATES) -> list[dict]:
    """Instance profile associations, for the given instances (else all), in one call per 200 ids."""
    filters = [{"Name": "state", "Values": list(states)}] if states else []
    groups = _chunks(instance_ids, 200) if instance_ids is not None else [None]
    found: list[dict] = []
    for group in groups:
        extra = [{"Name": "instance-id", "Values": group}] if group is not None else []
        params: dict[str, Any] = {"Filters": filters + extra} if filters + extra else {}
        for page in _pages(gw, "ec2", "describe_iam_instance_profile_associations", "NextToken", **params):
            found += page.get("IamInstanceProfileAssociations", [])
    return found


def _holds(association: dict | None, own_id: str | None, own_arn: str) -> bool:
    """Does this association hold the install's profile (by id; by ARN only before the profile exists)?"""
    if association is None:
        return False
    profile = association["IamInstanceProfile"]
    return profile.get("Id") == own_id if own_id and profile.get("Id") else profile["Arn"] == own_arn


def _plan_associations(ctx, gw: AwsGateway, account: str, ids: list[str], live_profile: dict | None, draft: Draft) -> list[Step]:
    """Associate the install's profile with each instance. What an instance had goes into the signed
    record first (the record write precedes every association step); the association id comes last."""
    if not ids:
        return []
    name = ctx.config.instance_profile
    info = live_profile["InstanceProfile"] if live_profile else None
    own_id = info["InstanceProfileId"] if info else None
    own_arn = info["Arn"] if info else ctx.config.partition.iam_arn(account, f"instance-profile/{name}")
    record = draft.key.record
    current = {a["InstanceId"]: a for a in _associations(gw, ids)}
    steps: list[Step] = []
    for instance_id in ids:
        assoc = ProfileAssociation(instance_id, name)
        live = current.get(instance_id)
        if _holds(live, own_id, own_arn):
            entry = record.replaced.get(instance_id) if record else None
            if entry is not None:
                steps.append(_step(UNCHANGED, assoc, f"instance {instance_id} uses instance profile {name} "
                                   f"(recorded: it had {'an unknown profile' if entry.unknown else entry.profile_name})"))
                if record.associations.get(instance_id) != live["AssociationId"]:
                    draft.associations[instance_id] = live["AssociationId"]  # an interrupted setup's, or re-issued by EC2
            elif ctx.adopt:
                draft.replaced[instance_id] = Replaced(unknown=True)
                draft.associations[instance_id] = live["AssociationId"]
                steps.append(_step(UPDATE, assoc, f"record instance {instance_id}, which already holds instance profile {name}, "
                                   "in this install's record", "--adopt: what it had before is unknown, so teardown "
                                   "disassociates it and gives nothing back (it quotes an unsigned record's claim, if any)"))
            else:
                steps.append(_step(LEFT_ALONE, assoc, f"instance {instance_id} holds instance profile {name} but this install's "
                                   "record does not name it", "associated outside rbacbridge, or by a version before the signed "
                                   "record: teardown leaves it (`setup --adopt` records it, `teardown --force` disassociates)"))
            continue
        previous = Replaced(live["AssociationId"], live["IamInstanceProfile"].get("Id"),
                            live["IamInstanceProfile"]["Arn"]) if live else Replaced()
        if not previous.storable():
            steps.append(_step(CONFLICT, assoc, f"cannot record instance {instance_id}'s profile {previous.profile_arn}",
                               "its association, id or ARN is not in a form the record holds: associate it by hand"))
            continue
        draft.replaced[instance_id] = previous
        spec = {"Name": name}
        remember = draft.associated
        if live is None:
            steps.append(_step(CREATE, assoc, f"associate instance profile {name} with instance {instance_id}",
                               "the record says it had none", run=lambda i=instance_id: remember(i, retry_eventual_consistency(lambda: gw.call(
                                   "ec2", "associate_iam_instance_profile", IamInstanceProfile=spec, InstanceId=i))
                                   ["IamInstanceProfileAssociation"]["AssociationId"])))
        else:
            steps.append(_step(UPDATE, assoc, f"replace instance profile {previous.profile_name} with {name} on instance {instance_id}",
                               f"{previous.profile_name} is recorded and comes back on teardown",
                               lambda i=instance_id, a=live["AssociationId"]: remember(i, retry_eventual_consistency(lambda: gw.call(
                                   "ec2", "replace_iam_instance_profile_association", IamInstanceProfile=spec, AssociationId=a))
                                   ["IamInstanceProfileAssociation"]["AssociationId"])))
    return steps


def _claims_note(claims: dict[str, str], instance_id: str) -> str:
    claimed = claims.get(instance_id)
    if claimed is None:
        return ""
    if claimed == NO_PREVIOUS_PROFILE:
        return "; an unsigned record of an earlier version claims it had none"
    return (f"; an unsigned record of an earlier version claims it had {claimed} (never trusted: if you trust it, "
            f"`aws ec2 associate-iam-instance-profile --instance-id {instance_id} --iam-instance-profile Arn={claimed}`)")


def _plan_associations_teardown(ctx, gw: AwsGateway, account: str, live_profile: dict | None,
                                draft: Draft) -> tuple[list[Step], str | None]:
    """Give each instance the record names back what setup replaced, while it still holds the install's
    profile. Returns the steps and, when the profile must stay (instances hold it without a record), why."""
    if live_profile is None:
        return [], None
    info = live_profile["InstanceProfile"]
    name, own_arn, own_id = info["InstanceProfileName"], info["Arn"], info["InstanceProfileId"]
    ours = claim(draft, "profile", name, info).ours
    holders = {a["InstanceId"]: a for a in _associations(gw, states=None)
               if a["State"] in ASSOCIATED_STATES and _holds(a, own_id, own_arn)}
    steps: list[Step] = []
    if not ours and not ctx.force:
        for instance_id in sorted(holders):
            steps.append(_step(LEFT_ALONE, ProfileAssociation(instance_id, name),
                               f"leave instance {instance_id} with instance profile {name}: the profile is not this install's",
                               "not in this install's signed record (--force disassociates and deletes the profile)"))
        return steps, None
    record = draft.key.record
    entries = record.replaced if record else {}
    untrusted = [i for i in holders if i not in entries or entries[i].unknown]
    claims: dict[str, str] = {}
    if untrusted:
        old_tags = {i["InstanceId"]: t["Value"]
                    for page in _pages(gw, "ec2", "describe_instances", "NextToken",
                                       Filters=[{"Name": "tag-key", "Values": [PREVIOUS_PROFILE_TAG]}])
                    for r in page["Reservations"] for i in r["Instances"]
                    for t in i.get("Tags", []) if t["Key"] == PREVIOUS_PROFILE_TAG}
        claims = old_claims(info.get("Tags"), old_tags)
    unrecorded: list[str] = []
    previous_profiles: dict[str, dict | None] = {}
    for instance_id in sorted(holders):
        assoc = ProfileAssociation(instance_id, name)
        association_id = holders[instance_id]["AssociationId"]
        disassociate = lambda a=association_id: gw.call("ec2", "disassociate_iam_instance_profile", AssociationId=a)  # noqa: E731
        remove = f"disassociate instance profile {name} from instance {instance_id}"
        entry = entries.get(instance_id)
        if entry is None:
            if ctx.force:
                steps.append(_step(DELETE, assoc, remove, "--force: associated without this install's record" + _claims_note(claims, instance_id),
                                   disassociate))
            else:
                unrecorded.append(instance_id)
                steps.append(_step(LEFT_ALONE, assoc, f"leave instance {instance_id} with instance profile {name}: this install's "
                                   "record does not name it", "--force disassociates it" + _claims_note(claims, instance_id)))
            continue
        if entry.unknown:
            steps.append(_step(DELETE, assoc, remove, "recorded by `setup --adopt`: what it had before is unknown, nothing is "
                               "given back" + _claims_note(claims, instance_id), disassociate))
            continue
        if entry.had_none:
            steps.append(_step(DELETE, assoc, remove, "recorded: it had no instance profile before setup", disassociate))
            continue
        pname = entry.profile_name
        if pname not in previous_profiles:
            previous_profiles[pname] = _live_profile(gw, pname)
        live = previous_profiles[pname]
        if live is None:
            steps.append(_step(DELETE, assoc, remove, f"its recorded previous profile {pname} no longer exists", disassociate))
        elif (live["InstanceProfile"]["InstanceProfileId"], live["InstanceProfile"]["Arn"]) != (entry.profile_id, entry.profile_arn):
            steps.append(_step(LEFT_ALONE, assoc, f"do not give instance {instance_id} the profile now named {pname}",
                               f"it is not the recorded one (id {entry.profile_id}, {entry.profile_arn}): nothing restored"))
            steps.append(_step(DELETE, assoc, remove, "its recorded previous profile was deleted and re-created", disassociate))
        else:
            spec = {"Arn": entry.profile_arn}
            steps.append(_step(RESTORE, assoc, f"give instance {instance_id} back its instance profile {pname} ({entry.profile_arn})",
                               f"signed record: association {entry.association_id} of profile id {entry.profile_id}",
                               lambda a=association_id, spec=spec: retry_eventual_consistency(lambda: gw.call(
                                   "ec2", "replace_iam_instance_profile_association", IamInstanceProfile=spec, AssociationId=a)),
                               restore=entry.profile_arn))
    keep = None
    if unrecorded:
        keep = f"still associated with {', '.join(unrecorded)} without this install's record (--force disassociates and deletes)"
    return steps, keep
