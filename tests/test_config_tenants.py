"""`tenants:` in rbacbridge.yaml: the model, the legacy default tenant, and strict validation
(one line naming the key, exit 2 through the CLI, nothing changed)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from rbacbridge.config import Config, Tenant, load
from rbacbridge.errors import UsageError

THREE = """\
account_id: "123456789012"
tenants:
  - name: client-a
    namespaces: [client-a]
    role: client-a-s3
    read: [nettech-helm-test]
  - name: client-b
    namespaces: [client-b, client-b-jobs]
    role: {existing: "arn:aws:iam::111122223333:role/team/b-role"}
    workloads: [nginx-client-b]
  - name: client-c
    namespaces: [client-c]
    role: client-c-s3
    policy: client-c-policy
    read: [nettech-helm-test]
    write: [client-c-data, "client-c-logs/app/*"]
    workloads: [nginx-client-c]
"""


def _load(tmp_path, text: str) -> Config:
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(text)
    return load(path)


def test_three_tenants(tmp_path):
    config = _load(tmp_path, THREE)
    assert not config.legacy_tenants
    a, b, c = config.tenants
    assert a == Tenant("client-a", ("client-a",), "client-a-s3", None, "client-a-s3", ("nettech-helm-test",), (), ())
    assert b.role == "b-role" and not b.managed and b.policy is None
    assert b.role_arn("123456789012", "aws") == "arn:aws:iam::111122223333:role/team/b-role"
    assert c.policy == "client-c-policy" and c.write == ("client-c-data", "client-c-logs/app/*")
    assert c.role_arn("123456789012", "aws") == "arn:aws:iam::123456789012:role/client-c-s3"
    assert config.tenant("client-b") is b
    assert config.tenant_of_namespace("client-b-jobs") is b
    assert config.tenant_of_namespace("default") is None
    with pytest.raises(UsageError, match="unknown tenant 'nope'"):
        config.tenant("nope")


def test_no_tenants_key_is_the_article():
    config = load(None)
    assert config.legacy_tenants
    (only,) = config.tenants
    assert only == Tenant("nginx-annotated", ("default",), "nettech-s3-read-write", None, "nettech-s3-read-write",
                          ("nettech-helm-test",), ("lanre.k8s.dev",), ("nginx-annotated",))
    # the legacy tenant follows the legacy keys, whether set by flags or by replace()
    moved = config.with_overrides(namespace="team", pod_role="app-rw")
    assert moved.tenants[0].namespaces == ("team",) and moved.tenants[0].role == "app-rw"
    assert replace(config, tenant_bucket="other-bucket").tenants[0].write == ("other-bucket",)


def test_explicit_empty_list(tmp_path):
    config = _load(tmp_path, "tenants: []\n")
    assert config.tenants == () and not config.legacy_tenants


def test_tenants_survive_overrides(tmp_path):
    config = _load(tmp_path, THREE).with_overrides(namespace="elsewhere")
    assert [t.name for t in config.tenants] == ["client-a", "client-b", "client-c"]
    with pytest.raises(UsageError, match="legacy setting"):
        config.with_overrides(pod_role="x")


def test_bucket_star_is_the_bucket(tmp_path):
    config = _load(tmp_path, "tenants:\n  - {name: t, namespaces: [t], role: r, write: ['b-1/*']}\n")
    assert config.tenants[0].write == ("b-1",)


BAD = [
    ("not-a-list", "tenants: {name: a}\n", "invalid tenants: expected a list"),
    ("empty", "tenants:\n", "invalid tenants: empty"),
    ("entry-not-mapping", "tenants: [a]\n", "invalid tenants[0]: expected a mapping"),
    ("unknown-key", "tenants:\n  - {name: a, namespaces: [a], role: r, polcy: p}\n", "unknown setting 'tenants[0].polcy'"),
    ("missing-role", "tenants:\n  - {name: a, namespaces: [a]}\n", "invalid tenants[0]: role is required"),
    ("missing-namespaces", "tenants:\n  - {name: a, role: r}\n", "invalid tenants[0]: namespaces is required"),
    ("no-namespace", "tenants:\n  - {name: a, namespaces: [], role: r}\n", "invalid tenants[0].namespaces: at least one"),
    ("bad-name", "tenants:\n  - {name: Client_A, namespaces: [a], role: r}\n", "invalid tenants[0].name (line 2)"),
    ("name-yes", "tenants:\n  - {name: yes, namespaces: [a], role: r}\n", "invalid tenants[0].name"),
    ("bad-namespace", "tenants:\n  - {name: a, namespaces: [A b], role: r}\n", "invalid tenants[0].namespaces"),
    ("bad-role", "tenants:\n  - {name: a, namespaces: [a], role: 'r/x'}\n", "invalid tenants[0].role (line 2)"),
    ("bad-arn", "tenants:\n  - {name: a, namespaces: [a], role: {existing: 'arn:aws:iam::1:role/x'}}\n",
     "invalid tenants[0].role.existing"),
    ("role-mapping", "tenants:\n  - {name: a, namespaces: [a], role: {name: x}}\n", "invalid tenants[0].role"),
    ("bad-read", "tenants:\n  - name: a\n    namespaces: [a]\n    role: r\n    read: [x]\n", "invalid tenants[0].read (line 5)"),
    ("prefix-without-star", "tenants:\n  - {name: a, namespaces: [a], role: r, write: ['b-1/logs']}\n", "invalid tenants[0].write"),
    ("read-and-write", "tenants:\n  - {name: a, namespaces: [a], role: r, read: [b-1], write: [b-1]}\n", "invalid tenants[0].read (in the config file)"),
    ("listed-twice", "tenants:\n  - {name: a, namespaces: [a], role: r, read: [b-1, b-1]}\n", "listed twice"),
    ("policy-existing", "tenants:\n  - {name: a, namespaces: [a], role: {existing: 'arn:aws:iam::111122223333:role/x'}, policy: p}\n",
     "invalid tenants[0].policy"),
    ("policy-no-grants", "tenants:\n  - {name: a, namespaces: [a], role: r, policy: p}\n", "no read or write grants"),
    ("duplicate-name", "tenants:\n  - {name: a, namespaces: [a], role: r}\n  - {name: a, namespaces: [b], role: s}\n",
     "invalid tenants[1].name (in the config file)"),
    ("shared-namespace", "tenants:\n  - {name: a, namespaces: [x], role: r}\n  - {name: b, namespaces: [x], role: s}\n",
     "allowed-roles is per namespace"),
    ("same-role", "tenants:\n  - {name: a, namespaces: [a], role: r}\n  - {name: b, namespaces: [b], role: r}\n",
     "invalid tenants[1].role (in the config file)"),
    ("node-role", "tenants:\n  - {name: a, namespaces: [a], role: nettech-s3-read-only}\n", "the node role"),
    ("default-role", "tenants:\n  - {name: a, namespaces: [a], role: nettech-pod-default}\n", "default role"),
    ("existing-node-role", "account_id: '123456789012'\ntenants:\n  - {name: a, namespaces: [a], role: {existing: "
     "'arn:aws:iam::123456789012:role/nettech-s3-read-only'}}\n", "the node role"),
    ("policy-is-node-policy", "tenants:\n  - {name: a, namespaces: [a], role: r, read: [b-1], policy: nettech-kube2iam-node}\n",
     "iam.kube2iam_policy"),
    ("same-policy", "tenants:\n  - {name: a, namespaces: [a], role: r, read: [b-1], policy: p}\n"
     "  - {name: b, namespaces: [b], role: s, read: [b-1], policy: p}\n", "invalid tenants[1].policy (in the config file)"),
    ("workload-vanilla", "tenants:\n  - {name: a, namespaces: [default], role: r, workloads: [nginx-vanilla]}\n", "nginx-vanilla"),
    ("default-is-node-role", "iam:\n  default_role: nettech-s3-read-only\ntenants: []\n", "invalid iam.default_role"),
    ("same-node-policies", "iam:\n  kube2iam_policy: nettech-s3-read-only\ntenants: []\n", "node_policy and kube2iam_policy"),
    ("with-legacy-role", "iam:\n  pod_role: x\ntenants: []\n", "move it into a tenant"),
    ("with-legacy-keys", "iam:\n  pod_policy: x\nbuckets:\n  tenant: b-1\ntenants: []\n", "iam.pod_policy, buckets.tenant"),
]


@pytest.mark.parametrize("name,text,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_tenants_refused_in_one_line(tmp_path, name, text, expected):
    with pytest.raises(UsageError) as refused:
        _load(tmp_path, text)
    message = str(refused.value)
    assert expected in message, message
    assert "\n" not in message and len(message) <= 300


def test_config_reference_shows_tenants():
    out = subprocess.run([sys.executable, "-m", "rbacbridge", "config-reference"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for path in ("tenants ", "tenants[].name", "tenants[].namespaces", "tenants[].role", "tenants[].read", "tenants[].write"):
        assert path in out.stdout
