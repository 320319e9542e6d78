"""`rbacbridge migrate apply --phase dual|cutover`, `migrate rollback`, `migrate status` (IRSA) as users run them:
the CLI as a subprocess against moto (server mode) and the test API server.

The cluster: kube2iam's DaemonSet (--base-role-arn), in tenant-a a Deployment on its own ServiceAccount (`web`,
alpha-app) and a CronJob on `etl` (alpha-etl); in tenant-b a Deployment on `default` (beta-app: moves to a
dedicated ServiceAccount) and an unannotated one (the default role: not carried). The test API server runs its
rollouts (a changed pod template replaces the pods) and plays EKS's injecting webhook (tests/identity_webhook.py:
AWS_ROLE_ARN / AWS_WEB_IDENTITY_TOKEN_FILE into pods whose ServiceAccount carries eks.amazonaws.com/role-arn).
Expectations are written out here (trust statements in the
AWS documentation's shape, names hashed with hashlib), never read back from rbacbridge's code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zlib

import pytest

from tests.fixtures_aws import ACCOUNT, moto_url, sandbox  # noqa: F401
from tests.fixtures_kube import kube_api  # noqa: F401
from tests.identity_webhook import IdentityWebhook

ROLE = f"arn:aws:iam::{ACCOUNT}:role/"
ISSUER = "https://oidc.example.com/id/CLUSTER1"
HOST = "oidc.example.com/id/CLUSTER1"
PROVIDER = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{HOST}"
INSTALL = "nettech-instance-profile"
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
RESTARTED = "kubectl.kubernetes.io/restartedAt"


def dedicated(role: str) -> str:
    return f"{role}-{hashlib.sha256((ROLE + role).encode()).hexdigest()[:8]}"


def node_trust(extra: list | None = None) -> dict:
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ROLE + "k8s-node"}, "Action": "sts:AssumeRole"}, *(extra or [])]}


def irsa_statement(subjects: list[str]) -> dict:
    return {"Sid": "RbacbridgeIrsa", "Effect": "Allow", "Principal": {"Federated": PROVIDER},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {f"{HOST}:sub": subjects[0] if len(subjects) == 1 else subjects,
                                           f"{HOST}:aud": "sts.amazonaws.com"}}}


def template(app: str, role: str | None, account: str = "default") -> dict:
    meta = {"labels": {"app": app}}
    if role is not None:
        meta["annotations"] = {"iam.amazonaws.com/role": role}
    return {"metadata": meta, "spec": {"serviceAccountName": account, "containers": [{"name": "main", "image": "busybox"}]}}


def deployment(namespace: str, name: str, role: str | None, account: str = "default") -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}}, "template": template(name, role, account)}}


class Cluster:
    def __init__(self, kube_api, sandbox, tmp_path):
        self.kube_api, self.sandbox, self.store, self.iam = kube_api, sandbox, kube_api.store, sandbox.client("iam")
        self.config = tmp_path / "rbacbridge.yaml"
        self.config.write_text(CONFIG)
        kube_api.server.issuer = ISSUER

    def build(self) -> "Cluster":
        store, iam = self.store, self.iam
        for role in ("k8s-node", "alpha-app", "alpha-etl", "beta-app", "pod-default"):
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(node_trust()))
        store.put({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "kube2iam", "namespace": "kube-system"},
                   "spec": {"selector": {"matchLabels": {"name": "kube2iam"}}, "template": {
                       "metadata": {"labels": {"name": "kube2iam"}},
                       "spec": {"hostNetwork": True, "serviceAccountName": "kube2iam", "containers": [{
                           "name": "kube2iam", "image": "jtblin/kube2iam:0.13.0",
                           "args": [f"--base-role-arn={ROLE}", "--default-role=pod-default", "--iptables=true",
                                    "--host-interface=cni0"]}]}}}})
        for namespace in ("tenant-a", "tenant-b"):
            store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        for namespace, name in (("tenant-a", "default"), ("tenant-a", "web"), ("tenant-a", "etl"), ("tenant-b", "default")):
            store.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}})
        store.rollouts = True  # the Deployment controller: a changed pod template replaces the pods
        store.webhook = IdentityWebhook(region="us-east-1")  # EKS's injecting webhook (IRSA)
        for obj in (deployment("tenant-a", "web", "alpha-app", "web"), deployment("tenant-b", "api", "beta-app"),
                    deployment("tenant-b", "plain", None)):
            self.kube_post("/apis/apps/v1/namespaces/%s/deployments" % obj["metadata"]["namespace"], obj)
        store.put({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly", "namespace": "tenant-a"},
                   "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": template("nightly", "alpha-etl", "etl")}}}})
        store.requests.clear()
        return self

    def kube_post(self, path: str, body: dict) -> None:
        code, answer = self.store.handle("POST", path, {}, "application/json", body)
        assert code == 201, answer

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "rbacbridge", "migrate", *args, "--kubeconfig", self.kube_api.kubeconfig,
                "-c", str(self.config)]

    def env(self, **extra: str) -> dict:
        return dict(self.sandbox.env(), COLUMNS="200", **extra)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env(), timeout=180,
                              stdin=subprocess.DEVNULL)

    def apply(self, phase: str, *args: str) -> dict:
        done = self.run("apply", "--phase", phase, "--to", "irsa", "--timeout", "20", "--yes", "-o", "json", *args)
        assert done.returncode == 0, done.stderr + done.stdout
        return json.loads(done.stdout)

    def rollback(self, *args: str) -> dict:
        done = self.run("rollback", "--timeout", "20", "--yes", "-o", "json", *args)
        assert done.returncode == 0, done.stderr + done.stdout
        return json.loads(done.stdout)

    def trust(self, role: str) -> dict:
        return self.iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]

    def trusts(self) -> dict:
        return {r: self.trust(r) for r in ("k8s-node", "alpha-app", "alpha-etl", "beta-app", "pod-default")}

    def providers(self) -> list[str]:
        return [p["Arn"] for p in self.iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]]

    def accounts(self) -> dict:
        return {(sa["metadata"]["namespace"], sa["metadata"]["name"]): sa for sa in self.store.objects_of("ServiceAccount")}

    def pod_account(self, namespace: str, name: str) -> str:
        obj = self.store.get("Deployment", name, namespace)
        return obj["spec"]["template"]["spec"].get("serviceAccountName", "default")

    def kube_state(self) -> dict:
        """Everything but pods and bookkeeping: what a phase and its rollback must leave as they found it (an empty
        annotations map is no annotations: the API server omits it)."""
        state = {}
        for kind in ("ServiceAccount", "Deployment", "CronJob", "DaemonSet", "Namespace"):
            for obj in self.store.objects_of(kind):
                meta = obj["metadata"]
                state[(kind, meta.get("namespace", ""), meta["name"])] = (
                    {k: v for k, v in meta.items() if k in ("labels", "annotations", "uid") and v}, obj.get("spec"))
        return state

    def migration_record(self) -> dict | None:
        """The migration record read the way an operator could with the AWS CLI, its signature checked by KMS."""
        kms = self.sandbox.client("kms")
        try:
            key = kms.describe_key(KeyId=f"alias/rbacbridge/{INSTALL}")["KeyMetadata"]
        except kms.exceptions.NotFoundException:
            return None
        tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=key["KeyId"])["Tags"]}
        prefix = f"rbacbridge:migration:{INSTALL}:"
        if f"{prefix}sig" not in tags:
            return None
        count, signature = tags[f"{prefix}sig"].split(" ")
        payload = "".join(tags[f"{prefix}{n}"] for n in range(1, int(count) + 1))
        message = f"rbacbridge-migration/v1 install={INSTALL} chunks={count} sha256={hashlib.sha256(payload.encode()).hexdigest()}"
        assert kms.verify(KeyId=key["KeyId"], Message=message.encode(), MessageType="RAW", Signature=base64.b64decode(signature),
                          SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"]
        return json.loads(zlib.decompress(base64.b64decode(payload)))


@pytest.fixture
def cluster(kube_api, sandbox, tmp_path):
    return Cluster(kube_api, sandbox, tmp_path).build()


WEB_SUB = "system:serviceaccount:tenant-a:web"
API_SA = dedicated("beta-app")


def dual_trusts() -> dict:
    return {
        "k8s-node": node_trust(), "pod-default": node_trust(),
        "alpha-app": node_trust([irsa_statement([WEB_SUB])]),
        "alpha-etl": node_trust([irsa_statement(["system:serviceaccount:tenant-a:etl"])]),
        "beta-app": node_trust([irsa_statement([f"system:serviceaccount:tenant-b:{API_SA}"])]),
    }


def test_dual_dry_run_changes_nothing_and_without_yes_refuses(cluster):
    before_trust, before_kube = cluster.trusts(), cluster.kube_state()
    dry = cluster.run("apply", "--phase", "dual", "--to", "irsa", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    for line in (f"dual: create the install's KMS key alias/rbacbridge/{INSTALL} (ECC_NIST_P256, SIGN_VERIFY): it signs the",
                 "dual: create IAM OIDC provider for oidc.example.com/id/CLUSTER1",
                 "dual: add 1 trust statement(s) to role beta-app for tenant-b/" + API_SA,
                 f"dual: create ServiceAccount tenant-b/{API_SA} annotated eks.amazonaws.com/role-arn={ROLE}beta-app",
                 f"dual: annotate ServiceAccount tenant-a/web eks.amazonaws.com/role-arn={ROLE}alpha-app"):
        assert line in dry.stdout, dry.stdout
    assert "cutover" not in dry.stdout
    refused = cluster.run("apply", "--phase", "dual", "--to", "irsa")
    assert refused.returncode == 2 and "no terminal to confirm them" in refused.stderr
    assert refused.stderr.count("\n") == 1
    assert cluster.trusts() == before_trust and cluster.kube_state() == before_kube
    assert cluster.providers() == [] and cluster.migration_record() is None
    assert not cluster.store.mutating_requests()


def test_dual_then_rerun_then_rollback_restores_exactly(cluster):
    before_trust, before_kube = cluster.trusts(), cluster.kube_state()
    pods_before = sorted(p["metadata"]["name"] for p in cluster.store.objects_of("Pod"))
    result = cluster.apply("dual")
    assert result["ok"] and result["phase"] == "dual"
    assert cluster.trusts() == dual_trusts()
    assert cluster.providers() == [PROVIDER]
    accounts = cluster.accounts()
    made = accounts[("tenant-b", API_SA)]["metadata"]
    assert made["labels"] == {"managed-by": "rbacbridge"}
    assert made["annotations"] == {"eks.amazonaws.com/role-arn": ROLE + "beta-app"}
    assert accounts[("tenant-a", "web")]["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": ROLE + "alpha-app"}
    assert accounts[("tenant-a", "etl")]["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": ROLE + "alpha-etl"}
    # no restart, no workload touched: kube2iam keeps serving
    assert sorted(p["metadata"]["name"] for p in cluster.store.objects_of("Pod")) == pods_before
    assert not [r for r in cluster.store.mutating_requests() if "deployments" in r.path or "cronjobs" in r.path]
    record = cluster.migration_record()
    assert record["phase"] == "dual" and record["state"] == "done" and record["target"] == "irsa"
    assert record["trust"]["beta-app"]["dual"] == before_trust["beta-app"]
    assert record["accounts"][f"tenant-b/{API_SA}"]["uid"] == made["uid"]
    assert record["provider"]["created"] is True and record["provider"]["arn"] == PROVIDER

    requests = len(cluster.store.mutating_requests())
    again = cluster.apply("dual")
    assert again["applied"] == [] and all(s["action"] == "unchanged" for s in again["plan"]["steps"])
    assert len(cluster.store.mutating_requests()) == requests and cluster.trusts() == dual_trusts()
    text = cluster.run("apply", "--phase", "dual", "--to", "irsa", "--yes")
    assert text.returncode == 0 and "0 changes" in text.stdout

    back = cluster.rollback()
    assert back["ok"] and back["phase"] == "rollback-dual"
    assert cluster.trusts() == before_trust  # the exact documents recorded before dual
    assert cluster.providers() == []
    assert cluster.kube_state() == before_kube
    assert cluster.migration_record() is None
    nothing = cluster.run("rollback", "--yes")
    assert nothing.returncode == 2 and nothing.stderr.strip() == "error: nothing to roll back: no migration is recorded for this install"


def test_rollback_keeps_a_provider_dual_did_not_create(cluster):
    cluster.iam.create_open_id_connect_provider(Url=ISSUER, ClientIDList=["sts.amazonaws.com"], ThumbprintList=["a" * 40])
    cluster.apply("dual")
    assert cluster.migration_record()["provider"] == {}
    cluster.rollback()
    assert cluster.providers() == [PROVIDER]


def test_cutover_restarts_onto_irsa_status_and_rollback(cluster):
    trusts_before = cluster.trusts()
    cluster.apply("dual")
    plain_pods = sorted(p["metadata"]["name"] for p in cluster.store.objects_of("Pod", "tenant-b") if p["metadata"]["name"].startswith("plain"))
    status = json.loads(cluster.run("status", "-o", "json").stdout)
    assert status["phase"] == "dual" and {w["name"]: w["path"] for w in status["workloads"]} == {
        "web": "kube2iam", "api": "kube2iam", "nightly": "no pods"}
    assert {w["name"]: w["restarted_since_dual"] for w in status["workloads"]}["web"] is False
    time.sleep(1.1)  # the restart stamp is in seconds: the pods it makes are newer than dual's start
    dry = cluster.run("apply", "--phase", "cutover", "--to", "irsa", "--dry-run")
    assert f"cutover: Deployment tenant-b/api: set spec.template.spec.serviceAccountName: default -> {API_SA}" in dry.stdout
    assert "cutover: Deployment tenant-a/web: restart its pods (as kubectl rollout restart does)" in dry.stdout
    result = cluster.apply("cutover")
    assert result["ok"], result
    web, api = cluster.store.get("Deployment", "web", "tenant-a"), cluster.store.get("Deployment", "api", "tenant-b")
    assert RESTARTED in web["spec"]["template"]["metadata"]["annotations"]
    assert api["spec"]["template"]["spec"]["serviceAccountName"] == API_SA
    assert web["spec"]["template"]["spec"]["serviceAccountName"] == "web"
    # the CronJob keeps its ServiceAccount (annotated by dual): its next run gets the new path, no restart
    assert RESTARTED not in json.dumps(cluster.store.get("CronJob", "nightly", "tenant-a"))
    # the unannotated workload is not touched
    assert sorted(p["metadata"]["name"] for p in cluster.store.objects_of("Pod", "tenant-b") if p["metadata"]["name"].startswith("plain")) == plain_pods
    api_pods = [p for p in cluster.store.objects_of("Pod", "tenant-b") if p["metadata"]["name"].startswith("api")]
    assert len(api_pods) == 2 and all(p["spec"]["serviceAccountName"] == API_SA for p in api_pods)
    record = cluster.migration_record()
    assert record["phase"] == "cutover" and record["state"] == "done"
    assert record["workloads"]["Deployment tenant-b/api"]["from"] == "default"
    status = json.loads(cluster.run("status", "-o", "json").stdout)
    assert status["phase"] == "cutover"
    assert {w["name"]: (w["path"], w["restarted_since_dual"]) for w in status["workloads"] if w["kind"] == "Deployment"} == {
        "web": ("irsa", True), "api": ("irsa", True)}
    table = cluster.run("status")
    assert table.returncode == 0 and "phase: cutover (done) to irsa" in table.stdout

    requests = len(cluster.store.mutating_requests())
    again = cluster.apply("cutover")
    assert again["applied"] == [] and len(cluster.store.mutating_requests()) == requests
    refused = cluster.run("apply", "--phase", "dual", "--to", "irsa", "--yes")
    assert refused.returncode == 2 and "cannot apply dual: the migration is at cutover (roll back first)" in refused.stderr

    back = cluster.rollback()
    assert back["phase"] == "rollback-cutover" and back["ok"]
    assert {(s["kind"], s["name"]): s["action"] for s in back["plan"]["steps"]} == {
        ("Deployment", "tenant-b/api"): "restore", ("Deployment", "tenant-a/web"): "unchanged"}
    assert cluster.pod_account("tenant-b", "api") == "default" and cluster.pod_account("tenant-a", "web") == "web"
    assert cluster.trusts() == dual_trusts()  # dual's changes stay: one phase back
    assert cluster.migration_record()["phase"] == "dual"
    status = json.loads(cluster.run("status", "-o", "json").stdout)
    assert {w["name"]: w["path"] for w in status["workloads"] if w["kind"] == "Deployment"} == {
        "web": "irsa", "api": "kube2iam"}  # web keeps its annotated ServiceAccount until dual is rolled back too
    dual_back = cluster.rollback()
    assert cluster.migration_record() is None and API_SA not in {n for _, n in cluster.accounts()}
    # web's pods had the web identity: restarted once the annotation was off, before its role stopped trusting them
    order = [(s["kind"], s["name"]) for s in dual_back["applied"]]
    assert order.index(("ServiceAccount", "tenant-a/web")) < order.index(("Deployment", "tenant-a/web")) \
        < order.index(("iam-role-trust", "alpha-app"))
    status = json.loads(cluster.run("status", "-o", "json").stdout)
    assert status["phase"] == "kube2iam" and {w["name"]: w["path"] for w in status["workloads"] if w["kind"] == "Deployment"} == {
        "web": "kube2iam", "api": "kube2iam"}
    assert cluster.trusts() == trusts_before


def test_pod_identity_is_refused_when_the_eks_api_cannot_be_read(cluster):  # moto has no add-ons: 404
    done = cluster.run("apply", "--phase", "dual", "--to", "pod-identity", "--cluster-name", "prod-1", "--yes")
    assert done.returncode == 1 and done.stderr.startswith(
        "error: 1 blocker(s), nothing changed: unknown EKS cluster prod-1: cannot check: EKS API: describe_addon answered 404")
    assert not cluster.store.mutating_requests() and cluster.migration_record() is None


def test_cutover_before_dual_and_bad_input(cluster):
    done = cluster.run("apply", "--phase", "cutover", "--to", "irsa", "--yes")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: cannot apply cutover: the migration is at kube2iam (no phase applied) (apply dual first)"
    for args, message in (
            (("apply", "--to", "irsa"), "error: migrate apply needs --phase: choose from dual, cutover, finish"),
            (("apply", "--phase", "half", "--to", "irsa"), "error: invalid --phase 'half': choose from dual, cutover, finish"),
            (("apply", "--phase", "dual"), "error: migrate apply needs --to: choose from irsa, pod-identity"),
            (("apply", "--phase", "dual", "--to", "irsa", "--timeout", "0"), "error: invalid --timeout 0: seconds, more than 0 and at most 3600"),
            (("rollback", "--timeout", "-1"), "error: invalid --timeout -1: seconds, more than 0 and at most 3600"),
            # finish is not built: the line must never send users to teardown (it deletes the roles pods now use)
            (("apply", "--phase", "finish", "--to", "irsa", "--yes"),
             "error: migrate apply --phase finish is not built yet: keep kube2iam serving beside the new path (it keeps "
             "pods off the node role); do not run teardown for it (teardown deletes the pod roles)")):
        done = cluster.run(*args)
        assert done.returncode == 2 and done.stderr.strip() == message and done.stdout == "", (args, done.stderr)
    assert not cluster.store.mutating_requests()


def test_a_foreign_service_account_with_the_dedicated_name_is_never_touched(cluster):
    foreign = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": API_SA, "namespace": "tenant-b"}}
    cluster.store.put(foreign)
    before = cluster.trusts()
    done = cluster.run("apply", "--phase", "dual", "--to", "irsa", "--yes")
    assert done.returncode == 1
    assert (f"error: 1 blocker(s), nothing changed: service-account ServiceAccount tenant-b/{API_SA}: the dedicated "
            "ServiceAccount's name is taken by one rbacbridge did not create") in done.stderr
    assert cluster.trusts() == before and cluster.migration_record() is None
    assert cluster.accounts()[("tenant-b", API_SA)]["metadata"].get("annotations") is None
    # one carrying our label but created after dual (not the uid the record names) is left alone by rollback
    cluster.store.delete("ServiceAccount", API_SA, "tenant-b")
    cluster.apply("dual")
    cluster.store.delete("ServiceAccount", API_SA, "tenant-b")
    impostor = cluster.store.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
        "name": API_SA, "namespace": "tenant-b", "labels": {"managed-by": "rbacbridge"}}})
    back = cluster.rollback()
    assert any(s["message"].endswith("is not the one dual created (another uid): left alone") for s in back["plan"]["steps"])
    assert cluster.accounts()[("tenant-b", API_SA)]["metadata"]["uid"] == impostor["metadata"]["uid"]
    assert cluster.trusts() == before


def test_rollback_refuses_a_trust_someone_else_changed_since_dual(cluster):
    cluster.apply("dual")
    changed = dual_trusts()["alpha-app"]
    changed["Statement"].append({"Effect": "Allow", "Principal": {"AWS": ROLE + "ci"}, "Action": "sts:AssumeRole"})
    cluster.iam.create_role(RoleName="ci", AssumeRolePolicyDocument=json.dumps(node_trust()))
    cluster.iam.update_assume_role_policy(RoleName="alpha-app", PolicyDocument=json.dumps(changed))
    done = cluster.run("rollback", "--yes")
    assert done.returncode == 1 and "1 conflict(s), nothing changed: iam-role-trust alpha-app" in done.stderr
    assert cluster.trust("alpha-app") == changed and cluster.trust("beta-app") == dual_trusts()["beta-app"]


def test_a_tampered_migration_record_stops_rollback(cluster):
    cluster.apply("dual")
    kms = cluster.sandbox.client("kms")
    key = kms.describe_key(KeyId=f"alias/rbacbridge/{INSTALL}")["KeyMetadata"]["KeyId"]
    forged = json.loads(json.dumps(cluster.migration_record()))
    forged["trust"]["alpha-app"]["dual"] = node_trust([{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}])
    payload = base64.b64encode(zlib.compress(json.dumps(forged).encode())).decode()
    kms.tag_resource(KeyId=key, Tags=[{"TagKey": f"rbacbridge:migration:{INSTALL}:1", "TagValue": payload[:256]}])
    done = cluster.run("rollback", "--yes")
    assert done.returncode == 1 and "migration record of install" in done.stderr and "does not verify" in done.stderr
    assert cluster.trusts() == dual_trusts()


def killed_after(cluster, steps: int, *args: str) -> subprocess.CompletedProcess:
    """The CLI killed with SIGKILL right after its N-th step (rbacbridge's test hook), before its record's last write."""
    done = subprocess.run(cluster.argv(*args), env=cluster.env(RBACBRIDGE_TEST_KILL_AFTER_STEPS=str(steps)), capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == -signal.SIGKILL, done.stderr
    return done


# the steps: the KMS key (made by the record's first write), the provider, 3 trusts, 2 annotations, 1 ServiceAccount;
# 8: every change made, the record not yet marked done
@pytest.mark.parametrize("steps", [2, 5, 7, 8])
def test_dual_killed_mid_phase_converges_on_rerun(cluster, steps):
    before = cluster.trusts()
    killed_after(cluster, steps, "apply", "--phase", "dual", "--to", "irsa", "--yes")
    record = cluster.migration_record()
    assert record is not None and record["state"] == "running"  # the record was written before the first change
    assert cluster.providers() == [PROVIDER]  # the first step after the key
    cluster.apply("dual")
    assert cluster.trusts() == dual_trusts() and cluster.migration_record()["state"] == "done"
    assert cluster.apply("dual")["applied"] == []
    cluster.rollback()
    assert cluster.trusts() == before and cluster.providers() == []  # the provider claimed on its creation time
    assert ("tenant-b", API_SA) not in cluster.accounts()


def test_cutover_killed_mid_phase_converges_on_rerun(cluster):
    accounts_before = {k: v["metadata"].get("annotations") or None for k, v in cluster.accounts().items()}
    cluster.apply("dual")
    time.sleep(1.1)
    killed_after(cluster, 1, "apply", "--phase", "cutover", "--to", "irsa", "--timeout", "20", "--yes")
    assert cluster.migration_record()["phase"] == "cutover" and cluster.migration_record()["state"] == "running"
    result = cluster.apply("cutover")
    assert result["ok"] and cluster.migration_record()["state"] == "done"
    assert cluster.apply("cutover")["applied"] == []
    cluster.rollback()
    assert cluster.pod_account("tenant-b", "api") == "default"
    cluster.rollback()
    assert cluster.migration_record() is None
    assert {k: v["metadata"].get("annotations") or None for k, v in cluster.accounts().items()} == accounts_before


def recorded_iam_calls(url: str, location, run) -> list[dict]:
    """The IAM and STS calls (Query API parameters) moto's recorder saw while `run()` ran."""
    import urllib.parse
    import urllib.request
    from pathlib import Path

    from moto.moto_api import recorder

    recorder._location = str(location)
    post = lambda path: urllib.request.urlopen(urllib.request.Request(url + path, data=b"", method="POST"))  # noqa: E731
    post("/moto-api/recorder/reset-recording")
    post("/moto-api/recorder/start-recording")
    try:
        run()
    finally:
        post("/moto-api/recorder/stop-recording")
    calls = []
    for line in Path(location).read_text().splitlines():
        entry = json.loads(line)
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode()
        params = {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}
        if "Action" in params:
            calls.append(params)
    return calls


def test_every_iam_call_of_the_phases_is_allowed_by_permissions_migrate(cluster, tmp_path):
    from rbacbridge import policy_eval

    cluster.iam.create_role(RoleName="alpha-etl-x", AssumeRolePolicyDocument=json.dumps(node_trust()))  # not a pod role

    def phases():
        cluster.apply("dual")
        time.sleep(1.1)
        cluster.apply("cutover")
        cluster.rollback()
        cluster.rollback()

    calls = recorded_iam_calls(cluster.sandbox.url, tmp_path / "recording", phases)
    printed = subprocess.run([sys.executable, "-m", "rbacbridge", "permissions", "-c", str(cluster.config), "--migrate",
                              "--pod-role", "alpha-etl"], capture_output=True, text=True, env=cluster.env(), check=True)
    policy = json.loads(printed.stdout)
    without = json.loads(subprocess.run([sys.executable, "-m", "rbacbridge", "permissions", "-c", str(cluster.config)],
                                        capture_output=True, text=True, env=cluster.env(), check=True).stdout)
    actions = {c["Action"] for c in calls}
    assert {"CreateOpenIDConnectProvider", "DeleteOpenIDConnectProvider", "UpdateAssumeRolePolicy", "GetRole",
            "ListOpenIDConnectProviders"} <= actions
    for call in calls:
        action = ("sts:" if call["Action"] == "GetCallerIdentity" else "iam:") + call["Action"]
        if "RoleName" in call:
            resource = ROLE + call["RoleName"]
        elif "OpenIDConnectProviderArn" in call:
            resource = call["OpenIDConnectProviderArn"]
        elif call["Action"] == "CreateOpenIDConnectProvider":
            resource = f"arn:aws:iam::{ACCOUNT}:oidc-provider/" + call["Url"].removeprefix("https://")
        else:
            resource = "*"
        assert policy_eval.evaluate([policy], action, resource).allowed, (action, resource)
    assert not policy_eval.evaluate([policy], "iam:UpdateAssumeRolePolicy", ROLE + "alpha-etl-x").allowed
    assert not policy_eval.evaluate([without], "iam:CreateOpenIDConnectProvider", PROVIDER).allowed
    write = next(s for s in policy["Statement"] if s["Sid"] == "WriteRecord")
    assert write["Condition"]["ForAllValues:StringLike"]["aws:TagKeys"] == [
        f"rbacbridge:record:{INSTALL}:*", f"rbacbridge:migration:{INSTALL}:*"]


# --- Pod Identity, against the EKS stand-in (tests/eks_standin.py) ---------------------------------------------


@pytest.fixture
def eks_cluster(cluster, moto_url):  # noqa: F811
    from tests.eks_standin import EksStandin
    from tests.identity_webhook import associations_in

    eks = EksStandin(moto_url).start()
    eks.add_cluster("prod-1", ISSUER)
    cluster.eks = eks
    cluster.store.webhook = IdentityWebhook(region="us-east-1", pod_identity=associations_in(eks.url, "prod-1"))
    base_env = cluster.env
    cluster.env = lambda **extra: base_env(AWS_ENDPOINT_URL_EKS=eks.url, AWS_ENDPOINT_URL_EKS_AUTH=eks.url, **extra)
    yield cluster
    eks.stop()


def pod_identity_statement(namespace: str, account: str) -> dict:
    return {"Sid": "RbacbridgePodIdentity" + hashlib.sha256(f"{namespace}/{account}".encode()).hexdigest()[:8],
            "Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
            "Action": ["sts:AssumeRole", "sts:TagSession"],
            "Condition": {"StringEquals": {"aws:RequestTag/kubernetes-namespace": namespace,
                                           "aws:RequestTag/kubernetes-service-account": account}}}


def associations(eks_cluster) -> dict:
    client = eks_cluster.sandbox.session().client("eks", endpoint_url=eks_cluster.eks.url)
    found = {}
    for summary in client.list_pod_identity_associations(clusterName="prod-1")["associations"]:
        full = client.describe_pod_identity_association(clusterName="prod-1", associationId=summary["associationId"])["association"]
        found[(full["namespace"], full["serviceAccount"])] = (full["roleArn"], full["associationId"])
    return found


def pi(cluster, command: str, *args: str) -> subprocess.CompletedProcess:
    extra = ("--to", "pod-identity", "--cluster-name", "prod-1") if command == "apply" else ()
    return cluster.run(command, *args, *extra, "--timeout", "20", "--yes", "-o", "json")


def test_pod_identity_dual_cutover_and_rollback(eks_cluster):
    cluster = eks_cluster
    before = cluster.trusts()
    done = pi(cluster, "apply", "--phase", "dual")
    assert done.returncode == 0, done.stderr
    assert {k: v[0] for k, v in associations(cluster).items()} == {
        ("tenant-a", "etl"): ROLE + "alpha-etl", ("tenant-a", "web"): ROLE + "alpha-app", ("tenant-b", API_SA): ROLE + "beta-app"}
    assert cluster.trust("alpha-app") == node_trust([pod_identity_statement("tenant-a", "web")])
    assert cluster.trust("beta-app") == node_trust([pod_identity_statement("tenant-b", API_SA)])
    made = cluster.accounts()[("tenant-b", API_SA)]["metadata"]
    assert made["labels"] == {"managed-by": "rbacbridge"} and not made.get("annotations")
    assert not cluster.accounts()[("tenant-a", "web")]["metadata"].get("annotations")  # Pod Identity needs no annotation
    record = cluster.migration_record()
    assert {k: v["id"] for k, v in record["associations"].items()} == {f"{ns}/{sa}": i for (ns, sa), (_, i) in associations(cluster).items()}
    again = json.loads(pi(cluster, "apply", "--phase", "dual").stdout)
    assert again["applied"] == []
    time.sleep(1.1)
    cut = pi(cluster, "apply", "--phase", "cutover")
    assert cut.returncode == 0, cut.stderr
    status = json.loads(cluster.run("status", "-o", "json").stdout)
    assert {w["name"]: w["path"] for w in status["workloads"] if w["kind"] == "Deployment"} == {"web": "pod-identity", "api": "pod-identity"}
    assert pi(cluster, "rollback").returncode == 0
    back = pi(cluster, "rollback")
    assert back.returncode == 0, back.stderr
    assert associations(cluster) == {} and cluster.trusts() == before and cluster.migration_record() is None
    status = json.loads(cluster.run("status", "-o", "json").stdout)
    assert {w["name"]: w["path"] for w in status["workloads"] if w["kind"] == "Deployment"} == {"web": "kube2iam", "api": "kube2iam"}


def test_a_foreign_association_is_never_touched_and_a_missing_agent_blocks(eks_cluster):
    cluster = eks_cluster
    client = cluster.sandbox.session().client("eks", endpoint_url=cluster.eks.url)
    cluster.iam.create_role(RoleName="other", AssumeRolePolicyDocument=json.dumps(node_trust()))
    foreign = client.create_pod_identity_association(clusterName="prod-1", namespace="tenant-a", serviceAccount="web",
                                                     roleArn=ROLE + "other")["association"]["associationId"]
    done = pi(cluster, "apply", "--phase", "dual")
    assert done.returncode == 1
    assert ("error: 1 blocker(s), nothing changed: association Pod Identity association tenant-a/web: exists with role "
            f"{ROLE}other ({foreign})") in done.stderr
    assert associations(cluster) == {("tenant-a", "web"): (ROLE + "other", foreign)} and cluster.migration_record() is None
    # the same role: kept as it is, and rollback leaves it (its id is not in the record)
    client.delete_pod_identity_association(clusterName="prod-1", associationId=foreign)
    same = client.create_pod_identity_association(clusterName="prod-1", namespace="tenant-a", serviceAccount="web",
                                                  roleArn=ROLE + "alpha-app")["association"]["associationId"]
    assert pi(cluster, "apply", "--phase", "dual").returncode == 0
    assert pi(cluster, "rollback").returncode == 0
    assert associations(cluster) == {("tenant-a", "web"): (ROLE + "alpha-app", same)}
    cluster.eks.set_agent("prod-1", None)
    done = pi(cluster, "apply", "--phase", "dual")
    assert done.returncode == 1 and "pod-identity-agent EKS cluster prod-1: the eks-pod-identity-agent add-on is not installed" in done.stderr


def test_teardown_is_refused_while_a_migration_is_recorded(cluster):
    """After dual the pod roles carry the new trust (and after cutover the workloads use them): teardown would
    delete them. It is refused, nothing changes; after the rollback it runs."""
    cluster.apply("dual")
    roles = cluster.trusts()
    teardown = [sys.executable, "-m", "rbacbridge", "teardown", "--only", "aws", "--yes", "-c", str(cluster.config)]
    done = subprocess.run(teardown, capture_output=True, text=True, env=cluster.env(), timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: a migration off kube2iam is recorded for this install (KMS key arn:aws:kms:") and \
        line.endswith("run `rbacbridge migrate rollback` until none is recorded, then teardown")
    assert cluster.trusts() == roles  # every pod role still there, untouched
    cluster.rollback()
    done = subprocess.run(teardown, capture_output=True, text=True, env=cluster.env(), timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
