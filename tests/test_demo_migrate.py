"""`rbacbridge demo --scenario migrate` (issue 26): the article's setup, then dual -> cutover -> finish in the sandbox
(moto, server mode, IAM enforced) with the matrix after each compared with the baseline, and a rollback. The
state left in moto is asserted after each phase; a wrong trust makes the comparison fail."""

from __future__ import annotations

import json

import boto3
import pytest

from rbacbridge import verify as v
from rbacbridge import demo_migrate as ms
from rbacbridge.report import to_json
from rbacbridge.sandbox import _bootstrap_admin, _client, sandbox_matrix
from rbacbridge.verify.migration import apply_baseline
from tests.fixtures_verify import ACCOUNT, DUMMY, moto_url, sandbox  # noqa: F401
from tests.test_demo import _demo


def _iam(url):
    return boto3.client("iam", endpoint_url=url, region_name="us-east-1", **DUMMY)


def _trusts(url, roles):
    iam = _iam(url)
    return {r: iam.get_role(RoleName=r)["Role"]["AssumeRolePolicyDocument"] for r in roles}


def _providers(url):
    return [p["Arn"] for p in _iam(url).list_open_id_connect_providers()["OpenIDConnectProviderList"]]


def test_the_demo_migrates_with_the_same_cells_and_back():
    result = _demo("--scenario", "migrate")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for title in ("migrate apply --phase dual", "migrate apply --phase cutover", "migrate apply --phase finish",
                  "migrate rollback"):
        assert title in out
    summaries = [line.strip() for line in out.splitlines() if "cells compared with the baseline:" in line
                 and not line.startswith("note:")]
    assert summaries == ["21 cells compared with the baseline: 0 changed, 0 identities served by another path",
                         "21 cells compared with the baseline: 0 changed, 2 identities served by another path",
                         "21 cells compared with the baseline: 0 changed, 2 identities served by another path",
                         "21 cells compared with the baseline: 0 changed, 0 identities served by another path"]
    assert "nginx-annotated        nettech-s3-read-write    web-identity" in out
    assert "delete IAM OIDC provider" in out and "rbacbridge-owned resources left: 0" in out


def test_json_and_a_fault_flag_that_does_not_apply():
    result = _demo("--scenario", "migrate", "-o", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert document["ok"] is True and document["scenario"] == "migrate"
    after = document["after"]["verify"]
    assert after["baseline"]["changed"] == 0 and after["baseline"]["compared"] == 21
    refused = _demo("--scenario", "migrate", "--break", "trust")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        "error: --break plants a fault in the article's matrix; it does not combine with --scenario migrate")


def test_each_phase_leaves_moto_as_it_says_and_rollback_restores_the_exact_documents(sandbox):
    url, config = sandbox
    roles = [config.pod_role, config.effective_default_role]
    original = _trusts(url, roles)
    m = ms.plan_sandbox_migration(config, ACCOUNT)
    iam = _client("iam", url, config.region, _bootstrap_admin(url, config.region))
    node_arn = config.role_arn(ACCOUNT, config.node_role)

    ms.apply_dual(iam, m)
    assert _providers(url) == [m.paths.provider]
    for role, document in _trusts(url, roles).items():
        principals = [s.get("Principal") for s in document["Statement"]]
        assert {"AWS": node_arn} in principals or {"AWS": [node_arn]} in principals  # kube2iam's path stays
        assert {"Federated": m.paths.provider} in principals
    ms.apply_cutover(m)
    ms.apply_finish(iam, m)
    for document in _trusts(url, roles).values():
        assert all(s["Principal"] == {"Federated": m.paths.provider} for s in document["Statement"])
    steps = ms.rollback(iam, m)
    assert [phase for phase, _ in steps] == ["finish", "cutover", "dual"]
    assert _trusts(url, roles) == original and _providers(url) == []


def test_a_trust_for_the_wrong_service_account_fails_the_cutover_on_migration(sandbox):
    url, config = sandbox
    baseline = json.loads(to_json(sandbox_matrix(url, config, ACCOUNT, "after")))
    m = ms.plan_sandbox_migration(config, ACCOUNT)
    m.pairs[config.pod_role] = [(config.namespace, "someone-else")]  # dual trusts another ServiceAccount
    iam = _client("iam", url, config.region, _bootstrap_admin(url, config.region))
    ms.apply_dual(iam, m)
    ms.apply_cutover(m)
    result = sandbox_matrix(url, config, ACCOUNT, "after", paths=m.paths)
    counts = apply_baseline(result, baseline)
    identity = next(p.identity for p in result.principals if p.principal.name == v.ANNOTATED)
    assert identity.observed is None and identity.blame.layer == v.MIGRATION
    assert "lost access since the baseline: role nettech-s3-read-write before, no credentials now" in identity.blame.message
    assert counts["lost"] >= 1 and result.exit_code == 1
    vanilla = next(p.identity for p in result.principals if p.principal.name == v.VANILLA)
    assert vanilla.match and vanilla.source == "web-identity"  # the other role's trust was right
    ms.rollback(iam, m)


@pytest.mark.parametrize("change, trusted", [
    (None, True),
    ({"sub": "system:serviceaccount:default:other"}, False),
    ({"aud": "sts.example.com"}, False),
    ({"operator": "StringLike"}, False),
    ({"Effect": "Deny"}, False),
    ({"Action": "sts:AssumeRole"}, False),
    ({"provider": "arn:aws:iam::123456789012:oidc-provider/elsewhere.invalid"}, False),
])
def test_the_sandboxs_web_identity_trust_check(change, trusted):
    issuer, provider = ms.SANDBOX_ISSUER, f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.sandbox.rbacbridge.invalid/id/DEMO"
    host = "oidc.sandbox.rbacbridge.invalid/id/DEMO"
    change = change or {}
    statement = {"Effect": change.get("Effect", "Allow"), "Principal": {"Federated": change.get("provider", provider)},
                 "Action": change.get("Action", "sts:AssumeRoleWithWebIdentity"),
                 "Condition": {change.get("operator", "StringEquals"): {
                     f"{host}:sub": change.get("sub", "system:serviceaccount:default:app"),
                     f"{host}:aud": change.get("aud", "sts.amazonaws.com")}}}
    trust = {"Version": "2012-10-17", "Statement": [statement]}
    assert ms.web_identity_trusted(trust, provider, issuer, "system:serviceaccount:default:app") is trusted
