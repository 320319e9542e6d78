"""Opt-in tier against a real cluster (e.g. kind in a user's CI). Read-only: nothing is changed.

    RBACBRIDGE_E2E_KUBECONFIG=~/.kube/kind-config [RBACBRIDGE_E2E_CONTEXT=kind-kind] python -m pytest tests/test_e2e_cluster.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

KUBECONFIG = os.environ.get("RBACBRIDGE_E2E_KUBECONFIG")
CONTEXT = os.environ.get("RBACBRIDGE_E2E_CONTEXT")
ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not KUBECONFIG, reason="set RBACBRIDGE_E2E_KUBECONFIG to run against a real cluster"),
]


def _cli(*args: str) -> subprocess.CompletedProcess:
    target = ["--kubeconfig", os.path.expanduser(KUBECONFIG or "")] + (["--context", CONTEXT] if CONTEXT else [])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "rbacbridge", *args, *target], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)


def test_render_against_the_cluster_detects_an_interface():
    result = _cli("render", "--account-id", "123456789012")
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(documents) == 7
    assert "host interface" in result.stderr


def test_setup_dry_run_and_plan_read_the_cluster_without_changing_it():
    dry = _cli("setup", "--only", "kube", "--account-id", "123456789012", "--dry-run", "-o", "json")
    assert dry.returncode in (0, 1), dry.stderr  # 1 = a conflict the plan names (objects someone else owns)
    plan = json.loads(dry.stdout)["plan"]
    assert {s["system"] for s in plan["steps"]} == {"kube"}
    assert len(plan["steps"]) == 7

    planned = _cli("plan", "--only", "kube", "--account-id", "123456789012", "-o", "json")
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["steps"] == plan["steps"]


def test_cluster_nodes_and_interface_from_the_real_api():
    from rbacbridge import kube
    from rbacbridge.config import Config
    from rbacbridge.planner import Context

    ctx = Context(Config(kubeconfig=os.path.expanduser(KUBECONFIG or ""), context=CONTEXT), parts=("kube",))
    nodes = kube.cluster_nodes(ctx)
    assert nodes and all(n.internal_ip and n.ssh_host for n in nodes)
    interface, reason = kube.host_interface(ctx)
    assert interface and reason.startswith(f"host interface {interface}")
