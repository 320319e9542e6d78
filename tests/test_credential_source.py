"""verify's credential source (rbacbridge/verify/credential_source.py): the path that served a pod, from its
session ARN and its injected environment. Expectations written out here, in AWS's ARN shapes."""

from __future__ import annotations

import pytest

from rbacbridge.verify.credential_source import credential_source, expected_path

ACCOUNT = "123456789012"
IRSA_ENV = {"AWS_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/team/app",
            "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
            "AWS_STS_REGIONAL_ENDPOINTS": "regional"}
POD_IDENTITY_ENV = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials",
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"}


def session(role: str, name: str) -> str:
    return f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{name}"


@pytest.mark.parametrize("arn, env, path", [
    (session("app", "botocore-session-1733600000"), IRSA_ENV, "web-identity"),
    (session("app", "eks-lab-web-0-1a2b"), POD_IDENTITY_ENV, "pod-identity"),
    (session("app", "i-0abc-kube2iam"), {}, "kube2iam"),
    (session("k8s-node", "i-0abc"), {}, "node-role"),
    (session("k8s-node", "botocore-session-1"), IRSA_ENV, "node-role"),  # the node role wins over what env says
    (None, IRSA_ENV, "none"),
    ("", {}, "none"),
    (session("other", "botocore-session-1"), IRSA_ENV, "unknown"),  # env says app, the session is another role's
    (session("app", "i-0abc-kube2iam"), POD_IDENTITY_ENV, "unknown"),  # container creds, not an EKS Auth session
    (session("app", "eks-lab-web-0"), {}, "unknown"),  # an EKS Auth session with nothing injected
    (f"arn:aws:iam::{ACCOUNT}:user/someone", {}, "unknown"),
    (session("app", "x"), {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s", **IRSA_ENV}, "static-keys"),
])
def test_the_path_that_served_a_pod(arn, env, path):
    source = credential_source(arn, env, node_roles=[f"arn:aws:iam::{ACCOUNT}:role/k8s-node"])
    assert source.path == path, source.reason
    assert source.reason and "\n" not in source.reason


def test_web_identity_comes_before_container_credentials_as_in_the_sdk():
    assert expected_path({**POD_IDENTITY_ENV, **IRSA_ENV}) == "web-identity"
    assert expected_path(POD_IDENTITY_ENV) == "pod-identity"
    assert expected_path({"AWS_ROLE_ARN": "arn:aws:iam::1:role/x"}) == "kube2iam"  # no token file: not web identity


def test_node_roles_by_name_or_arn():
    assert credential_source(session("k8s-node", "i-1"), {}, node_roles=["k8s-node"]).path == "node-role"
    assert credential_source(session("k8s-node", "i-1"), {}, node_roles=[]).path == "kube2iam"
