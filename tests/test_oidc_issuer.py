"""The test OIDC issuer and the STS proxy (tests/oidc_issuer.py): tokens are real RS256 JWTs, and
AssumeRoleWithWebIdentity through the proxy gets credentials only for what the role trusts."""

from __future__ import annotations

import json
import urllib.request

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.fixtures_aws import moto_url, reset_moto  # noqa: F401
from tests.oidc_issuer import StsProxy, TestIssuer, TokenRefused, verify_token

ACCOUNT = "123456789012"
DUMMY = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


@pytest.fixture
def issuer():
    server = TestIssuer().start()
    yield server
    server.stop()


def test_discovery_and_jwks_verify_a_minted_token(issuer):
    with urllib.request.urlopen(issuer.url + "/.well-known/openid-configuration", timeout=5) as response:
        discovery = json.loads(response.read())
    assert discovery["issuer"] == issuer.url
    with urllib.request.urlopen(discovery["jwks_uri"], timeout=5) as response:
        keys = json.loads(response.read())["keys"]
    assert [k["kid"] for k in keys] == [issuer.kid] and "d" not in keys[0]  # public part only
    claims = verify_token(issuer.mint("team-a", "app", audience="pods.eks.amazonaws.com", pod="p", pod_uid="u"),
                          issuer.url, "pods.eks.amazonaws.com")
    assert claims["sub"] == "system:serviceaccount:team-a:app" and claims["aud"] == ["pods.eks.amazonaws.com"]
    assert claims["exp"] - claims["iat"] == 3600 and claims["nbf"] == claims["iat"]
    assert claims["kubernetes.io"]["pod"] == {"name": "p", "uid": "u"}


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    import base64

    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "system:serviceaccount:team-b:app"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return ".".join([header, forged, signature])


@pytest.mark.parametrize("case, code", [("tampered", "InvalidIdentityToken"), ("audience", "InvalidIdentityToken"),
                                        ("expired", "ExpiredTokenException"), ("future", "InvalidIdentityToken"),
                                        ("issuer", "InvalidIdentityToken")])
def test_verify_token_refuses(issuer, case, code):
    token = {"tampered": lambda: _tamper(issuer.mint("team-a", "app")),
             "audience": lambda: issuer.mint("team-a", "app", audience="pods.eks.amazonaws.com"),
             "expired": lambda: issuer.mint("team-a", "app", issued_at=1000),
             "future": lambda: issuer.mint("team-a", "app", issued_at=4102444800),
             "issuer": lambda: issuer.mint("team-a", "app", issuer="http://127.0.0.1:9")}[case]()
    with pytest.raises(TokenRefused) as refused:
        verify_token(token, issuer.url, "sts.amazonaws.com")
    assert refused.value.code == code


@pytest.fixture
def web_identity(moto_url, issuer):  # noqa: F811
    """moto with the issuer's OIDC provider and a role trusting team-a/app through it; the proxy before moto."""
    reset_moto(moto_url)
    iam = boto3.client("iam", endpoint_url=moto_url, **DUMMY)
    provider = iam.create_open_id_connect_provider(Url=issuer.url, ClientIDList=["sts.amazonaws.com"],
                                                   ThumbprintList=["a" * 40])["OpenIDConnectProviderArn"]
    host = issuer.url.split("://", 1)[1]
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Federated": provider}, "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {f"{host}:sub": "system:serviceaccount:team-a:app", f"{host}:aud": "sts.amazonaws.com"}}}]}
    role = iam.create_role(RoleName="app", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    proxy = StsProxy(moto_url).start()
    yield proxy, role, iam
    proxy.stop()


def _assume(proxy, role: str, token: str) -> dict:
    sts = boto3.client("sts", endpoint_url=proxy.url, **DUMMY)
    return sts.assume_role_with_web_identity(RoleArn=role, RoleSessionName="pod", WebIdentityToken=token)


def test_proxy_gives_credentials_for_a_trusted_service_account(web_identity, issuer, moto_url):  # noqa: F811
    proxy, role, _iam = web_identity
    answer = _assume(proxy, role, issuer.mint("team-a", "app"))
    assert answer["AssumedRoleUser"]["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/pod"
    creds = answer["Credentials"]
    who = boto3.client("sts", endpoint_url=proxy.url, region_name="us-east-1", aws_access_key_id=creds["AccessKeyId"],
                       aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
    assert who.get_caller_identity()["Arn"] == answer["AssumedRoleUser"]["Arn"]  # other actions pass through
    assert proxy.refusals == []


@pytest.mark.parametrize("case, code", [("wrong-service-account", "AccessDenied"), ("tampered", "InvalidIdentityToken"),
                                        ("forged-key", "InvalidIdentityToken"), ("pod-identity-audience", "InvalidIdentityToken"),
                                        ("no-provider", "InvalidIdentityToken"), ("missing-role", "AccessDenied")])
def test_proxy_refuses_what_the_role_does_not_trust(web_identity, issuer, case, code):
    proxy, role, iam = web_identity
    if case == "no-provider":
        iam.delete_open_id_connect_provider(OpenIDConnectProviderArn=iam.list_open_id_connect_providers()["OpenIDConnectProviderList"][0]["Arn"])
    other = TestIssuer()
    token = {"wrong-service-account": lambda: issuer.mint("team-a", "other"),
             "tampered": lambda: _tamper(issuer.mint("team-a", "app")),
             "forged-key": lambda: issuer.mint("team-a", "app", key=other.key),
             "pod-identity-audience": lambda: issuer.mint("team-a", "app", audience="pods.eks.amazonaws.com"),
             "no-provider": lambda: issuer.mint("team-a", "app"),
             "missing-role": lambda: issuer.mint("team-a", "app")}[case]()
    target = role.replace("/app", "/absent") if case == "missing-role" else role
    with pytest.raises(ClientError) as refused:
        _assume(proxy, target, token)
    other.server_close()
    assert refused.value.response["Error"]["Code"] == code
    assert [c for c, _ in proxy.refusals] == [code]


def test_moto_alone_would_have_accepted_the_wrong_token(web_identity, issuer, moto_url):  # noqa: F811
    """Why the proxy exists: the same refused call, sent to moto directly, gets credentials."""
    _proxy, role, _iam = web_identity
    sts = boto3.client("sts", endpoint_url=moto_url, **DUMMY)
    answer = sts.assume_role_with_web_identity(RoleArn=role, RoleSessionName="pod", WebIdentityToken=issuer.mint("team-z", "x"))
    assert answer["Credentials"]["AccessKeyId"]


def test_a_public_issuer_name_is_served_locally_and_nothing_else_is_fetched():
    named = TestIssuer("https://oidc.eks.us-east-1.amazonaws.com/id/ABC123").start()
    try:
        token = named.mint("team-a", "app")
        assert verify_token(token, named.issuer, "sts.amazonaws.com")["iss"] == "https://oidc.eks.us-east-1.amazonaws.com/id/ABC123"
    finally:
        named.stop()
    with pytest.raises(TokenRefused) as refused:  # stopped: the name is no longer served, and it is never looked up
        verify_token(token, named.issuer, "sts.amazonaws.com")
    assert refused.value.code == "IDPCommunicationError" and "outside loopback" in refused.value.message
