"""End to end through the CLI as a user runs it: plan, setup, re-plan, teardown of the kube part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures_kube import kube_api  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("KUBECONFIG", None)
    return subprocess.run([sys.executable, "-m", "rbacbridge", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)


def test_plan_setup_replan_teardown_via_cli(kube_api):
    store = kube_api.store
    store.put({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "calico-node", "namespace": "calico-system"},
               "spec": {"selector": {"matchLabels": {"k8s-app": "calico-node"}}, "template": {
                   "metadata": {"labels": {"k8s-app": "calico-node"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
    common = ["--only", "kube", "--kubeconfig", kube_api.kubeconfig, "--account-id", "123456789012"]

    planned = _cli("plan", *common, "-o", "json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["summary"] == {"create": 6, "update": 1}
    assert {s["system"] for s in plan["steps"]} == {"kube"}
    assert plan["notes"] == ["host interface cali+: DaemonSet calico-system/calico-node found (Calico)"]
    assert store.mutating_requests() == []

    dry = _cli("setup", *common, "--dry-run", "-o", "json")
    assert dry.returncode == 0 and json.loads(dry.stdout)["dry_run"] is True
    assert store.mutating_requests() == []

    applied = _cli("setup", *common, "--yes", "-o", "json")
    assert applied.returncode == 0, applied.stderr
    result = json.loads(applied.stdout)
    assert result["ok"] is True and len(result["applied"]) == 7
    assert "rolled out" in applied.stderr
    args = store.get("DaemonSet", "kube2iam", "kube-system")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--host-interface=cali+" in args

    patches = len(store.mutating_requests())
    again = _cli("setup", *common, "--yes")
    assert again.returncode == 0, again.stderr
    assert "setup: 0 change(s) made" in again.stdout
    assert len(store.mutating_requests()) == patches

    torn = _cli("teardown", *common, "--yes", "-o", "json")
    assert torn.returncode == 0, torn.stderr
    assert len(json.loads(torn.stdout)["applied"]) == 7
    assert store.get("DaemonSet", "kube2iam", "kube-system") is None
    assert store.get("Namespace", "default") is not None
    assert store.get("DaemonSet", "calico-node", "calico-system") is not None


def test_forbidden_setup_via_cli_is_one_line(kube_api):
    kube_api.server.forbid("patch", "clusterroles")
    result = _cli("setup", "--only", "kube", "--kubeconfig", kube_api.kubeconfig, "--account-id", "123456789012", "--yes")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "missing Kubernetes permission: patch clusterroles.rbac.authorization.k8s.io" in errors[0]
    assert "Traceback" not in result.stderr


def test_unreachable_cluster_via_cli(tmp_path):
    from tests.fixtures_kube import write_kubeconfig

    kubeconfig = write_kubeconfig(tmp_path / "kc", {"gone": "http://127.0.0.1:9"}, "gone")
    result = _cli("plan", "--only", "kube", "--kubeconfig", str(kubeconfig), "--account-id", "123456789012")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot reach the Kubernetes API server at http://127.0.0.1:9 (kubeconfig {kubeconfig}): connection refused"]


def test_plan_table_shows_drifted_field_paths_literally(kube_api):
    common = ["--only", "kube", "--kubeconfig", kube_api.kubeconfig, "--account-id", "123456789012"]
    assert _cli("setup", *common, "--yes").returncode == 0
    daemonset = kube_api.store.get("DaemonSet", "kube2iam", "kube-system")
    daemonset["spec"]["template"]["spec"]["containers"][0]["image"] = "jtblin/kube2iam:latest"
    kube_api.store.put(daemonset)
    result = subprocess.run([sys.executable, "-m", "rbacbridge", "plan", *common], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200"), cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "differs: spec.template.spec.containers[kube2iam].image" in result.stdout
    assert "1 change (1 to update), 6 unchanged" in result.stdout
