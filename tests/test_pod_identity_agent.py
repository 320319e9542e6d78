"""The lab's Pod Identity agent (tests/lab_identity.AgentHandler) on 127.0.0.1, without network namespaces: botocore's
own container credential provider, given the environment the webhook injects, gets the associated role through the
agent and the EKS stand-in's AssumeRoleForPodIdentity."""

from __future__ import annotations

import json
import threading
import types
from http.server import ThreadingHTTPServer

import boto3
import botocore.session
import pytest

from tests.eks_standin import EksStandin
from tests.fixtures_aws import moto_url, reset_moto  # noqa: F401
from tests.lab_identity import AgentHandler
from tests.oidc_issuer import TestIssuer

ACCOUNT = "123456789012"
DUMMY = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


@pytest.fixture
def agent(moto_url, monkeypatch, tmp_path):  # noqa: F811
    reset_moto(moto_url)
    issuer = TestIssuer().start()
    eks = EksStandin(moto_url).start()
    eks.add_cluster("lab", issuer.issuer)
    identity = types.SimpleNamespace(cluster="lab", agent_requests=[],
                                     eks_auth=lambda: boto3.client("eks-auth", endpoint_url=eks.url, **DUMMY))
    server = ThreadingHTTPServer(("127.0.0.1", 0), AgentHandler)
    server.daemon_threads = True
    server.identity, server.node_name = identity, "node-a"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    token_file = tmp_path / "eks-pod-identity-token"
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{server.server_address[1]}/v1/credentials")
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))
    iam = boto3.client("iam", endpoint_url=moto_url, **DUMMY)
    try:
        yield issuer, eks, iam, token_file, identity
    finally:
        server.shutdown()
        server.server_close()
        eks.stop()
        issuer.stop()


def _trust(service_account: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"}, "Action": ["sts:AssumeRole", "sts:TagSession"],
        "Condition": {"StringEquals": {"aws:RequestTag/kubernetes-namespace": "team-a",
                                       "aws:RequestTag/kubernetes-service-account": service_account}}}]})


def _caller(moto_url: str) -> str:  # noqa: F811
    session = boto3.Session(botocore_session=botocore.session.Session(), region_name="us-east-1")
    return session.client("sts", endpoint_url=moto_url).get_caller_identity()["Arn"]


def test_the_sdk_gets_the_associated_role_through_the_agent(agent, moto_url):  # noqa: F811
    issuer, eks, iam, token_file, identity = agent
    arn = iam.create_role(RoleName="app", AssumeRolePolicyDocument=_trust("app"))["Role"]["Arn"]
    boto3.client("eks", endpoint_url=eks.url, **DUMMY).create_pod_identity_association(
        clusterName="lab", namespace="team-a", serviceAccount="app", roleArn=arn)
    token_file.write_text(issuer.mint("team-a", "app", audience="pods.eks.amazonaws.com", pod="web-0", pod_uid="u1"))
    assert _caller(moto_url) == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/eks-lab-web-0-u1"
    assert [path for _, _, path in identity.agent_requests] == ["/v1/credentials"]


def test_a_role_that_does_not_trust_the_service_account_gives_the_sdk_nothing(agent, moto_url):  # noqa: F811
    from botocore.exceptions import CredentialRetrievalError

    issuer, eks, iam, token_file, _identity = agent
    arn = iam.create_role(RoleName="app", AssumeRolePolicyDocument=_trust("someone-else"))["Role"]["Arn"]
    boto3.client("eks", endpoint_url=eks.url, **DUMMY).create_pod_identity_association(
        clusterName="lab", namespace="team-a", serviceAccount="app", roleArn=arn)
    token_file.write_text(issuer.mint("team-a", "app", audience="pods.eks.amazonaws.com"))
    with pytest.raises(CredentialRetrievalError) as refused:  # no fallback to another source
        _caller(moto_url)
    assert "AccessDeniedException" in str(refused.value)
    assert {code for code, _ in eks.errors} == {"AccessDeniedException"}  # botocore retries: one code
