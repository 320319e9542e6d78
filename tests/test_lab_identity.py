"""The lab's IRSA and Pod Identity paths (tests/lab_identity.py): the real AWS CLI inside lab pods, given only the
environment the injecting webhook wrote, picks its credential source by its own precedence rules — web identity
through the STS proxy, container credentials from the node's Pod Identity agent, else the metadata address that
kube2iam intercepts. Needs root and Linux; run under `flock /tmp/rbb-netns.lock`."""

from __future__ import annotations

import json

import boto3
import pytest

from tests.lab import ACCOUNT, LEGACY_ROLE, REGION, ROLE_ANNOTATION, Lab, available

_why = available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_why is not None, reason=f"lab: {_why}"), pytest.mark.timeout(300)]

POD_ROLE = "lab-app"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{POD_ROLE}"


@pytest.fixture(scope="module")
def lab():
    started = Lab.start(("node-a",))
    try:
        ident = started.start_identity(cluster="lab")
        iam = started.client("iam")
        host = ident.issuer.url.split("://", 1)[1]
        provider = iam.create_open_id_connect_provider(Url=ident.issuer.url, ClientIDList=["sts.amazonaws.com"],
                                                       ThumbprintList=["0" * 40])["OpenIDConnectProviderArn"]
        node_arn = f"arn:aws:iam::{ACCOUNT}:role/{LEGACY_ROLE}"  # node-a's instance profile role (the lab's seed)
        iam.put_role_policy(RoleName=LEGACY_ROLE, PolicyName="kube2iam", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": ROLE_ARN}]}))
        iam.create_role(RoleName=POD_ROLE, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": node_arn}, "Action": "sts:AssumeRole"},
            {"Effect": "Allow", "Principal": {"Federated": provider}, "Action": "sts:AssumeRoleWithWebIdentity",
             "Condition": {"StringEquals": {f"{host}:sub": "system:serviceaccount:team-a:irsa", f"{host}:aud": "sts.amazonaws.com"}}},
            {"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"}, "Action": ["sts:AssumeRole", "sts:TagSession"],
             "Condition": {"StringEquals": {"aws:RequestTag/kubernetes-namespace": "team-a",
                                            "aws:RequestTag/kubernetes-service-account": "pi"}}}]}))
        boto3.client("eks", endpoint_url=ident.eks.url, region_name=REGION, **started.admin).create_pod_identity_association(
            clusterName="lab", namespace="team-a", serviceAccount="pi", roleArn=ROLE_ARN)
        store = started.api.store
        store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
        for account, annotations in (("irsa", {"eks.amazonaws.com/role-arn": ROLE_ARN}), ("pi", {}), ("plain", {}),
                                     ("untrusted", {"eks.amazonaws.com/role-arn": ROLE_ARN})):
            store.put({"apiVersion": "v1", "kind": "ServiceAccount",
                       "metadata": {"name": account, "namespace": "team-a", "annotations": annotations}})
            started.add_pod("node-a", "team-a", f"{account}-pod", {ROLE_ANNOTATION: POD_ROLE}, service_account=account)
        started._kube2iam_listen(started.node("node-a"))  # kube2iam's process, as if its pod ran here
        started.kube2iam_start("node-a")  # and its DNAT rule for pods' metadata traffic
        yield started
    finally:
        started.close()
        assert started.leftovers() == [], f"the lab left behind: {started.leftovers()}"


def caller(lab: Lab, pod: str) -> tuple[str, str]:
    done = lab.pod_exec("team-a", pod, ["aws", "sts", "get-caller-identity", "--output", "json"])
    return (json.loads(done.stdout)["Arn"] if done.returncode == 0 else ""), done.stderr


def pod_ip(lab: Lab, pod: str) -> str:
    return lab.api.store.get("Pod", pod, "team-a")["status"]["podIP"]


def test_irsa_pod_gets_the_role_by_web_identity_and_kube2iam_is_not_asked(lab: Lab):
    arn, err = caller(lab, "irsa-pod")
    assert arn.startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/{POD_ROLE}/"), err
    assert not arn.endswith("-kube2iam") and "/eks-" not in arn
    assert ("POST", "AssumeRoleWithWebIdentity") in lab.identity.sts.requests
    assert pod_ip(lab, "irsa-pod") not in lab.kube2iam_asked


def test_pod_identity_pod_gets_the_role_from_the_agent(lab: Lab):
    arn, err = caller(lab, "pi-pod")
    assert arn.startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/{POD_ROLE}/eks-lab-pi-pod-"), err
    assert any(ip == pod_ip(lab, "pi-pod") for _, ip, _ in lab.identity.agent_requests)
    assert pod_ip(lab, "pi-pod") not in lab.kube2iam_asked


def test_pod_with_neither_gets_kube2iams_answer(lab: Lab):
    arn, err = caller(lab, "plain-pod")
    instance = lab.node("node-a").instance_id
    assert arn == f"arn:aws:sts::{ACCOUNT}:assumed-role/{POD_ROLE}/{instance}-kube2iam", err
    assert pod_ip(lab, "plain-pod") in lab.kube2iam_asked


def test_web_identity_the_role_does_not_trust_fails_without_falling_back(lab: Lab):
    arn, err = caller(lab, "untrusted-pod")
    assert arn == "" and "AccessDenied" in err
    assert ("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity") in lab.identity.sts.refusals
    assert pod_ip(lab, "untrusted-pod") not in lab.kube2iam_asked


def test_token_files_exist_only_for_the_exec(lab: Lab):
    done = lab.pod_exec("team-a", "irsa-pod", ["cat", "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"])
    assert done.returncode == 0 and done.stdout.count(".") == 2  # a JWT
    from pathlib import Path

    assert not Path("/var/run/secrets/eks.amazonaws.com").exists()  # the host's /run untouched
