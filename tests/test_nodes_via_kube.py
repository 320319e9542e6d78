"""`--via kubernetes`: the nodes part through pod exec (kube2iam's pod, or a short-lived pod per node),
against real iptables in network namespaces that the test API server's exec reaches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_kube import kube_api  # noqa: F401
from tests.fixtures_kube_nodes import KUBE2IAM_NS, kube_nodes  # noqa: F401
from tests.fixtures_nodes import host_ruleset_unchanged, make_node, netns  # noqa: F401
from tests.netns import Node
from tests.test_nodes_netns import add_rule, cli_opts, kube2iam_rules, wanted

pytestmark = [netns, pytest.mark.netns]
REPO = Path(__file__).resolve().parents[1]


def rbb(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "rbacbridge", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def via_kube(cluster, *extra: str) -> list[str]:
    return ["--via", "kubernetes", "--kubeconfig", cluster.api.kubeconfig, "--host-interface", "docker0", *extra]


def test_smoke_status_through_kube2iam_pod(kube_nodes):
    cluster = kube_nodes(1)
    node = cluster.nodes[0]
    cluster.add_kube2iam(node)
    add_rule(node)
    add_rule(node)
    result = rbb("iptables", "status", "-o", "json", *via_kube(cluster))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    print(result.stderr)
    assert data["nodes"][0]["kept"] == 1
