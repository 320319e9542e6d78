"""The AWS CLI probe on the real `aws` CLI's own output, against moto in server mode."""

import os
import shutil

import boto3
import pytest

from rbacbridge import verify as v
from rbacbridge.sandbox import set_enforcement
from tests.fixtures_verify import ACCOUNT, DUMMY, bucket_keys, moto_url, sandbox  # noqa: F401

pytestmark = pytest.mark.skipif(shutil.which("aws") is None, reason="needs the AWS CLI")


def cli_env(tmp_path, credentials=None):
    env = {k: val for k, val in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    if credentials:
        env.update(AWS_ACCESS_KEY_ID=credentials["aws_access_key_id"], AWS_SECRET_ACCESS_KEY=credentials["aws_secret_access_key"])
        if "aws_session_token" in credentials:
            env["AWS_SESSION_TOKEN"] = credentials["aws_session_token"]
    return env


def node_session(url, config):
    sts = boto3.client("sts", endpoint_url=url, region_name="us-east-1", **DUMMY)
    c = sts.assume_role(RoleArn=config.role_arn(ACCOUNT, config.node_role), RoleSessionName="i-0abc")["Credentials"]
    return {"aws_access_key_id": c["AccessKeyId"], "aws_secret_access_key": c["SecretAccessKey"], "aws_session_token": c["SessionToken"]}


def test_host_matrix_through_the_aws_cli_with_node_role_credentials(sandbox, tmp_path):
    url, config = sandbox
    backend = v.AwsCliBackend(v.LocalRunner(env=cli_env(tmp_path, node_session(url, config))), "us-east-1", url, timeout=60)
    set_enforcement(url, True)
    try:
        result = v.run_matrix(config, ACCOUNT, "after", [(v.Principal(v.HOST, "host"), backend)])
    finally:
        set_enforcement(url, False)
    assert result.ok, [(c.check, c.bucket, c.detail) for c in result.mismatches]
    host = result.principals[0]
    assert host.observed.arn == f"arn:aws:sts::{ACCOUNT}:assumed-role/nettech-s3-read-only/i-0abc"
    write = next(c for c in host.cells if c.check == "write" and c.bucket == config.tenant_bucket)
    assert write.observed is False and write.error == v.ACCESS_DENIED
    assert bucket_keys(url, config.shared_bucket) == bucket_keys(url, config.tenant_bucket) == []


def test_error_categories_from_real_cli_output(sandbox, tmp_path):
    url, config = sandbox
    with_creds = v.AwsCliBackend(v.LocalRunner(env=cli_env(tmp_path, node_session(url, config))), "us-east-1", url)
    no_creds = v.AwsCliBackend(v.LocalRunner(env=cli_env(tmp_path)), "us-east-1", url)
    closed_env = cli_env(tmp_path, DUMMY)
    closed_env.update(AWS_MAX_ATTEMPTS="1", AWS_RETRY_MODE="standard")  # one connection attempt, no back-off
    closed = v.AwsCliBackend(v.LocalRunner(env=closed_env), "us-east-1", "http://127.0.0.1:9", timeout=30)
    no_cli_env = cli_env(tmp_path, DUMMY)
    no_cli_env["PATH"] = str(tmp_path)
    no_cli = v.AwsCliBackend(v.LocalRunner(prefix=[], env=no_cli_env), "us-east-1", url)
    assert no_creds.identity().category == v.NO_CREDENTIALS
    assert with_creds.list_bucket("no-such-bucket-here").category == v.NO_SUCH_BUCKET
    assert closed.list_bucket(config.shared_bucket).category == v.NETWORK
    set_enforcement(url, True)
    try:
        denied = with_creds.put_object(config.tenant_bucket, "k")
    finally:
        set_enforcement(url, False)
    assert denied.category == v.ACCESS_DENIED and "PutObject" in denied.detail
    missing = no_cli.identity()
    assert missing.category == v.CLI_MISSING and "--install-cli" in missing.detail


def test_classify_texts():
    assert v.classify(254, "", "An error occurred (AccessDenied) when calling the AssumeRole operation: x").category == v.ASSUME_DENIED
    assert v.classify(254, "", "An error occurred (InvalidClientTokenId) when calling the GetCallerIdentity operation: x").category == v.INVALID_CREDENTIALS
    assert v.classify(127, "", "env: 'aws': No such file or directory").category == v.CLI_MISSING
    assert v.classify(124, "", "timed out after 60s").category == v.NETWORK
    assert v.classify(0, "{}", "").ok


def test_cli_argv_carries_region_and_endpoint():
    backend = v.AwsCliBackend(v.LocalRunner(), "eu-west-1", "http://10.0.0.1:5000")
    argv = backend.argv("s3api", "list-objects-v2", "--bucket", "b")
    assert argv[argv.index("--region") + 1] == "eu-west-1"
    assert argv[argv.index("--endpoint-url") + 1] == "http://10.0.0.1:5000"
    assert "--endpoint-url" not in v.AwsCliBackend(v.LocalRunner(), "eu-west-1").argv("sts", "get-caller-identity")


def test_missing_cli_without_install_flag_is_a_usage_error(tmp_path):
    from rbacbridge.errors import UsageError

    runner = v.LocalRunner(env={"PATH": str(tmp_path)})
    with pytest.raises(UsageError, match="--install-cli"):
        v.ensure_cli(runner, install=False, where="pod default/x")
