"""`rbacbridge tenant add / remove / list`: the config file edited with comments and order kept
(golden text), validated whole before writing (bad input: exit 2, file byte-identical), written
atomically, then the plan that applies it printed; nothing outside the file changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.fixtures_aws import ACCOUNT, moto_url, sandbox  # noqa: F401

COMMENTED = """\
# rbacbridge for the platform team
account_id: "123456789012"   # prod
iam:
  node_role: k8s-node          # the nodes' role

# tenants: one per client
tenants:
  # client A: reads the charts
  - name: client-a
    namespaces: [client-a]
    role: client-a-s3
    read: [nettech-helm-test]   # charts

kubernetes:
  namespace: apps   # nginx-vanilla lives here
"""

ADDED = """\
# rbacbridge for the platform team
account_id: "123456789012"   # prod
iam:
  node_role: k8s-node          # the nodes' role

# tenants: one per client
tenants:
  # client A: reads the charts
  - name: client-a
    namespaces: [client-a]
    role: client-a-s3
    read: [nettech-helm-test]   # charts
  - name: client-c
    namespaces: [client-c, client-c-jobs]
    role: client-c-s3
    read: [nettech-helm-test]
    write: [client-c-data, client-c-logs/app/*]
    workloads: [nginx-client-c]

kubernetes:
  namespace: apps   # nginx-vanilla lives here
"""

LEGACY = """\
# the article, by hand
account_id: '123456789012'
iam:
  pod_role: app-rw   # what annotated pods get
  node_role: k8s-node
buckets:
  shared: nettech-helm-test
  tenant: lanre.k8s.dev
"""

CONVERTED = """\
# the article, by hand
account_id: '123456789012'
iam:
  node_role: k8s-node
buckets:
  shared: nettech-helm-test
tenants:
  - name: nginx-annotated
    namespaces: [default]
    role: app-rw
    policy: nettech-s3-read-write
    read: [nettech-helm-test]
    write: [lanre.k8s.dev]
    workloads: [nginx-annotated]
  - name: client-b
    namespaces: [client-b]
    role: {existing: arn:aws:iam::111122223333:role/team/b}
"""


def _cli(*argv, env=None, cwd=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RBACBRIDGE_CONFIG"}
    base["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-m", "rbacbridge", *argv], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=60, stdin=subprocess.DEVNULL, cwd=cwd)


def test_add_then_remove_keeps_comments_and_order(tmp_path):
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(COMMENTED)
    added = _cli("tenant", "add", "client-c", "-n", "client-c", "-n", "client-c-jobs", "--read", "nettech-helm-test",
                 "--write", "client-c-data", "--write", "client-c-logs/app/*", "--workload", "nginx-client-c",
                 "-c", str(path), "--no-plan")
    assert added.returncode == 0, added.stderr
    assert path.read_text() == ADDED
    assert "added tenant client-c" in added.stderr
    removed = _cli("tenant", "remove", "client-c", "-c", str(path), "--no-plan")
    assert removed.returncode == 0, removed.stderr
    assert path.read_text() == COMMENTED


def test_add_to_a_legacy_file_converts_it_first(tmp_path):
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(LEGACY)
    result = _cli("tenant", "add", "client-b", "-n", "client-b", "--existing-role", "arn:aws:iam::111122223333:role/team/b",
                  "-c", str(path), "--no-plan")
    assert result.returncode == 0, result.stderr
    assert path.read_text() == CONVERTED
    assert "converted the article's tenant" in result.stderr and "iam.pod_role, buckets.tenant" in result.stderr
    listed = json.loads(_cli("tenant", "list", "-c", str(path), "-o", "json").stdout)["tenants"]
    assert [(t["name"], t["role"], t["managed"]) for t in listed] == [("nginx-annotated", "app-rw", True), ("client-b", "b", False)]


def test_list_of_a_legacy_file(tmp_path):
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(LEGACY)
    listed = json.loads(_cli("tenant", "list", "-c", str(path), "-o", "json").stdout)["tenants"]
    assert listed == [{"name": "nginx-annotated", "namespaces": ["default"], "role": "app-rw", "existing_role_arn": None,
                       "managed": True, "policy": "nettech-s3-read-write", "read": ["nettech-helm-test"],
                       "write": ["lanre.k8s.dev"], "workloads": ["nginx-annotated"], "from_legacy_keys": True}]
    table = _cli("tenant", "list", "-c", str(path), env={"COLUMNS": "200"})  # piped: 80 columns would fold the names
    assert table.returncode == 0 and "nginx-annotated" in table.stdout


BAD = [
    (["add", "client-z", "-n", "client-a"], "tenants[1].namespaces (in the config file): already a namespace of tenant client-a"),
    (["add", "client-a", "-n", "client-z"], "tenant 'client-a' already exists"),
    (["add", "Client", "-n", "client-z"], "invalid NAME 'Client'"),
    (["add", "client-z"], "at least one --namespace"),
    (["add", "client-z", "-n", "client-z", "--read", "X"], "invalid --read 'X'"),
    (["add", "client-z", "-n", "client-z", "--write", "b-1/logs"], "invalid --write 'b-1/logs'"),
    (["add", "client-z", "-n", "client-z", "--role", "a", "--existing-role", "arn:aws:iam::111122223333:role/x"], "not both"),
    (["add", "client-z", "-n", "client-z", "--existing-role", "nope"], "invalid --existing-role"),
    (["add", "client-z", "-n", "client-z", "--role", "k8s-node"], "the node role"),
    (["add", "client-z", "-n", "client-z", "-o", "xml"], "--output"),
    (["remove", "nope"], "unknown tenant 'nope'"),
]


@pytest.mark.parametrize("argv,expected", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_exit_2_file_unchanged(tmp_path, argv, expected):
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(COMMENTED)
    result = _cli("tenant", *argv, "-c", str(path))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert path.read_bytes() == COMMENTED.encode()
    assert sorted(os.listdir(tmp_path)) == ["rbacbridge.yaml"]  # no temporary file left


def test_without_config_file_edits_the_one_found(tmp_path):
    """No -c: the file every command would read (RBACBRIDGE_CONFIG, else ./rbacbridge.yaml) is the one edited."""
    path = tmp_path / "team.yaml"
    path.write_text(COMMENTED)
    result = _cli("tenant", "add", "client-z", "-n", "client-z", "--no-plan", env={"RBACBRIDGE_CONFIG": str(path)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == f"config: {path} (from RBACBRIDGE_CONFIG)"
    assert "name: client-z" in path.read_text() and not (tmp_path / "rbacbridge.yaml").exists()


def test_add_prints_the_plan_and_changes_nothing_else(sandbox, tmp_path):
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(COMMENTED)
    before = sandbox.snapshot()
    result = _cli("tenant", "add", "client-c", "-n", "client-c", "--write", "client-c-data", "-c", str(path),
                  "--only", "aws", "-o", "json", env=sandbox.env())
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    messages = [s["message"] for s in plan["steps"]]
    assert any("create role client-c-s3" in m for m in messages) and any("create policy client-c-s3" in m for m in messages)
    assert sandbox.snapshot() == before
    assert "client-c" in path.read_text()


def test_plan_failure_after_the_edit_says_the_file_changed(tmp_path):
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(COMMENTED)
    result = _cli("tenant", "remove", "client-a", "-c", str(path), "--only", "aws",
                  env={"AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                       "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"})
    assert result.returncode == 3, result.stderr
    assert "was updated, but the plan could not be made" in result.stderr and "no AWS credentials" in result.stderr
    assert "client-a" not in path.read_text().split("tenants:")[1].split("kubernetes:")[0].replace("# client A", "")


THREE = """\
tenants:
- name: client-a   # first
  namespaces: [client-a]
  role: client-a-s3

# client B: the noisy one
- name: client-b
  namespaces: [client-b]
  role: client-b-s3   # no grants yet
# client C
- name: client-c
  namespaces: [client-c]
  role: client-c-s3
account_id: '123456789012'
"""


def test_remove_the_middle_tenant_keeps_every_other_line(tmp_path):
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(THREE)
    result = _cli("tenant", "remove", "client-b", "-c", str(path), "--no-plan")
    assert result.returncode == 0, result.stderr
    assert path.read_text() == THREE.replace(
        "# client B: the noisy one\n- name: client-b\n  namespaces: [client-b]\n  role: client-b-s3   # no grants yet\n", "")


def test_write_goes_to_the_link_target_and_keeps_its_mode(tmp_path):
    real = tmp_path / "real.yaml"
    real.write_text(COMMENTED)
    real.chmod(0o640)
    link = tmp_path / "rbacbridge.yaml"
    link.symlink_to(real)
    result = _cli("tenant", "remove", "client-a", "-c", str(link), "--no-plan")
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and "tenants: []" in real.read_text()
    assert real.stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["rbacbridge.yaml", "real.yaml"]
