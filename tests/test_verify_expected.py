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


# --- tenants (issue 12): principals, locations, cross-tenant cells from the configuration only -------------

def tenants_config(tmp_path, tenants, **extra):
    import yaml

    from rbacbridge import config as config_module

    path = tmp_path / "rbacbridge.yaml"
    path.write_text(yaml.safe_dump({"tenants": tenants, **extra}))
    return config_module.load(str(path))


ABC = [{"name": "client-a", "namespaces": ["client-a"], "role": "client-a-s3", "workloads": ["web"]},
       {"name": "client-b", "namespaces": ["client-b"], "role": "client-b-s3", "write": ["shared-data/b/*"], "workloads": ["web"]},
       {"name": "client-c", "namespaces": ["client-c"], "role": {"existing": f"arn:aws:iam::{ACCT}:role/c-owned"},
        "workloads": ["worker"]}]


def test_principals_come_from_the_tenants(tmp_path):
    from rbacbridge.verify import configured_principals

    config = tenants_config(tmp_path, ABC)
    got = [(p.name, p.namespace, p.role_annotation, p.tenant) for p in configured_principals(config)]
    assert got == [(HOST, None, None, None), (VANILLA, "default", None, None),
                   ("client-a/web", "client-a", "client-a-s3", "client-a"),  # a workload name two tenants use
                   ("client-b/web", "client-b", "client-b-s3", "client-b"),
                   ("worker", "client-c", f"arn:aws:iam::{ACCT}:role/c-owned", "client-c")]  # an existing role: its ARN
    assert [p.name for p in configured_principals(config, "client-b")] == ["client-b/web"]
    with pytest.raises(UsageError, match="unknown tenant"):
        configured_principals(config, "client-z")


def test_cross_tenant_cells_are_expected_denied_by_policy_evaluation(tmp_path):
    config = tenants_config(tmp_path, ABC)
    got = {e.principal.name: e for e in expected_matrix(config, ACCT, "after")}
    a, b, c = got["client-a/web"], got["client-b/web"], got["worker"]
    assert (a.role, b.role, c.role) == ("client-a-s3", "client-b-s3", "c-owned")
    # b writes under its prefix only; a (no grants) nothing; c's role is not rbacbridge's: no expectation
    assert b.access[("shared-data/b/*", "write")] is True and b.access[("shared-data/b/*", "read")] is True
    assert a.access[("shared-data/b/*", "write")] is False and a.access[("nettech-helm-test", "read")] is False
    assert set(c.access.values()) == {None}
    # every other tenant's role: not obtainable by chaining, not handed out by kube2iam to another namespace
    assert set(a.chains) == {"client-a-s3", "client-b-s3", "c-owned", "nettech-pod-default", "nettech-s3-read-only"}
    assert not any(a.chains.values()) and not any(b.chains.values())
    assert a.annotations == {"client-b-s3": False, "c-owned": False}
    assert b.annotations == {"client-a-s3": False, "c-owned": False}
    assert got[VANILLA].annotations == {} and got[HOST].chains == {}


def test_annotation_cells_predicted_when_namespace_restrictions_are_off(tmp_path):
    config = tenants_config(tmp_path, ABC, kube2iam={"namespace_restrictions": False})
    got = {e.principal.name: e for e in expected_matrix(config, ACCT, "after")}
    # kube2iam hands any role the node role may assume; an existing role's trust is unknown
    assert got["client-a/web"].annotations == {"client-b-s3": True, "c-owned": None}


def test_default_config_locations_and_owners_are_the_articles():
    from rbacbridge.verify import buckets_of, location_owners

    config = Config()
    assert buckets_of(config) == [SHARED, TENANT]
    assert location_owners(config) == {TENANT: ("nginx-annotated",)}  # buckets.shared is everyone's
    assert not any(e.annotations for e in expected_matrix(config, ACCT, "after"))
