from dataclasses import replace

import pytest

from rbacbridge.config import Config
from rbacbridge.errors import UsageError
from rbacbridge.verify import ANNOTATED, HOST, VANILLA, Principal, default_principals, expected_matrix

ACCT = "123456789012"
SHARED, TENANT = "nettech-helm-test", "lanre.k8s.dev"


def rows(expected):
    return {e.principal.name: (e.role, tuple(e.access[(b, op)] for b in (SHARED, TENANT) for op in ("read", "write"))) for e in expected}


def test_default_config_after_kube2iam_is_the_spec_table():
    assert rows(expected_matrix(Config(), ACCT, "after")) == {
        HOST: ("nettech-s3-read-only", (True, False, False, False)),
        VANILLA: ("nettech-pod-default", (True, False, False, False)),  # the dedicated default role, same access
        ANNOTATED: ("nettech-s3-read-write", (True, False, True, True)),
    }


def test_stage_before_every_principal_has_the_node_role():
    got = rows(expected_matrix(Config(), ACCT, "before"))
    assert set(got.values()) == {("nettech-s3-read-only", (True, False, False, False))}
    assert len(got) == 3


def test_namespace_that_does_not_allow_the_role_expects_refusal():
    config = Config()
    principals = default_principals(config)
    principals[2] = replace(principals[2], namespace="tenant-b")
    got = {e.principal.name: e for e in expected_matrix(config, ACCT, "after", principals,
                                                            allowed_roles={"default": ["nettech-s3-read-write"], "tenant-b": ["other-*"]})}
    assert got[ANNOTATED].role is None and "tenant-b" in got[ANNOTATED].why
    assert not any(got[ANNOTATED].access.values())
    # the same pod in a namespace whose glob allows it gets the role
    got = {e.principal.name: e for e in expected_matrix(config, ACCT, "after", principals, allowed_roles={"tenant-b": ["nettech-s3-*"]})}
    assert got[ANNOTATED].role == "nettech-s3-read-write"


def test_without_namespace_restrictions_any_namespace_gets_the_role():
    config = Config(namespace_restrictions=False)
    principals = [Principal(ANNOTATED, "pod", namespace="elsewhere", role_annotation=f"arn:aws:iam::{ACCT}:role/nettech-s3-read-write")]
    (exp,) = expected_matrix(config, ACCT, "after", principals, allowed_roles={})
    assert exp.role == "nettech-s3-read-write"


def test_host_network_pod_and_configured_names_follow_the_config():
    config = Config(node_role="nodes", pod_role="tenant", shared_bucket="shared-b", tenant_bucket="tenant-b", default_role="auto")
    principals = [Principal("hostnet", "pod", namespace="default", role_annotation="tenant", host_network=True),
                  Principal(ANNOTATED, "pod", namespace="default", role_annotation="tenant")]
    got = {e.principal.name: e for e in expected_matrix(config, ACCT, "after", principals)}
    assert got["hostnet"].role == "nodes" and got["hostnet"].access[("tenant-b", "write")] is False
    assert got[ANNOTATED].role == "tenant" and got[ANNOTATED].access[("tenant-b", "write")] is True


def test_unmanaged_default_role_has_no_expected_access():
    config = Config(default_role="some-outside-role")
    got = {e.principal.name: e for e in expected_matrix(config, ACCT, "after")}
    assert got[VANILLA].role == "some-outside-role"
    assert set(got[VANILLA].access.values()) == {None}


def test_bad_stage_is_a_usage_error():
    with pytest.raises(UsageError):
        expected_matrix(Config(), ACCT, "during")
