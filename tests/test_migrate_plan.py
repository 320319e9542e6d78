"""`rbacbridge migrate plan` as users run it, against the test API server and moto (server mode).

The cluster: kube2iam (live DaemonSet: --base-role-arn, --default-role, --namespace-restrictions) and, in
tenant-a and tenant-b, every kind kube2iam serves: a Deployment with its own ServiceAccount, a CronJob (with a
Job and pod it owns), a bare pod on `default`, two Deployments sharing `default` with different roles, a
hostNetwork DaemonSet, a full ARN in another account, an unannotated Deployment (the default role) and one
whose role the namespace's allowed-roles refuse. IAM: the roles, one whose trust is near IAM's 2048 limit.

Expectations are written out here (names hashed with hashlib, trust statements from the AWS documentation's
shape), never read back from rbacbridge's code.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from rbacbridge.migrate import load_schema

from tests.fixtures_aws import ACCOUNT, moto_url, recorded_actions, sandbox  # noqa: F401
from tests.fixtures_kube import kube_api  # noqa: F401

ROLE = f"arn:aws:iam::{ACCOUNT}:role/"
PARTNER = "arn:aws:iam::210987654321:role/partner-reader"
ISSUER = "https://oidc.example.com/id/CLUSTER1"
HOST = "oidc.example.com/id/CLUSTER1"
PROVIDER = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{HOST}"
CONFIG = f"""\
account_id: "{ACCOUNT}"
iam:
  node_role: k8s-node
tenants:
  - name: alpha
    namespaces: [tenant-a]
    role: alpha-app
  - name: beta
    namespaces: [tenant-b]
    role: beta-app
"""


def dedicated(role: str) -> str:
    return f"{role}-{hashlib.sha256((ROLE + role).encode()).hexdigest()[:8]}"


def node_trust() -> dict:
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ROLE + "k8s-node"}, "Action": "sts:AssumeRole"}]}


def compact(document) -> int:
    return len(json.dumps(document, separators=(",", ":")))


def near_limit_trust() -> dict:
    """The node role's statement and enough others to reach ~1800 characters: IRSA's one statement
    (about 330 more) goes over 2048."""
    trust = node_trust()
    n = 0
    while compact(trust) < 1780:
        n += 1
        trust["Statement"].append({"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/ci-runner-{n:02d}"},
                                   "Action": "sts:AssumeRole"})
    return trust


def template(role: str | None, account: str = "default", host_network: bool = False) -> dict:
    meta = {"labels": {"app": "x"}}
    if role is not None:
        meta["annotations"] = {"iam.amazonaws.com/role": role}
    spec = {"serviceAccountName": account, "containers": [{"name": "main", "image": "busybox"}]}
    if host_network:
        spec["hostNetwork"] = True
    return {"metadata": meta, "spec": spec}


def workload(kind: str, namespace: str, name: str, tpl: dict) -> dict:
    group = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    spec = {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": tpl}}} if kind == "CronJob" else {"template": tpl}
    return {"apiVersion": group, "kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec}


class Cluster:
    def __init__(self, kube_api, sandbox, tmp_path):
        self.kube_api, self.sandbox, self.store, self.iam = kube_api, sandbox, kube_api.store, sandbox.client("iam")
        self.config = tmp_path / "rbacbridge.yaml"
        self.config.write_text(CONFIG)
        kube_api.server.issuer = ISSUER

    def build(self) -> "Cluster":
        store, iam = self.store, self.iam
        for role in ("k8s-node", "alpha-app", "alpha-etl", "beta-app", "beta-agent", "pod-default"):
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(node_trust()))
        iam.create_role(RoleName="beta-worker", AssumeRolePolicyDocument=json.dumps(near_limit_trust()))
        store.put({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "kube2iam", "namespace": "kube-system"},
                   "spec": {"selector": {"matchLabels": {"name": "kube2iam"}}, "template": {
                       "metadata": {"labels": {"name": "kube2iam"}},
                       "spec": {"hostNetwork": True, "serviceAccountName": "kube2iam", "containers": [{
                           "name": "kube2iam", "image": "jtblin/kube2iam:0.13.0",
                           "args": [f"--base-role-arn={ROLE}", "--default-role=pod-default", "--namespace-restrictions",
                                    "--iptables=true", "--host-interface=cni0"]}]}}}})
        store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": "tenant-a", "annotations": {"iam.amazonaws.com/allowed-roles": '["alpha-*"]'}}})
        store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": "tenant-b", "annotations": {"iam.amazonaws.com/allowed-roles": json.dumps(["beta-*", PARTNER])}}})
        for namespace, name in (("tenant-a", "default"), ("tenant-a", "web"), ("tenant-a", "etl"), ("tenant-b", "default"),
                                ("tenant-b", "node-agent"), ("tenant-b", "partner")):
            store.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}})
        store.put(workload("Deployment", "tenant-a", "web", template("alpha-app", "web")))
        cron = store.put(workload("CronJob", "tenant-a", "nightly", template("alpha-etl", "etl")))
        job = workload("Job", "tenant-a", "nightly-29000000", template("alpha-etl", "etl"))
        job["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly",
                                               "uid": cron["metadata"]["uid"], "controller": True}]
        job = store.put(job)
        store.put({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "nightly-29000000-abcde", "namespace": "tenant-a", "annotations": {"iam.amazonaws.com/role": "alpha-etl"},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                                 "uid": job["metadata"]["uid"], "controller": True}]},
            "spec": {"serviceAccountName": "etl", "containers": [{"name": "main", "image": "busybox"}]}})
        store.put({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "debug", "namespace": "tenant-a", "annotations": {"iam.amazonaws.com/role": "alpha-app"}},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]}})
        store.put(workload("Deployment", "tenant-a", "plain", template(None)))
        store.put(workload("Deployment", "tenant-a", "sneaky", template("beta-app")))
        store.put(workload("Deployment", "tenant-b", "api", template("beta-app")))
        store.put(workload("Deployment", "tenant-b", "worker", template("beta-worker")))
        store.put(workload("DaemonSet", "tenant-b", "node-agent", template("beta-agent", "node-agent", host_network=True)))
        store.put(workload("StatefulSet", "tenant-b", "partner", template(PARTNER, "partner")))
        return self

    def run(self, *args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "rbacbridge", "migrate", "plan", "--kubeconfig", self.kube_api.kubeconfig,
                "-c", str(self.config), *args]
        return subprocess.run(argv, capture_output=True, text=True, env=dict(self.sandbox.env(), COLUMNS="200"),
                              timeout=120, stdin=subprocess.DEVNULL)

    def plan(self, *args: str) -> dict:
        done = self.run(*args, "-o", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def add_provider(self) -> None:
        self.iam.create_open_id_connect_provider(Url=ISSUER, ClientIDList=["sts.amazonaws.com"], ThumbprintList=["a" * 40])


@pytest.fixture
def cluster(kube_api, sandbox, tmp_path):
    return Cluster(kube_api, sandbox, tmp_path).build()


def irsa_statement(subjects: list[str]) -> dict:
    return {"Sid": "RbacbridgeIrsa", "Effect": "Allow", "Principal": {"Federated": PROVIDER},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {f"{HOST}:sub": subjects[0] if len(subjects) == 1 else subjects,
                                           f"{HOST}:aud": "sts.amazonaws.com"}}}


NOT_ALLOWED = ("kube2iam refuses this role in namespace tenant-a (allowed-roles): carrying it over would grant access "
               "the pods do not have today")
DEFAULT = ("the default role is not carried over: after the migration an unannotated pod gets no credentials "
           "(annotate the workload to keep a role)")


def row(kind, namespace, name, account, role, source="annotation", annotation=None, host_network=False, carried=True, note=""):
    return {"kind": kind, "namespace": namespace, "name": name, "service_account": account, "role_arn": role,
            "source": source, "annotation": annotation, "host_network": host_network, "carried": carried, "note": note}


INVENTORY = [
    row("Deployment", "tenant-a", "plain", "default", ROLE + "pod-default", "default role", None, carried=False, note=DEFAULT),
    row("Deployment", "tenant-a", "sneaky", "default", ROLE + "beta-app", annotation="beta-app", carried=False, note=NOT_ALLOWED),
    row("Deployment", "tenant-a", "web", "web", ROLE + "alpha-app", annotation="alpha-app"),
    row("CronJob", "tenant-a", "nightly", "etl", ROLE + "alpha-etl", annotation="alpha-etl"),
    row("Pod", "tenant-a", "debug", "default", ROLE + "alpha-app", annotation="alpha-app"),
    row("Deployment", "tenant-b", "api", "default", ROLE + "beta-app", annotation="beta-app"),
    row("Deployment", "tenant-b", "worker", "default", ROLE + "beta-worker", annotation="beta-worker"),
    row("StatefulSet", "tenant-b", "partner", "partner", PARTNER, annotation=PARTNER),
    row("DaemonSet", "tenant-b", "node-agent", "node-agent", ROLE + "beta-agent", annotation="beta-agent", host_network=True),
]
DEFAULT_WHY = "the namespace's default ServiceAccount: every pod without serviceAccountName would get the role"


def sa(namespace, name, role, action, dedicated_, reason, workloads):
    return {"namespace": namespace, "name": name, "role_arn": role, "action": action, "dedicated": dedicated_,
            "reason": reason, "workloads": workloads}


def test_irsa_plan_inventory_service_accounts_and_blockers(cluster):
    cluster.add_provider()
    plan = cluster.plan("--to", "irsa")
    assert plan["schema"] == "rbacbridge.migrate-plan/v1" and plan["target"] == "irsa"
    jsonschema.validate(plan, load_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**plan, "schema": "rbacbridge.migrate-plan/v2"}, load_schema())
    assert plan["cluster"] == {"account": ACCOUNT, "issuer": ISSUER, "cluster_name": None,
                               "kube2iam_settings": "DaemonSet kube-system/kube2iam"}
    assert plan["workloads"] == INVENTORY
    assert plan["service_accounts"] == [
        sa("tenant-a", dedicated("alpha-app"), ROLE + "alpha-app", "create", True, DEFAULT_WHY, ["Pod tenant-a/debug"]),
        sa("tenant-a", "etl", ROLE + "alpha-etl", "annotate", False, f"every workload running as etl gets {ROLE}alpha-etl",
           ["CronJob tenant-a/nightly"]),
        sa("tenant-a", "web", ROLE + "alpha-app", "annotate", False, f"every workload running as web gets {ROLE}alpha-app",
           ["Deployment tenant-a/web"]),
        sa("tenant-b", dedicated("beta-app"), ROLE + "beta-app", "create", True, DEFAULT_WHY, ["Deployment tenant-b/api"]),
        sa("tenant-b", dedicated("beta-worker"), ROLE + "beta-worker", "create", True, DEFAULT_WHY, ["Deployment tenant-b/worker"]),
        sa("tenant-b", "node-agent", ROLE + "beta-agent", "annotate", False, f"every workload running as node-agent gets {ROLE}beta-agent",
           ["DaemonSet tenant-b/node-agent"]),
        sa("tenant-b", "partner", PARTNER, "annotate", False, f"every workload running as partner gets {PARTNER}",
           ["StatefulSet tenant-b/partner"]),
    ]
    assert [(c["kind"], c["namespace"], c["name"], c["from_service_account"], c["to_service_account"]) for c in plan["workload_changes"]] == [
        ("Pod", "tenant-a", "debug", "default", dedicated("alpha-app")),
        ("Deployment", "tenant-b", "api", "default", dedicated("beta-app")),
        ("Deployment", "tenant-b", "worker", "default", dedicated("beta-worker")),
    ]
    assert plan["workload_changes"][0]["how"].startswith("recreate the pod with serviceAccountName")
    assert plan["workload_changes"][1]["how"] == f"set spec.template.spec.serviceAccountName: default -> {dedicated('beta-app')}"
    big = near_limit_trust()
    added = irsa_statement([f"system:serviceaccount:tenant-b:{dedicated('beta-worker')}"])
    worker = next(t for t in plan["trust"] if t["role_arn"] == ROLE + "beta-worker")
    assert worker["add"] == [added]
    assert worker["size_before"] == compact(big) and worker["size_after"] == compact({**big, "Statement": big["Statement"] + [added]})
    alpha = next(t for t in plan["trust"] if t["role_arn"] == ROLE + "alpha-app")
    assert alpha["add"] == [irsa_statement([f"system:serviceaccount:tenant-a:{dedicated('alpha-app')}",
                                            "system:serviceaccount:tenant-a:web"])]
    assert [t["role_arn"] for t in plan["trust"]] == [ROLE + r for r in ("alpha-app", "alpha-etl", "beta-agent", "beta-app", "beta-worker")]
    assert plan["blockers"] == [
        {"kind": "host-network", "object": "DaemonSet tenant-b/node-agent",
         "reason": "hostNetwork: its pods reach the node's metadata service directly (the node role), whatever the migration does"},
        {"kind": "cross-account", "object": f"Role {PARTNER}",
         "reason": f"not in the cluster's account {ACCOUNT}: its trust cannot be changed from here (used by StatefulSet tenant-b/partner)"},
        {"kind": "trust-size", "object": f"Role {ROLE}beta-worker",
         "reason": f"its trust policy would be {worker['size_after']} characters after adding 1 statement(s) "
                   f"(today {worker['size_before']}; IAM's default limit 2048)"},
    ]
    assert worker["size_before"] <= 2048 < worker["size_after"]
    phases = {(s["kind"], s["name"]): (s["action"], s["details"]["phase"]) for s in plan["steps"]}
    assert phases[("iam-oidc-provider", HOST)] == ("unchanged", "dual")
    assert phases[("ServiceAccount", f"tenant-b/{dedicated('beta-app')}")] == ("create", "dual")
    assert phases[("ServiceAccount", "tenant-a/web")] == ("update", "dual")  # annotated
    assert phases[("Deployment", "tenant-b/api")] == ("update", "cutover")
    assert phases[("Deployment", "tenant-a/web")] == ("update", "cutover")  # restart: same ServiceAccount, new path
    assert ("CronJob", "tenant-a/nightly") not in phases  # its next run starts with the new path
    assert plan["counts"] == {"workloads": 9, "carried": 7, "changes": len([s for s in plan["steps"] if s["action"] != "unchanged"]),
                              "blockers": 3}


def test_dedicated_names_are_valid_dns_labels():
    from rbacbridge.migrate.mapping import dedicated_name

    long = "arn:aws:iam::123456789012:role/team/" + "Very_Long.Role+Name=" * 6
    name = dedicated_name(long)
    import re

    assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    assert name.endswith("-" + hashlib.sha256(long.encode()).hexdigest()[:8])
    assert dedicated_name(ROLE + "alpha-app") == dedicated("alpha-app")
    assert dedicated_name("arn:aws:iam::111111111111:role/alpha-app") != dedicated("alpha-app")


def plan_with_etl_trusting(cluster, account: str) -> tuple[dict, dict, dict]:
    """alpha-etl's trust given rbacbridge's IRSA statement for tenant-a/<account>: (that trust, the plan, its row)."""
    trust = node_trust()
    trust["Statement"].append(irsa_statement([f"system:serviceaccount:tenant-a:{account}"]))
    cluster.iam.update_assume_role_policy(RoleName="alpha-etl", PolicyDocument=json.dumps(trust))
    plan = cluster.plan("--to", "irsa")
    return trust, plan, next(t for t in plan["trust"] if t["role_arn"] == ROLE + "alpha-etl")


def test_irsa_without_provider_is_blocked_and_rerun_after_dual_is_quiet(cluster):
    plan = cluster.plan("--to", "irsa")
    assert {"kind": "oidc-provider", "object": f"OIDC provider {HOST}",
            "reason": "no IAM OIDC provider for the cluster's issuer: create it (aws iam create-open-id-connect-provider; "
                      "or let `migrate apply --phase dual` create it)"} in plan["blockers"]
    # what the dual phase would leave (done here by hand): the alpha-etl role already trusts etl; the plan sees it
    cluster.add_provider()
    trust, again, etl = plan_with_etl_trusting(cluster, "etl")
    assert etl["add"] == [] and etl["size_after"] == etl["size_before"] == compact(trust)
    assert not any(b["kind"] == "oidc-provider" for b in again["blockers"])


def test_issuer_from_the_flag_and_an_unreadable_one(cluster):
    cluster.kube_api.server.issuer = None
    plan = cluster.plan("--to", "irsa")
    assert plan["cluster"]["issuer"] is None
    assert plan["blockers"][0] == {"kind": "issuer", "object": "service-account issuer", "reason":
                                   "cannot read it: the API server does not serve /.well-known/openid-configuration (pass --issuer)"}
    private = cluster.plan("--to", "irsa", "--issuer", "https://kubernetes.default.svc")
    assert private["blockers"][0]["kind"] == "issuer" and "not a public name" in private["blockers"][0]["reason"]
    cluster.add_provider()
    flagged = cluster.plan("--to", "irsa", "--issuer", ISSUER)
    assert flagged["cluster"]["issuer"] == ISSUER and {b["kind"] for b in flagged["blockers"]} == {"host-network", "cross-account", "trust-size"}


def test_pod_identity_plan(cluster):
    plan = cluster.plan("--to", "pod-identity", "--cluster-name", "prod-1")
    jsonschema.validate(plan, load_schema())
    assert plan["blockers"][0] == {"kind": "unknown", "object": "EKS cluster prod-1", "reason":
                                   "cannot check: EKS API: describe_addon answered 404"}  # moto has no EKS add-ons
    alpha = next(t for t in plan["trust"] if t["role_arn"] == ROLE + "alpha-app")
    statement = lambda ns, name: {  # noqa: E731 - the shape of docs.aws.amazon.com/eks/latest/userguide/pod-id-role.html
        "Sid": "RbacbridgePodIdentity" + hashlib.sha256(f"{ns}/{name}".encode()).hexdigest()[:8], "Effect": "Allow",
        "Principal": {"Service": "pods.eks.amazonaws.com"}, "Action": ["sts:AssumeRole", "sts:TagSession"],
        "Condition": {"StringEquals": {"aws:RequestTag/kubernetes-namespace": ns, "aws:RequestTag/kubernetes-service-account": name}}}
    assert alpha["add"] == [statement("tenant-a", dedicated("alpha-app")), statement("tenant-a", "web")]
    assert [s["action"] for s in plan["service_accounts"]] == ["create", "keep", "keep", "create", "create", "keep", "keep"]
    associations = [s["name"] for s in plan["steps"] if s["kind"] == "pod-identity-association"]
    assert associations == [f"tenant-a/{dedicated('alpha-app')}", "tenant-a/etl", "tenant-a/web", f"tenant-b/{dedicated('beta-app')}",
                            f"tenant-b/{dedicated('beta-worker')}", "tenant-b/node-agent", "tenant-b/partner"]
    worker = next(t for t in plan["trust"] if t["role_arn"] == ROLE + "beta-worker")
    assert worker["size_after"] > 2048 and any(b["kind"] == "trust-size" for b in plan["blockers"])


def test_a_taken_dedicated_name_is_a_blocker_and_ours_is_not(cluster):
    name = dedicated("beta-app")
    cluster.store.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": "tenant-b"}})
    plan = cluster.plan("--to", "irsa", "--issuer", ISSUER)
    assert {"kind": "service-account", "object": f"ServiceAccount tenant-b/{name}", "reason":
            "the dedicated ServiceAccount's name is taken by one rbacbridge did not create (no label managed-by=rbacbridge)"} in plan["blockers"]
    assert next(s for s in plan["service_accounts"] if s["name"] == name)["action"] == "taken"
    assert not any(s["name"] == f"tenant-b/{name}" and s["kind"] == "ServiceAccount" for s in plan["steps"])
    cluster.store.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
        "name": name, "namespace": "tenant-b", "labels": {"managed-by": "rbacbridge"},
        "annotations": {"eks.amazonaws.com/role-arn": ROLE + "beta-app"}}})
    plan = cluster.plan("--to", "irsa", "--issuer", ISSUER)
    assert not any(b["kind"] == "service-account" for b in plan["blockers"])
    assert next(s for s in plan["service_accounts"] if s["name"] == name)["action"] == "unchanged"


@pytest.mark.parametrize("target", ["irsa", "pod-identity"])
def test_read_only(cluster, target):
    cluster.add_provider()
    args = ("--to", "irsa") if target == "irsa" else ("--to", "pod-identity", "--cluster-name", "prod-1")
    before = cluster.sandbox.snapshot()
    actions, done = recorded_actions(cluster.sandbox.url, cluster.config.parent / "moto_recording",
                                     lambda: cluster.run(*args, "-o", "yaml"))
    assert done.returncode == 0, done.stderr
    jsonschema.validate(yaml.safe_load(done.stdout), load_schema())
    expected = {"GetCallerIdentity", "GetRole"} | ({"ListOpenIDConnectProviders"} if target == "irsa" else set())
    assert actions and set(actions) == expected
    assert sorted(a for a in actions if a == "GetRole") == ["GetRole"] * 5  # one per role in the account
    assert cluster.sandbox.snapshot() == before
    assert {r.method for r in cluster.store.requests} == {"GET"} and not cluster.store.mutating_requests()
    listed = [r.path for r in cluster.store.requests]
    for path in ("/apis/apps/v1/deployments", "/apis/apps/v1/statefulsets", "/apis/apps/v1/daemonsets", "/apis/batch/v1/jobs",
                 "/apis/batch/v1/cronjobs", "/api/v1/pods", "/api/v1/serviceaccounts", "/api/v1/namespaces"):
        assert listed.count(path) == 1, path
    assert listed.count("/.well-known/openid-configuration") == (1 if target == "irsa" else 0)


def test_exit_codes(cluster):
    assert cluster.run("--to", "irsa").returncode == 0  # a plan with blockers, without --exit-code
    cluster.kube_api.server.forbid("list", "cronjobs")
    refused = cluster.run("--to", "irsa", "--exit-code")
    assert refused.returncode == 1 and refused.stderr.startswith("error: missing Kubernetes permission: list cronjobs.batch")
    cluster.kube_api.store.forbidden.clear()
    blocked = cluster.run("--to", "irsa", "--exit-code")
    assert blocked.returncode == 1 and "blockers (4)" in blocked.stdout
    assert cluster.run("--to", "pod-identity", "--cluster-name", "prod-1", "--exit-code", "-o", "json").returncode == 1
    # only the clean part of the cluster: changes pending (4); then nothing left to do (0)
    for kind, namespace, name in (("DaemonSet", "tenant-b", "node-agent"), ("StatefulSet", "tenant-b", "partner"),
                                  ("Deployment", "tenant-b", "worker")):
        cluster.store.delete(kind, name, namespace)
    cluster.add_provider()
    assert cluster.run("--to", "irsa", "--exit-code").returncode == 4
    for kind, namespace, name in (("Deployment", "tenant-a", "web"), ("CronJob", "tenant-a", "nightly"), ("Pod", "tenant-a", "debug"),
                                  ("Deployment", "tenant-b", "api")):
        cluster.store.delete(kind, name, namespace)
    quiet = cluster.run("--to", "irsa", "--exit-code")
    assert quiet.returncode == 0, quiet.stdout
    assert "0 blockers" in quiet.stdout and "0 changes" in quiet.stdout


def test_an_unreachable_cluster_is_one_line_and_exit_3(cluster, tmp_path):
    from tests.fixtures_kube import write_kubeconfig

    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cluster.kube_api = type(cluster.kube_api)(cluster.kube_api.server, str(write_kubeconfig(
        tmp_path / "dead", {"dead": f"http://127.0.0.1:{port}"}, current="dead")))
    done = cluster.run("--to", "irsa", "--exit-code")
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.startswith("error: cannot reach the Kubernetes API server at http://127.0.0.1:") and done.stderr.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (("--to", "kiam"), "error: invalid --to 'kiam': choose from irsa, pod-identity"),
    ((), "error: migrate plan needs --to: choose from irsa, pod-identity"),
    (("--to", "pod-identity"), "error: --to pod-identity needs --cluster-name: the EKS cluster's name"),
    (("--to", "irsa", "--issuer", "not a url"), "error: invalid --issuer 'not a url': an https URL, with --to irsa only"),
    (("--to", "irsa", "--cluster-name", "prod"), "error: invalid --cluster-name 'prod': an EKS cluster name, with --to pod-identity only"),
    (("--to", "irsa", "-o", "xml"), "error: invalid --output 'xml': choose from table, json, yaml"),
])
def test_bad_input_is_one_line_and_exit_2(cluster, args, message):
    done = cluster.run(*args)
    assert done.returncode == 2 and done.stderr.strip() == message and done.stdout == ""
    assert cluster.store.requests == []


def test_settings_from_the_configuration_and_a_custom_role_key(cluster):
    kube2iam = cluster.store.get("DaemonSet", "kube2iam", "kube-system")
    cluster.store.delete("DaemonSet", "kube2iam", "kube-system")
    plan = cluster.plan("--to", "irsa", "--issuer", ISSUER)
    assert plan["cluster"]["kube2iam_settings"] == "config"
    assert "no kube2iam DaemonSet found: roles resolved with the configuration's settings" in plan["notes"]
    # the configuration's default role (kube2iam.default_role: dedicated -> iam.default_role) and its restrictions
    assert plan["workloads"][:2] == [
        row("Deployment", "tenant-a", "plain", "default", ROLE + "nettech-pod-default", "default role", None, carried=False, note=DEFAULT),
        INVENTORY[1]]
    assert plan["workloads"][2:] == INVENTORY[2:]
    container = kube2iam["spec"]["template"]["spec"]["containers"][0]
    container["args"] = [*container["args"], "--iam-role-key=example.com/role"]
    cluster.store.put(kube2iam)
    cluster.store.put(workload("Deployment", "tenant-b", "custom", {**template(None, "custom"), "metadata": {
        "annotations": {"example.com/role": "beta-app", "iam.amazonaws.com/role": "beta-agent"}}}))
    custom = cluster.plan("--to", "irsa", "--issuer", ISSUER)
    assert [(w["namespace"], w["name"], w["role_arn"]) for w in custom["workloads"] if w["source"] == "annotation"] == [
        ("tenant-b", "custom", ROLE + "beta-app")]


def test_an_earlier_runs_statement_is_replaced_not_repeated(cluster):
    cluster.add_provider()
    trust, _, etl = plan_with_etl_trusting(cluster, "etl-old")
    wanted = irsa_statement(["system:serviceaccount:tenant-a:etl"])
    assert etl["add"] == [wanted]
    assert etl["size_before"] == compact(trust) and etl["size_after"] == compact({**trust, "Statement": [node_trust()["Statement"][0], wanted]})
