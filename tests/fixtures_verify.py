"""A moto server (server mode, over the wire) holding what `rbacbridge setup` creates in IAM,
rendered from the same templates, plus the two buckets."""

from __future__ import annotations

import json
import urllib.request

import boto3
import pytest

from rbacbridge.config import Config
from rbacbridge.verify import managed_documents

ACCOUNT = "123456789012"  # moto's default account
DUMMY = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _post(url: str, path: str, body: bytes = b"") -> None:
    request = urllib.request.Request(url + path, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def create_managed_resources(url: str, config: Config, account: str = ACCOUNT) -> None:
    docs = managed_documents(config, account)
    iam = boto3.client("iam", endpoint_url=url, region_name=config.region, **DUMMY)
    tags = [{"Key": "managed-by", "Value": "rbacbridge"}]
    policy_names = {config.node_role: [config.node_policy, config.kube2iam_policy], config.pod_role: [config.pod_policy]}
    for role, trust in docs.trust.items():
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust), Tags=tags)
        for name, document in zip(policy_names[role], docs.policies[role]):
            arn = iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(document), Tags=tags)["Policy"]["Arn"]
            iam.attach_role_policy(RoleName=role, PolicyArn=arn)
    iam.create_instance_profile(InstanceProfileName=config.instance_profile)
    iam.add_role_to_instance_profile(InstanceProfileName=config.instance_profile, RoleName=config.node_role)
    s3 = boto3.client("s3", endpoint_url=url, region_name=config.region, **DUMMY)
    for bucket in (config.shared_bucket, config.tenant_bucket):
        s3.create_bucket(Bucket=bucket)


def fresh_state(url: str) -> Config:
    """Reset moto (enforcement off) and create the default configuration's resources."""
    _post(url, "/moto-api/reset-auth", b"inf")
    _post(url, "/moto-api/reset")
    config = Config(account_id=ACCOUNT)
    create_managed_resources(url, config)
    return config


@pytest.fixture
def sandbox(moto_url):
    """A fresh moto state with the default configuration's resources; yields (url, config)."""
    config = fresh_state(moto_url)
    yield moto_url, config
    _post(moto_url, "/moto-api/reset-auth", b"inf")


def bucket_keys(url: str, bucket: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", **DUMMY)
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
