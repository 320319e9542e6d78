"""Issue 24, items 1-3, as a new user meets them: the command, its exit code, its one line, and that
nothing was written. Over the wire: moto in server mode, a closed port, a socket that answers nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
import yaml

from tests.fixtures_aws import ACCOUNT, moto_url, sandbox  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = str(REPO / "examples" / "rbacbridge.yaml")


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rbacbridge", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=REPO)


def error_lines(run: subprocess.CompletedProcess) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("error:")]


# --- item 1: audit on an empty account ------------------------------------------------------------


def test_audit_of_an_empty_account_is_a_finding_unless_allow_absent(sandbox, tmp_path):
    before = sandbox.snapshot()
    run = cli("audit", "--only", "aws", "-c", EXAMPLE, "-o", "json", env=sandbox.env())
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    assert [f["id"] for f in report["findings"]] == ["install-absent"]
    assert "nettech-s3-read-only" in report["findings"][0]["evidence"]
    assert not any("no config given" in n for n in report["notes"])  # -c was given: no note may say otherwise
    allowed = cli("audit", "--only", "aws", "-c", EXAMPLE, "--allow-absent", env=sandbox.env())
    assert allowed.returncode == 0, allowed.stderr
    assert "--allow-absent: expected" in allowed.stdout + allowed.stderr
    assert sandbox.snapshot() == before  # audit reads only


def test_audit_of_a_partial_install_is_a_finding_even_with_allow_absent(sandbox):
    sandbox.client("iam").create_role(RoleName="nettech-s3-read-write", AssumeRolePolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                 "Action": "sts:AssumeRole"}]}))
    run = cli("audit", "--only", "aws", "-c", EXAMPLE, "--allow-absent", "-o", "json", env=sandbox.env())
    assert run.returncode == 1, run.stderr
    finding = json.loads(run.stdout)["findings"][0]
    assert finding["id"] == "install-partial" and "role nettech-s3-read-only (iam.node_role)" in finding["evidence"]


# --- item 2: retries, timeouts, progress, exit 3 --------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def _unreachable_env(sandbox, port: int, **extra: str) -> dict[str, str]:
    env = sandbox.env()
    env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="AKIAIOSFODNN7EXAMPLE",
               AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", **extra)
    return env


def test_unreachable_endpoint_exits_3_with_one_line_and_honours_aws_max_attempts(sandbox):
    env = _unreachable_env(sandbox, _closed_port(), AWS_MAX_ATTEMPTS="1")
    run = cli("plan", "--account-id", ACCOUNT, "--only", "aws", env=env)
    assert run.returncode == 3, run.stderr
    assert error_lines(run) == run.stderr.strip().splitlines()
    [line] = error_lines(run)
    assert line.startswith("error: cannot reach AWS at 'http://127.0.0.1:") and "connection refused after 1 of 1 attempt " in line
    assert "wJalr" not in run.stderr and "AKIAIOSFODNN7EXAMPLE" not in run.stderr


def test_the_profile_max_attempts_is_honoured(sandbox, tmp_path):
    profile = tmp_path / "aws-config"
    profile.write_text("[default]\nmax_attempts = 2\nretry_mode = standard\n")
    env = _unreachable_env(sandbox, _closed_port(), AWS_CONFIG_FILE=str(profile))
    run = cli("plan", "--account-id", ACCOUNT, "--only", "aws", env=env)
    assert run.returncode == 3, run.stderr
    assert "after 2 of 2 attempts" in error_lines(run)[0]


@pytest.fixture
def silent_endpoint():
    """Accepts a connection, says nothing for 2.6 s, then hangs up: a call slower than the progress threshold."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            time.sleep(2.6)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def test_a_slow_call_shows_progress_on_stderr(sandbox, silent_endpoint):
    env = _unreachable_env(sandbox, silent_endpoint, AWS_MAX_ATTEMPTS="1")
    run = cli("plan", "--account-id", ACCOUNT, "--only", "aws", env=env)
    assert run.returncode == 3, run.stderr
    progress = [line for line in run.stderr.splitlines() if "waiting for" in line]
    assert progress and f"waiting for 127.0.0.1:{silent_endpoint} (sts GetCallerIdentity): attempt 1/1" in progress[0]
    assert run.stdout == ""
    assert len(error_lines(run)) == 1 and "connection closed after 1 of 1 attempt" in error_lines(run)[0]


# --- item 3: partitions ----------------------------------------------------------------------------

PARTITIONS = [("cn-north-1", "aws-cn", "ec2.amazonaws.com.cn"), ("us-gov-west-1", "aws-us-gov", "ec2.amazonaws.com")]


def _arns(document) -> list[str]:
    text = json.dumps(document)
    return [part.split('"')[0] for part in text.split('"arn:')[1:]]


def _partition_client(url: str, service: str, region: str):
    return boto3.client(service, endpoint_url=url, region_name=region, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


@pytest.mark.parametrize("region,partition,ec2", PARTITIONS, ids=[p for _, p, _ in PARTITIONS])
def test_permissions_and_render_use_the_regions_partition(region, partition, ec2, tmp_path):
    env = dict(sandbox_free_env(), PYTHONPATH=str(REPO))
    run = cli("permissions", "--account-id", ACCOUNT, "--region", region, env=env)
    assert run.returncode == 0, run.stderr
    policy = json.loads(run.stdout)
    arns = _arns(policy)
    assert arns and all(a.startswith(f"{partition}:") for a in arns), arns
    passed = next(s for s in policy["Statement"] if s["Sid"] == "PassNodeRoleToEc2")
    assert ec2 in passed["Condition"]["StringEquals"]["iam:PassedToService"]
    config = tmp_path / "rbacbridge.yaml"
    config.write_text(f"account_id: '{ACCOUNT}'\naws:\n  region: {region}\n")
    rendered = cli("render", "-c", str(config), "--host-interface", "cni0", env=env)
    assert rendered.returncode == 0, rendered.stderr
    daemonset = next(d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] == "DaemonSet")
    args = daemonset["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--base-role-arn=arn:{partition}:iam::{ACCOUNT}:role/" in args


def sandbox_free_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {"AWS_CONFIG_FILE": "/dev/null"}


@pytest.mark.parametrize("region,partition,ec2", PARTITIONS, ids=[p for _, p, _ in PARTITIONS])
def test_setup_plan_audit_in_another_partition(sandbox, region, partition, ec2):
    env = dict(sandbox.env(), AWS_DEFAULT_REGION=region)
    setup = cli("setup", "--account-id", ACCOUNT, "--only", "aws", "--region", region, "--yes", env=env)
    assert setup.returncode == 0, setup.stderr
    iam = _partition_client(sandbox.url, "iam", region)
    roles = {r["RoleName"]: r for r in iam.list_roles()["Roles"]}
    node = roles["nettech-s3-read-only"]
    assert node["Arn"] == f"arn:{partition}:iam::{ACCOUNT}:role/nettech-s3-read-only"
    assert node["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": ec2}
    pod_trust = roles["nettech-s3-read-write"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]
    assert pod_trust == {"AWS": node["Arn"]}
    documents = []
    for policy in iam.list_policies(Scope="Local")["Policies"]:
        version = iam.get_policy_version(PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"])
        documents.append(version["PolicyVersion"]["Document"])
    arns = [a for d in documents for a in _arns(d)]
    assert arns and all(a.startswith(f"{partition}:") for a in arns), arns
    key = _partition_client(sandbox.url, "kms", region).describe_key(KeyId="alias/rbacbridge/nettech-instance-profile")
    assert key["KeyMetadata"]["Arn"].startswith(f"arn:{partition}:kms:{region}:")
    # The next plan sees what setup made as its own (same ARNs): nothing to change; audit agrees.
    plan = cli("plan", "--account-id", ACCOUNT, "--only", "aws", "--region", region, "-o", "json", "--exit-code", env=env)
    assert plan.returncode == 0, plan.stderr
    audit = cli("audit", "--only", "aws", "-c", EXAMPLE, "--region", region, "-o", "json", env=env)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert json.loads(audit.stdout)["findings"] == []


@pytest.mark.parametrize("region,partition,ec2", PARTITIONS, ids=[p for _, p, _ in PARTITIONS])
def test_verify_expects_access_in_the_regions_partition(region, partition, ec2):
    from rbacbridge.config import Config
    from rbacbridge.verify.expected import expected_matrix, managed_documents, role_arns

    config = Config(account_id=ACCOUNT, region=region)
    assert all(arn.startswith(f"arn:{partition}:iam::") for arn in role_arns(config, ACCOUNT).values())
    documents = managed_documents(config, ACCOUNT)
    assert all(a.startswith(f"{partition}:") for docs in documents.policies.values() for a in _arns(docs))
    pod = next(e for e in expected_matrix(config, ACCOUNT) if e.principal.tenant)
    assert pod.access[("lanre.k8s.dev", "write")] is True  # the pod role's arn:<partition>:s3::: grant is matched


def test_region_names_unknown_to_botocore_warn_and_malformed_ones_exit_2():
    env = dict(sandbox_free_env(), PYTHONPATH=str(REPO))
    known = cli("permissions", "--account-id", ACCOUNT, "--region", "eusc-de-east-1", env=env)
    assert known.returncode == 0 and known.stderr == "", known.stderr
    assert '"arn:aws-eusc:iam::' in known.stdout
    new = cli("permissions", "--account-id", ACCOUNT, "--region", "us-gov-north-9", env=env)
    assert new.returncode == 0, new.stderr
    [warning] = new.stderr.splitlines()
    assert warning.startswith("warning: region 'us-gov-north-9' is not a region botocore") and "aws-us-gov" in warning
    assert '"arn:aws-us-gov:iam::' in new.stdout
    bad = cli("permissions", "--account-id", ACCOUNT, "--region", "us-east-1; rm", env=env)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == "error: invalid --region 'us-east-1; rm': not an AWS region name (like us-east-1)"
