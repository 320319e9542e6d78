"""`plan_setup`: the AWS part of a setup plan, in the order it runs.

The KMS key (unless record.kms_key pins one), the first record write (intents, adoptions, what each
instance had), the policies, roles and instance profile, the removal of what the configuration no
longer has, the associations, and the last record write (the unique ids the creates returned).
"""

from __future__ import annotations

from rbacbridge import MANAGED_BY_KEY, MANAGED_BY_VALUE
from rbacbridge.aws import permission_set
from rbacbridge.aws.associations import _plan_associations
from rbacbridge.aws.client import _checked_account, gateway
from rbacbridge.aws.iam import _live_profile, _plan_policy, _plan_profile, _plan_role
from rbacbridge.aws.instances import _describe_instances, _note_metadata_options, instance_ids
from rbacbridge.aws.record import INSTALL_TAG, KEY_SPEC, KEY_USAGE, KMS_TAGS_PER_KEY, Replaced, encode
from rbacbridge.aws.record_store import Draft, RecordKey, record_key
from rbacbridge.aws.removed import _plan_removed
from rbacbridge.aws.resources import SYSTEM, InstanceProfile, ManagedPolicy, Role, desired_resources
from rbacbridge.config import Config, iam_key
from rbacbridge.errors import RbacbridgeError
from rbacbridge.plan import ACTIONS_THAT_CHANGE, CONFLICT, CREATE, UPDATE, Step


def plan_setup(ctx) -> list[Step]:
    gw = gateway(ctx)
    account = _checked_account(ctx, gw)
    ids = instance_ids(ctx)
    instances = _describe_instances(gw, ids)  # one describe: validation and metadata options
    _note_metadata_options(ctx, instances)
    key = record_key(ctx, gw, account)
    if key.state == "PendingDeletion":
        raise RbacbridgeError(f"KMS key {key.arn} ({key.ref}) is pending deletion: " + (
            "pin another key (record.kms_key), or cancel the deletion (aws kms cancel-key-deletion, enable-key)" if key.pinned
            else "run `rbacbridge teardown` again to finish it, or cancel the deletion (aws kms cancel-key-deletion, enable-key)"))
    draft = Draft(key)
    steps: list[Step] = []
    live_profile, profile_ok = None, True
    for resource in desired_resources(ctx.config, account, []):
        if isinstance(resource, ManagedPolicy):
            steps += _plan_policy(ctx, gw, account, resource, draft)
        elif isinstance(resource, Role):
            steps += _plan_role(ctx, gw, account, resource, draft)
        elif isinstance(resource, InstanceProfile):
            name = key.recorded_name("profile", resource.name)
            live_profile = _live_profile(gw, name)
            profile_steps = _plan_profile(ctx, gw, resource, live_profile, draft)
            profile_ok = not any(s.action == CONFLICT for s in profile_steps)
            steps += profile_steps
    keep_roles, keep_policies = _kept_names(ctx.config, account)
    steps += _plan_removed(ctx, gw, account, draft, keep_roles, keep_policies, teardown=False)
    if profile_ok:  # else the profile's conflict blocks the run: nothing to associate
        steps += _plan_associations(ctx, gw, account, ids, live_profile, draft)
    draft.changes_iam = any(s.action in ACTIONS_THAT_CHANGE for s in steps)  # the record notes when (verify's settle window)
    first, last = _record_steps(draft)
    return permission_set.without_repeats(_key_steps(key) + first + steps + last)


def _key_steps(key: RecordKey) -> list[Step]:
    if key.exists:
        return []
    return [Step(SYSTEM, CREATE, "kms-key", key.alias, f"create KMS key {key.alias} ({KEY_SPEC}, {KEY_USAGE}), "
                 f"tagged {MANAGED_BY_KEY}={MANAGED_BY_VALUE} {INSTALL_TAG}={key.install}",
                 "it signs this install's record: only principals IAM allows kms:Sign on it can write a record that verifies",
                 key.create)]


def _describe_replaced(instance: str, entry: Replaced) -> str:
    if entry.unknown:
        return f"{instance} held it already (had: unknown)"
    if entry.had_none:
        return f"{instance} had none"
    return f"{instance} had {entry.profile_name} ({entry.association_id})"


def _record_steps(draft: Draft) -> tuple[list[Step], list[Step]]:
    """Setup's two record writes (each a kms:Sign and a kms:TagResource), or a conflict when the record would not fit."""
    key = draft.key
    chunks, room = len(encode(draft.projected())[0]), key.room()
    if chunks > room:
        return [Step(SYSTEM, CONFLICT, "record", key.ref, f"cannot record this setup: the record would need {chunks} tags "
                     f"on KMS key {key.arn or key.alias}, which has room for {room} (KMS allows {KMS_TAGS_PER_KEY} tags a key)",
                     "set up fewer instances or tenants per install (docs/ownership.md, limits), or remove other tags from the key")], []
    first: list[Step] = []
    if draft.first_needed:
        said = [f"{p.kind} {p.name}" for p in draft.intents]
        parts = ([f"will create {', '.join(said)}"] if said else []) + \
            ([f"this install's: {', '.join(f'{k} {o.name} ({i})' for k, i, o in draft.claimed)}"] if draft.claimed else []) + \
            [_describe_replaced(i, e) for i, e in sorted(draft.replaced.items())]
        first.append(Step(SYSTEM, UPDATE if key.record else CREATE, "record", key.ref,
                          "sign and store this install's record: " + "; ".join(parts or ["association ids"]),
                          "in the tags of its KMS key, before anything is created or associated",
                          draft.write_first, {"record": {i: e.profile_arn or ("unknown" if e.unknown else "none")
                                                         for i, e in sorted(draft.replaced.items())}}))
    last: list[Step] = []
    if draft.last_needed:
        ids = bool(draft.intents or draft.removed or draft.replaced)
        last.append(Step(SYSTEM, UPDATE, "record", key.ref,
                         ("sign and store the unique ids of what setup created and associated" if ids else
                          "sign and store when setup last changed a trust, policy or association (verify's settle window)")
                         + (f", forget the {len(draft.removed)} resource(s) it deleted" if draft.removed else ""),
                         "setup's last step: from then on only these ids make a resource this install's", draft.write_last,
                         {} if ids else {STAMP_ONLY: True}))
    return first, last


STAMP_ONLY = "stamp_only"  # a record write that only notes when setup changed IAM: no drift of its own (verify)


def _kept_names(config: Config, account: str) -> tuple[set[str], set[str]]:
    """Role and policy names the configuration still uses (iam_key), never deleted as a removed tenant's."""
    roles = {t.role for t in config.tenants} | {config.node_role, config.pod_default_role, config.effective_default_role}
    policies = {t.policy for t in config.tenants if t.policy} | {config.node_policy, config.kube2iam_policy}
    return {iam_key(r) for r in roles}, {iam_key(p) for p in policies}
