"""A moto server (server mode, over the wire) holding what `rbacbridge setup` creates in IAM,
rendered from the same templates, plus the two buckets."""

from __future__ import annotations

import urllib.request
from dataclasses import replace

import boto3
import pytest

from rbacbridge import planner
from rbacbridge.aws import AwsGateway
from rbacbridge.config import Config
from rbacbridge.planner import Context
from tests.fixtures_aws import moto_url  # noqa: F401 - one moto server per test run

ACCOUNT = "123456789012"  # moto's default account
DUMMY = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _post(url: str, path: str, body: bytes = b"") -> None:
    request = urllib.request.Request(url + path, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def create_managed_resources(url: str, config: Config, account: str = ACCOUNT) -> None:
    """What `rbacbridge setup --only aws` creates (run through the real planner), plus the buckets."""
    session = boto3.Session(region_name=config.region, **DUMMY)
    config = replace(config, account_id=account, endpoint_url=url)
    ctx = Context(config=config, parts=("aws",), gateways={"aws": AwsGateway(config, session=session)})
    outcome = planner.run(ctx, planner.plan_setup(ctx))
    assert outcome.ok, outcome.failure and outcome.failure.error
    s3 = session.client("s3", endpoint_url=url)
    for bucket in all_buckets(config):
        try:
            s3.create_bucket(Bucket=bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass


def all_buckets(config: Config) -> list[str]:
    """buckets.shared and every bucket a tenant's grants name."""
    from rbacbridge.config import grant_bucket

    return list(dict.fromkeys([config.shared_bucket] + [grant_bucket(g) for t in config.tenants for g in t.read + t.write]))


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
