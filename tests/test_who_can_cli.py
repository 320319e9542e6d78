"""`rbacbridge audit --who-can` as users run it: SARIF 2.1.0 valid against the OASIS schema (shipped in
tests/schemas/, see its README), the same exit code in every format, JSON valid against audit's schema,
and nothing written: the API server's log and moto's recorder show no mutating call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from rbacbridge.audit.render import load_schema
from tests.fixtures_audit import trust
from tests.fixtures_aws import moto_url, recorded_actions, sandbox  # noqa: F401
from tests.fixtures_kube import kube_api  # noqa: F401
from tests.fixtures_who_can import Tenants, arn

SARIF_SCHEMA = Path(__file__).with_name("schemas") / "sarif-schema-2.1.0.json"


@pytest.fixture
def cluster(kube_api, sandbox):
    return Tenants(kube_api, sandbox).build()


def audit(cluster: Tenants, *args: str, cwd: str | None = None, columns: str = "200") -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "rbacbridge", "audit", "--kubeconfig", cluster.kube_api.kubeconfig, "--only", "aws,kube", *args]
    env = dict(cluster.sandbox.env(), COLUMNS=columns)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL, cwd=cwd)


def sarif_of(run: subprocess.CompletedProcess) -> dict:
    report = json.loads(run.stdout)
    jsonschema.Draft4Validator(json.loads(SARIF_SCHEMA.read_text())).validate(report)
    return report


def test_sarif_is_valid_and_code_scanning_ready(cluster, tmp_path):
    (tmp_path / "rbacbridge.yaml").write_text(Path(cluster.config_file(tmp_path)).read_text())
    run = audit(cluster, "--who-can", "-c", "rbacbridge.yaml", "-o", "sarif", cwd=str(tmp_path))
    assert run.returncode == 1, run.stderr
    report = sarif_of(run)
    assert report["version"] == "2.1.0"
    (sarif_run,) = report["runs"]
    driver = sarif_run["tool"]["driver"]
    assert driver["name"] == "rbacbridge"
    rules = driver["rules"]
    assert all(float(r["properties"]["security-severity"]) >= 0 for r in rules) and len({r["id"] for r in rules}) == len(rules)
    results = sarif_run["results"]
    ids = sorted(r["ruleId"] for r in results)
    assert ids == sorted(["kube2iam-daemonset", "allowed-roles-absent", "allowed-roles-broader-than-config",
                          "hostnetwork-admitted-in-tenant-namespace", "who-can-chain-other-tenant-role",
                          "who-can-edit-allowed-roles", "who-can-node-role", "who-can-node-role",
                          "who-can-other-tenant-role", "who-can-other-tenant-role"])
    for result in results:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["locations"][0]["logicalLocations"][0]["fullyQualifiedName"]
        assert result["locations"][0]["physicalLocation"]["artifactLocation"] == {"uri": "rbacbridge.yaml", "uriBaseId": "%SRCROOT%"}
    bob = next(r for r in results if r["ruleId"] == "who-can-edit-allowed-roles")
    assert bob["level"] == "error"
    assert bob["locations"][0]["logicalLocations"] == [
        {"name": "bob", "fullyQualifiedName": "User bob", "kind": "member"},
        {"name": "tenant-b", "fullyQualifiedName": "Namespace tenant-b", "kind": "namespace"}]
    prints = [r["partialFingerprints"]["rbacbridgeFinding/v1"] for r in results]
    assert len(set(prints)) == len(prints)
    assert sarif_run["invocations"][0]["exitCode"] == 1 and sarif_run["invocations"][0]["executionSuccessful"] is True
    # a second run: the same findings keep their identity; a finding's extra object does not change it
    cluster.iam.create_role(RoleName="alpha-extra", AssumeRolePolicyDocument=trust(arn("nobody")))
    again = sarif_of(audit(cluster, "--who-can", "-c", "rbacbridge.yaml", "-o", "sarif", cwd=str(tmp_path)))
    by_rule = {(r["ruleId"], r["locations"][0]["logicalLocations"][0]["fullyQualifiedName"]): r["partialFingerprints"]
               for r in again["runs"][0]["results"]}
    broader = next(r for r in again["runs"][0]["results"] if r["ruleId"] == "allowed-roles-broader-than-config")
    assert [o for o in broader["properties"]["objects"]] == ["Namespace tenant-a", "Role alpha-etl", "Role alpha-extra"]
    assert by_rule == {(r["ruleId"], r["locations"][0]["logicalLocations"][0]["fullyQualifiedName"]): r["partialFingerprints"]
                       for r in results}


def test_exit_code_is_the_same_in_every_format(cluster, tmp_path):
    config = cluster.config_file(tmp_path)
    codes = {fmt: audit(cluster, "--who-can", "-c", config, "-o", fmt).returncode for fmt in ("table", "json", "junit", "sarif")}
    assert codes == {"table": 1, "json": 1, "junit": 1, "sarif": 1}
    cluster.store.put({**cluster.store.get("Namespace", "tenant-b"),
                       "metadata": {**cluster.store.get("Namespace", "tenant-b")["metadata"],
                                    "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}})
    for name in ("ns-admin", "ci"):
        cluster.store.delete("RoleBinding", name, "tenant-b")
    cluster.store.delete("RoleBinding", "devs", "tenant-a")
    cluster.store.delete("RoleBinding", "ci", "tenant-a")
    cluster.iam.update_assume_role_policy(RoleName="alpha-etl", PolicyDocument=trust(arn("nobody")))
    # what is left: tenant-a's broad glob (high) and carol's sandbox without allowed-roles (low)
    codes = {fmt: audit(cluster, "--who-can", "-c", config, "-o", fmt).returncode for fmt in ("table", "json", "sarif")}
    assert codes == {"table": 1, "json": 1, "sarif": 1}
    cluster.store.put({**cluster.store.get("Namespace", "tenant-a"),
                       "metadata": {**cluster.store.get("Namespace", "tenant-a")["metadata"],
                                    "annotations": {"iam.amazonaws.com/allowed-roles": '["alpha-app"]'}}})
    codes = {fmt: audit(cluster, "--who-can", "-c", config, "-o", fmt).returncode for fmt in ("table", "json", "sarif")}
    assert codes == {"table": 0, "json": 0, "sarif": 0}
    low = {fmt: audit(cluster, "--who-can", "-c", config, "-o", fmt, "--fail-on", "low").returncode for fmt in ("table", "sarif")}
    assert low == {"table": 1, "sarif": 1}


def test_json_follows_the_schema_and_the_table_fits(cluster, tmp_path):
    config = cluster.config_file(tmp_path)
    run = audit(cluster, "--who-can", "-c", config, "-o", "json")
    report = json.loads(run.stdout)
    jsonschema.validate(report, load_schema())
    assert report["schema"] == "rbacbridge.audit/v2" and report["who_can"]["schema"] == "rbacbridge.who-can/v1"
    with pytest.raises(jsonschema.ValidationError):  # a v1 report carries no who_can
        jsonschema.validate(dict(report, schema="rbacbridge.audit/v1"), load_schema())
    assert [s["subject"]["name"] for s in report["who_can"]["subjects"]] == [
        "alpha-devs", "system:masters", "ci/deployer", "bob", "carol", "root-admin"]
    table = audit(cluster, "--who-can", "-c", config, columns="80")
    assert "who can obtain which role (6 subjects)" in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) <= 80


def test_read_only(cluster, tmp_path):
    actions, run = recorded_actions(cluster.sandbox.url, tmp_path / "moto_recording", lambda: audit(
        cluster, "--who-can", "-c", cluster.config_file(tmp_path), "-o", "json"))
    assert run.returncode == 1, run.stderr
    assert actions and sorted(set(actions)) == ["DescribeInstances", "GetAccountAuthorizationDetails", "GetCallerIdentity"]
    assert {r.method for r in cluster.store.requests} == {"GET"}
    listed = sorted(r.path for r in cluster.store.requests)
    for kind in ("roles", "clusterroles", "rolebindings", "clusterrolebindings", "namespaces"):
        assert listed.count(f"/apis/rbac.authorization.k8s.io/v1/{kind}" if "role" in kind else f"/api/v1/{kind}") == 1, kind


def test_who_can_needs_the_cluster(cluster):
    run = audit(cluster, "--who-can", "--only", "aws")
    assert run.returncode == 2
    assert "--who-can needs the kube part" in run.stderr
