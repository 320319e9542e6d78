"""Bad input: one clear line on stderr, exit 2, no traceback, nothing changed in moto."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fixtures_aws import moto_url, sandbox  # noqa: F401

VALID = ["setup", "--only", "aws", "--yes", "--account-id", "123456789012"]

CONFIGS = {
    "malformed-yaml": "iam:\n  node_role: [unclosed\n",
    "unknown-key": "iam:\n  node_rol: x\n",
    "unknown-section": "aws:\n  regoin: us-east-1\n",
    "not-a-mapping": "- just\n- a list\n",
    "bad-bucket-in-yaml": "buckets:\n  tenant: Lanre_K8s\n",
    "bad-port-in-yaml": "kube2iam:\n  port: 70000\n",
    "same-roles": "iam:\n  node_role: same\n  pod_role: same\n",
    "bad-boolean": "kube2iam:\n  namespace_restrictions: maybe\n",
    "default-role-is-node-role": "iam:\n  default_role: nettech-s3-read-only\n",
    "pods-default-to-pod-role": "kube2iam:\n  default_role: nettech-s3-read-write\n",
    "bad-debug": "kube2iam:\n  debug: sometimes\n",
}

CASES = [
    ("short-account", ["setup", "--only", "aws", "--yes", "--account-id", "12345"], "12 digits"),
    ("letters-account", ["setup", "--only", "aws", "--yes", "--account-id", "12345678901a"], "12 digits"),
    ("no-account", ["setup", "--only", "aws", "--yes"], "--account-id"),
    ("account-mismatch", ["setup", "--only", "aws", "--yes", "--account-id", "111111111111"], "does not match"),
    ("bad-region", VALID + ["--region", "mars-1"], "region"),
    ("region-uppercase", VALID + ["--region", "US-EAST-1"], "region"),
    ("bad-instance", VALID + ["--instance-id", "i-xyz"], "instance id"),
    ("instance-not-hex", VALID + ["--instance-id", "i-0123456789abcdefg"], "instance id"),
    ("missing-instance", VALID + ["--instance-id", "i-0123456789abcdef0"], "does not exist"),
    ("bad-endpoint", VALID + ["--endpoint-url", "ftp://x"], "endpoint"),
    ("bad-only", ["setup", "--only", "aws,dns", "--yes", "--account-id", "123456789012"], "--only"),
    ("bad-output", VALID + ["-o", "yaml"], "--output"),
    ("missing-config-file", VALID + ["--config", "/nonexistent/rbacbridge.yaml"], "cannot read config"),
    ("unknown-profile", VALID + ["--profile", "no-such-profile"], "profile"),
    ("unknown-flag", VALID + ["--acount-id", "1"], "No such option"),
] + [(f"config-{name}", VALID + ["--config", f"@{name}"], None) for name in CONFIGS]


@pytest.mark.parametrize("name,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(sandbox, tmp_path, name, argv, expected):
    sandbox.new_instance()
    before = sandbox.snapshot()
    argv = list(argv)
    for index, arg in enumerate(argv):
        if arg.startswith("@"):
            path = tmp_path / "rbacbridge.yaml"
            path.write_text(CONFIGS[arg[1:]])
            argv[index] = str(path)
    result = subprocess.run([sys.executable, "-m", "rbacbridge", *argv], capture_output=True, text=True,
                            env=sandbox.env(), timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    if expected:
        assert expected in result.stderr
    assert sandbox.snapshot() == before


def test_missing_credentials(sandbox):
    env = sandbox.env()
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    result = subprocess.run([sys.executable, "-m", "rbacbridge", *VALID], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "no AWS credentials" in result.stderr


def test_debug_shows_a_trace(sandbox):
    result = subprocess.run([sys.executable, "-m", "rbacbridge", "--debug", "setup", "--only", "aws", "--yes",
                             "--account-id", "111111111111"], capture_output=True, text=True, env=sandbox.env(), timeout=60)
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_no_secret_in_output(sandbox):
    env = sandbox.env()
    env["AWS_ACCESS_KEY_ID"] = "AKIASECRETSHOULDNOTSHOW"
    env["AWS_SECRET_ACCESS_KEY"] = "wJalrSecretShouldNeverAppear"
    env["AWS_SESSION_TOKEN"] = "SessionTokenShouldNeverAppear"
    instance = sandbox.new_instance()
    outputs = []
    for argv in (["plan", "--only", "aws", "-o", "json"],
                 ["--debug", "setup", "--only", "aws", "--yes", "--account-id", "123456789012", "--instance-id", instance],
                 ["--debug", "setup", "--only", "aws", "--yes", "--account-id", "111111111111"],
                 ["--debug", "teardown", "--only", "aws", "--yes", "-o", "json"]):
        result = subprocess.run([sys.executable, "-m", "rbacbridge", *argv], capture_output=True, text=True, env=env, timeout=60)
        outputs.append(result.stdout + result.stderr)
    text = "\n".join(outputs)
    assert "create role" in text  # the runs did real work
    for secret in ("AKIASECRETSHOULDNOTSHOW", "wJalrSecretShouldNeverAppear", "SessionTokenShouldNeverAppear"):
        assert secret not in text


def test_example_config_holds_every_default():
    from pathlib import Path

    from rbacbridge.config import Config, load

    example = Path(__file__).resolve().parent.parent / "examples" / "rbacbridge.yaml"
    config = load(example)
    assert config == Config(account_id="123456789012")
    assert (config.default_role, config.pod_default_role, config.kube2iam_image) == ("dedicated", "nettech-pod-default", "jtblin/kube2iam:0.13.0")
    assert config.kube2iam_tolerations == ({"operator": "Exists"},) and config.kube2iam_debug is False
