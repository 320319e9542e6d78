"""Issue 28: verify never calls a tenant verified without evidence. A tenant (or the default role) with no running,
ready pod on a node is checked from a probe pod there (annotated with its own role); when that pod cannot run the
tenant is "not verified" (exit 3 unless --allow-unverified). The sandbox does the same for tenants without
workloads. The lab (tests/test_lab.py, the tenants scenario) runs a probe pod on node-b over the wire."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from rbacbridge import config as config_module
from rbacbridge import verify as v
from rbacbridge.planner import Context
from rbacbridge.verify.tenant_probe import TENANT_PROBE_NAME, TENANT_PROBE_PREFIX
from tests.fixtures_kube import kube_api  # noqa: F401
from tests.fixtures_verify import ACCOUNT

ROOT = Path(__file__).resolve().parent.parent
MANAGED = {"app.kubernetes.io/managed-by": "rbacbridge"}


def _env(tmp_path) -> dict[str, str]:
    env = {k: val for k, val in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG", "GITHUB_"))}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path))
    return env


def rbb(tmp_path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rbacbridge", *args], capture_output=True, text=True, env=_env(tmp_path),
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=tmp_path)


# --- the sandbox: a tenant plan, as a user writes it, fully checked -------------------------------------------

def test_demo_checks_a_tenant_without_workloads_from_a_probe_pod(tmp_path):
    path = tmp_path / "rbacbridge.yaml"
    added = rbb(tmp_path, "tenant", "add", "client-a", "--namespace", "client-a", "--write", "a-data",
                "--workload", "nginx-client-a", "-c", str(path), "--no-plan")
    assert added.returncode == 0, added.stderr
    assert "verify checks it from a short-lived probe pod" not in added.stderr  # it has a workload
    added = rbb(tmp_path, "tenant", "add", "client-x", "--namespace", "client-x", "--write", "x-data", "-c", str(path), "--no-plan")
    assert added.returncode == 0, added.stderr
    line = [ln for ln in added.stderr.splitlines() if "probe pod" in ln]
    assert line == ["tenant client-x has no --workload: verify checks it from a short-lived probe pod in namespace client-x "
                    "annotated with its role, on each node verify covers (demo -c: the same in the sandbox)"]
    demo = rbb(tmp_path, "demo", "-c", str(path), "-o", "json")
    assert demo.returncode == 0, demo.stderr[-3000:]
    document = json.loads(demo.stdout)
    after = document["after"]["verify"]
    assert after["schema"] == "rbacbridge.verify/v7"
    x = next(t for t in after["tenants"] if t["name"] == "client-x")
    (probe,) = x["principals"]
    assert (probe["name"], probe["probe_pod"], probe["namespace"], probe["configured_annotation"]) == (
        "probe-pod:client-x", True, "client-x", "client-x-s3")
    assert probe["observed_role"] == "client-x-s3" and x["ok"] and x["verified"] and x["summary"]["cells"] > 0
    cells = {(c["check"], c["bucket"] or c["target"]): c for c in probe["cells"]}
    assert cells[("write", "x-data")]["observed"] is True  # its own grant, observed by moto
    cross = [c for c in probe["cells"] if c["cross_tenant"]]
    assert cross and all(c["observed"] is False and c["match"] for c in cross)  # a-data, client-a's role, nginx-annotated's
    assert cells[("write", "a-data")]["observed"] is False and cells[("annotation", "client-a-s3")]["observed"] is False
    # the other tenants see client-x's grant denied too; every real workload is no probe pod
    others = [p for t in after["tenants"] if t["name"] != "client-x" for p in t["principals"]]
    assert others and not any(p["probe_pod"] for p in others)
    assert all(c["observed"] is False for p in others for c in p["cells"] if c["bucket"] == "x-data")
    # client-a and client-x (a new file gets only the tenants added: issue 24)
    assert after["summary"]["tenants_verified"] == len(after["tenants"]) == 2 and after["summary"]["tenants_unverified"] == 0
    assert after["ok"] and after["exit_code"] == 0 and document["ok"]
    # before kube2iam (the starting point) the probe pod holds the node role: it reaches client-a's bucket too
    assert "probe-pod:client-x" in {b["principal"] for b in document["before"]["breaches"]}


# --- the test API server: the probe pod's life, and what happens when it cannot run ---------------------------

TENANTS = [{"name": "client-a", "namespaces": ["client-a"], "role": "client-a-s3", "write": ["a-data"], "workloads": ["nginx-client-a"]},
           {"name": "client-b", "namespaces": ["client-b", "client-b-jobs"], "role": "client-b-s3", "workloads": ["nginx-client-b"]},
           {"name": "client-x", "namespaces": ["client-x"], "role": "client-x-s3", "write": ["x-data"]}]


def _config_file(tmp_path, kube_api) -> Path:  # noqa: F811
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(yaml.safe_dump({"account_id": ACCOUNT, "tenants": TENANTS,
                                    "kubernetes": {"kubeconfig": kube_api.kubeconfig}}))
    for tenant in TENANTS:
        for namespace in tenant["namespaces"]:
            kube_api.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    return path


def _tenant_probes(store) -> list[dict]:
    return [p for p in store.objects_of("Pod") if p["metadata"]["name"].startswith(TENANT_PROBE_PREFIX)]


def test_a_tenant_without_a_pod_on_a_node_gets_one_probe_pod_there_deleted_afterwards(kube_api, tmp_path, monkeypatch):  # noqa: F811
    store = kube_api.store
    config = config_module.load(str(_config_file(tmp_path, kube_api)))
    for node in ("node-a", "node-b"):
        store.add_node(node, "10.0.0.1" if node == "node-a" else "10.0.0.2")
        store.add_pod("default", f"nginx-vanilla-{node}", {"app.kubernetes.io/name": "nginx-vanilla", **MANAGED}, node=node)
        store.add_pod("client-a", f"nginx-client-a-{node}", {"app.kubernetes.io/name": "nginx-client-a", **MANAGED}, node=node)
    store.add_pod("client-b", "nginx-client-b-node-a", {"app.kubernetes.io/name": "nginx-client-b", **MANAGED}, node="node-a")
    # on node-b client-b's pod is there but not ready: it is no evidence
    store.add_pod("client-b", "nginx-client-b-node-b", {"app.kubernetes.io/name": "nginx-client-b", **MANAGED}, node="node-b",
                  ready=False)
    leftover = store.put({"apiVersion": "v1", "kind": "Pod", "metadata": {  # a killed run's probe pod: ours by label
        "name": TENANT_PROBE_PREFIX + "0ld", "namespace": "client-x",
        "labels": {**MANAGED, "app.kubernetes.io/name": TENANT_PROBE_NAME}}, "spec": {"containers": [{"name": "p", "image": "x"}]}})
    elsewhere = store.put({"apiVersion": "v1", "kind": "Pod", "metadata": {  # also where no probe pod is needed now
        "name": TENANT_PROBE_PREFIX + "0lder", "namespace": "client-a",
        "labels": {**MANAGED, "app.kubernetes.io/name": TENANT_PROBE_NAME}}, "spec": {"containers": [{"name": "p", "image": "x"}]}})
    created = []
    store.admission = lambda obj: created.append(obj) if obj["kind"] == "Pod" else None  # sees every pod created
    monkeypatch.setattr(v.live, "ensure_cli_all", lambda checks: None)  # no AWS CLI to look for: nothing is probed here
    (tmp_path / "known_hosts").write_text("")
    from dataclasses import replace

    config = replace(config, known_hosts=str(tmp_path / "known_hosts"), ssh_config="none")
    ctx = Context(config=config)
    targets = v.live_targets(ctx, v.LiveOptions(node="127.0.0.1:2222"))
    try:
        probes = {p.name: p for p, _ in targets if p.probe_pod}
        assert sorted(probes) == ["probe-pod:client-b@node-b", "probe-pod:client-x@node-a", "probe-pod:client-x@node-b"]
        # one pod per (tenant, node), in the tenant's first namespace, annotated with its own role, pinned to the node
        assert sorted((o["metadata"]["namespace"], o["metadata"]["annotations"]["iam.amazonaws.com/role"], o["spec"]["nodeName"])
                      for o in created) == [("client-b", "client-b-s3", "node-b"), ("client-x", "client-x-s3", "node-a"),
                                            ("client-x", "client-x-s3", "node-b")]
        assert all(o["metadata"]["labels"] == {**MANAGED, "app.kubernetes.io/name": TENANT_PROBE_NAME} for o in created)
        live = {p["metadata"]["name"] for p in _tenant_probes(store)}
        assert live == {p.pod for p in probes.values()} and leftover["metadata"]["name"] not in live
        assert store.get("Pod", elsewhere["metadata"]["name"], "client-a") is None
        expected = {e.principal.name: e for e in v.expected_matrix(config, ACCOUNT, "after", [p for p, _ in targets])}
        x = expected["probe-pod:client-x@node-b"]
        assert x.role == "client-x-s3" and set(x.annotations) == {"client-a-s3", "client-b-s3"}
        assert ctx.facts.get("verify.unverified", []) == []
    finally:
        for _, backend in targets:
            close = getattr(backend.runner, "close", None)
            if close:
                close()
    assert _tenant_probes(store) == []  # the API server's own view: every probe pod deleted


def test_probe_pods_refused_by_admission_tenant_not_verified_exit_3_no_pod_left(kube_api, tmp_path):  # noqa: F811
    store = kube_api.store
    path = _config_file(tmp_path, kube_api)
    store.add_node("node-a", "10.0.0.1")
    refused = []

    def pod_security(obj):  # the namespace enforces PodSecurity restricted: verify's probe pods do not comply
        if obj["kind"] == "Pod" and obj["metadata"]["name"].startswith("rbacbridge-"):
            refused.append(obj)
            return ('violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "probe" must '
                    'set securityContext.allowPrivilegeEscalation=false)')
        return None

    store.admission = pod_security
    args = ("verify", "-c", str(path), "--account-id", ACCOUNT, "--no-drift-check", "--tenant", "client-x")
    done = rbb(tmp_path, *args, "-o", "json", timeout=120)
    assert done.returncode == 3, done.stderr
    document = json.loads(done.stdout)
    (x,) = document["tenants"]
    assert (x["name"], x["verified"], x["ok"], x["principals"]) == ("client-x", False, False, [])
    (gap,) = x["unverified"]
    assert gap["node"] == "node-a" and gap["namespace"] == "client-x"
    assert "refused" in gap["reason"] and "admission" in gap["reason"] and "PodSecurity" in gap["reason"]
    assert document["unverified"] == [gap] and document["ok"] is False and document["exit_code"] == 3
    assert document["summary"]["tenants_verified"] == 0 and document["summary"]["tenants_unverified"] == 1
    assert any(o["metadata"]["namespace"] == "client-x" and o["metadata"]["labels"]["app.kubernetes.io/name"] == TENANT_PROBE_NAME
               for o in refused)
    assert store.objects_of("Pod") == []  # nothing created, nothing left
    # the table says it in the summary line; --allow-unverified accepts it (exit 0), still "not verified"
    table = rbb(tmp_path, *args, timeout=120)
    assert table.returncode == 3
    assert "tenant client-x not verified on node node-a" in table.stdout
    assert "tenants: 0 verified, 1 not verified" in table.stdout and "could not verify" in table.stdout
    accepted = rbb(tmp_path, *args, "--allow-unverified", "-o", "junit", timeout=120)
    assert accepted.returncode == 0, accepted.stderr
    assert 'name="tenant client-x not verified on node node-a"' in accepted.stdout and "<skipped" in accepted.stdout
    assert store.objects_of("Pod") == []


def test_a_tenant_is_never_ok_with_zero_cells():
    from rbacbridge import report
    from rbacbridge.config import Config

    config = Config()
    result = v.VerifyResult("after", ACCOUNT, "us-east-1", config.node_role, [], [], tenants=tuple(config.tenants))
    (tenant,) = report.to_dict(result)["tenants"]
    assert tenant["ok"] is False and tenant["summary"]["cells"] == 0  # even before the run asks for evidence
    result.require_evidence()  # what run_live and the sandbox do once the matrix is done
    assert result.unverified_tenants == [config.tenants[0].name] and not result.ok and result.exit_code == 3
    (tenant,) = report.to_dict(result)["tenants"]
    assert tenant["ok"] is False and tenant["verified"] is False and "no cell" in tenant["unverified"][0]["reason"]
    assert "tenants: 0 verified, 1 not verified" in report.verdict(result)
    result.accept_unverified = True
    assert result.ok and result.exit_code == 0 and report.to_dict(result)["tenants"][0]["ok"] is False
