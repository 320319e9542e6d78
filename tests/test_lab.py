"""The project's acceptance test: the article's 15 steps, offline, end to end, through the real CLI
(subprocess, as a user runs it) against the lab (tests/lab.py). Needs root and Linux."""

from __future__ import annotations

import base64
import copy
import json
import resource
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from rbacbridge.report import principals_of  # verify -o json v3: principals grouped by tenant
from tests.ci_runner import GitHubRunner, GitLabRunner
from tests.lab import ACCOUNT, ALLOWED_ROLES, LEGACY_PROFILE, LEGACY_ROLE, METADATA_IP, REPO, Lab, available

_why = available()
pytestmark = [pytest.mark.xdist_group("lab"), pytest.mark.netns, pytest.mark.skipif(_why is not None, reason=f"lab: {_why}"), pytest.mark.timeout(300)]

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
    assert done.returncode == expect, f"rbacbridge {' '.join(args)} -> {done.returncode}\n{done.stdout[-30000:]}\n{done.stderr[-3000:]}"
    return done


def verify(lab: Lab, *extra: str, expect: int) -> dict:
    done = run(lab, "verify", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--known-hosts", lab.known_hosts,
               "--ssh-key", lab.ssh_key, "-o", "json", *extra, expect=expect)
    return json.loads(done.stdout)


def kube2iam_rules(lab: Lab, node: str) -> list[str]:
    return [r for r in lab.node(node).node.nat_rules() if f"-d {METADATA_IP}/32" in r and "DNAT" in r]


def access(principal: dict) -> dict[tuple[str, str], bool]:
    return {(c["bucket"], c["check"]): c["observed"] for c in principal["cells"] if c["check"] in ("read", "write")}


def chains(principal: dict) -> dict[str, dict]:
    return {c["target"]: c for c in principal["cells"] if c["check"] == "chain"}


def failed(document: dict) -> list[tuple[str, dict]]:
    """(principal name, cell) of every mismatching cell."""
    return [(p["name"], c) for p in principals_of(document) for c in p["cells"] if not c["match"]]


@pytest.mark.timeout(600)  # the article, its isolation faults and the --via kubernetes runs: ~100 s idle, 300+ s on a busy machine
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
    assert before["ok"] and {p["observed_role"] for p in principals_of(before)} == {NODE_ROLE}
    assert {p["node"] for p in principals_of(before)} == {"node-a", "node-b"}

    # kube2iam starts on each node and appends its DNAT rule: twice on node-a (a restart), and on node-b
    # after a stale copy from an earlier kube2iam on another port, which comes first and wins.
    lab.kube2iam_start("node-a")
    lab.kube2iam_start("node-a")
    lab.kube2iam_start("node-b", port=STALE_PORT)
    lab.kube2iam_start("node-b")
    assert len(kube2iam_rules(lab, "node-a")) == 2 and len(kube2iam_rules(lab, "node-b")) == 2

    broken = verify(lab, expect=1)
    failing = {p["name"] for p in principals_of(broken) if any(not c["match"] for c in p["cells"])}
    assert failing and all(p["node"] == "node-b" for p in principals_of(broken) if p["name"] in failing)
    assert any(p["kind"] == "pod" for p in principals_of(broken) if p["name"] in failing)
    blames = [c["blame"] for p in principals_of(broken) if p["name"] in failing for c in p["cells"] if c["blame"]]
    assert blames and all(b["layer"] == "interception" for b in blames)
    assert all("node-b" in b["message"] for b in blames)
    assert all(p["cells"][0]["match"] for p in principals_of(broken) if p["node"] == "node-a")

    # Step 14: exactly one correct rule per node. The earlier kube2iam's port is named stale (issue 22: a rule to
    # another port is never rbacbridge's on its own say-so).
    run(lab, "iptables", "fix", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--known-hosts", lab.known_hosts,
        "--ssh-key", lab.ssh_key, "--stale-port", str(STALE_PORT), "--yes")
    for n in lab.nodes:
        assert kube2iam_rules(lab, n.name) == [
            f"-A PREROUTING -d {METADATA_IP}/32 -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination {n.address}:8282"]

    # Step 15: the article's matrix, every cell observed as expected, on both nodes.
    junit = Path(lab.workdir) / "verify-after.xml"
    after_run = run(lab, "--debug", "verify", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--known-hosts", lab.known_hosts,
                    "--ssh-key", lab.ssh_key, "-o", "json", "--junit-file", str(junit))
    after = json.loads(after_run.stdout)
    assert after["ok"] and {p["node"] for p in principals_of(after)} == {"node-a", "node-b"}
    # drift check: 9 AWS steps (3 policies, 3 roles, the profile, 2 associations) + 7 Kubernetes objects, none differs
    assert after["drift"] == {"checked": True, "steps": 16, "differences": 0} and after["findings"] == []
    assert not [n for n in after["notes"] if "not rbacbridge's" in n]
    for p in principals_of(after):
        app = "host" if p["kind"] == "host" else p["name"].split("@")[0]
        if app == "nginx-annotated":
            assert p["observed_role"] == POD_ROLE
            assert access(p) == {(SHARED, "read"): True, (SHARED, "write"): False, (TENANT, "read"): True, (TENANT, "write"): True}
        else:
            # the same access as the article's, through the dedicated default role for the vanilla pod
            assert p["observed_role"] == (NODE_ROLE if app == "host" else DEFAULT_ROLE), p
            assert access(p) == {(SHARED, "read"): True, (SHARED, "write"): False, (TENANT, "read"): False, (TENANT, "write"): False}
        # no pod can chain into a managed role by calling sts:AssumeRole itself (really tried, really denied)
        assert set(chains(p)) == (set() if app == "host" else {POD_ROLE, DEFAULT_ROLE, NODE_ROLE})
        assert all(c["observed"] is False and c["match"] for c in chains(p).values())

    probe_from_rbacbridge(lab, after, [after_run.stdout, after_run.stderr, junit.read_text()])

    # Issue 15: the host cells through Kubernetes (a short-lived hostNetwork AWS CLI pod per node), same matrix.
    via_pods = json.loads(run(lab, "verify", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--via", "kubernetes",
                              "--no-drift-check", "-o", "json").stdout)
    hosts = [p for p in principals_of(via_pods) if p["kind"] == "host"]
    assert via_pods["ok"] and {p["node"] for p in hosts} == {"node-a", "node-b"}
    assert all(p["pod"].startswith("rbacbridge-host-probe-") and p["observed_role"] == NODE_ROLE for p in hosts)
    assert [n for n in via_pods["notes"] if "host cells probed through Kubernetes" in n]
    assert not [p for p in store.objects_of("Pod") if p["metadata"]["name"].startswith("rbacbridge-")]
    status = json.loads(run(lab, "iptables", "status", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig,
                            "--via", "kubernetes", "-o", "json").stdout)
    assert [(r["kept"], r["to_delete"]) for r in status["nodes"]] == [(1, 0), (1, 0)]
    assert [n for n in status["plan"]["notes"] if "exec in kube2iam pod kube-system/kube2iam-node-a" in n]

    isolation_faults(lab)

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


def issued_secrets(lab: Lab) -> set[str]:
    """Every key id, secret and session token moto issued to the nodes and pods (kube2iam's and the metadata
    service's stand-ins cache what they hand out)."""
    return {str(value) for creds in lab._cache.values() for key, value in creds.items()
            if key in ("AccessKeyId", "SecretAccessKey", "Token", "SessionToken") and value}


def probe_from_rbacbridge(lab: Lab, after: dict, outputs: list[str]) -> None:
    """Issue 25: by default the pods' bucket and chain cells are calls rbacbridge made with the credentials each
    pod received, one exec per pod; no credential reaches any output. A pod whose own path answers otherwise (an
    iptables rule in its namespace resetting every S3 listing, as an egress proxy would) is caught by the spot
    check, reported, and that role's cells on that node probed in the pod."""
    pods = [p for p in principals_of(after) if p["kind"] == "pod"]
    modes = [c["probed_from"] for p in pods for c in p["cells"] if c["check"] != "identity"]
    assert modes.count("rbacbridge") >= len(modes) - len(pods), modes  # the rest: one spot-checked cell per pod
    assert all(c["probed_from"] == "pod" for p in pods for c in p["cells"] if c["check"] == "identity")
    assert [n for n in after["notes"] if n.startswith("--probe-from rbacbridge: ")]
    execs, inner = [], lab.api.exec_handler
    lab.api.exec_handler = lambda *args: execs.append((args[1], args[3])) or inner(*args)
    try:
        table = run(lab, "verify", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--known-hosts", lab.known_hosts,
                    "--ssh-key", lab.ssh_key, "--no-drift-check")
    finally:
        lab.api.exec_handler = inner
    # one exec per pod in the common path: the metadata path read and the spot check together, no CLI check of its own
    assert sorted(pod for pod, _ in execs) == sorted({p["pod"] for p in pods}), execs
    assert all(argv[:2] == ["sh", "-c"] and "" not in argv for _, argv in execs), execs
    spots = [argv for _, argv in execs if "list-objects-v2" in argv]
    assert len(spots) == len({(p["observed_role"], p["node"]) for p in pods}), execs  # one spot check per (role, node)
    pod_ns = lab._find_pod("default", "nginx-annotated-node-a").namespace
    block = ["OUTPUT", "-p", "tcp", "-m", "string", "--algo", "bm", "--string", "list-type=2", "-j", "REJECT",
             "--reject-with", "tcp-reset"]
    subprocess.run(["ip", "netns", "exec", pod_ns, "iptables", "-A", *block], check=True)
    try:
        proxied_run = run(lab, "verify", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--known-hosts",
                          lab.known_hosts, "--ssh-key", lab.ssh_key, "--no-drift-check", "-o", "json", expect=3)
    finally:
        subprocess.run(["ip", "netns", "exec", pod_ns, "iptables", "-D", *block], check=True)
    proxied = json.loads(proxied_run.stdout)
    spot = [n for n in proxied["notes"] if n.startswith("spot check on node node-a")]
    assert len(spot) == 1 and "in pod nginx-annotated@node-a but allowed to rbacbridge" in spot[0], proxied["notes"]
    by_name = {p["name"]: p for p in principals_of(proxied)}
    annotated_a = by_name["nginx-annotated@node-a"]
    assert {c["probed_from"] for c in annotated_a["cells"]} == {"pod"}
    assert {(c["bucket"], c["check"]) for c in annotated_a["cells"] if not c["match"]} == {(SHARED, "read"), (TENANT, "read")}
    assert all(c["blame"]["layer"] == "network" for c in annotated_a["cells"] if not c["match"])
    assert all(c["match"] for name, p in by_name.items() if name != "nginx-annotated@node-a" for c in p["cells"])
    secrets = issued_secrets(lab)
    assert secrets
    for text in outputs + [table.stdout, table.stderr, proxied_run.stdout, proxied_run.stderr]:
        assert not [s for s in secrets if s in text]


def isolation_faults(lab: Lab) -> None:
    """Issue 9, planted one by one in the running lab (after step 15 passed): each must fail verify with the
    right layer and node, then the lab is put back."""
    from rbacbridge.kube import KubeGateway

    common = ("--kubeconfig", lab.kubeconfig, "--known-hosts", lab.known_hosts, "--ssh-key", lab.ssh_key)
    store = lab.api.store

    # 1. kube2iam.default_role: node — the article's mechanism: unannotated pods get the node role, which may
    #    assume the pod role. The escalation is observed for real (aws sts assume-role in the pod) and fails.
    node_default = lab.write_config("node-default.yaml", kube2iam={"default_role": "node"})
    plan = run(lab, "setup", "-c", node_default, "--kubeconfig", lab.kubeconfig, "--account-id", ACCOUNT, "--only", "aws,kube", "--yes")
    assert "sts:AssumeRole" in plan.stderr + plan.stdout  # the plan's warning names the escalation path
    summary = lab.workdir / "step-summary.md"
    done = lab.cli("verify", "-c", node_default, *common, "-o", "json",
                   env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert done.returncode == 1, done.stderr[-2000:]
    escalated = json.loads(done.stdout)
    assert escalated["drift"]["differences"] == 0  # this configuration is what is installed: only the cells fail
    bad = failed(escalated)
    assert bad and {c["blame"]["layer"] for _, c in bad} == {"escalation"}
    assert {name.split("@")[0] for name, _ in bad} == {"nginx-vanilla"}
    for node in ("node-a", "node-b"):
        cell = chains(next(p for p in principals_of(escalated) if p["name"] == f"nginx-vanilla@{node}"))[POD_ROLE]
        assert cell["observed"] is True and cell["predicted"] is True
        assert f"nginx-vanilla@{node} → {NODE_ROLE} → sts:AssumeRole → {POD_ROLE}" in cell["blame"]["message"]
    annotations = [line for line in done.stderr.splitlines() if line.startswith("::error ")]
    assert len(annotations) == len(bad) and all("[escalation]" in line for line in annotations)
    assert "sts:AssumeRole" in summary.read_text() and "| nginx-vanilla@node-a |" in summary.read_text()
    run(lab, "setup", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--account-id", ACCOUNT, "--only", "aws,kube", "--yes")

    # 2. Trust drift while kube2iam's credentials are cached: every cell still matches, the drift check fails.
    iam = lab.client("iam")
    iam.update_assume_role_policy(RoleName=POD_ROLE, PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/somebody-else"}}]}))
    cached = verify(lab, expect=1)
    assert cached["summary"]["mismatched"] == 0, failed(cached)  # the cached session hides it from the cells
    assert [(f["kind"], f["subject"], f["layer"]) for f in cached["findings"]] == [("drift", f"aws iam-role {POD_ROLE}", "trust")]
    assert "somebody-else" in cached["findings"][0]["reason"]
    plan = run(lab, "plan", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--account-id", ACCOUNT, "--only", "aws", "-o", "json")
    steps = [(f"{st['action']}: {st['message']}", st.get("reason", "")) for st in json.loads(plan.stdout)["steps"]
             if st["action"] != "unchanged" and not st.get("details", {}).get("stamp_only")]  # the record's change stamp: not drift
    assert steps == [(f["message"], f["reason"]) for f in cached["findings"]]  # the same words `plan` prints
    run(lab, "setup", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--account-id", ACCOUNT, "--only", "aws", "--yes")

    # 3. Planted together, each caught with its own layer and node: the annotated Deployment's annotation
    #    changed (rolled out), node-b tainted and without kube2iam, a hostNetwork pod in a restricted namespace.
    KubeGateway(lab.kubeconfig).merge_patch("Deployment", "nginx-annotated", {"spec": {"template": {"metadata": {
        "annotations": {"iam.amazonaws.com/role": DEFAULT_ROLE}}}}}, "default")
    lab.play_controllers()
    lab.taint("node-b", [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
    lab.kube2iam_stop("node-b")
    lab.add_host_network_pod("node-a", "default", "debug-hostnet")
    planted = verify(lab, expect=1)
    by_name = {p["name"]: p for p in principals_of(planted)}
    for node in ("node-a", "node-b"):  # annotation drift: kube2iam, naming both values
        identity = by_name[f"nginx-annotated@{node}"]["cells"][0]
        assert identity["blame"]["layer"] == "kube2iam", identity
        assert f"iam.amazonaws.com/role: {DEFAULT_ROLE}" in identity["blame"]["message"] and POD_ROLE in identity["blame"]["message"]
    identity = by_name["nginx-vanilla@node-b"]["cells"][0]  # the node without kube2iam: interception on node-b
    assert identity["observed"] == NODE_ROLE and identity["blame"]["layer"] == "interception"
    assert "no kube2iam pod runs on node node-b" in identity["blame"]["message"] and "dedicated=gpu:NoSchedule" in identity["blame"]["message"]
    assert all(c["match"] for c in by_name["nginx-vanilla@node-a"]["cells"])  # node-a is fine
    assert all(c["match"] for c in by_name["host@node-a"]["cells"]) and all(c["match"] for c in by_name["host@node-b"]["cells"])
    findings = {(f["kind"], f["subject"]): f for f in planted["findings"]}
    hostnet = findings[("hostNetwork", "pod default/debug-hostnet")]
    assert hostnet["layer"] == "interception" and hostnet["node"] == "node-a"
    assert findings[("drift", "kube Deployment default/nginx-annotated")]["layer"] == "kube2iam"

    # put the lab back: setup converges the Deployment, the controllers and kube2iam run everywhere again
    store.delete("Pod", "debug-hostnet", "default")
    lab.taint("node-b", [])
    run(lab, "setup", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--account-id", ACCOUNT, "--only", "kube", "--yes")
    lab.play_controllers()
    lab.kube2iam_start("node-b")


# --- issue 12: tenants A, B and C, in three namespaces, pods on both nodes -----------------------------------

TENANTS = [
    {"name": "client-a", "namespaces": ["team-a"], "role": "client-a-s3", "read": [SHARED], "workloads": ["nginx-client-a"]},
    {"name": "client-b", "namespaces": ["team-b"], "role": "client-b-s3", "write": ["client-b-data/app/*"],
     "workloads": ["nginx-client-b"]},
    {"name": "client-c", "namespaces": ["team-c"], "role": "client-c-s3", "read": [SHARED], "write": ["client-c-data"],
     "workloads": ["nginx-client-c"]},
]
TENANT_BUCKETS = ["client-b-data", "client-c-data"]


def tenant_of(principal: dict) -> str | None:
    """The tenant a principal belongs to, as the report (schema v3) names it."""
    return principal["tenant"]


def probe_pods(lab: Lab) -> list[str]:
    return [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in lab.api.store.objects_of("Pod")
            if p["metadata"]["name"].startswith("rbacbridge-annotation-probe-")]


def verify_with(lab: Lab, config: str, *extra: str, expect: int) -> dict:
    done = run(lab, "verify", "-c", config, "--kubeconfig", lab.kubeconfig, "--known-hosts", lab.known_hosts,
               "--ssh-key", lab.ssh_key, "-o", "json", *extra, expect=expect)
    return json.loads(done.stdout)


@pytest.mark.timeout(600)  # three more verify runs with probe pods, on a shared machine
def test_tenants_a_b_c_isolated_on_both_nodes(lab: Lab):
    store = lab.api.store
    began = time.monotonic()
    lab.add_buckets(TENANT_BUCKETS)
    for tenant in TENANTS:  # the platform team made the namespaces; setup annotates them
        store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": tenant["namespaces"][0]}})
    config = lab.write_tenants_config("tenants.yaml", TENANTS)
    common = ("--kubeconfig", lab.kubeconfig)
    run(lab, "setup", "-c", config, *common, "--account-id", ACCOUNT, "--only", "aws,kube", "--yes")
    for tenant in TENANTS:
        annotations = store.get("Namespace", tenant["namespaces"][0])["metadata"].get("annotations") or {}
        assert [r.rsplit("/", 1)[-1] for r in json.loads(annotations[ALLOWED_ROLES])] == [tenant["role"]]
    lab.play_controllers()
    for n in lab.nodes:
        lab.kube2iam_start(n.name)

    # verify passes: every tenant's pods, on both nodes, get their tenant's role and exactly its access
    good = verify_with(lab, config, expect=0)
    assert good["ok"], failed(good)
    assert [t["name"] for t in good["tenants"]] == [t["name"] for t in TENANTS] and all(t["ok"] for t in good["tenants"])
    for i, (tenant, reported) in enumerate(zip(TENANTS, good["tenants"])):
        mine = reported["principals"]
        assert {p["node"] for p in mine} == {"node-a", "node-b"} and {p["namespace"] for p in mine} == set(tenant["namespaces"])
        assert {p["observed_role"] for p in mine} == {tenant["role"]}
        for p in mine:
            cells = {(c["check"], c["bucket"] or c["target"]): c for c in p["cells"]}
            # cross-tenant: every other tenant's bucket denied, every other tenant's role not chained
            for other in TENANTS:
                if other is tenant:
                    continue
                assert cells[("chain", other["role"])]["observed"] is False
                for location in other.get("write", []):
                    assert cells[("write", location)]["observed"] is False and cells[("read", location)]["observed"] is False
        # the annotation cell: a probe pod in this tenant's namespace annotated with the NEXT tenant's role got no
        # credentials (one probe pod per namespace, reported with the tenant's first pod)
        asked = [c for p in mine for c in p["cells"] if c["check"] == "annotation"]
        assert [(c["target"], c["observed"], c["match"]) for c in asked] == [(TENANTS[(i + 1) % 3]["role"], False, True)], asked
        assert f"probe pod {tenant['namespaces'][0]}/rbacbridge-annotation-probe-" in asked[0]["detail"]
        # node-b's pod reused node-a's bucket cells (same workload, same role observed), its identity is its own
        # (--probe-from rbacbridge, the default since issue 25: rbacbridge's one call for the role, made with node-a's
        # pod's credentials, and node-b's own spot-checked cell in its pod)
        b = next(p for p in mine if p["node"] == "node-b")
        shared = [c for c in b["cells"] if c["check"] in ("read", "write", "chain")]
        own = [c for c in shared if "probed by" not in c["detail"] and "called by rbacbridge" not in c["detail"]]
        assert len(own) <= (1 if any(c["probed_from"] == "rbacbridge" for c in shared) else 0), own
        assert all(c["probed_from"] == "pod" for c in own)
        assert not any("probed by" in c["detail"] for c in b["cells"] if c["check"] in ("identity", "annotation"))
    assert not probe_pods(lab), probe_pods(lab)  # every probe pod deleted again (the API server's own view)
    assert {p["observed_role"] for p in good["others"] if p["kind"] == "pod"} == {DEFAULT_ROLE}  # nginx-vanilla

    # issue 28: client-b's pods run on node-a only (scaled down on node-b). verify probes client-b on node-b from a
    # probe pod in its namespace, annotated with its own role, pinned there, deleted afterwards; the report says so
    lab.play_controllers({"nginx-client-b": ["node-a"]})
    created: list[dict] = []
    store.admission = lambda obj: created.append(copy.deepcopy(obj)) if obj["kind"] == "Pod" else None  # records only
    try:
        started = time.monotonic()
        done = lab.cli("verify", "-c", config, "--kubeconfig", lab.kubeconfig, "--known-hosts", lab.known_hosts, "--ssh-key",
                       lab.ssh_key, "-o", "json", "--no-drift-check", timeout=300)  # one more principal's CLI processes
        assert done.returncode == 0, f"{done.stdout[-20000:]}\n{done.stderr[-3000:]}"
        probed = json.loads(done.stdout)
        print(f"\nverify with a probe pod for client-b on node-b: {time.monotonic() - started:.1f}s")
    finally:
        store.admission = None
    b = next(t for t in probed["tenants"] if t["name"] == "client-b")
    assert b["ok"] and b["verified"] and probed["summary"]["tenants_verified"] == 3, failed(probed)
    by_node = {p["node"]: p for p in b["principals"]}
    assert sorted(by_node) == ["node-a", "node-b"] and not by_node["node-a"]["probe_pod"] and by_node["node-b"]["probe_pod"]
    probe = by_node["node-b"]
    assert probe["name"] == "probe-pod:client-b@node-b" and probe["observed_role"] == "client-b-s3"  # from the stand-in kube2iam
    assert probe["pod"].startswith("rbacbridge-tenant-probe-") and probe["namespace"] == "team-b"
    cross = [c for c in probe["cells"] if c["cross_tenant"]]
    assert cross and all(c["observed"] is False and c["match"] for c in cross)
    tenant_probes = [o for o in created if o["metadata"]["name"].startswith("rbacbridge-tenant-probe-")]
    assert [(o["metadata"]["namespace"], o["spec"]["nodeName"], o["metadata"]["annotations"]["iam.amazonaws.com/role"])
            for o in tenant_probes] == [("team-b", "node-b", "client-b-s3")]  # one pod: only (client-b, node-b) lacked one
    assert not [p for p in store.objects_of("Pod") if p["metadata"]["name"].startswith("rbacbridge-tenant-probe-")]
    lab.play_controllers()

    # cross-tenant: a pod in A's namespace asking for C's role gets no credentials, and cannot reach C's bucket
    lab.add_pod("node-b", "team-a", "team-a-own-pod", {"iam.amazonaws.com/role": "client-c-s3"})
    intruder = lab.pod_exec("team-a", "team-a-own-pod", ["aws", "sts", "get-caller-identity", "--output", "json"])
    assert intruder.returncode != 0 and "Unable to locate credentials" in intruder.stderr
    listing = lab.pod_exec("team-a", "team-a-own-pod", ["aws", "s3api", "list-objects-v2", "--bucket", "client-c-data"])
    assert listing.returncode != 0 and "seed" not in listing.stdout
    own = lab.pod_exec("team-c", "nginx-client-c-node-b", ["aws", "s3api", "list-objects-v2", "--bucket", "client-c-data"])
    assert own.returncode == 0 and "tenant/seed.txt" in own.stdout  # C's own pod on the same node does

    # planted: A's namespace also allows C's role (someone edited the annotation). The stand-in kube2iam now
    # hands C's role to A's pod (the breach), and verify fails naming tenant client-a on layer kube2iam.
    planted = store.get("Namespace", "team-a")
    planted["metadata"]["annotations"][ALLOWED_ROLES] = json.dumps(["client-a-s3", "client-c-s3"])
    store.put(planted)
    breach = lab.pod_exec("team-a", "team-a-own-pod", ["aws", "sts", "get-caller-identity", "--output", "json"])
    assert breach.returncode == 0 and "assumed-role/client-c-s3/" in breach.stdout
    store.delete("Pod", "team-a-own-pod", "team-a")
    widened = verify_with(lab, config, expect=1)
    named = [f for f in widened["findings"] if "(tenant " in f["subject"]]
    assert [(f["subject"], f["layer"]) for f in named] == [("kube Namespace team-a (tenant client-a)", "kube2iam")], widened["findings"]
    assert "client-c-s3" in named[0]["reason"] + named[0]["message"]

    # planted: A's namespace allows only B's role. A's pods get no credentials: the cells alone (no drift check)
    # fail for tenant client-a only, on both nodes, blamed on kube2iam naming the namespace's annotation.
    planted["metadata"]["annotations"][ALLOWED_ROLES] = json.dumps(["client-b-s3"])
    store.put(planted)
    wrong = verify_with(lab, config, "--no-drift-check", expect=1)
    bad = [(p, c) for p in principals_of(wrong) for c in p["cells"] if not c["match"]]
    assert bad and {tenant_of(p) for p, _ in bad} == {"client-a"}
    assert {p["node"] for p, _ in bad} == {"node-a", "node-b"}
    identities = [c for _, c in bad if c["check"] == "identity"]
    assert len(identities) == 2 and {c["blame"]["layer"] for c in identities} == {"kube2iam"}
    assert all("namespace team-a" in c["blame"]["message"] and "client-b-s3" in c["blame"]["message"] for c in identities)

    # the stand-in kube2iam without --namespace-restrictions (its DaemonSet's args): every probe pod gets the other
    # tenant's role. The annotation cells alone (no drift check) fail, each on layer kube2iam naming both tenants.
    planted["metadata"]["annotations"][ALLOWED_ROLES] = json.dumps(["client-a-s3"])
    store.put(planted)
    daemonset = next(d for d in store.objects_of("DaemonSet") if d["metadata"]["name"] == "kube2iam")
    honest = copy.deepcopy(daemonset)
    for container in daemonset["spec"]["template"]["spec"]["containers"]:
        container["args"] = [a for a in container.get("args") or [] if not a.startswith("--namespace-restrictions")]
    store.put(daemonset)
    stale = store.put({"apiVersion": "v1", "kind": "Pod", "metadata": {  # an earlier run's leftover: cleaned by label
        "name": "rbacbridge-annotation-probe-0ld", "namespace": "team-b",
        "labels": {"app.kubernetes.io/managed-by": "rbacbridge", "app.kubernetes.io/name": "rbacbridge-annotation-probe"}},
        "spec": {"containers": [{"name": "probe", "image": "x"}]}})
    open_ = verify_with(lab, config, "--no-drift-check", expect=1)
    bad = [(p, c) for p in principals_of(open_) for c in p["cells"] if not c["match"]]
    assert sorted(((tenant_of(p), c["check"], c["target"], c["blame"]["layer"]) for p, c in bad), key=str) == [
        ("client-a", "annotation", "client-b-s3", "kube2iam"), ("client-b", "annotation", "client-c-s3", "kube2iam"),
        ("client-c", "annotation", "client-a-s3", "kube2iam")], bad
    for p, c in bad:
        owner = next(t["name"] for t in TENANTS if t["role"] == c["target"])
        assert c["observed"] is True and tenant_of(p) in c["blame"]["message"] and owner in c["blame"]["message"], c
        assert f"assumed-role/{c['target']}/" in c["blame"]["message"]  # the ARN only: no secret in the report
    assert "SecretAccessKey" not in json.dumps(open_) and "SessionToken" not in json.dumps(open_)
    assert not probe_pods(lab) and stale["metadata"]["name"] not in {p["metadata"]["name"] for p in store.objects_of("Pod")}
    store.put(honest)

    # planted: A's namespace allows B's role too (the rotation's target for A): the probe pod in team-a gets it
    planted["metadata"]["annotations"][ALLOWED_ROLES] = json.dumps(["client-a-s3", "client-b-s3"])
    store.put(planted)
    leaked = verify_with(lab, config, "--no-drift-check", expect=1)
    bad = [(p, c) for p in principals_of(leaked) for c in p["cells"] if not c["match"]]
    assert [(tenant_of(p), c["check"], c["target"], c["blame"]["layer"]) for p, c in bad] == [
        ("client-a", "annotation", "client-b-s3", "kube2iam")]
    # --no-annotation-probe: no pod created, no annotation cell, and the report says so
    before = len(store.mutating_requests("POST"))
    skipped = verify_with(lab, config, "--no-drift-check", "--no-annotation-probe", expect=0)
    assert not [c for p in principals_of(skipped) for c in p["cells"] if c["check"] == "annotation"]
    assert any("--no-annotation-probe" in n for n in skipped["notes"])
    assert not [r for r in store.mutating_requests("POST")[before:] if "/pods" in r.path]

    # setup converges the annotation again; teardown removes every tenant's resources
    run(lab, "setup", "-c", config, *common, "--account-id", ACCOUNT, "--only", "kube", "--yes")
    assert json.loads(store.get("Namespace", "team-a")["metadata"]["annotations"][ALLOWED_ROLES]) in (
        ["client-a-s3"], [f"arn:aws:iam::{ACCOUNT}:role/client-a-s3"])
    run(lab, "teardown", "-c", config, *common, "--yes")
    iam = lab.client("iam")
    assert not {r["RoleName"] for r in iam.list_roles()["Roles"]} & {t["role"] for t in TENANTS}
    for tenant in TENANTS:
        assert ALLOWED_ROLES not in (store.get("Namespace", tenant["namespaces"][0])["metadata"].get("annotations") or {})
    print(f"\ntenants scenario {time.monotonic() - began:.1f}s")


# --- issue 21: the CI examples, their shell steps as written (tests/ci_runner.py), against the lab ----------

EXAMPLES = REPO / "examples" / "ci"
RBACBRIDGE_REPOSITORY = "example/rbacbridge"  # the repository variable the GitHub example checks out: this one
CLEAN = {  # the lab before any setup (and after every teardown): what the lab seeded, nothing of rbacbridge's
    "roles": [LEGACY_ROLE], "policies": [], "instance profiles": [LEGACY_PROFILE],
    "associations": {"node-a": [LEGACY_PROFILE], "node-b": []}, "daemonsets": [], "rbacbridge objects": [],
    "kube-system pods": [], "kube2iam DNAT rules": {"node-a": [], "node-b": []},
}


def lab_state(lab: Lab) -> dict:
    """What setup changes and teardown must put back: IAM, the nodes' instance profiles, kube2iam and
    rbacbridge's objects in the API server, the metadata DNAT rules on the nodes."""
    iam, ec2, store = lab.client("iam"), lab.client("ec2"), lab.api.store
    associations = {}
    for n in lab.nodes:
        found = ec2.describe_iam_instance_profile_associations(Filters=[
            {"Name": "instance-id", "Values": [n.instance_id]}, {"Name": "state", "Values": ["associated"]}])
        associations[n.name] = [a["IamInstanceProfile"]["Arn"].rsplit("/", 1)[-1] for a in found["IamInstanceProfileAssociations"]]
    return {
        "roles": sorted(r["RoleName"] for r in iam.list_roles()["Roles"]),
        "policies": sorted(p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]),
        "instance profiles": sorted(p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]),
        "associations": associations,
        "daemonsets": sorted(f"{d['metadata']['namespace']}/{d['metadata']['name']}" for d in store.objects_of("DaemonSet")),
        "rbacbridge objects": sorted(f"{kind} {o['metadata'].get('namespace', '')}/{o['metadata']['name']}"
                                     for kind in ("Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding")
                                     for o in store.objects_of(kind)
                                     if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "rbacbridge"),
        "kube-system pods": sorted(p["metadata"]["name"] for p in store.objects_of("Pod", "kube-system")),
        "kube2iam DNAT rules": {n.name: kube2iam_rules(lab, n.name) for n in lab.nodes},
    }


def user_repository(lab: Lab, path: Path) -> Path:
    """The repository a user keeps rbacbridge.yaml in: the lab's file without this machine's paths — the
    kubeconfig, SSH key and known_hosts reach the pipeline as CI secrets, as on a real runner."""
    config = yaml.safe_load(Path(lab.config_file).read_text())
    del config["kubernetes"]["kubeconfig"], config["nodes"]["ssh_key"], config["nodes"]["known_hosts"]
    path.mkdir(parents=True)
    (path / "rbacbridge.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def junit_counts(path: Path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    return {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors")}


def not_apt(command: str) -> str | None:
    """The GitLab build job's `apt-get install git` (for the slim image): this machine has git; not run as root here."""
    return "the runner machine has git" if command.lstrip().startswith("apt-get") else None


@pytest.mark.timeout(600)  # a fresh venv (pip) per job, and setup + verify + teardown
@pytest.mark.parametrize("example", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_example_runs_as_written(lab: Lab, example: str):
    """examples/ci/EXAMPLE, its steps taken from the YAML, run by tests/ci_runner.py in a fresh runner
    environment: rbacbridge installed from a clone of this repository at HEAD (the tree under test), the
    lab's rbacbridge.yaml as the user's, kubeconfig / SSH key / known_hosts as secrets. The lab has no
    controllers: after the Setup step the test places the pods and starts kube2iam on each node."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("needs a git checkout of rbacbridge (the examples install it from one)")
    began, cpu = time.monotonic(), _cpu_seconds()
    before = lab_state(lab)
    assert before == CLEAN, "the lab is not clean before the pipeline (did an earlier test here fail?)"

    def controllers() -> None:
        lab.play_controllers()
        for n in lab.nodes:
            lab.kube2iam_start(n.name)

    aws = {k: v for k, v in lab.env().items() if k.startswith("AWS_")}  # the lab's moto and its admin key
    secrets = {"KUBECONFIG": Path(lab.kubeconfig).read_text(), "NODE_SSH_KEY": Path(lab.ssh_key).read_text(),
               "NODE_KNOWN_HOSTS": Path(lab.known_hosts).read_text()}
    workdir = Path(tempfile.mkdtemp(prefix="rbl-ci-"))
    try:
        user_repo = user_repository(lab, workdir / "user-repo")
        if example == "github-actions.yml":
            runner = GitHubRunner(
                EXAMPLES / example, workdir / "runner", user_repo=user_repo, repositories={RBACBRIDGE_REPOSITORY: REPO},
                vars={"RBACBRIDGE_REPOSITORY": RBACBRIDGE_REPOSITORY, "RBACBRIDGE_REF": head.stdout.strip()},
                secrets={"AWS_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/ci", "NODE_SSH_KEY": secrets["NODE_SSH_KEY"],
                         "NODE_KNOWN_HOSTS": secrets["NODE_KNOWN_HOSTS"],
                         "KUBECONFIG_B64": base64.b64encode(secrets["KUBECONFIG"].encode()).decode()},
                aws_env=aws, after={"Setup": controllers})
            result = runner.run()
            junits = [runner.workspace / "rbacbridge-verify.xml", runner.artifacts / "rbacbridge-reports" / "rbacbridge-verify.xml"]
        else:
            runner = GitLabRunner(
                EXAMPLES / example, workdir / "runner", user_repo=user_repo, file_variables=secrets, skip=not_apt,
                project_variables={"RBACBRIDGE_REPO": str(REPO), "RBACBRIDGE_REF": head.stdout.strip(), **aws},
                after={"rbacbridge-setup": controllers})
            result = runner.run()
            junits = [runner.workdir / "jobs" / "rbacbridge-verify" / "project" / "rbacbridge-verify.xml"]
        log = result.log()
        assert [(s.name, s.status) for s in result.steps] == [(s.name, "success") for s in result.steps], log
        for junit in junits:  # the report verify wrote (and, on GitHub, the one kept as an artifact)
            assert junit.exists(), log
            counts = junit_counts(junit)
            assert counts["tests"] > 0 and counts["failures"] == 0 and counts["errors"] == 0, (counts, log)
        printed = "".join(s.output for s in result.steps)
        assert aws["AWS_SECRET_ACCESS_KEY"] not in printed and "PRIVATE KEY" not in printed
        after = lab_state(lab)
        assert after == CLEAN, (after, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{example}: " + ", ".join(f"{s.name} {s.seconds:.1f}s" for s in result.steps)
          + f"; test {time.monotonic() - began:.1f}s, {_cpu_seconds() - cpu:.0f} CPU-s")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pipeline's processes): on a shared machine the
    wall-clock time says more about the neighbours."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
