"""The settle window (issue 25, item 5): within it a cell that disagrees is observed again with backoff until it
agrees or the window ends; outside it, never (a real fault is never hidden). Real calls against moto (server mode)
with IAM enforcement on; the fault is a tenant policy detached from its role, fixed (re-attached) by a test thread
through moto while verify runs."""

import json
import threading
import time
from datetime import datetime, timedelta, timezone

import boto3
import jsonschema
import pytest

from rbacbridge import report
from rbacbridge import verify as v
from rbacbridge.sandbox import set_enforcement
from rbacbridge.verify.settle import DEFAULT_WINDOW, parse_settle, real_aws, settle_window
from tests.fixtures_verify import ACCOUNT, DUMMY, moto_url, sandbox  # noqa: F401
from tests.test_verify_probe_from import Pod, pod


class CountedPod(Pod):
    """A pod whose observations are counted: one exec (identity and credentials) per observation of its cells."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.observations = 0

    def pod_credentials(self):
        self.observations += 1
        return super().pod_credentials()


def admin_iam(url):
    """An admin user's IAM client (made before enforcement is on): the test thread fixes the fault with it."""
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", **DUMMY)
    iam.create_user(UserName="settle-admin")
    iam.put_user_policy(UserName="settle-admin", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="settle-admin")["AccessKey"]
    return boto3.client("iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                        aws_secret_access_key=key["SecretAccessKey"])


def detached(url, config):
    """The fault: the pod role's policy detached (its reads and writes are denied). Returns the policy ARN."""
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", **DUMMY)
    [attached] = iam.list_attached_role_policies(RoleName=config.pod_role)["AttachedPolicies"]
    iam.detach_role_policy(RoleName=config.pod_role, PolicyArn=attached["PolicyArn"])
    return attached["PolicyArn"]


def run(url, config, backend, window, progress=None):
    set_enforcement(url, True)
    try:
        return v.run_matrix(config, ACCOUNT, "after", [(pod(v.ANNOTATED, "node-a", config, True), backend)],
                            probe_from=v.PROBED_FROM_RBACBRIDGE, endpoint_url=url, settle_window=window, progress=progress)
    finally:
        set_enforcement(url, False)


def denied_cells(result):
    return sorted((c.check, c.bucket) for c in result.mismatches)


@pytest.mark.parametrize("window", [None, settle_window(None, aws=False), settle_window(0)],
                         ids=["not-asked", "endpoint-override", "settle-0"])
def test_fault_outside_the_window_fails_on_the_first_observation(sandbox, window):
    url, config = sandbox
    detached(url, config)
    backend = CountedPod(url, config, config.pod_role)
    result = run(url, config, backend, window)
    assert result.exit_code == 1 and denied_cells(result)
    assert all(c.blame.layer == v.PERMISSIONS for c in result.mismatches)
    assert backend.observations == 1  # observed once: no retry
    assert all(c.settle is None for c in result.all_cells)
    assert report.to_dict(result)["settle"]["retried"] == 0


def test_fault_lasting_past_the_window_still_fails(sandbox):
    url, config = sandbox
    detached(url, config)
    backend = CountedPod(url, config, config.pod_role)
    said = []
    result = run(url, config, backend, settle_window(6), progress=said.append)  # room for a slow first pass
    assert result.exit_code == 1 and denied_cells(result)
    assert said and said[0].startswith(f"settle window: {len(denied_cells(result))} cell(s) disagree; observing them again in 1 s")
    assert backend.observations >= 2  # observed again within the window
    retried = [c for c in result.mismatches if c.settle]
    assert retried and all(not c.settle.settled and c.settle.attempts >= 2 for c in retried)
    assert {(c.check, c.bucket) for c in retried} == set(denied_cells(result))
    assert any("still disagreed when the settle window ended" in n for n in result.notes)
    document = report.to_dict(result)
    assert document["settle"]["source"] == "--settle" and document["settle"]["settled"] == 0
    assert document["settle"]["retried"] == len(retried)


def test_fault_fixed_during_the_window_settles_and_says_after_how_long(sandbox):
    url, config = sandbox
    policy_arn = detached(url, config)
    admin = admin_iam(url)
    backend = CountedPod(url, config, config.pod_role)
    compared = threading.Event()  # verify said the cells disagree: the first observation is done
    first_denied = []

    def fix():
        assert compared.wait(60)
        time.sleep(1.0)
        first_denied.append(backend.observations)
        admin.attach_role_policy(RoleName=config.pod_role, PolicyArn=policy_arn)

    fixer = threading.Thread(target=fix)
    fixer.start()
    try:
        result = run(url, config, backend, settle_window(30), progress=lambda _: compared.set())
    finally:
        compared.set()
        fixer.join()
    assert first_denied and first_denied[0] >= 1  # verify had observed the fault before it was fixed
    assert result.ok, [(c.principal, c.check, c.bucket, c.detail) for c in result.mismatches]
    settled = [c for c in result.all_cells if c.settle]
    assert settled and all(c.settle.settled and c.settle.attempts >= 2 for c in settled)
    assert all(c.check in (v.READ, v.WRITE) for c in settled)
    assert all(1.0 <= c.settle.after_seconds < 30 for c in settled)
    assert any("settled within the window" in n for n in result.notes)
    document = json.loads(report.to_json(result))
    jsonschema.validate(document, report.JSON_SCHEMA)
    assert document["settle"]["settled"] == len(settled) == document["settle"]["retried"]
    cells = [c for t in document["tenants"] for p in t["principals"] for c in p["cells"]] + \
        [c for p in document["others"] for c in p["cells"]]
    assert {c["settle"]["settled"] for c in cells if c["settle"]} == {True}
    assert "settled after" in report.to_junit(result)


def test_the_window_comes_from_setups_record_on_real_aws_only(monkeypatch):
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    recent = settle_window(None, now - timedelta(seconds=10), aws=True, now=now)
    assert recent.source == "record" and recent.until == now + timedelta(seconds=DEFAULT_WINDOW - 10)
    old = settle_window(None, now - timedelta(seconds=DEFAULT_WINDOW + 1), aws=True, now=now)
    assert old.until is None and "no cell is retried" in old.why
    assert settle_window(None, None, aws=True, now=now).until is None
    assert settle_window(None, now, aws=False, now=now).until is None  # moto, LocalStack: none unless asked
    assert settle_window(12, None, aws=False, now=now).until == now + timedelta(seconds=12)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IAM", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    assert real_aws(None) and not real_aws("http://127.0.0.1:5000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:5000")
    assert not real_aws(None)


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "inf", "901", "1e9", ""])
def test_bad_settle_values_are_refused(value):
    """(One line and exit 2 from the CLI: tests/test_cli_input.py, verify-*-settle.)"""
    from rbacbridge.errors import UsageError

    with pytest.raises(UsageError, match="invalid --settle"):
        parse_settle(value)


def test_good_settle_values():
    assert parse_settle("0") == 0 and parse_settle("2.5") == 2.5 and parse_settle("900") == 900


def _scripted(rounds):
    """A principal whose read and write cells follow `rounds` (one (read ok, write ok) per observation) and the
    settle loop's observe/compare driven by it, with no waiting: what each retried cell is marked with."""
    principal = v.Principal("p", "pod")
    expected = v.Expected(principal, "role", "configured", {("b", v.READ): True, ("b", v.WRITE): True})
    script = iter(rounds)

    def result_of(observation):
        read_ok, write_ok = observation
        obs = v.Observed(principal, v.CallResult(True), "arn", "role", {})
        cells = [v.Cell("p", v.READ, "b", True, read_ok, read_ok), v.Cell("p", v.WRITE, "b", True, write_ok, write_ok)]
        identity = v.Cell("p", v.IDENTITY, None, "role", "role", True)
        return v.VerifyResult("after", ACCOUNT, "us-east-1", "node", ["b"], [v.PrincipalResult(principal, expected, obs, identity, cells)])

    result = result_of(next(script))
    latest = []

    def observe_again(names):
        latest[:] = [result_of(next(script))]
        return [latest[0].principals[0].observed]

    v.settle.settle(result, settle_window(60), observe_again, lambda exp, observations: latest[0],
                    sleep=lambda seconds: None)
    return {c.check: c.settle for c in result.all_cells}


def test_a_cell_that_agreed_keeps_when_it_did_and_one_that_flips_back_is_never_hidden():
    marks = _scripted([(False, False), (True, False), (True, False), (True, True)])
    assert (marks[v.READ].settled, marks[v.READ].attempts) == (True, 2)  # agreed on its 2nd observation
    assert (marks[v.WRITE].settled, marks[v.WRITE].attempts) == (True, 4)
    assert marks[v.IDENTITY] is None
    marks = _scripted([(False, True), (True, False), (True, True)])  # write agreed first, disagreed, agreed again
    assert marks[v.READ].settled and marks[v.WRITE].settled and marks[v.WRITE].attempts == 2  # from its disagreeing one
