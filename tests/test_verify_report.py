"""Output of a real sandbox verification: JUnit XML, JSON schema, table; CLI exit codes."""

import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from rbacbridge import report
from rbacbridge import verify as v
from rbacbridge.sandbox import sandbox_matrix
from tests.fixtures_verify import ACCOUNT, fresh_state, moto_url  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


SCHEMA_FILE = ROOT / "docs" / "verify-schema.json"
CELLS = 3 * 5 + 2 * 3  # identity + read/write x 2 buckets per principal; a chain cell per managed role per pod


# The module fixture is built once: every test here runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_verify_report")


@pytest.fixture(scope="module")
def results(moto_url):
    url = moto_url
    config = fresh_state(url)
    good = sandbox_matrix(url, config, ACCOUNT, "after")
    bad = sandbox_matrix(url, config, ACCOUNT, "after", fault="iptables")
    # what a live run adds on top of the cells: a drift finding and a hostNetwork finding
    drifted = sandbox_matrix(url, config, ACCOUNT, "after")
    drifted.drift_checked, drifted.drift_steps = True, 12
    drifted.findings = [
        v.Finding(v.DRIFT_FINDING, "aws iam-role nettech-s3-read-write", "update: update trust policy of role nettech-s3-read-write",
                  "trust policy differs: + Allow sts:AssumeRole for AWS:arn:aws:iam::123456789012:role/x", v.TRUST),
        v.Finding(v.HOST_NETWORK_FINDING, "pod default/debug", "hostNetwork pod default/debug on node node-b bypasses kube2iam",
                  "namespace default restricts roles", v.INTERCEPTION, node="node-b")]
    return good, bad, drifted


def test_junit_parses_with_one_testcase_per_cell_and_finding(results):
    good, bad, drifted = results
    for result in (good, bad, drifted):
        root = ET.fromstring(report.to_junit(result))
        assert root.tag == "testsuites"
        cases = root.findall("testsuite/testcase")
        # every cell, the drift check (one case, or one per difference), the other findings
        assert len(cases) == CELLS + 1 + (1 if result is drifted else 0) == int(root.get("tests"))
        assert sum(int(s.get("tests")) for s in root.findall("testsuite")) == len(cases)
        failures = root.findall("testsuite/testcase/failure")
        assert len(failures) == len(result.mismatches) + len(result.findings) == int(root.get("failures"))
    failures = ET.fromstring(report.to_junit(bad)).findall("testsuite/testcase/failure")
    assert {f.get("type") for f in failures} == {"interception", "escalation"}
    assert all("node role" in f.get("message") for f in failures if f.get("type") == "interception")
    assert any("→ sts:AssumeRole → nettech-s3-read-write" in f.get("message") for f in failures if f.get("type") == "escalation")
    skipped = ET.fromstring(report.to_junit(good)).findall("testsuite/testcase/skipped")
    assert [s.get("message") for s in skipped] == ["--no-drift-check"]  # the sandbox has no cluster to compare
    drift = ET.fromstring(report.to_junit(drifted)).findall("testsuite/testcase/failure")
    assert {f.get("type") for f in drift} == {"trust", "interception"}


def test_json_matches_the_schema_file(results):
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema == json.loads(json.dumps(report.JSON_SCHEMA))  # docs/verify-schema.json is the one in the code
    jsonschema.Draft202012Validator.check_schema(schema)
    good, bad, drifted = results
    for result in (good, bad, drifted):
        document = json.loads(report.to_json(result))
        jsonschema.validate(document, schema)
        assert document["schema"] == "rbacbridge.verify/v7"
        assert document["summary"]["cells"] == CELLS
    document = json.loads(report.to_json(bad))
    assert document["ok"] is False and document["exit_code"] == 1 and document["summary"]["mismatched"] == 5
    annotated = next(p for p in report.principals_of(document) if p["name"] == "nginx-annotated")
    assert annotated["observed_role"] == "nettech-s3-read-only" and annotated["expected_role"] == "nettech-s3-read-write"
    chain = next(c for c in annotated["cells"] if c["check"] == "chain" and c["target"] == "nettech-s3-read-write")
    assert chain["expected"] is False and chain["observed"] is True and chain["blame"]["layer"] == "escalation"
    document = json.loads(report.to_json(drifted))
    assert document["ok"] is False and document["exit_code"] == 1 and document["summary"]["mismatched"] == 0
    assert document["drift"] == {"checked": True, "steps": 12, "differences": 1}
    assert [f["kind"] for f in document["findings"]] == ["drift", "hostNetwork"]
    with pytest.raises(jsonschema.ValidationError):  # the schema is strict: a v2 document does not pass
        jsonschema.validate(dict(json.loads(report.to_json(good)), schema="rbacbridge.verify/v2"), schema)
    v3 = json.loads(report.to_json(good))  # nor a v3 one (issue 28 added the tenants' verified and unverified)
    v3["schema"] = "rbacbridge.verify/v3"
    for tenant in v3["tenants"]:
        del tenant["verified"], tenant["unverified"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(v3, schema)


def _table(result, monkeypatch, capsys, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    report.print_table(result)
    return capsys.readouterr().out


@pytest.mark.parametrize("columns", [80, 100])
def test_table_fits_the_columns_and_names_the_layer(results, monkeypatch, capsys, columns):
    _, bad, drifted = results
    text = _table(bad, monkeypatch, capsys, columns)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= columns
    assert "✗" in text and "✓" in text and "interception" in text and "escalation" in text
    matrix = lines[:next(i for i, line in enumerate(lines) if line.startswith("assume-role:"))]
    for name in ("host", "nginx-vanilla", "nginx-annotated", "nettech-helm-test", "lanre.k8s.dev"):
        assert any(name in line.split() for line in matrix), name  # whole, never broken mid-word
    assert "assumed-role/nettech-s3-read-only" in text.replace("\n", "")
    assert "21 checks, 5 mismatch(es)" in text
    text = _table(drifted, monkeypatch, capsys, columns)
    assert max(len(line) for line in text.splitlines()) <= columns
    assert "drift check: 12 planned steps compared, 1 differ" in text and "hostNetwork pod default/debug" in text


def test_table_width_follows_columns_when_piped():
    """The real command's renderer in a subprocess whose stdout is a pipe: COLUMNS decides, else 80."""
    code = ("import sys; from rbacbridge import report; from rbacbridge.verify import *; "
            "r = VerifyResult('after', '123456789012', 'us-east-1', 'n', ['nettech-helm-test', 'lanre.k8s.dev'], [], "
            "roles={'pod': 'nettech-s3-read-write'}, notes=['a long note ' * 12]); "
            "report.print_table(r)")
    for columns, limit in (("", 80), ("60", 60), ("200", 200)):
        env = {k: val for k, val in os.environ.items() if k != "COLUMNS"}
        env.update(PYTHONPATH=str(ROOT), **({"COLUMNS": columns} if columns else {}))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        widths = [len(line) for line in done.stdout.splitlines()]
        assert max(widths) <= limit
        assert (max(widths) > 80) == (limit == 200)  # wide when allowed: the notes line is not cut at 80


def test_github_actions_annotations_and_job_summary(results, tmp_path):
    _, bad, drifted = results
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    stream = io.StringIO()
    report.github_output(bad, {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}, stream)
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(bad.mismatches) == 5
    assert all(line.startswith("::error title=rbacbridge verify%3A nginx-annotated ") for line in lines)
    identity = next(line for line in lines if line.startswith("::error title=rbacbridge verify%3A nginx-annotated identity::"))
    assert "[interception]" in identity and "\n" not in identity
    assert any("chain nettech-s3-read-write::[escalation] nginx-annotated → nettech-s3-read-only → sts:AssumeRole" in line
               for line in lines)
    markdown = summary.read_text()
    assert markdown.startswith("earlier step\n### rbacbridge verify (after kube2iam): 21 checks, 5 mismatch(es)")
    assert "| principal | identity | bucket | read | write |" in markdown and "| nginx-annotated | ✗ nettech-s3-read-only |" in markdown
    assert "- **nginx-annotated chain nettech-s3-read-write**: [escalation]" in markdown
    # findings are annotated too; outside GitHub Actions nothing is written
    stream = io.StringIO()
    report.github_output(drifted, {"GITHUB_ACTIONS": "true"}, stream)
    assert stream.getvalue().splitlines() == [
        "::error title=rbacbridge verify%3A drift aws iam-role nettech-s3-read-write::[trust] update: update trust policy of "
        "role nettech-s3-read-write (trust policy differs: + Allow sts:AssumeRole for AWS:arn:aws:iam::123456789012:role/x)",
        "::error title=rbacbridge verify%3A hostNetwork pod default/debug::[interception] hostNetwork pod default/debug on node "
        "node-b bypasses kube2iam (namespace default restricts roles)"]
    stream = io.StringIO()
    report.github_output(bad, {}, stream)
    assert stream.getvalue() == ""


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "rbacbridge", "verify", *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("args", [["--stage", "later"], ["-o", "xml"], ["--probe", "sidecar"], ["--node", "bad host!"],
                                  ["--host-ip", "not-an-ip"], ["--region", "mars"], ["--account-id", "12"],
                                  ["--tenant", "client-z"]])
def test_bad_input_is_one_line_and_exit_2(args):
    done = run_cli(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
