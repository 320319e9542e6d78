"""Without `tenants:` the configuration is the article's, and it produces exactly what rbacbridge
produced before tenants existed: tests/golden/before-tenants.json holds the AWS desired resources and
the Kubernetes objects rendered by the last version without tenants (commit 9b4c1f7) for three
legacy configurations."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from rbacbridge.aws import desired_resources
from rbacbridge.config import Config
from rbacbridge.kube import desired_objects

GOLDEN = json.loads((Path(__file__).parent / "golden" / "before-tenants.json").read_text())
CONFIGS = {
    "article": Config(account_id="123456789012"),
    "node-default-other-names": Config(account_id="123456789012", default_role="node", namespace="team", pod_role="x-rw",
                                       pod_policy="x-rw-policy", tenant_bucket="team-data", namespace_restrictions=True),
    "no-restrictions": Config(account_id="123456789012", default_role="nettech-s3-read-only", namespace_restrictions=False,
                              kube2iam_port=8181, namespace="tenant-a"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_legacy_config_renders_the_same_kubernetes_objects(name):
    assert json.loads(json.dumps(desired_objects(CONFIGS[name], "cali+"))) == GOLDEN[name]["kube"]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_legacy_config_wants_the_same_aws_resources(name):
    now = []
    for resource in desired_resources(CONFIGS[name], "123456789012", ["i-0123456789abcdef0"], teardown=True):
        fields = dataclasses.asdict(resource)
        assert fields.pop("tenant", None) in (None, "nginx-annotated")  # the one new field: which tenant it serves
        now.append({"kind": resource.kind, **fields})
    assert json.loads(json.dumps(now)) == GOLDEN[name]["aws"]
