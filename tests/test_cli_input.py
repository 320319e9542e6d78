"""Bad input: one clear line on stderr, exit 2, no traceback, nothing changed in moto.

The table runs the real CLI entry point (`rbacbridge.cli.main`) in this process with the streams
captured at the file-descriptor level (fast: no interpreter start per case); a sample of it, the
approval rules and Ctrl-C run `python -m rbacbridge` in subprocesses as a user would.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.fixtures_aws import ACCOUNT, moto_url  # noqa: F401
from tests.fixtures_aws import sandbox as _fresh_sandbox  # noqa: F401

_CLIENTS: dict = {}


@pytest.fixture
def sandbox(_fresh_sandbox):  # noqa: F811
    """The shared moto sandbox, with its inspection clients kept across tests (creating boto3
    clients costs more than the cases themselves)."""
    _fresh_sandbox._clients = _CLIENTS.setdefault(_fresh_sandbox.url, {})
    return _fresh_sandbox

VALID = ["setup", "--only", "aws", "--yes", "--account-id", ACCOUNT]
LONG = "x" * 100_000  # an unbounded value must not come back unbounded

CONFIGS = {
    "malformed-yaml": "iam:\n  node_role: [unclosed\n",
    "tab-indented": "iam:\n\tnode_role: x\n",
    "unknown-key": "iam:\n  node_rol: x\n",
    "unknown-section": "aws:\n  regoin: us-east-1\n",
    "unknown-long-key": LONG + ": 1\n",
    "not-a-mapping": "- just\n- a list\n",
    "bad-bucket-in-yaml": "buckets:\n  tenant: Lanre_K8s\n",
    "bad-port-in-yaml": "kube2iam:\n  port: 70000\n",
    "same-roles": "iam:\n  node_role: same\n  pod_role: same\n",
    "bad-boolean": "kube2iam:\n  namespace_restrictions: maybe\n",
    "boolean-as-number": "kube2iam:\n  namespace_restrictions: 1\n",
    "port-true": "kube2iam:\n  port: true\n",
    "port-float": "kube2iam:\n  port: 8282.9\n",
    "port-hex": "kube2iam:\n  port: 0x1F\n",
    "port-mapping": "kube2iam:\n  port:\n    value: 8282\n",
    "role-yes": "iam:\n  node_role: yes\n",
    "role-empty": "iam:\n  node_role:\n",
    "role-mapping": "iam:\n  node_role: {a: 1}\n",
    "role-non-ascii": "iam:\n  pod_role: rôle-élevé\n",
    "role-long": "iam:\n  node_role: " + LONG + "\n",
    "account-underscores": "account_id: 1234_5678_9012\n",
    "account-octal": "account_id: 012345670123\n",
    "account-arabic-digits": "account_id: '١٢٣٤٥٦٧٨٩٠١٢'\n",
    "duplicate-key": "iam:\n  node_role: a\n  node_role: b\n",
    "duplicate-section": "iam:\n  node_role: a\niam:\n  pod_role: b\n",
    "buckets-list": "buckets: [x]\n",
    "instances-mapping": "instances: {a: 1}\n",
    "region-non-ascii": "aws:\n  region: us-east-١\n",
    "timeout-too-long": "kubernetes:\n  rollout_timeout: 90000\n",
    "timeout-words": "kubernetes:\n  rollout_timeout: soon\n",
    "parallel-zero": "nodes:\n  parallel: 0\n",
    "namespace-upper": "kubernetes:\n  namespace: Tenant\n",
    "default-role-is-node-role": "iam:\n  default_role: nettech-s3-read-only\n",
    "pods-default-to-pod-role": "kube2iam:\n  default_role: nettech-s3-read-write\n",
    "bad-debug": "kube2iam:\n  debug: sometimes\n",
    "tenants-unknown-key": "tenants:\n  - {name: a, namespaces: [a], role: r, polcy: p}\n",
    "tenants-bad-read": "tenants:\n  - {name: a, namespaces: [a], role: r, read: [x]}\n",
    "tenants-shared-namespace": "tenants:\n  - {name: a, namespaces: [x], role: r}\n  - {name: b, namespaces: [x], role: s}\n",
    "tenants-duplicate-name": "tenants:\n  - {name: a, namespaces: [a], role: r}\n  - {name: a, namespaces: [b], role: s}\n",
    "tenants-node-role": "tenants:\n  - {name: a, namespaces: [a], role: nettech-s3-read-only}\n",
    "tenants-and-legacy": "iam:\n  pod_role: x\ntenants:\n  - {name: a, namespaces: [a], role: r}\n",
}
FILES = {
    "non-utf8-config": b"iam:\n  node_role: \xff\xfe\n",
    "bad-aws-config": b"[default\nregion = us-east-1\n",
    "bad-kubeconfig": b"apiVersion: v1\nclusters: [\n",
    "kubeconfig-not-utf8": b"apiVersion: v1\nkind: \xff\n",
    "kubeconfig": (b"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:9'}\n"
                   b"users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: ctx\n  context: {cluster: c, user: u}\n"
                   b"current-context: ctx\n"),
}

# (name, argv, extra environment (None = unset), text the line must contain)
CASES = [
    ("short-account", ["setup", "--only", "aws", "--yes", "--account-id", "12345"], {}, "12 digits"),
    ("letters-account", ["setup", "--only", "aws", "--yes", "--account-id", "12345678901a"], {}, "12 digits"),
    ("arabic-digits-account", ["setup", "--only", "aws", "--yes", "--account-id", "١٢٣٤٥٦٧٨٩٠١٢"], {}, "12 digits"),
    ("arabic-digits-account-render", ["render", "--account-id", "١٢٣٤٥٦٧٨٩٠١٢"], {}, "--account-id"),
    ("long-account", ["setup", "--only", "aws", "--yes", "--account-id", LONG], {}, "--account-id"),
    ("no-account", ["setup", "--only", "aws", "--yes"], {}, "--account-id"),
    ("account-mismatch", ["setup", "--only", "aws", "--yes", "--account-id", "111111111111"], {}, "does not match"),
    ("bad-region", VALID + ["--region", "mars-1"], {}, "--region"),
    ("region-uppercase", VALID + ["--region", "US-EAST-1"], {}, "--region"),
    ("region-arabic-digit", VALID + ["--region", "us-east-١"], {}, "--region"),
    ("region-long", VALID + ["--region", LONG], {}, "--region"),
    ("bad-AWS_REGION", VALID, {"AWS_REGION": "mars"}, "AWS_REGION"),
    ("bad-AWS_DEFAULT_REGION", VALID, {"AWS_DEFAULT_REGION": "us-east-١"}, "AWS_DEFAULT_REGION"),
    ("bad-instance", VALID + ["--instance-id", "i-xyz"], {}, "--instance-id"),
    ("instance-not-hex", VALID + ["--instance-id", "i-0123456789abcdefg"], {}, "--instance-id"),
    ("missing-instance", VALID + ["--instance-id", "i-0123456789abcdef0"], {}, "does not exist"),
    ("bad-endpoint", VALID + ["--endpoint-url", "ftp://x"], {}, "--endpoint-url"),
    ("endpoint-with-space", VALID + ["--endpoint-url", "http://ex ample"], {}, "--endpoint-url"),
    ("garbage-AWS_ENDPOINT_URL", VALID, {"AWS_ENDPOINT_URL": "garbage"}, "AWS_ENDPOINT_URL"),
    ("bogus-AWS_RETRY_MODE", VALID, {"AWS_RETRY_MODE": "bogus"}, "AWS_RETRY_MODE"),
    ("bogus-AWS_MAX_ATTEMPTS", VALID, {"AWS_MAX_ATTEMPTS": "lots"}, "AWS_MAX_ATTEMPTS"),
    ("malformed-AWS_CONFIG_FILE", VALID, {"AWS_CONFIG_FILE": "@bad-aws-config", "AWS_DEFAULT_REGION": None}, "AWS config file"),
    ("malformed-AWS_CONFIG_FILE-with-region", VALID + ["--region", "us-east-1"], {"AWS_CONFIG_FILE": "@bad-aws-config"},
     "AWS config file"),
    ("long-only", ["setup", "--only", "aws," + LONG, "--yes", "--account-id", ACCOUNT], {}, "--only"),
    ("unknown-kube-context", ["plan", "--only", "kube", "--kubeconfig", "@kubeconfig", "--context", "nope"], {}, "nope"),
    ("only-access-key-id", VALID, {"AWS_SECRET_ACCESS_KEY": None}, "AWS_SECRET_ACCESS_KEY"),
    ("no-credentials", VALID, {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, "no AWS credentials"),
    ("unknown-AWS_PROFILE", VALID, {"AWS_PROFILE": "nope"}, "'nope'"),
    ("unknown-profile", VALID + ["--profile", "no-such-profile"], {}, "'no-such-profile'"),
    ("profile-two-lines", VALID + ["--profile", "a\nb"], {}, "--profile"),
    ("bad-only", ["setup", "--only", "aws,dns", "--yes", "--account-id", ACCOUNT], {}, "--only"),
    ("bad-output", VALID + ["-o", "xml"], {}, "--output"),
    ("plan-bad-output", ["plan", "--only", "aws", "-o", "xml"], {}, "--output"),
    ("missing-config-file", VALID + ["--config", "/nonexistent/rbacbridge.yaml"], {}, "cannot read config"),
    ("config-is-a-directory", VALID + ["--config", "/tmp"], {}, "cannot read config"),
    ("unknown-flag", VALID + ["--acount-id", "1"], {}, "No such option"),
    ("unknown-command", ["sеtup"], {}, "No such command"),
    ("bad-namespace", VALID + ["-n", "Tenant_NS"], {}, "--namespace"),
    ("bad-host-interface", VALID + ["--host-interface", "eth0;reboot"], {}, "--host-interface"),
    ("bad-node-selector", VALID + ["--node-selector", "a=b;c"], {}, "--node-selector"),
    ("bad-ssh-user", VALID + ["--ssh-user", "Root;"], {}, "--ssh-user"),
    ("bad-ssh-port", VALID + ["--ssh-port", "70000"], {}, "--ssh-port"),
    ("ssh-port-words", VALID + ["--ssh-port", "ssh"], {}, "--ssh-port"),
    ("bad-node", VALID + ["--node", "bad host"], {}, "--node"),
    ("malformed-kubeconfig", ["plan", "--only", "kube", "--kubeconfig", "@bad-kubeconfig"], {}, "not valid YAML"),
    ("kubeconfig-not-utf8", ["plan", "--only", "kube", "--kubeconfig", "@kubeconfig-not-utf8"], {}, "UTF-8"),
    ("missing-kubeconfig", ["plan", "--only", "kube", "--kubeconfig", "/nonexistent/kubeconfig"], {}, "does not exist"),
    ("iptables-port-zero", ["iptables", "status", "--port", "0"], {}, "--port"),
    ("iptables-bad-host-ip", ["iptables", "status", "--host-ip", "1.2.3"], {}, "--host-ip"),
    ("iptables-ipv6-host-ip", ["iptables", "status", "--host-ip", "::1"], {}, "IPv4"),
    ("iptables-status-has-no-yes", ["iptables", "status", "--yes"], {}, "No such option"),
    ("iptables-status-has-no-dry-run", ["iptables", "status", "--dry-run"], {}, "No such option"),
    ("verify-bad-stage", ["verify", "--stage", "during"], {}, "--stage"),
    ("verify-bad-probe", ["verify", "--probe", "magic"], {}, "--probe"),
    ("verify-bad-output", ["verify", "-o", "xml"], {}, "--output"),
    ("verify-bad-host-ip", ["verify", "--host-ip", "nope"], {}, "--host-ip"),
    ("verify-negative-settle", ["verify", "--settle", "-1"], {}, "--settle"),
    ("verify-word-settle", ["verify", "--settle", "soon"], {}, "--settle"),
    ("verify-nan-settle", ["verify", "--settle", "nan"], {}, "--settle"),
    ("verify-huge-settle", ["verify", "--settle", "901"], {}, "--settle"),
    ("demo-bad-break", ["demo", "--break", "everything"], {}, "--break"),
] + [(f"config-{name}", VALID + ["--config", f"@{name}"], {}, None) for name in CONFIGS] + [
    ("config-non-utf8", VALID + ["--config", "@non-utf8-config"], {}, "UTF-8"),
]
EXPECTED_IN_CONFIG_ERRORS = {
    "port-true": "kube2iam.port", "port-float": "kube2iam.port", "port-hex": "kube2iam.port", "role-yes": "iam.node_role",
    "account-underscores": "account_id", "account-octal": "account_id", "account-arabic-digits": "account_id",
    "duplicate-key": "duplicate key 'node_role'", "duplicate-section": "duplicate key 'iam'", "buckets-list": "invalid buckets",
    "role-non-ascii": "iam.pod_role", "role-long": "iam.node_role", "timeout-too-long": "kubernetes.rollout_timeout",
    "region-non-ascii": "aws.region", "role-empty": "iam.node_role", "role-mapping": "iam.node_role",
    "instances-mapping": "instances", "tenants-unknown-key": "tenants[0].polcy", "tenants-bad-read": "tenants[0].read",
    "tenants-shared-namespace": "tenants[1].namespaces", "tenants-duplicate-name": "tenants[1].name",
    "tenants-node-role": "tenants[0].role", "tenants-and-legacy": "move it into a tenant", "boolean-as-number": "kube2iam.namespace_restrictions", "port-mapping": "kube2iam.port",
}


def _materialise(tmp_path, argv, env):
    """`@name` in argv or env becomes a file holding CONFIGS[name] or FILES[name]."""
    def path_for(name: str) -> str:
        path = tmp_path / name
        path.write_bytes(FILES[name] if name in FILES else CONFIGS[name].encode())
        return str(path)

    argv = [path_for(a[1:]) if a.startswith("@") else a for a in argv]
    env = {k: (path_for(v[1:]) if isinstance(v, str) and v.startswith("@") else v) for k, v in env.items()}
    return argv, env


def run_main(monkeypatch, capfd, argv, env) -> tuple[int, str, str]:
    """The CLI's entry point in this process, as `rbacbridge ARGV` with stdin not a terminal."""
    from rbacbridge import cli

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if value is not None:
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "argv", ["rbacbridge", *argv])
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    capfd.readouterr()
    # main() handles SIGINT and SIGTERM, and ignores both once its exit code is decided
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as exited:
            cli.main()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    out, err = capfd.readouterr()
    return exited.value.code, out, err


def assert_one_line(code, err, expected=None):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert len(lines[0]) <= 300, len(lines[0])
    if expected:
        assert expected in lines[0], lines[0]


@pytest.mark.parametrize("name,argv,env,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(sandbox, tmp_path, monkeypatch, capfd, name, argv, env, expected):
    sandbox.new_instance()
    before = sandbox.snapshot()
    argv, env = _materialise(tmp_path, argv, env)
    if name.startswith("config-"):
        expected = EXPECTED_IN_CONFIG_ERRORS.get(name[len("config-"):], expected)
    code, _, err = run_main(monkeypatch, capfd, argv, {**sandbox.env(), **env})
    assert_one_line(code, err, expected)
    assert sandbox.snapshot() == before


def test_table_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", ["region-arabic-digit", "garbage-AWS_ENDPOINT_URL", "config-port-true", "bogus-AWS_RETRY_MODE",
                                  "only-access-key-id", "malformed-kubeconfig"])
def test_bad_input_in_a_real_process(sandbox, tmp_path, name):
    """The same, through `python -m rbacbridge` (start-up, stdin not a terminal, real exit status)."""
    _, argv, env, expected = next(c for c in CASES if c[0] == name)
    argv, env = _materialise(tmp_path, argv, env)
    full_env = {**sandbox.env(), **env}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    before = sandbox.snapshot()
    result = subprocess.run([sys.executable, "-m", "rbacbridge", *argv], capture_output=True, text=True,
                            env=full_env, timeout=60, stdin=subprocess.DEVNULL)
    assert_one_line(result.returncode, result.stderr, expected if not name.startswith("config-") else "kube2iam.port")
    assert sandbox.snapshot() == before


def test_example_config_holds_every_default():
    from pathlib import Path

    from rbacbridge.config import Config, load

    example = Path(__file__).resolve().parent.parent / "examples" / "rbacbridge.yaml"
    config = load(example)
    assert config == Config(account_id="123456789012")
    assert (config.default_role, config.pod_default_role, config.kube2iam_image) == ("dedicated", "nettech-pod-default", "jtblin/kube2iam:0.13.0")
    assert config.kube2iam_tolerations == ({"operator": "Exists"},) and config.kube2iam_debug is False


def test_missing_credentials(sandbox):
    env = sandbox.env()
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    result = subprocess.run([sys.executable, "-m", "rbacbridge", *VALID], capture_output=True, text=True, env=env, timeout=60)
    assert_one_line(result.returncode, result.stderr, "no AWS credentials")


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


# --- approval: without a terminal, --yes is needed ---------------------------------------------


def _cli(sandbox, *argv, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "rbacbridge", *argv], capture_output=True, text=True,
                          env={**sandbox.env(), **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL)


def test_setup_and_teardown_without_a_terminal_need_yes(sandbox):
    instance = sandbox.new_instance()
    common = ["--only", "aws", "--account-id", ACCOUNT, "--instance-id", instance]
    before = sandbox.snapshot()

    refused = _cli(sandbox, "setup", *common)
    assert refused.returncode == 2
    assert "rbacbridge setup plan" in refused.stdout  # the plan is shown
    assert refused.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "--yes" in refused.stderr.strip().splitlines()[-1]
    assert sandbox.snapshot() == before

    as_json = _cli(sandbox, "setup", *common, "-o", "json")
    assert as_json.returncode == 2 and '"ok": false' in as_json.stdout and '"applied": []' in as_json.stdout
    assert sandbox.snapshot() == before

    dry = _cli(sandbox, "setup", *common, "--dry-run")
    assert dry.returncode == 0 and sandbox.snapshot() == before

    applied = _cli(sandbox, "setup", *common, "--yes")
    assert applied.returncode == 0, applied.stderr
    after_setup = sandbox.snapshot()
    assert {"nettech-s3-read-only", "nettech-s3-read-write"} <= set(after_setup["roles"])

    nothing_to_do = _cli(sandbox, "setup", *common)  # no changes: nothing to approve
    assert nothing_to_do.returncode == 0, nothing_to_do.stderr

    refused_teardown = _cli(sandbox, "teardown", *common)
    assert refused_teardown.returncode == 2 and "--yes" in refused_teardown.stderr
    assert sandbox.snapshot() == after_setup

    torn = _cli(sandbox, "teardown", *common, "--yes")
    assert torn.returncode == 0, torn.stderr
    assert sandbox.snapshot() == before


def test_plan_exit_code(sandbox):
    instance = sandbox.new_instance()
    common = ["--only", "aws", "--account-id", ACCOUNT, "--instance-id", instance]
    pending = _cli(sandbox, "plan", *common, "--exit-code")
    assert pending.returncode == 4, pending.stderr
    assert _cli(sandbox, "plan", *common).returncode == 0  # without --exit-code: 0
    assert _cli(sandbox, "setup", *common, "--yes").returncode == 0
    clean = _cli(sandbox, "plan", *common, "--exit-code", "-o", "yaml")
    assert clean.returncode == 0, clean.stderr
    import yaml

    assert all(step["action"] == "unchanged" for step in yaml.safe_load(clean.stdout)["steps"])


def test_version_completion_and_help(sandbox):
    from rbacbridge import __version__

    version = _cli(sandbox, "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"rbacbridge {__version__}"
    # The shell named wins over the one detected from the parent processes (tests/test_first_hour.py: zsh, fish).
    completion = _cli(sandbox, "--show-completion", "bash")
    assert completion.returncode == 0 and "_RBACBRIDGE_COMPLETE=complete_bash" in completion.stdout
    completed = _cli(sandbox, env={"_RBACBRIDGE_COMPLETE": "complete_bash", "COMP_WORDS": "rbacbridge setup --acc",
                                   "COMP_CWORD": "2"})
    assert completed.returncode == 0 and "--account-id" in completed.stdout.split()
    top = _cli(sandbox, "--help").stdout
    assert "--debug" in top and "--version" in top and "130 interrupted" in " ".join(top.split())
    for argv, wanted in ((["plan", "--help"], ["--nginx-namespace", "[table|json|yaml]", "--exit-code", "--instance-id ID"]),
                         (["verify", "--help"], ["[before|after]", "[exec|ephemeral]", "[table|json|yaml|junit]"]),
                         (["iptables", "status", "--help"], ["--node HOST[:PORT]"])):
        text = _cli(sandbox, *argv).stdout
        assert "list[str]" not in text and "<str>" not in text
        for item in wanted:
            assert item in text, (argv, item)
    status = _cli(sandbox, "iptables", "status", "--help").stdout
    assert "--yes" not in status and "--dry-run" not in status


# --- region: like the aws CLI -------------------------------------------------------------------

OTHER = "eu-west-2"
WRONG = "ap-south-1"


def _instance_in(sandbox, region: str) -> str:
    ec2 = sandbox.session(record=False).client("ec2", endpoint_url=sandbox.url, region_name=region)
    return ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]


def _profile_file(tmp_path, body: str) -> str:
    path = tmp_path / "aws-config"
    path.write_text(body)
    return str(path)


@pytest.mark.parametrize("source", ["flag", "config", "AWS_REGION", "AWS_DEFAULT_REGION", "profile", "default-profile",
                                    "built-in-default"])
def test_region_comes_from_each_source_in_order(sandbox, tmp_path, monkeypatch, capfd, source):
    """The instance exists only in the region that source names; every lower source names another
    region, so planning succeeds only if that source won."""
    region = "us-east-1" if source == "built-in-default" else OTHER
    instance = _instance_in(sandbox, region)
    config = tmp_path / "rbacbridge.yaml"
    config.write_text(f"aws:\n  region: {WRONG}\n" if source == "flag" else "{}\n")
    argv = ["plan", "--only", "aws", "--account-id", ACCOUNT, "--instance-id", instance, "-c", str(config), "-o", "json"]
    env = {**sandbox.env(), "AWS_REGION": None, "AWS_DEFAULT_REGION": None,
           "AWS_CONFIG_FILE": _profile_file(tmp_path, f"[default]\nregion = {WRONG}\n[profile other]\nregion = {WRONG}\n")}
    if source == "flag":
        argv += ["--region", OTHER]
        env.update(AWS_REGION=WRONG, AWS_DEFAULT_REGION=WRONG)
    elif source == "config":
        config.write_text(f"aws:\n  region: {OTHER}\n")
        env.update(AWS_REGION=WRONG, AWS_DEFAULT_REGION=WRONG)
    elif source == "AWS_REGION":
        env.update(AWS_REGION=OTHER, AWS_DEFAULT_REGION=WRONG)
    elif source == "AWS_DEFAULT_REGION":
        env.update(AWS_DEFAULT_REGION=OTHER)
    elif source == "profile":
        env.update(AWS_PROFILE="other",
                   AWS_CONFIG_FILE=_profile_file(tmp_path, f"[default]\nregion = {WRONG}\n[profile other]\nregion = {OTHER}\n"))
    elif source == "default-profile":
        env.update(AWS_CONFIG_FILE=_profile_file(tmp_path, f"[default]\nregion = {OTHER}\n"))
    else:
        env.update(AWS_CONFIG_FILE=_profile_file(tmp_path, "[profile other]\nregion = eu-north-1\n"))
    code, out, err = run_main(monkeypatch, capfd, argv, env)
    assert code == 0, err
    assert instance in out


def test_region_in_the_wrong_place_is_reported_with_its_region(sandbox, monkeypatch, capfd):
    instance = _instance_in(sandbox, OTHER)
    code, _, err = run_main(monkeypatch, capfd, ["plan", "--only", "aws", "--account-id", ACCOUNT, "--instance-id", instance],
                            {**sandbox.env(), "AWS_DEFAULT_REGION": None, "AWS_REGION": "us-west-2"})
    assert_one_line(code, err, "region us-west-2")


# --- Ctrl-C: one line, exit 130, and a re-run converges ------------------------------------------


class HoldingProxy:
    """An HTTP proxy in front of moto that holds the Nth request whose body names a mutating
    action (or the Nth request at all) until released, so a test can interrupt the CLI while it
    waits for AWS. Released requests are still forwarded: AWS did it, the CLI never heard."""

    def __init__(self, target: str, hold_mutating: int | None = None, hold_any: int | None = None):
        self.target, self.hold_mutating, self.hold_any = target, hold_mutating, hold_any
        self.seen = self.mutating = 0
        self.holding = threading.Event()
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.forward(self, body)

            def do_GET(self):
                proxy.forward(self, b"")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def forward(self, handler, body: bytes) -> None:
        from tests.fixtures_aws import is_mutating

        action = ""
        for part in body.decode(errors="replace").split("&"):
            if part.startswith("Action="):
                action = part[len("Action="):]
        self.seen += 1
        hold = self.hold_any is not None and self.seen == self.hold_any
        if is_mutating(action):
            self.mutating += 1
            hold = hold or (self.hold_mutating is not None and self.mutating == self.hold_mutating)
        if hold:
            self.holding.set()
            self.release.wait(60)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")}
        request = urllib.request.Request(self.target + handler.path, data=body or None, headers=headers,
                                         method=handler.command)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, payload, kind = response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, payload, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", kind)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:
            pass  # the CLI has gone

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _interrupt(sandbox, argv, env, when) -> subprocess.CompletedProcess:
    # As from a terminal: SIGINT at its default, even when this test runs in a background job
    # (which starts with SIGINT ignored, and Python keeps ignoring it then).
    process = subprocess.Popen([sys.executable, "-m", "rbacbridge", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        when()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def _assert_interrupted(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert lines and lines[-1].startswith("error: interrupted"), result.stderr
    assert sum(line.startswith("error:") for line in lines) == 1


def _converges(sandbox, argv):
    again = _cli(sandbox, *argv, "--yes")
    assert again.returncode == 0, again.stderr
    plan = _cli(sandbox, "plan", *argv[1:], "-o", "json")
    import json

    steps = json.loads(plan.stdout)["steps"]
    assert [s for s in steps if s["action"] != "unchanged"] == []
    state = sandbox.snapshot()
    assert state["roles"]["nettech-s3-read-write"]["attached"] == ["nettech-s3-read-write"]
    assert state["roles"]["nettech-s3-read-only"]["attached"] == ["nettech-kube2iam-node", "nettech-s3-read-only"]
    assert state["profiles"]["nettech-instance-profile"] == ["nettech-s3-read-only"]
    return state


def test_ctrl_c_during_start_up(sandbox):
    instance = sandbox.new_instance()
    argv = ["setup", "--only", "aws", "--yes", "--account-id", ACCOUNT, "--instance-id", instance]
    before = sandbox.snapshot()
    result = _interrupt(sandbox, argv, sandbox.env(), lambda: time.sleep(0.3))
    _assert_interrupted(result)
    assert sandbox.snapshot() == before


@pytest.mark.parametrize("point", ["while-planning", "first-change", "mid-apply", "last-change"])
def test_ctrl_c_at_each_point_then_a_re_run_converges(sandbox, point):
    instance = sandbox.new_instance(previous_profile="legacy-node-profile")
    before = sandbox.snapshot()
    hold = {"while-planning": {"hold_any": 3}, "first-change": {"hold_mutating": 1},
            "mid-apply": {"hold_mutating": 5}, "last-change": {"hold_mutating": 11}}[point]
    proxy = HoldingProxy(sandbox.url, **hold)
    try:
        argv = ["setup", "--only", "aws", "--account-id", ACCOUNT, "--instance-id", instance]
        env = {**sandbox.env(), "AWS_ENDPOINT_URL": proxy.url}
        result = _interrupt(sandbox, argv + ["--yes"], env, lambda: proxy.holding.wait(60))
        _assert_interrupted(result)
        assert "interrupted" in result.stderr
    finally:
        proxy.close()  # the held request now reaches moto: AWS did it, the CLI never heard
    time.sleep(0.2)
    if point == "while-planning":
        assert sandbox.snapshot() == before
    else:
        assert sandbox.snapshot() != before
    _converges(sandbox, argv)
    torn = _cli(sandbox, "teardown", "--only", "aws", "--yes", "--instance-id", instance)
    assert torn.returncode == 0, torn.stderr
    assert sandbox.snapshot() == before  # including the instance's previous profile, restored


# --- AccessDenied: name the permission, do not advise a re-run -----------------------------------


def test_access_denied_names_the_permission_and_does_not_advise_a_re_run(sandbox):
    import json

    iam = sandbox.client("iam")
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        # IAM and EC2 read-only; the KMS key of the signed record it may create and use (so the first refused
        # call is IAM's: the record is written before anything is created, and the key before that)
        "Statement": [{"Effect": "Allow", "Action": ["iam:Get*", "iam:List*", "sts:GetCallerIdentity", "ec2:Describe*", "kms:*"],
                       "Resource": "*"}]}))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    instance = sandbox.new_instance()
    before = sandbox.snapshot()
    toggle = urllib.request.Request(f"{sandbox.url}/moto-api/reset-auth", data=b"0", method="POST",
                                    headers={"Content-Type": "application/json"})
    urllib.request.urlopen(toggle).read()
    try:
        result = _cli(sandbox, "setup", "--only", "aws", "--yes", "--account-id", ACCOUNT, "--instance-id", instance,
                      env={"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]})
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{sandbox.url}/moto-api/reset-auth", data=b"inf", method="POST",
                                                      headers={"Content-Type": "application/json"})).read()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1, result.stderr
    assert len(errors) == 1 and len(errors[0]) <= 300, errors
    assert "iam:CreatePolicy" in errors[0] and "rbacbridge permissions" in errors[0]
    assert "re-run" not in errors[0]
    assert sandbox.snapshot() == before


def test_namespace_flag_reaches_the_manifests(monkeypatch, capfd):
    import yaml

    code, out, err = run_main(monkeypatch, capfd, ["render", "--account-id", ACCOUNT, "-n", "team-a"], {})
    assert code == 0, err
    deployments = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"nginx-vanilla", "nginx-annotated"}
    assert {d["metadata"]["namespace"] for d in deployments} == {"team-a"}
