"""Explanations (issue 25, item 4): a blamed cell quotes the statement AWS's policy simulator says decided it, with
the bucket policy passed as ResourcePolicy; where the operator may not call iam:SimulatePrincipalPolicy, or the
endpoint lacks it (moto), rbacbridge's evaluator explains, and the report says which did.

moto has no SimulatePrincipalPolicy, so the simulator is a small stand-in over HTTP (tests/iam_simulator.py) reached
through AWS_ENDPOINT_URL_IAM like any endpoint; every other IAM request goes through it to moto. Pods and cells are
real calls against moto (server mode) with IAM enforcement on."""

import json

import boto3
import jsonschema
import pytest

from rbacbridge import report
from rbacbridge import verify as v
from rbacbridge.aws import AwsGateway, live_documents
from rbacbridge.config import Config
from rbacbridge.sandbox import set_enforcement
from rbacbridge.verify.explain import CALLER_STAND_IN, Simulator
from tests.fixtures_verify import ACCOUNT, DUMMY, moto_url, sandbox  # noqa: F401
from tests.iam_simulator import SimulatorStandIn
from tests.test_verify_probe_from import Pod, pod


def planted_deny(bucket):
    """An inline policy as raw text, laid out over several lines (the simulator's positions are line and column)."""
    return ('{\n  "Version": "2012-10-17",\n  "Statement": [\n'
            '    {"Sid": "KeepReading", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},\n'
            f'    {{"Sid": "PlantedDeny", "Effect": "Deny", "Action": "s3:ListBucket",\n'
            f'     "Resource": "arn:aws:s3:::{bucket}"}}\n  ]\n}}\n')


@pytest.fixture
def planted(sandbox, monkeypatch):
    """The pod role denied s3:ListBucket on the tenant bucket by an inline policy; an operator session (admin user);
    the endpoints the SDK way: S3 and STS at moto, IAM at whatever the test sets."""
    url, config = sandbox
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", **DUMMY)
    text = planted_deny(config.tenant_bucket)
    iam.put_role_policy(RoleName=config.pod_role, PolicyName="planted-deny", PolicyDocument=text)
    iam.create_user(UserName="operator")
    iam.put_user_policy(UserName="operator", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="operator")["AccessKey"]
    session = boto3.Session(region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                            aws_secret_access_key=key["SecretAccessKey"])
    for name in ("AWS_ENDPOINT_URL_IAM", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_STS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    documents = live_documents(iam, [config.pod_role, config.node_role])
    return url, config, session, text, documents


def verify_with(url, config, session, documents, share=False):
    """Two pods of the pod role (two nodes, --every-node: a cell each), the simulator the live run would make."""
    assert config.endpoint_url is None  # the endpoints come from the environment
    simulator = Simulator.for_gateway(AwsGateway(Config(account_id=ACCOUNT), session=session), ACCOUNT, "aws")
    diagnostics = v.Diagnostics(documents=documents, simulator=simulator)
    targets = [(pod(v.ANNOTATED, n, config, True), Pod(url, config, config.pod_role)) for n in ("node-a", "node-b")]
    set_enforcement(url, True)
    try:
        result = v.run_matrix(config, ACCOUNT, "after", targets, diagnostics=diagnostics, share=share,
                              probe_from=v.PROBED_FROM_RBACBRIDGE, endpoint_url=url)
        # the live run compares again with sharper diagnostics: the simulator is not asked again
        again = v.compare(config, ACCOUNT, "after", [p.expected for p in result.principals],
                          [p.observed for p in result.principals], diagnostics)
    finally:
        set_enforcement(url, False)
    return result, again, simulator


def blamed(result, config):
    cells = [c for c in result.mismatches]
    assert {(c.check, c.bucket) for c in cells} == {(v.READ, config.tenant_bucket)}, \
        [(c.principal, c.check, c.bucket, c.detail) for c in cells]
    assert len(cells) == 2 and all(c.blame.layer == v.PERMISSIONS for c in cells)
    return cells


def test_simulator_quotes_the_deciding_statement_once_per_role_action_resource(planted, monkeypatch, capsys):
    url, config, session, text, documents = planted
    role_arn = config.role_arn(ACCOUNT, config.pod_role)
    with SimulatorStandIn(url, {role_arn: [("planted-deny", "role", text)]}) as standin:
        monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", standin.url)
        result, again, simulator = verify_with(url, config, session, documents)
    for cell in blamed(result, config) + blamed(again, config):
        assert cell.blame.explained_by == v.EXPLAINED_BY_SIMULATOR
        assert "AWS's policy simulator: s3:ListBucket explicitDeny by policy planted-deny: " in cell.blame.message
        assert '{"Sid":"PlantedDeny","Effect":"Deny","Action":"s3:ListBucket"' in cell.blame.message
        assert "KeepReading" not in cell.blame.message
    # two pods, two comparisons: one simulate call for the one (role, action, resource)
    assert len(standin.simulations) == 1 and simulator.calls == 1
    [asked] = standin.simulations
    assert asked["PolicySourceArn"] == [role_arn] and asked["ActionNames.member.1"] == ["s3:ListBucket"]
    assert asked["ResourceArns.member.1"] == [f"arn:aws:s3:::{config.tenant_bucket}"]
    assert "ResourcePolicy" not in asked  # the bucket has none
    assert "GetRolePolicy" in standin.proxied  # the statement quoted from the policy as IAM holds it
    assert any("explained by iam:SimulatePrincipalPolicy (2)" in n for n in result.notes)
    document = json.loads(report.to_json(result))
    jsonschema.validate(document, report.JSON_SCHEMA)
    blames = [c["blame"] for t in document["tenants"] for p in t["principals"] for c in p["cells"] if c["blame"]] + \
        [c["blame"] for p in document["others"] for c in p["cells"] if c["blame"]]
    assert [b["explained_by"] for b in blames] == ["iam:SimulatePrincipalPolicy"] * 2
    assert "explained by iam:SimulatePrincipalPolicy" in report.to_junit(result)
    monkeypatch.setenv("COLUMNS", "500")
    report.print_table(result)
    assert capsys.readouterr().out.count("(explained by iam:SimulatePrincipalPolicy)") == 2


def test_bucket_policy_is_passed_as_resource_policy_and_its_statement_quoted(planted, monkeypatch):
    url, config, session, _, documents = planted
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "AllowAccount", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
         "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{config.tenant_bucket}/*"},
        {"Sid": "DenyListing", "Effect": "Deny", "Principal": "*", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{config.tenant_bucket}"}]}, indent=2)
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", **DUMMY).put_bucket_policy(
        Bucket=config.tenant_bucket, Policy=policy)
    with SimulatorStandIn(url) as standin:  # it decides with the bucket policy it is sent, only
        monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", standin.url)
        result, _, _ = verify_with(url, config, session, documents)
    for cell in blamed(result, config):
        assert cell.blame.explained_by == v.EXPLAINED_BY_SIMULATOR
        assert "s3:ListBucket explicitDeny by the bucket policy: " in cell.blame.message
        assert '"Sid":"DenyListing"' in cell.blame.message
    [asked] = standin.simulations
    assert asked["ResourcePolicy"] == [policy]
    assert asked["ResourceOwner"] == [f"arn:aws:iam::{ACCOUNT}:root"]
    assert asked["CallerArn"] == [f"arn:aws:iam::{ACCOUNT}:user/{CALLER_STAND_IN}"]  # AWS takes only a user here


def test_access_denied_falls_back_to_the_evaluator_and_says_why(planted, monkeypatch):
    url, config, session, _, documents = planted
    with SimulatorStandIn(url, deny=True) as standin:
        monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", standin.url)
        result, again, simulator = verify_with(url, config, session, documents)
    for cell in blamed(result, config) + blamed(again, config):
        assert cell.blame.explained_by == v.EXPLAINED_BY_EVALUATOR
        assert "live policies: s3:ListBucket explicitly denied by statement PlantedDeny" in cell.blame.message
    assert len(standin.simulations) == 1  # refused once: not asked again in this run
    note = next(n for n in result.notes if n.startswith("iam:SimulatePrincipalPolicy not used"))
    assert "may not call it (AccessDenied" in note and "rbacbridge permissions" in note
    assert any("explained by rbacbridge evaluator (2)" in n for n in result.notes)


def test_moto_lacks_the_simulator_and_the_evaluator_explains(planted):
    url, config, session, _, documents = planted  # IAM at moto itself
    result, _, simulator = verify_with(url, config, session, documents)
    for cell in blamed(result, config):
        assert cell.blame.explained_by == v.EXPLAINED_BY_EVALUATOR
        assert "explicitly denied by statement PlantedDeny" in cell.blame.message
    assert simulator.calls == 1 and simulator.unavailable
    note = next(n for n in result.notes if n.startswith("iam:SimulatePrincipalPolicy not used"))
    assert "does not implement it" in note


def test_sandbox_explains_with_the_evaluator(sandbox):
    from rbacbridge.sandbox import sandbox_matrix

    url, config = sandbox
    result = sandbox_matrix(url, config, ACCOUNT, "after", fault="policy")
    explained = [c for c in result.mismatches if c.blame.layer == v.PERMISSIONS]
    assert explained and {c.blame.explained_by for c in explained} == {v.EXPLAINED_BY_EVALUATOR}


def test_the_simulators_answer_is_reported_even_where_no_statement_decides(planted, monkeypatch):
    url, config, session, _, documents = planted
    with SimulatorStandIn(url) as standin:  # given no document: every action is an implicit deny to it
        monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", standin.url)
        result, _, _ = verify_with(url, config, session, documents)
    for cell in blamed(result, config):
        assert cell.blame.explained_by == v.EXPLAINED_BY_SIMULATOR
        assert cell.blame.message.endswith("AWS's policy simulator: s3:ListBucket implicitDeny (no statement allows it)")
        assert "PlantedDeny" not in cell.blame.message  # AWS's word, not rbacbridge's evaluator's


def test_a_throttled_simulator_is_given_up_after_three_attempts(planted, monkeypatch):
    url, config, session, _, documents = planted
    with SimulatorStandIn(url, throttle=True) as standin:
        monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", standin.url)
        result, _, _ = verify_with(url, config, session, documents)
    assert {c.blame.explained_by for c in blamed(result, config)} == {v.EXPLAINED_BY_EVALUATOR}
    assert len(standin.simulations) == 3  # botocore's standard retries, capped: then not asked again
    assert any("the endpoint answered Throttling" in n for n in result.notes)
