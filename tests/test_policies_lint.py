"""The documents rbacbridge writes pass parliament (AWS IAM linter) with no findings."""

from __future__ import annotations

import json

import pytest
from parliament import analyze_policy_string

from rbacbridge.aws import ManagedPolicy, Role, desired_resources
from rbacbridge.config import Config

CONFIGS = [Config(), Config(default_role="tenant-default"), Config(tenant_bucket="other.tenant.bucket")]


@pytest.mark.parametrize("config", CONFIGS, ids=["article", "explicit-default-role", "dotted-bucket"])
def test_identity_policies_have_no_findings(config):
    policies = [r for r in desired_resources(config, "123456789012", []) if isinstance(r, ManagedPolicy)]
    assert len(policies) == 3
    for policy in policies:
        findings = analyze_policy_string(json.dumps(policy.document)).findings
        assert [(f.issue, f.detail) for f in findings] == [], policy.name


def test_trust_policies_have_no_findings_beyond_having_no_resource():
    # Trust policies carry a Principal and no Resource by design; parliament, an identity-policy
    # linter, reports exactly that and must report nothing else.
    roles = [r for r in desired_resources(Config(), "123456789012", []) if isinstance(r, Role)]
    for role in roles:
        findings = analyze_policy_string(json.dumps(role.trust)).findings
        assert {f.detail for f in findings} <= {"Statement contains neither Resource nor NotResource"}, role.name
        for statement in role.trust["Statement"]:
            assert "*" not in json.dumps(statement["Principal"])  # no wildcard principals


def test_a_wildcard_policy_would_be_flagged():
    # the linter is live: an over-broad document does produce findings
    bad = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObjct", "Resource": "*"}]}
    assert analyze_policy_string(json.dumps(bad)).findings
