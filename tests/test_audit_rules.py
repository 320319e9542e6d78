"""The audit's pure parts: recognising kube2iam in any DaemonSet, reading its flags and image version,
DaemonSet scheduling against taints, the findings catalogue and the JSON schema."""

from __future__ import annotations

import jsonschema
import pytest

from rbacbridge.audit.findings import BY_ID, KINDS, AuditResult, Finding
from rbacbridge.audit.kube2iam import find_interceptors, image_version, parse_flags
from rbacbridge.audit.render import load_schema, to_dict
from tests.fixtures_audit import daemonset


@pytest.mark.parametrize("image,version", [
    ("jtblin/kube2iam:0.11.2", (0, 11, 2)),
    ("registry.local:5000/mirror/kube2iam:v0.13.0", (0, 13, 0)),
    ("jtblin/kube2iam:0.13.0-alpine@sha256:abc", (0, 13, 0)),
    ("jtblin/kube2iam:0.10", (0, 10, 0)),
    ("jtblin/kube2iam:latest", None),
    ("jtblin/kube2iam@sha256:abc", None),
    ("jtblin/kube2iam", None),
])
def test_image_versions(image, version):
    assert image_version(image) == version


def test_flags_as_kube2iams_parser_reads_them():
    flags = parse_flags(["--app-port", "8181", "--debug", "--host-interface=cali+", "--iptables=false",
                         "--auto-discover-default-role", "--base-role-arn", "arn:aws:iam::1:role/"])
    assert flags == {"app-port": "8181", "debug": "true", "host-interface": "cali+", "iptables": "false",
                     "auto-discover-default-role": "true", "base-role-arn": "arn:aws:iam::1:role/"}


def test_kube2iam_is_found_by_image_command_or_flags_and_kiam_agents_count_as_interceptors():
    by_image = daemonset("ops", "iam-proxy", "mirror.local/kube2iam:0.13.1", ["--app-port=9911"])
    by_flags = daemonset("ops", "custom", "corp/metadata-thing:1", ["--base-role-arn=arn:aws:iam::1:role/"])
    by_command = daemonset("ops", "cmd", "corp/thing:1", [])
    by_command["spec"]["template"]["spec"]["containers"][0]["command"] = ["/bin/kube2iam", "--host-interface", "eni+"]
    kiam = daemonset("kiam", "kiam-agent", "quay.io/uswitch/kiam:v4.2", ["agent", "--port=8181"])
    other = daemonset("kube-system", "kube-proxy", "registry.k8s.io/kube-proxy:v1.30.0", ["--v=2"])
    found = find_interceptors([by_image, by_flags, by_command, kiam, other])
    assert [(i.tool, i.name) for i in found] == [("kube2iam", "iam-proxy"), ("kube2iam", "custom"), ("kube2iam", "cmd"),
                                                 ("kiam", "kiam-agent")]
    assert found[0].port == 9911 and found[0].interface == "docker0"  # kube2iam's own default interface
    assert found[1].port == 8181  # kube2iam's own default port
    assert found[2].interface == "eni+"
    assert found[3].port == 8181  # a kiam agent's --port (issue 22: its port is in use on the nodes)
    (plain,) = find_interceptors([daemonset("kiam", "kiam-agent", "quay.io/uswitch/kiam:v4.2", ["agent"])])
    assert plain.port == 3100  # kiam agent's own default


def test_a_kiam_agents_port_is_in_use_for_the_audits_node_rules():
    from rbacbridge.audit.nodes import check_node, NodeRules, ports_in_use
    from rbacbridge.nodes.rules import Desired, parse

    (kiam,) = find_interceptors([daemonset("kiam", "kiam-agent", "quay.io/uswitch/kiam:v4.2", ["agent", "--port=8183"])])
    desired = Desired("cali+", "10.0.0.2", 8181)
    text = ("-P PREROUTING ACCEPT\n-A PREROUTING -d 169.254.169.254/32 -i cali+ -p tcp -m tcp --dport 80 -j DNAT "
            "--to-destination 10.0.0.2:8183\n")
    rules = parse(text)
    in_use = ports_in_use(rules, desired, {}, [kiam])
    assert in_use == {8183: "kiam DaemonSet kiam/kiam-agent"}
    kinds = {f.kind for f in check_node(NodeRules("n1", desired, rules, in_use=in_use), "test")}
    assert "iptables-conflict" in kinds and "iptables-stale" not in kinds
    dead = {f.kind for f in check_node(NodeRules("n1", desired, rules, in_use=ports_in_use(rules, desired, {}, [])), "test")}
    assert "iptables-stale" in dead  # nothing uses it: the audit reports a dead port (iptables fix needs it named)


@pytest.mark.parametrize("tolerations,taint,blocked", [
    (None, {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}, True),
    ([{"operator": "Exists"}], {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}, False),
    ([{"key": "dedicated", "operator": "Equal", "value": "gpu"}], {"key": "dedicated", "value": "gpu", "effect": "NoExecute"}, False),
    ([{"key": "dedicated", "operator": "Equal", "value": "cpu"}], {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}, True),
    ([{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}], {"key": "dedicated", "effect": "NoSchedule"}, True),
    (None, {"key": "dedicated", "effect": "PreferNoSchedule"}, False),
    (None, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}, False),  # DaemonSets tolerate it
])
def test_daemonset_scheduling_against_taints(tolerations, taint, blocked):
    (ds,) = find_interceptors([daemonset("kube-system", "kube2iam", "jtblin/kube2iam:0.13.1", [], tolerations=tolerations)])
    node = {"metadata": {"name": "n1", "labels": {}}, "spec": {"taints": [taint]}}
    assert (ds.unschedulable_reason(node) is not None) is blocked


def test_every_kind_has_a_fix_and_the_schema_lists_exactly_the_catalogue():
    schema = load_schema()
    assert set(schema["$defs"]["kind"]["enum"]) == set(BY_ID)
    assert all(k.fix and k.title for k in KINDS)
    result = AuditResult(parts=("kube",), findings=[Finding("debug-enabled", ["DaemonSet a/b"], "--debug")],
                         checked=["debug-enabled"])
    report = to_dict(result, "medium")
    jsonschema.validate(report, schema)
    assert report["exit_code"] == 1 and report["findings"][0]["fix"] == BY_ID["debug-enabled"].fix
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**report, "schema": "rbacbridge.audit/v2"}, schema)


def test_a_token_in_kube2iams_args_is_never_shown():
    ds = daemonset("kube-system", "kube2iam", "jtblin/kube2iam:0.13.1",
                   ["--api-server=https://10.0.0.1", "--api-token=s3cr3t-t0ken", "--api-token", "s3cr3t-two", "--debug"])
    (found,) = find_interceptors([ds])
    assert "s3cr3t" not in found.summary() and "s3cr3t" not in " ".join(found.shown_args)
    assert found.shown_args == ["--api-server=https://10.0.0.1", "--api-token=***", "--api-token", "***", "--debug"]
