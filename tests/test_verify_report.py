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
from rbacbridge.sandbox import sandbox_matrix
from tests.fixtures_verify import ACCOUNT, fresh_state, moto_url  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def results(moto_url):
    url = moto_url
    config = fresh_state(url)
    return sandbox_matrix(url, config, ACCOUNT, "after"), sandbox_matrix(url, config, ACCOUNT, "after", fault="iptables")


def test_junit_parses_with_one_testcase_per_cell(results):
    good, bad = results
    for result in (good, bad):
        root = ET.fromstring(report.to_junit(result))
        assert root.tag == "testsuites"
        suites = root.findall("testsuite")
        assert len(suites) == 3
        cases = root.findall("testsuite/testcase")
        assert len(cases) == 15 == int(root.get("tests"))
        assert sum(int(s.get("tests")) for s in suites) == 15
        failures = root.findall("testsuite/testcase/failure")
        assert len(failures) == len(result.mismatches) == int(root.get("failures"))
    failures = ET.fromstring(report.to_junit(bad)).findall("testsuite/testcase/failure")
    assert {f.get("type") for f in failures} == {"interception"}
    assert all("node role" in f.get("message") for f in failures)


def test_json_matches_the_documented_schema(results):
    good, bad = results
    for result in (good, bad):
        document = json.loads(report.to_json(result))
        jsonschema.validate(document, report.JSON_SCHEMA)
        assert document["schema"] == "rbacbridge.verify/v1"
        assert document["summary"]["cells"] == 15
    document = json.loads(report.to_json(bad))
    assert document["ok"] is False and document["summary"]["mismatched"] == 3
    annotated = next(p for p in document["principals"] if p["name"] == "nginx-annotated")
    assert annotated["observed_role"] == "nettech-s3-read-only" and annotated["expected_role"] == "nettech-s3-read-write"
    # the schema documented in docs/verify.md is the one in the code
    docs = (ROOT / "docs" / "verify.md").read_text()
    block = docs.split("```json schema")[1].split("```")[0]
    assert json.loads(block) == json.loads(json.dumps(report.JSON_SCHEMA))


def test_table_marks_cells_and_names_the_layer(results, monkeypatch):
    from rich.console import Console

    _, bad = results
    buffer = io.StringIO()
    monkeypatch.setattr("rbacbridge.output.console", lambda stderr=False: Console(file=buffer, width=200, color_system=None))
    report.print_table(bad)
    text = buffer.getvalue()
    assert "✗" in text and "✓" in text and "interception" in text
    assert "assumed-role/nettech-s3-read-only" in text
    assert "3 mismatch(es)" in text


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "rbacbridge", "verify", *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("args", [["--stage", "later"], ["-o", "xml"], ["--probe", "sidecar"], ["--node", "bad host!"],
                                  ["--host-ip", "not-an-ip"], ["--region", "mars"], ["--account-id", "12"]])
def test_bad_input_is_one_line_and_exit_2(args):
    done = run_cli(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
