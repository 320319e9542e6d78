"""rbacbridge.nodes.pods without nodes: the pod it renders, --via auto, the `ss` stand-in for images without iproute2."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import kubernetes_validate
import pytest

from tests.fixtures_kube import kube_api  # noqa: F401

from rbacbridge.nodes import rules
from rbacbridge.config import Config
from rbacbridge.nodes.pods import HOST_PROBE, NODE_EXEC, SS_FALLBACK, pod_name, render_pod
from rbacbridge.nodes.targets import KUBERNETES, SSH, resolve_via


@pytest.mark.parametrize("component,caps", [(NODE_EXEC, ("NET_ADMIN",)), (HOST_PROBE, ())])
def test_the_rendered_pod_is_valid_strict_and_not_privileged(component, caps):
    name = pod_name("ip-10-0-1-23.eu-west-1.compute.internal", component)
    pod = render_pod(name, "kube-system", "ip-10-0-1-23.eu-west-1.compute.internal", "jtblin/kube2iam:0.13.0", component, caps)
    for version in ("1.25.0", "1.33.0"):
        kubernetes_validate.validate(pod, version, strict=True)
    assert len(name) <= 63 and name.startswith(f"rbacbridge-{component}-")
    spec = pod["spec"]
    assert spec["nodeName"] == "ip-10-0-1-23.eu-west-1.compute.internal" and spec["hostNetwork"] is True
    assert spec["tolerations"] == [{"operator": "Exists"}] and spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 3600
    (container,) = spec["containers"]
    assert container["command"] == ["sleep", "3600"]  # the kube2iam image's entrypoint is kube2iam itself
    assert container["securityContext"] == {"privileged": False, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"], "add": list(caps)}}
    assert pod["metadata"]["labels"] == {"app.kubernetes.io/name": "rbacbridge", "app.kubernetes.io/component": component,
                                         "app.kubernetes.io/managed-by": "rbacbridge"}


def test_via_auto_is_ssh_when_a_node_or_an_ssh_option_is_given_else_kubernetes():
    assert resolve_via(Config()) == KUBERNETES
    assert resolve_via(Config().with_overrides(node_hosts=("10.0.0.1",))) == SSH
    assert resolve_via(Config().with_overrides(ssh_key="/k")) == SSH
    assert resolve_via(Config().with_overrides(accept_new_host_keys=True)) == SSH
    assert resolve_via(Config().with_overrides(ssh_key="/k", node_via="kubernetes")) == KUBERNETES
    assert resolve_via(Config().with_overrides(node_via="ssh")) == SSH


def test_a_bad_via_is_one_line_and_exit_2():
    done = subprocess.run([sys.executable, "-m", "rbacbridge", "iptables", "status", "--via", "telnet"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == ["error: invalid --via 'telnet': choose from auto, ssh, kubernetes"]


def forced_ss(*args: str) -> str:
    """The stand-in even where ss exists (the `command -v ss ||` guard removed)."""
    script = SS_FALLBACK.replace("command -v ss >/dev/null 2>&1 || ", "") + "ss " + " ".join(f"'{a}'" for a in args)
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10, check=True).stdout


def test_the_ss_stand_in_lists_listening_ports_like_ss():
    with socket.socket() as listener, socket.socket(socket.AF_INET6) as listener6, socket.socket() as idle:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener6.bind(("::1", 0))
        listener6.listen()
        idle.bind(("127.0.0.1", 0))  # bound, not listening
        port, port6, idle_port = listener.getsockname()[1], listener6.getsockname()[1], idle.getsockname()[1]
        found = rules.parse_listeners(forced_ss("-Htln"))
        assert port in found and port6 in found and idle_port not in found
        assert set(found) == set(rules.parse_listeners(subprocess.run(["ss", "-Htln"], capture_output=True, text=True).stdout))
        assert list(rules.parse_listeners(forced_ss("-Htln", f"sport = :{port}"))) == [port]
        assert forced_ss("-Htln", f"sport = :{idle_port}") == ""


def test_a_pod_refused_by_admission_is_one_line_for_that_node_and_nothing_stays(kube_api):
    store = kube_api.store
    store.add_node("node-a", "10.0.0.5")
    store.admission = lambda obj: ('violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)'
                                   if obj["kind"] == "Pod" else None)
    done = subprocess.run([sys.executable, "-m", "rbacbridge", "iptables", "status", "--via", "kubernetes",
                           "--kubeconfig", kube_api.kubeconfig, "--host-interface", "docker0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.fullmatch(
        r'error: 1 of 1 node\(s\) failed: node-a: the API server refused pod kube-system/(rbacbridge-node-exec-[0-9a-f]{8}-[0-9a-f]{4}) '
        r'\(admission\): pods "\1" is forbidden: violates PodSecurity "baseline:latest": host namespaces \(hostNetwork=true\)',
        errors[0]), errors
    assert store.objects_of("Pod") == []
