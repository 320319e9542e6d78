"""The EKS stand-in (tests/eks_standin.py) answers real boto3 clients as EKS and EKS Auth would."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.eks_standin import EksStandin
from tests.fixtures_aws import moto_url, reset_moto  # noqa: F401
from tests.oidc_issuer import TestIssuer

ACCOUNT = "123456789012"
DUMMY = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def _pod_identity_trust(namespace: str | None = None, service_account: str | None = None,
                        actions: list[str] | None = None) -> str:
    statement = {"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
                 "Action": actions or ["sts:AssumeRole", "sts:TagSession"]}
    conditions = {}
    if namespace:
        conditions["aws:RequestTag/kubernetes-namespace"] = namespace
    if service_account:
        conditions["aws:RequestTag/kubernetes-service-account"] = service_account
    if conditions:
        statement["Condition"] = {"StringEquals": conditions}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


@pytest.fixture
def world(moto_url, monkeypatch):  # noqa: F811
    reset_moto(moto_url)
    issuer = TestIssuer().start()
    eks = EksStandin(moto_url).start()
    eks.add_cluster("lab", issuer.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_EKS", eks.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_EKS_AUTH", eks.url)
    iam = boto3.client("iam", endpoint_url=moto_url, **DUMMY)
    try:
        yield issuer, eks, iam
    finally:
        eks.stop()
        issuer.stop()


def _eks():
    return boto3.client("eks", **DUMMY)  # reaches the stand-in through AWS_ENDPOINT_URL_EKS


def _auth():
    return boto3.client("eks-auth", **DUMMY)  # through AWS_ENDPOINT_URL_EKS_AUTH


def test_associations_create_list_describe_delete_through_the_endpoint_env(world):
    _issuer, eks, _iam = world
    client = _eks()
    made = client.create_pod_identity_association(clusterName="lab", namespace="team-a", serviceAccount="app",
                                                  roleArn=f"arn:aws:iam::{ACCOUNT}:role/app", tags={"owner": "x"})["association"]
    client.create_pod_identity_association(clusterName="lab", namespace="team-b", serviceAccount="app",
                                           roleArn=f"arn:aws:iam::{ACCOUNT}:role/other")
    assert made["associationId"].startswith("a-") and made["tags"] == {"owner": "x"}
    assert made["associationArn"].endswith(f":podidentityassociation/lab/{made['associationId']}")
    listed = client.list_pod_identity_associations(clusterName="lab", namespace="team-a")["associations"]
    assert [a["associationId"] for a in listed] == [made["associationId"]]
    assert len(client.list_pod_identity_associations(clusterName="lab")["associations"]) == 2
    assert client.list_pod_identity_associations(clusterName="lab", namespace="team-a", serviceAccount="nope")["associations"] == []
    paged = client.get_paginator("list_pod_identity_associations").paginate(clusterName="lab", maxResults=1)
    assert sum(len(page["associations"]) for page in paged) == 2
    described = client.describe_pod_identity_association(clusterName="lab", associationId=made["associationId"])["association"]
    assert described["roleArn"] == f"arn:aws:iam::{ACCOUNT}:role/app"
    client.delete_pod_identity_association(clusterName="lab", associationId=made["associationId"])
    assert eks.association_for("lab", "team-a", "app") is None
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_pod_identity_association(clusterName="lab", associationId=made["associationId"])


def test_errors_have_eks_shapes(world):
    client = _eks()
    role = f"arn:aws:iam::{ACCOUNT}:role/app"
    client.create_pod_identity_association(clusterName="lab", namespace="team-a", serviceAccount="app", roleArn=role)
    with pytest.raises(client.exceptions.ResourceInUseException):
        client.create_pod_identity_association(clusterName="lab", namespace="team-a", serviceAccount="app", roleArn=role)
    with pytest.raises(client.exceptions.InvalidParameterException):
        client.create_pod_identity_association(clusterName="lab", namespace="Team_A", serviceAccount="app", roleArn=role)
    with pytest.raises(client.exceptions.InvalidParameterException):
        client.create_pod_identity_association(clusterName="lab", namespace="team-a", serviceAccount="b", roleArn="not-an-arn")
    with pytest.raises(client.exceptions.ResourceNotFoundException) as missing:
        client.describe_cluster(name="elsewhere")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_cluster_issuer_and_agent_addon_status(world):
    issuer, eks, _iam = world
    client = _eks()
    assert client.describe_cluster(name="lab")["cluster"]["identity"]["oidc"]["issuer"] == issuer.url
    assert client.list_addons(clusterName="lab")["addons"] == ["eks-pod-identity-agent"]
    assert client.describe_addon(clusterName="lab", addonName="eks-pod-identity-agent")["addon"]["status"] == "ACTIVE"
    eks.set_agent("lab", None)
    assert client.list_addons(clusterName="lab")["addons"] == []
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_addon(clusterName="lab", addonName="eks-pod-identity-agent")


def _role(iam, name: str, trust: str) -> str:
    return iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]


def test_assume_role_for_pod_identity_gives_the_associated_role(world, moto_url):  # noqa: F811
    issuer, _eks_server, iam = world
    arn = _role(iam, "app", _pod_identity_trust("team-a", "app"))
    _eks().create_pod_identity_association(clusterName="lab", namespace="team-a", serviceAccount="app", roleArn=arn)
    token = issuer.mint("team-a", "app", audience="pods.eks.amazonaws.com", pod="web-0", pod_uid="1234")
    answer = _auth().assume_role_for_pod_identity(clusterName="lab", token=token)
    assert answer["subject"] == {"namespace": "team-a", "serviceAccount": "app"}
    assert answer["assumedRoleUser"]["arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/eks-lab-web-0-1234"
    creds = answer["credentials"]
    who = boto3.client("sts", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id=creds["accessKeyId"],
                       aws_secret_access_key=creds["secretAccessKey"], aws_session_token=creds["sessionToken"])
    assert who.get_caller_identity()["Arn"] == answer["assumedRoleUser"]["arn"]


@pytest.mark.parametrize("case", ["wrong-audience", "forged", "expired", "no-association", "other-cluster-issuer"])
def test_assume_role_for_pod_identity_refuses_bad_tokens(world, case):
    issuer, _eks_server, iam = world
    arn = _role(iam, "app", _pod_identity_trust("team-a", "app"))
    _eks().create_pod_identity_association(clusterName="lab", namespace="team-a", serviceAccount="app", roleArn=arn)
    other = TestIssuer()  # never started: only its key signs
    token = {
        "wrong-audience": lambda: issuer.mint("team-a", "app", audience="sts.amazonaws.com"),
        "forged": lambda: issuer.mint("team-a", "app", audience="pods.eks.amazonaws.com", key=other.key),
        "expired": lambda: issuer.mint("team-a", "app", audience="pods.eks.amazonaws.com", issued_at=0),
        "no-association": lambda: issuer.mint("team-a", "other", audience="pods.eks.amazonaws.com"),
        "other-cluster-issuer": lambda: issuer.mint("team-a", "app", audience="pods.eks.amazonaws.com", issuer="http://127.0.0.1:9"),
    }[case]()
    expected = {"wrong-audience": "InvalidTokenException", "forged": "InvalidTokenException",
                "expired": "ExpiredTokenException", "no-association": "ResourceNotFoundException",
                "other-cluster-issuer": "InvalidTokenException"}[case]
    with pytest.raises(ClientError) as refused:
        _auth().assume_role_for_pod_identity(clusterName="lab", token=token)
    assert refused.value.response["Error"]["Code"] == expected
    other.server_close()


@pytest.mark.parametrize("trust", ["other-namespace", "no-tag-session", "node-role-only"])
def test_assume_role_for_pod_identity_respects_the_roles_trust(world, trust):
    issuer, _eks_server, iam = world
    document = {
        "other-namespace": _pod_identity_trust("team-b", "app"),
        "no-tag-session": _pod_identity_trust("team-a", "app", actions=["sts:AssumeRole"]),
        "node-role-only": json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/node"}, "Action": "sts:AssumeRole"}]}),
    }[trust]
    arn = _role(iam, "app", document)
    _eks().create_pod_identity_association(clusterName="lab", namespace="team-a", serviceAccount="app", roleArn=arn)
    token = issuer.mint("team-a", "app", audience="pods.eks.amazonaws.com")
    with pytest.raises(ClientError) as refused:
        _auth().assume_role_for_pod_identity(clusterName="lab", token=token)
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"


def test_quota_and_a_retried_request_token(world):
    _issuer, eks, _iam = world
    client = _eks()
    role = f"arn:aws:iam::{ACCOUNT}:role/app"
    first = client.create_pod_identity_association(clusterName="lab", namespace="team-a", serviceAccount="app",
                                                   roleArn=role, clientRequestToken="retry-1")["association"]
    again = client.create_pod_identity_association(clusterName="lab", namespace="team-a", serviceAccount="app",
                                                   roleArn=role, clientRequestToken="retry-1")["association"]
    assert again["associationId"] == first["associationId"] and len(eks.associations) == 1
    eks.max_associations = 1
    with pytest.raises(client.exceptions.ResourceLimitExceededException):
        client.create_pod_identity_association(clusterName="lab", namespace="team-b", serviceAccount="app", roleArn=role)
