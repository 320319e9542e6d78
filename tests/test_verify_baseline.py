"""verify --baseline: every cell compared with an earlier report (a migration must change no answer, only the
path that serves the credentials), and each identity cell's credential source. Matrices are real calls against
moto (server mode, IAM enforced); pods' environments come from the test API server through the real client."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import jsonschema
import pytest

from rbacbridge import report
from rbacbridge import verify as v
from rbacbridge.config import Config
from rbacbridge.planner import Context
from rbacbridge.sandbox import sandbox_matrix
from rbacbridge.verify import credential_source as cs
from rbacbridge.verify.migration import apply_baseline, load_baseline
from tests.fixtures_kube import kube_api, write_kubeconfig  # noqa: F401
from tests.fixtures_verify import ACCOUNT, moto_url, sandbox  # noqa: F401

IRSA_ENV = [{"name": "AWS_ROLE_ARN", "value": f"arn:aws:iam::{ACCOUNT}:role/nettech-s3-read-write"},
            {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"},
            {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}]
POD_IDENTITY_ENV = [{"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"},
                    {"name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                     "value": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"}]


def _document(result) -> dict:
    document = json.loads(report.to_json(result))
    jsonschema.validate(document, report.JSON_SCHEMA)
    return document


def test_the_same_matrix_again_changes_nothing(sandbox):
    url, config = sandbox
    before = _document(sandbox_matrix(url, config, ACCOUNT, "after"))
    result = sandbox_matrix(url, config, ACCOUNT, "after")
    counts = apply_baseline(result, before)
    assert result.ok and result.exit_code == 0
    assert counts == {"compared": 21, "changed": 0, "gained": 0, "lost": 0, "source_changed": 0, "new": 0, "missing": 0}
    sources = {c.principal: c.source for c in result.all_cells if c.check == v.IDENTITY}
    assert sources == {v.HOST: cs.NODE_ROLE, v.VANILLA: cs.KUBE2IAM, v.ANNOTATED: cs.KUBE2IAM}  # the sandbox's kube2iam
    assert {c.source for c in result.all_cells if c.check != v.IDENTITY} == {None}
    document = _document(result)
    assert document["baseline"] == counts
    assert "21 cells compared with the baseline: 0 changed" in " ".join(document["notes"])


def test_a_changed_answer_fails_on_migration_even_where_the_expectation_holds(sandbox):
    """The baseline is the node role everywhere (stage before: the article before kube2iam); the current run is
    kube2iam's matrix, which matches its own expectations — only the baseline says the answers moved."""
    url, config = sandbox
    before = sandbox_matrix(url, config, ACCOUNT, "before")
    assert before.ok
    assert {c.source for c in before.all_cells if c.check == v.IDENTITY} == {cs.NODE_ROLE}
    result = sandbox_matrix(url, config, ACCOUNT, "after")
    assert result.ok  # by the configuration's expectations alone, nothing is wrong
    counts = apply_baseline(result, _document(before))
    assert result.exit_code == 1
    changed = {(c.principal, c.check, c.bucket): c for c in result.mismatches}
    assert {c.blame.layer for c in changed.values()} == {v.MIGRATION}
    # exactly the cells whose answer moto gave differently in the two runs
    expected_changes = {(c.principal, c.check, c.bucket) for c in result.all_cells
                        if _observed(before, c) not in ("absent", c.observed)}
    assert set(changed) == expected_changes and expected_changes
    # the pods' identities moved off the node role; the host keeps it
    assert {p for p, check, _ in changed if check == v.IDENTITY} == {v.ANNOTATED, v.VANILLA}
    identity = changed[(v.ANNOTATED, v.IDENTITY, None)]
    assert identity.blame.message == (f"changed since the baseline: role {config.node_role} before, "
                                      f"role {config.pod_role} now (now via kube2iam)")
    assert counts["changed"] == len(expected_changes) and counts["source_changed"] == 2
    writes = [c for c in changed.values() if c.check == v.WRITE and c.observed is True]
    assert writes and all(c.blame.message.startswith("gained access since the baseline: denied before, allowed now")
                          for c in writes)
    assert counts["gained"] == sum(1 for c in changed.values() if c.check != v.IDENTITY and c.observed is True)
    assert counts["lost"] == sum(1 for c in changed.values() if c.check != v.IDENTITY and c.observed is False)
    assert _document(result)["ok"] is False


def _observed(result, cell):
    for c in result.all_cells:
        if (c.principal, c.check, c.bucket, c.target) == (cell.principal, cell.check, cell.bucket, cell.target):
            return c.observed
    return "absent"


def test_cells_on_one_side_only_are_noted_not_passed_silently(sandbox):
    url, config = sandbox
    before = _document(sandbox_matrix(url, config, ACCOUNT, "after"))
    gone = copy.deepcopy(before)
    gone["others"] = [p for p in gone["others"] if p["name"] != v.HOST]  # the baseline lacks the host's 5 cells
    extra = next(p for p in before["others"] if p["name"] == v.VANILLA)
    gone["others"].append({**copy.deepcopy(extra), "name": "nginx-vanilla@gone-node"})
    result = sandbox_matrix(url, config, ACCOUNT, "after")
    counts = apply_baseline(result, gone)
    assert (counts["new"], counts["missing"], counts["changed"]) == (5, len(extra["cells"]), 0)
    notes = " | ".join(result.notes)
    assert "5 cell(s) not in the baseline" in notes and f"{len(extra['cells'])} cell(s) of the baseline not observed now, e.g. nginx-vanilla@gone-node identity" in notes


@pytest.mark.parametrize("env, observed, want", [
    ({}, "nettech-s3-read-write", cs.KUBE2IAM),
    ({}, "node-role", cs.NODE_ROLE),
    ({}, None, cs.NONE),
    ({e["name"]: e["value"] for e in IRSA_ENV}, "nettech-s3-read-write", cs.WEB_IDENTITY),
    ({e["name"]: e["value"] for e in POD_IDENTITY_ENV}, "nettech-s3-read-write", cs.POD_IDENTITY),
    # the SDKs look for web identity before the container endpoint: both injected -> web identity
    ({**{e["name"]: e["value"] for e in IRSA_ENV}, **{e["name"]: e["value"] for e in POD_IDENTITY_ENV}}, "r", cs.WEB_IDENTITY),
    ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://[fd00:ec2::23]/v1/credentials"}, "r", cs.POD_IDENTITY),
    ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9911/creds"}, "r", cs.CONTAINER),
    ({"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"}, "r", cs.CONTAINER),
    ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, "r", cs.ENVIRONMENT),  # from a secretKeyRef: '' here
    ({"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"}, "r", cs.KUBE2IAM),  # half a key pair: the SDK goes on looking
    ({"AWS_ROLE_ARN": "arn:aws:iam::1:role/r"}, "r", cs.KUBE2IAM),  # no token file: the SDK skips web identity
])
def test_credential_source_follows_the_sdks_order(env, observed, want):
    assert cs.credential_source(env, observed, "node-role") == want


def test_pods_environment_as_admitted_gives_each_identity_its_source(kube_api, monkeypatch, tmp_path):
    """live_targets reads each pod's credential variables from the API server (the spec as admitted); the
    identity cell's source follows from them and the observed role."""
    store = kube_api.store
    for name, env in (("nginx-annotated-1", IRSA_ENV), ("nginx-vanilla-1", POD_IDENTITY_ENV)):
        app = name.rsplit("-", 1)[0]
        store.put({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": "default",
                                "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "rbacbridge"}},
                   "spec": {"nodeName": "node-a", "containers": [{"name": "main", "image": "x", "env": env},
                                                                 {"name": "sidecar", "image": "y", "env": IRSA_ENV}]},
                   "status": {"phase": "Running", "podIP": "10.0.0.9"}})
    monkeypatch.setattr(v.live, "ensure_cli_all", lambda checks: None)  # nothing is probed here
    (tmp_path / "known_hosts").write_text("")
    config = Config(account_id=ACCOUNT, kubeconfig=kube_api.kubeconfig, known_hosts=str(tmp_path / "known_hosts"),
                    ssh_config="none")
    targets = v.live_targets(Context(config=config), v.LiveOptions(node="127.0.0.1:2222"))
    pods = {p.name: p for p, _ in targets}
    assert dict(pods[v.ANNOTATED].credential_env) == {e["name"]: e["value"] for e in IRSA_ENV if e["name"] != "AWS_STS_REGIONAL_ENDPOINTS"}
    assert dict(pods[v.VANILLA].credential_env) == {e["name"]: e["value"] for e in POD_IDENTITY_ENV}
    assert pods[v.HOST].credential_env is None
    expected = {e.principal.name: e for e in v.expected_matrix(config, ACCOUNT, "after", [p for p, _ in targets])}
    observed = [v.Observed(p, v.CallResult(True, value=f"arn:aws:sts::{ACCOUNT}:assumed-role/{expected[p.name].role}/s"),
                           f"arn:aws:sts::{ACCOUNT}:assumed-role/{expected[p.name].role}/s", expected[p.name].role,
                           {k: v.Observation(w, v.CallResult(True)) for k, w in expected[p.name].access.items()})
                for p, _ in targets]
    result = v.compare(config, ACCOUNT, "after", list(expected.values()), observed)
    sources = {c.principal: c.source for c in result.all_cells if c.check == v.IDENTITY}
    assert sources == {v.ANNOTATED: cs.WEB_IDENTITY, v.VANILLA: cs.POD_IDENTITY, v.HOST: cs.NODE_ROLE}


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rbacbridge", "verify", *args], capture_output=True, text=True, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "RBACBRIDGE_CONFIG": ""}, timeout=60)


@pytest.mark.parametrize("content, says", [
    (None, "No such file or directory"),
    ("{not json", "not JSON (Expecting property name enclosed in double quotes at line 1)"),
    ('{"schema": "rbacbridge.audit/v1"}', "not a `rbacbridge verify -o json` report (schema 'rbacbridge.audit/v1')"),
    ('{"schema": "rbacbridge.verify/v2", "tenants": [], "others": []}', "schema rbacbridge.verify/v2 is too old"),
    ('{"schema": "rbacbridge.verify/v6"}', "no tenants/others lists; not a verify report"),
    ("[]", "not a `rbacbridge verify -o json` report (no schema field)"),
])
def test_a_bad_baseline_is_one_line_and_exit_2_before_anything_is_contacted(tmp_path, content, says):
    path = tmp_path / "before.json"
    if content is not None:
        path.write_text(content)
    # the kubeconfig points nowhere reachable: exit 2 proves the baseline was refused first
    done = _cli("--baseline", str(path), "--kubeconfig", str(tmp_path / "missing-kubeconfig"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith("config:")]
    assert len(lines) == 1 and says in lines[0] and "--baseline" in lines[0], done.stderr


def test_load_baseline_accepts_a_real_report(sandbox, tmp_path):
    url, config = sandbox
    path = tmp_path / "before.json"
    path.write_text(report.to_json(sandbox_matrix(url, config, ACCOUNT, "after")))
    assert load_baseline(str(path))["schema"] == report.SCHEMA
    big = tmp_path / "big.json"
    big.write_text(" " * (4 * 1024 * 1024 + 10))
    with pytest.raises(Exception, match="larger than 4 MiB"):
        load_baseline(str(big))



def test_a_pod_whose_sdk_reads_another_path_is_probed_in_the_pod(sandbox):
    """--probe-from rbacbridge reads what the metadata path hands a pod; a pod whose admitted environment sends
    its SDK to web identity or Pod Identity first does not use those credentials, so its cells are its own calls."""
    from tests.test_verify_probe_from import Pod, run

    url, config = sandbox
    irsa = v.Principal("web@node-a", "pod", namespace=config.namespace, node="node-a", role_annotation=config.pod_role,
                       credential_env=tuple(sorted((e["name"], e["value"]) for e in IRSA_ENV[:2])))
    plain = v.Principal("plain@node-a", "pod", namespace=config.namespace, node="node-a", role_annotation=config.pod_role,
                        credential_env=())
    irsa_pod, plain_pod = Pod(url, config, config.pod_role), Pod(url, config, config.pod_role)
    result = run(url, config, [(irsa, irsa_pod), (plain, plain_pod)])
    by_name = {p.principal.name: p for p in result.principals}
    web_cells = [c for c in by_name["web@node-a"].cells if c.check in (v.READ, v.WRITE)]
    plain_cells = [c for c in by_name["plain@node-a"].cells if c.check in (v.READ, v.WRITE)]
    assert web_cells and {c.probed_from for c in web_cells} == {v.PROBED_FROM_POD}
    assert v.PROBED_FROM_RBACBRIDGE in {c.probed_from for c in plain_cells}
    assert "web@node-a: its SDK takes credentials from web-identity, not the metadata path: its cells probed in the pod" in result.notes
    assert by_name["web@node-a"].identity.source == cs.WEB_IDENTITY and by_name["plain@node-a"].identity.source == cs.KUBE2IAM
    assert result.ok
