"""`plan_teardown`: the AWS part of a teardown plan, the setup walked backwards.

Instances get back what the record says they had; what the record names that the configuration does
not comes next; then roles, policies and the instance profile (each only when provably this install's,
else left alone with the reason); the KMS key last, once nothing the record names is left.
"""

from __future__ import annotations

from rbacbridge import MANAGED_BY_KEY, MANAGED_BY_VALUE
from rbacbridge.aws.associations import _plan_associations_teardown
from rbacbridge.aws.client import _checked_account, gateway
from rbacbridge.aws.iam import _live_profile
from rbacbridge.aws.iam_teardown import _plan_policy_teardown, _plan_profile_teardown, _plan_role_teardown
from rbacbridge.aws.ownership import claim
from rbacbridge.aws.record import DELETION_WINDOW_DAYS, INSTALL_TAG, MIGRATION_TAG
from rbacbridge.aws.record_store import Draft, RecordKey, record_key
from rbacbridge.aws.removed import _plan_removed
from rbacbridge.aws.resources import SYSTEM, InstanceProfile, ManagedPolicy, Role, desired_resources
from rbacbridge.config import iam_key
from rbacbridge.errors import UsageError
from rbacbridge.plan import DELETE, LEFT_ALONE, Step


def _refuse_during_migration(key: RecordKey) -> None:
    """A migration off kube2iam (`rbacbridge migrate`) under way: its workloads may already use the pod roles
    through IRSA or Pod Identity, and teardown would delete those roles. Refused on the tags alone (a forged tag
    can only stop a teardown, never cause a deletion); `migrate rollback` until none is recorded comes first."""
    if any(k.startswith(f"{MIGRATION_TAG}{key.install}:") for k in key.tags):
        raise UsageError(f"a migration off kube2iam is recorded for this install (KMS key {key.arn}): teardown would "
                         "delete the pod roles its workloads may now use; run `rbacbridge migrate rollback` until none "
                         "is recorded, then teardown")


def plan_teardown(ctx) -> list[Step]:
    gw = gateway(ctx)
    account = _checked_account(ctx, gw)
    key = record_key(ctx, gw, account)
    _refuse_during_migration(key)
    draft = Draft(key)
    resources = desired_resources(ctx.config, account, [], teardown=True)
    profiles = {r.name: _live_profile(gw, key.recorded_name("profile", r.name))
                for r in resources if isinstance(r, InstanceProfile)}
    steps: list[Step] = []
    keep: dict[str, str | None] = {}
    for name, live in profiles.items():
        association_steps, keep[name] = _plan_associations_teardown(ctx, gw, account, live, draft)
        steps += association_steps
    # A profile that is not deleted keeps its role (taking the role out would break its instances).
    kept_profiles = {iam_key(n) for n, live in profiles.items() if live is not None and (keep[n] or not (
        ctx.force or claim(draft, "profile", n, live["InstanceProfile"]).ours))}
    own_profiles = {iam_key(n) for n in profiles} - kept_profiles
    # What the record names that the configuration does not (a removed tenant's, a renamed role): first.
    configured_roles = {iam_key(r.name) for r in resources if isinstance(r, Role)} | {iam_key(ctx.config.node_role)}
    configured_policies = {iam_key(r.name) for r in resources if isinstance(r, ManagedPolicy)}
    steps += _plan_removed(ctx, gw, account, draft, configured_roles, configured_policies, teardown=True,
                           own_profiles=own_profiles, kept_profiles=kept_profiles)
    roles_deleted: set[str] = set()
    for resource in reversed(resources):
        if isinstance(resource, Role):
            role_steps = _plan_role_teardown(ctx, gw, resource, draft, own_profiles, kept_profiles)
            if role_steps and role_steps[-1].action == DELETE:
                roles_deleted.add(iam_key(resource.name))
            steps += role_steps
        elif isinstance(resource, ManagedPolicy):
            # Each policy comes after its roles in this reversed walk; their detach steps run first.
            steps += _plan_policy_teardown(ctx, gw, account, resource, draft, roles_deleted)
        elif isinstance(resource, InstanceProfile):
            steps += _plan_profile_teardown(ctx, gw, resource, profiles[resource.name], keep[resource.name], draft)
    return steps + _key_teardown(ctx, key, draft)


def _key_teardown(ctx, key: RecordKey, draft: Draft) -> list[Step]:
    """The key goes last, only when rbacbridge made it and nothing the record names is left."""
    if not key.exists:
        return []
    if key.pinned:
        return [Step(SYSTEM, LEFT_ALONE, "kms-key", key.ref, f"keep KMS key {key.ref} (record.kms_key)",
                     "a pinned key is never deleted by rbacbridge; this install's record stays in its tags")]
    if draft.kept:
        return [Step(SYSTEM, LEFT_ALONE, "kms-key", key.alias, f"keep KMS key {key.alias}: its record names what teardown leaves",
                     f"{', '.join(draft.kept)} (see above)")]
    if key.state != "PendingDeletion" and not key.created_by_rbacbridge:
        return [Step(SYSTEM, LEFT_ALONE, "kms-key", key.alias, f"keep KMS key {key.arn} behind alias {key.alias}",
                     f"it lacks the tags setup gives the key it creates ({MANAGED_BY_KEY}={MANAGED_BY_VALUE}, {INSTALL_TAG}={key.install})")]
    schedule = key.state != "PendingDeletion"
    return [Step(SYSTEM, DELETE, "kms-key", key.alias,
                 (f"schedule deletion of KMS key {key.arn} in {DELETION_WINDOW_DAYS} days, then " if schedule else "")
                 + f"delete its alias {key.alias}",
                 "teardown's last step: nothing this install's record names is left" if schedule
                 else "the key is already pending deletion (an interrupted teardown)", key.delete)]
