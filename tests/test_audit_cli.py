"""`rbacbridge audit` as users run it: exit codes, JSON schema, 80-column table, JUnit."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import jsonschema
import pytest

from rbacbridge.audit.findings import KINDS
from rbacbridge.audit.render import load_schema
from tests.fixtures_audit import Brownfield
from tests.fixtures_aws import moto_url, sandbox  # noqa: F401
from tests.fixtures_kube import kube_api, write_kubeconfig  # noqa: F401


@pytest.fixture
def field(kube_api, sandbox):
    return Brownfield(kube_api, sandbox).build()


def audit(field: Brownfield, *args: str, kubeconfig: str | None = None, columns: str = "200") -> subprocess.CompletedProcess:
    # These judge the cluster and AWS: nodes `--via ssh` with no node given are not audited (a note). The
    # default, --via auto, reads them through Kubernetes: tests/test_nodes_via_kube.py.
    via = [] if "--via" in args else ["--via", "ssh"]
    argv = [sys.executable, "-m", "rbacbridge", "audit", "--kubeconfig", kubeconfig or field.kube_api.kubeconfig, *via, *args]
    env = dict(field.sandbox.env(), COLUMNS=columns)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


def test_clean_brownfield_exits_0_and_the_table_fits_80_columns(field):
    run = audit(field, columns="80")
    assert run.returncode == 0, run.stderr
    assert "kube2iam-daemonset" in run.stdout and "pass" in run.stdout
    assert max(len(line) for line in run.stdout.splitlines()) <= 80
    assert {r.method for r in field.store.requests} == {"GET"}


def test_high_findings_exit_1_and_json_follows_the_v1_schema(field):
    field.plant_auto_discover()
    field.plant_typo_trust()
    field.plant_debug()
    run = audit(field, "-o", "json")
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    jsonschema.validate(report, load_schema())
    assert report["schema"] == "rbacbridge.audit/v1" and report["ok"] is False and report["exit_code"] == 1
    assert {f["id"] for f in report["findings"]} == {"kube2iam-daemonset", "default-role-escalation",
                                                     "default-role-self-trust", "pod-role-untrusted", "debug-enabled"}
    assert report["findings"][0]["severity"] == "high"  # worst first
    assert report["summary"] == {"high": 3, "medium": 1, "low": 0, "info": 1}


def test_table_with_findings_still_fits_80_columns(field):
    field.plant_typo_trust()
    field.plant_tainted_node()
    field.plant_second_interceptor()
    run = audit(field, columns="80")
    assert run.returncode == 1
    assert max(len(line) for line in run.stdout.splitlines()) <= 80
    wide = audit(field, columns="200")  # COLUMNS is honoured; the table stops at 120 (rbacbridge.audit.render)
    assert 80 < max(len(line) for line in wide.stdout.splitlines()) <= 120
    assert "FAIL" in run.stdout


def test_fail_on_sets_the_threshold(field):
    field.plant_debug()  # medium
    assert audit(field).returncode == 0
    assert audit(field, "--fail-on", "medium").returncode == 1
    assert audit(field, "--fail-on", "low", "-o", "json").returncode == 1


def test_junit_has_a_testcase_per_finding_kind(field, tmp_path):
    field.plant_typo_trust()
    junit_file = tmp_path / "audit.xml"
    run = audit(field, "-o", "junit", "--junit-file", str(junit_file))
    assert run.returncode == 1
    assert junit_file.read_text() == run.stdout
    root = ET.fromstring(run.stdout)
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {k.id for k in KINDS} | {"audit-complete"}
    assert cases["pod-role-untrusted"].find("failure") is not None
    assert cases["debug-enabled"].find("failure") is None
    assert cases["iptables-stale"].find("skipped") is not None  # nodes not audited: --via ssh and no SSH options
    assert root.get("failures") == "1"


@pytest.mark.parametrize("args,words", [
    (["--fail-on", "critical"], "--fail-on"),
    (["-o", "yaml"], "--output"),
    (["--only", "aws"], "needs a config"),
    (["--only", "nodes"], "--node"),
    (["--only", "dns"], "--only"),
])
def test_bad_input_is_one_line_and_exit_2(field, args, words):
    run = audit(field, *args)
    assert run.returncode == 2, run.stderr
    assert run.stdout == "" and len(run.stderr.strip().splitlines()) == 1 and words in run.stderr
    assert field.store.requests == []


def test_an_unreachable_cluster_makes_the_audit_incomplete_exit_3(field, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = write_kubeconfig(tmp_path / "dead", {"dead": f"http://127.0.0.1:{port}"}, current="dead")
    run = audit(field, "-o", "json", kubeconfig=str(dead))
    assert run.returncode == 3, run.stderr
    report = json.loads(run.stdout)
    jsonschema.validate(report, load_schema())
    assert report["complete"] is False and report["errors"][0].startswith("kube: cannot reach")


def test_no_aws_credentials_is_bad_input_that_points_at_only_kube(field):
    argv = [sys.executable, "-m", "rbacbridge", "audit", "--kubeconfig", field.kube_api.kubeconfig]
    env = {k: v for k, v in field.sandbox.env().items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 2 and "no AWS credentials" in run.stderr and "--only kube,nodes" in run.stderr
    run = subprocess.run(argv + ["--only", "kube"], capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    assert "aws part is not selected" in " ".join(run.stdout.split())


def test_only_aws_with_a_config_file_audits_what_it_names(field, tmp_path):
    config = tmp_path / "rbacbridge.yaml"
    config.write_text("iam:\n  node_role: k8s-node\n  pod_role: app-role\nkube2iam:\n  default_role: auto\n")
    run = audit(field, "--only", "aws", "-c", str(config), "-o", "json")
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    assert {f["id"] for f in report["findings"]} == {"default-role-escalation", "default-role-self-trust"}
    assert report["findings"][0]["objects"][0] == "config kube2iam.default_role"
    assert field.store.requests == []
