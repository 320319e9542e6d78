"""The project's acceptance test: the article's 15 steps, offline, end to end, through the real CLI
(subprocess, as a user runs it) against the lab (tests/lab.py). Needs root and Linux."""

from __future__ import annotations

import json
import time

import pytest

from tests.lab import ACCOUNT, LEGACY_PROFILE, METADATA_IP, Lab, available

_why = available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_why is not None, reason=f"lab: {_why}"), pytest.mark.timeout(300)]

NODE_ROLE, POD_ROLE = "nettech-s3-read-only", "nettech-s3-read-write"
DEFAULT_ROLE = "nettech-pod-default"  # what unannotated pods get (never the node role)
SHARED, TENANT = "nettech-helm-test", "lanre.k8s.dev"
STALE_PORT = 8181  # kube2iam's own default: the port of an earlier kube2iam


@pytest.fixture(scope="module")
def lab():
    started = Lab.start()
    yield started
    started.close()
    assert started.leftovers() == [], f"the lab left behind: {started.leftovers()}"


def run(lab: Lab, *args: str, expect: int = 0):
    done = lab.cli(*args)
    assert done.returncode == expect, f"rbacbridge {' '.join(args)} -> {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def verify(lab: Lab, *extra: str, expect: int) -> dict:
    done = run(lab, "verify", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--known-hosts", lab.known_hosts,
               "--ssh-key", lab.ssh_key, "-o", "json", *extra, expect=expect)
    return json.loads(done.stdout)


def kube2iam_rules(lab: Lab, node: str) -> list[str]:
    return [r for r in lab.node(node).node.nat_rules() if f"-d {METADATA_IP}/32" in r and "DNAT" in r]


def access(principal: dict) -> dict[tuple[str, str], bool]:
    return {(c["bucket"], c["check"]): c["observed"] for c in principal["cells"] if c["check"] != "identity"}


def test_article_end_to_end(lab: Lab):
    began = time.monotonic()
    iam, ec2 = lab.client("iam"), lab.client("ec2")
    store = lab.api.store
    node_a, node_b = lab.nodes

    # Steps 1-8, 12-13: setup (AWS and Kubernetes parts); the plan comes first.
    setup = run(lab, "setup", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--account-id", ACCOUNT,
                "--only", "aws,kube", "--yes")
    assert setup.stdout.index("rbacbridge setup plan") < setup.stdout.index("change(s) made")
    assert {r["RoleName"] for r in iam.list_roles()["Roles"]} >= {NODE_ROLE, POD_ROLE, DEFAULT_ROLE}
    for n in lab.nodes:
        associations = ec2.describe_iam_instance_profile_associations(Filters=[
            {"Name": "instance-id", "Values": [n.instance_id]}, {"Name": "state", "Values": ["associated"]}])
        assert [a["IamInstanceProfile"]["Arn"].rsplit("/", 1)[-1] for a in associations["IamInstanceProfileAssociations"]] \
            == ["nettech-instance-profile"]
    assert store.get("DaemonSet", "kube2iam", "kube-system") is not None
    lab.play_controllers()  # the Deployment and DaemonSet controllers place the pods

    # Steps 10-11: no kube2iam rule yet, so every principal gets the node role — the leak.
    before = verify(lab, "--stage", "before", expect=0)
    assert before["ok"] and {p["observed_role"] for p in before["principals"]} == {NODE_ROLE}
    assert {p["node"] for p in before["principals"]} == {"node-a", "node-b"}

    # kube2iam starts on each node and appends its DNAT rule: twice on node-a (a restart), and on node-b
    # after a stale copy from an earlier kube2iam on another port, which comes first and wins.
    lab.kube2iam_start("node-a")
    lab.kube2iam_start("node-a")
    lab.kube2iam_start("node-b", port=STALE_PORT)
    lab.kube2iam_start("node-b")
    assert len(kube2iam_rules(lab, "node-a")) == 2 and len(kube2iam_rules(lab, "node-b")) == 2

    broken = verify(lab, expect=1)
    failing = {p["name"] for p in broken["principals"] if any(not c["match"] for c in p["cells"])}
    assert failing and all(p["node"] == "node-b" for p in broken["principals"] if p["name"] in failing)
    assert any(p["kind"] == "pod" for p in broken["principals"] if p["name"] in failing)
    blames = [c["blame"] for p in broken["principals"] if p["name"] in failing for c in p["cells"] if c["blame"]]
    assert blames and all(b["layer"] == "interception" for b in blames)
    assert all("node-b" in b["message"] for b in blames)
    assert all(p["cells"][0]["match"] for p in broken["principals"] if p["node"] == "node-a")

    # Step 14: exactly one correct rule per node.
    run(lab, "iptables", "fix", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--known-hosts", lab.known_hosts,
        "--ssh-key", lab.ssh_key, "--yes")
    for n in lab.nodes:
        assert kube2iam_rules(lab, n.name) == [
            f"-A PREROUTING -d {METADATA_IP}/32 -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination {n.address}:8282"]

    # Step 15: the article's matrix, every cell observed as expected, on both nodes.
    after = verify(lab, expect=0)
    assert after["ok"] and {p["node"] for p in after["principals"]} == {"node-a", "node-b"}
    for p in after["principals"]:
        app = "host" if p["kind"] == "host" else p["name"].split("@")[0]
        if app == "nginx-annotated":
            assert p["observed_role"] == POD_ROLE
            assert access(p) == {(SHARED, "read"): True, (SHARED, "write"): False, (TENANT, "read"): True, (TENANT, "write"): True}
        else:
            # the same access as the article's, through the dedicated default role for the vanilla pod
            assert p["observed_role"] == (NODE_ROLE if app == "host" else DEFAULT_ROLE), p
            assert access(p) == {(SHARED, "read"): True, (SHARED, "write"): False, (TENANT, "read"): False, (TENANT, "write"): False}

    # Tenant isolation: a pod in another namespace asks for the read-write role its namespace does not allow.
    lab.add_tenant_pod("node-a", "tenant-b", "intruder", role=POD_ROLE, allowed_roles=["tenant-b-*"])
    intruder = lab.pod_exec("tenant-b", "intruder", ["aws", "sts", "get-caller-identity", "--output", "json"])
    assert intruder.returncode != 0 and "Unable to locate credentials" in intruder.stderr
    listing = lab.pod_exec("tenant-b", "intruder", ["aws", "s3api", "list-objects-v2", "--bucket", TENANT])
    assert listing.returncode != 0 and "lanre" not in listing.stdout
    # ... while the same role, annotated in the namespace that allows it, still works from that node.
    allowed = lab.pod_exec("default", "nginx-annotated-node-a", ["aws", "sts", "get-caller-identity", "--output", "json"])
    assert f"assumed-role/{POD_ROLE}/" in json.loads(allowed.stdout)["Arn"]

    # Teardown: nothing of rbacbridge's left, previous profiles back, no kube2iam rule; a second run does nothing.
    down = run(lab, "teardown", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--yes", "-o", "json")
    assert json.loads(down.stdout)["ok"]
    assert {r["RoleName"] for r in iam.list_roles()["Roles"]} == {"legacy-node-role"}
    assert iam.list_policies(Scope="Local")["Policies"] == []
    assert [p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]] == [LEGACY_PROFILE]
    profiles = {}
    for n in lab.nodes:
        found = ec2.describe_iam_instance_profile_associations(Filters=[
            {"Name": "instance-id", "Values": [n.instance_id]}, {"Name": "state", "Values": ["associated"]}])
        profiles[n.name] = [a["IamInstanceProfile"]["Arn"].rsplit("/", 1)[-1] for a in found["IamInstanceProfileAssociations"]]
    assert profiles == {"node-a": [LEGACY_PROFILE], "node-b": []}
    tags = [t for r in ec2.describe_instances()["Reservations"] for i in r["Instances"] for t in i.get("Tags", [])]
    assert not [t for t in tags if "rbacbridge" in t["Key"] or t["Value"] == "rbacbridge"]
    for kind in ("DaemonSet", "Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
        assert not [o for o in store.objects_of(kind)
                    if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "rbacbridge"], kind
    assert "iam.amazonaws.com/allowed-roles" not in (store.get("Namespace", "default")["metadata"].get("annotations") or {})
    assert store.objects_of("Pod", "kube-system") == []
    for n in lab.nodes:
        assert kube2iam_rules(lab, n.name) == []
    again = run(lab, "teardown", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--yes", "-o", "json")
    assert json.loads(again.stdout)["applied"] == []
    print(f"\nlab start-up {lab.timings['start']:.1f}s, scenario {time.monotonic() - began:.1f}s")
    assert node_a.instance_id != node_b.instance_id
