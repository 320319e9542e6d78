"""The AWS part: IAM policies, roles, the instance profile and its association with the nodes, and the
signed record that says which of them are this install's.

Desired resources are small models built from the configuration (article steps 1-7); the planners
compare each with live state and return steps; teardown walks the same list backwards. The planner
(`rbacbridge.planner`) uses `plan_setup`, `plan_teardown` and `execute` from here.

Modules, each importing only modules listed above it (no cycle):

- `client`           AwsGateway (boto3 clients, one-line errors), the region, retries, paging
- `documents`        policy documents: compared as facts, their difference in words, decoded, read live
- `record`           the signed record: its content, format and verification (docs/ownership.md)
- `record_store`     the install's KMS key that holds the record (RecordKey) and a run's changes (Draft)
- `unsigned_records` what versions before the signed record left: only ever quoted
- `resources`        the desired resources (ManagedPolicy, Role, InstanceProfile, ProfileAssociation)
- `ownership`        whether a live resource is this install's (claim), conflicts and adoption
- `permission_set`   a managed role holds exactly what setup attaches: the rest is drift
- `iam`              setup's plan for each policy, role and the instance profile
- `instances`        the worker instances and what their metadata options mean for kube2iam
- `associations`     the profile's associations: made on setup, given back on teardown
- `iam_teardown`     deleting one role, policy or instance profile
- `removed`          what the record names that the configuration no longer has (a removed tenant's)
- `setup`            plan_setup: the order of the AWS part of a setup
- `teardown`         plan_teardown: the same walked backwards, the KMS key last
- `executor`         execute: plan order, associations through a bounded pool

Names with a leading underscore are shared between these modules only. This module re-exports what
the rest of rbacbridge and the tests use, so `from rbacbridge.aws import desired_resources` works.
"""

from rbacbridge.aws.associations import ASSOCIATED_STATES
from rbacbridge.aws.client import (ASSOCIATION_WORKERS, DEFAULT_REGION, RETRY_MODES, AwsError, AwsGateway,
                                   check_environment, gateway, resolve_region, retry_eventual_consistency)
from rbacbridge.aws.documents import _decode, describe_difference, documents_equal, live_documents
from rbacbridge.aws.executor import execute
from rbacbridge.aws.instances import instance_ids, metadata_finding
from rbacbridge.aws.ownership import KINDS, Claim, claim
from rbacbridge.aws.record_store import record_key
from rbacbridge.aws.resources import (OWNED_TAG, SYSTEM, TENANT_TAG, InstanceProfile, ManagedPolicy, ProfileAssociation, Role,
                                      assumable_role_arns, desired_resources, resource_tags, tenant_policy_document,
                                      tenant_resources)
from rbacbridge.aws.setup import plan_setup
from rbacbridge.aws.teardown import plan_teardown
from rbacbridge.aws.unsigned_records import NO_PREVIOUS_PROFILE, PREVIOUS_PROFILE_TAG

__all__ = [
    "ASSOCIATED_STATES", "ASSOCIATION_WORKERS", "DEFAULT_REGION", "KINDS", "NO_PREVIOUS_PROFILE", "OWNED_TAG",
    "PREVIOUS_PROFILE_TAG", "RETRY_MODES", "SYSTEM", "TENANT_TAG", "AwsError", "AwsGateway", "Claim", "InstanceProfile",
    "ManagedPolicy", "ProfileAssociation", "Role", "_decode", "assumable_role_arns", "check_environment", "claim",
    "describe_difference", "desired_resources", "documents_equal", "execute", "gateway", "instance_ids", "live_documents",
    "metadata_finding", "plan_setup", "plan_teardown", "record_key", "resolve_region", "resource_tags",
    "retry_eventual_consistency", "tenant_policy_document", "tenant_resources",
]
