"""--probe-from rbacbridge (issue 25): one exec per pod reads its identity and credentials; rbacbridge makes the bucket
and chain calls with them, once per role, spot-checked in the pods. Real calls against moto (server mode) with IAM
enforcement on: the truth cases give the same cells as --probe-from pod, a pod whose own path answers differently
is caught by the spot check, and no credential reaches any output."""

import json
import logging
import os
import shutil
import subprocess
from collections import Counter

import boto3
import pytest

from rbacbridge import report
from rbacbridge import verify as v
from rbacbridge.sandbox import Boto3Backend, sandbox_matrix, set_enforcement
from rbacbridge.verify.inprocess import PodCredentials, parse_credentials
from rbacbridge.verify.one_exec import ONE_EXEC_SCRIPT, one_exec
from rbacbridge.verify.probes import KubeExecRunner, AwsCliBackend
from tests.fixtures_verify import ACCOUNT, DUMMY, bucket_keys, moto_url, sandbox  # noqa: F401


def cells_of(result):
    return {(c.principal, c.check, c.bucket or c.target): (c.observed, c.match, c.blame.layer if c.blame else None)
            for c in result.all_cells}


@pytest.mark.parametrize("stage,fault", [("after", None), ("after", "trust"), ("after", "policy"), ("after", "iptables"),
                                         ("after", "namespace"), ("before", None)])
def test_truth_cases_give_the_same_cells_and_layers_in_both_modes(sandbox, stage, fault):
    url, config = sandbox
    in_pods = sandbox_matrix(url, config, ACCOUNT, stage, fault=fault, probe_from=v.PROBED_FROM_POD)
    ours = sandbox_matrix(url, config, ACCOUNT, stage, fault=fault, probe_from=v.PROBED_FROM_RBACBRIDGE)
    assert cells_of(ours) == cells_of(in_pods)
    assert (ours.ok, ours.exit_code) == (in_pods.ok, in_pods.exit_code)
    assert {c.probed_from for c in in_pods.all_cells} == {v.PROBED_FROM_POD}
    if stage == "after":  # (the sandbox's pods before kube2iam are the node itself: no pod credentials to read)
        pods_with_credentials = [p for p in ours.principals if p.principal.kind == "pod" and p.identity.observed]
        made = [c for p in pods_with_credentials for c in p.cells if c.check in (v.READ, v.WRITE, v.CHAIN)]
        assert made and sum(c.probed_from == v.PROBED_FROM_RBACBRIDGE for c in made) >= len(made) - len(pods_with_credentials)
    assert all(c.probed_from == v.PROBED_FROM_POD for p in ours.principals if p.principal.kind == "host" for c in p.cells)
    assert bucket_keys(url, config.shared_bucket) == [] and bucket_keys(url, config.tenant_bucket) == []


class Pod(Boto3Backend):
    """A pod holding a role's credentials: its own calls counted on the wire; `denied_in_pod`: buckets its own path
    refuses to list (an egress proxy, a bucket policy on aws:SourceVpce that rbacbridge's calls do not satisfy)."""

    def __init__(self, url, config, role, denied_in_pod=()):
        sts = boto3.client("sts", endpoint_url=url, region_name="us-east-1", **DUMMY)
        c = sts.assume_role(RoleArn=config.role_arn(ACCOUNT, role), RoleSessionName="i-0probefrom")["Credentials"]
        super().__init__(url, "us-east-1", {"aws_access_key_id": c["AccessKeyId"], "aws_secret_access_key": c["SecretAccessKey"],
                                            "aws_session_token": c["SessionToken"]})
        self.secrets = (c["SecretAccessKey"], c["SessionToken"])
        self.denied_in_pod = set(denied_in_pod)
        self.sent = Counter()
        for client in (self.sts, self.s3):
            client.meta.events.register("before-send", lambda request, **_: self.sent.update([request.method]))

    def list_bucket(self, bucket):
        if bucket in self.denied_in_pod:
            return v.classify(254, "", "An error occurred (AccessDenied) when calling the ListObjectsV2 operation: "
                                       "denied by the VPC endpoint policy")
        return super().list_bucket(bucket)

    def pod_credentials(self):
        ident = self.identity()
        c = self.credentials
        return ident, PodCredentials(c["aws_access_key_id"], c["aws_secret_access_key"], c["aws_session_token"]), None


def pod(name, node, config, annotated):
    return v.Principal(f"{name}@{node}", "pod", namespace=config.namespace, node=node,
                       role_annotation=config.pod_role if annotated else None)


def run(url, config, targets, probe_from=v.PROBED_FROM_RBACBRIDGE):
    set_enforcement(url, True)
    try:
        return v.run_matrix(config, ACCOUNT, "after", targets, probe_from=probe_from, endpoint_url=url)
    finally:
        set_enforcement(url, False)


def test_pods_of_one_role_make_two_calls_each_and_rbacbridge_the_cells_once(sandbox):
    url, config = sandbox
    pods = {n: Pod(url, config, config.pod_role) for n in ("node-a", "node-b", "node-c")}
    result = run(url, config, [(pod(v.ANNOTATED, n, config, True), b) for n, b in pods.items()])
    assert result.ok, [(c.principal, c.check, c.detail) for c in result.mismatches]
    # in each pod: its identity and one spot-checked cell; everything else from rbacbridge
    assert [sum(b.sent.values()) for b in pods.values()] == [2, 2, 2]
    for p in result.principals:
        modes = Counter(c.probed_from for c in p.cells)
        assert modes[v.PROBED_FROM_POD] == 1 and modes[v.PROBED_FROM_RBACBRIDGE] == len(p.cells) - 1
        spot = next(c for c in p.cells if c.probed_from == v.PROBED_FROM_POD)
        assert spot.check == v.READ and spot.observed is True
    assert result.notes[0].startswith("--probe-from rbacbridge: 18 of 21 bucket and chain cells")
    assert bucket_keys(url, config.tenant_bucket) == []  # one probe object per role, written and deleted


def test_spot_check_difference_is_reported_and_that_roles_cells_probed_in_the_pod(sandbox, caplog, capsys):
    url, config = sandbox
    caplog.set_level(logging.DEBUG, logger="rbacbridge")  # rbacbridge configures no AWS SDK logging
    proxied = Pod(url, config, config.pod_role, denied_in_pod=(config.shared_bucket, config.tenant_bucket))
    plain = Pod(url, config, config.pod_role)
    targets = [(pod(v.ANNOTATED, "node-a", config, True), proxied), (pod(v.ANNOTATED, "node-b", config, True), plain)]
    result = run(url, config, targets)
    assert not result.ok
    note = next(n for n in result.notes if n.startswith("spot check on node node-a"))
    assert "denied in pod nginx-annotated@node-a but allowed to rbacbridge" in note
    assert "probed in the pod" in note
    by_name = {p.principal.name: p for p in result.principals}
    a, b = by_name[f"{v.ANNOTATED}@node-a"], by_name[f"{v.ANNOTATED}@node-b"]
    assert {c.probed_from for c in a.cells} == {v.PROBED_FROM_POD}  # every cell of that role on node-a, in the pod
    assert {(c.bucket, c.check) for c in a.cells if not c.match} == {(config.shared_bucket, v.READ), (config.tenant_bucket, v.READ)}
    assert all(c.blame.layer == v.PERMISSIONS for c in a.cells if not c.match)
    assert all(c.match for c in b.cells) and any(c.probed_from == v.PROBED_FROM_RBACBRIDGE for c in b.cells)
    # no credential anywhere: JSON, JUnit, the table, notes, logs
    report.print_table(result)
    outputs = [report.to_json(result), report.to_junit(result), capsys.readouterr().out, "\n".join(result.notes), caplog.text]
    for secret in proxied.secrets + plain.secrets:
        assert all(secret not in text for text in outputs)


def test_credentials_never_shown():
    creds = parse_credentials(json.dumps({"Code": "Success", "AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "s3cr3t-value",
                                          "Token": "t0ken-value", "Expiration": "2030-01-01T00:00:00Z"}))
    assert creds.token == "t0ken-value" and creds.usable()
    assert "s3cr3t" not in repr(creds) and "t0ken" not in repr(creds) and "ASIA" not in repr(creds)
    expired = parse_credentials(json.dumps({"AccessKeyId": "A", "SecretAccessKey": "S", "SessionToken": "T",
                                            "Expiration": "2020-01-01T00:00:00+00:00"}))
    assert expired.token == "T" and not expired.usable()
    assert parse_credentials("not json t0ken") is None


class ExecAnswers(KubeExecRunner):
    """A pod's exec answering with fixed output (the exec channel itself: tests/test_lab.py)."""

    def __init__(self, *answers):
        super().__init__(None, "ns", "pod")
        self.answers, self.argvs = list(answers), []

    def run(self, argv, timeout):
        self.argvs.append(argv)
        return self.answers.pop(0)


ROLE = "nettech-s3-read-write"
GOOD = json.dumps({"Code": "Success", "AccessKeyId": "A", "SecretAccessKey": "S3CRET", "Token": "TOKEN-1",
                   "Expiration": "2030-01-01T00:00:00Z"})


def test_one_exec_reads_the_role_its_credentials_and_the_spot_cell_and_never_quotes_a_bad_document():
    listing = f"--rbv-meta--\n{ROLE}\n--rbv-end-- 200\n{GOOD}\n--rbv-end-- 200\n--rbv-spot--\n"
    runner = ExecAnswers((0, listing + '{"Contents": []}', ""))
    got = one_exec(AwsCliBackend(runner, "us-east-1", "http://moto:5000"), ROLE, "nettech-helm-test")
    assert (got.listed, got.creds.token, got.why, got.spot.allowed) == (ROLE, "TOKEN-1", None, True)
    assert len(runner.argvs) == 1 and runner.argvs[0][:2] == ["sh", "-c"] and runner.argvs[0][4:6] == [ROLE, "-"]
    assert "" not in runner.argvs[0]  # never an empty argument: a Kubernetes exec may drop it
    assert runner.argvs[0][6:] == ["env", "AWS_PAGER=", "aws", "s3api", "list-objects-v2", "--bucket", "nettech-helm-test",
                                   "--max-items", "1", "--region", "us-east-1", "--output", "json", "--endpoint-url",
                                   "http://moto:5000"]
    # the spot call denied in the pod: its exit code and stderr are the exec's
    denied = ExecAnswers((254, listing, "An error occurred (AccessDenied) when calling the ListObjectsV2 operation: no\n"))
    got = one_exec(AwsCliBackend(denied, "us-east-1"), ROLE, "b")
    assert got.creds is not None and got.spot.allowed is False and got.spot.result.category == v.ACCESS_DENIED
    # the path names another role (the node's, a missing rule): a second exec asks for THAT role's credentials
    other = ExecAnswers((0, "--rbv-meta--\nnode-role\n--rbv-end-- 200\nInvalid role\n--rbv-end-- 403\n--rbv-spot--\n", ""),
                        (0, f"--rbv-meta--\nnode-role\n--rbv-end-- 200\n{GOOD}\n--rbv-end-- 200\n--rbv-spot--\n", ""))
    got = one_exec(AwsCliBackend(other, "us-east-1"), ROLE, None)
    assert (got.listed, got.creds.token, got.spot) == ("node-role", "TOKEN-1", None)
    assert other.argvs[1][4:] == ["node-role", "-"]
    # kube2iam refuses (namespace restrictions): no credentials, the error's first line, never a document
    refused = ExecAnswers((0, f"--rbv-meta--\nrole x not allowed\n--rbv-end-- 403\n--rbv-end-- 403\n--rbv-spot--\n", ""))
    got = one_exec(AwsCliBackend(refused, "us-east-1"), ROLE, None)
    assert got.creds is None and got.why == "the metadata path named no role (HTTP 403: role x not allowed)"
    half = ExecAnswers((0, f"--rbv-meta--\n{ROLE}\n--rbv-end-- 200\n{{\"SecretAccessKey\": \"S3CRET\"\n--rbv-end-- 200\n"
                           "--rbv-spot--\n", ""))
    got = one_exec(AwsCliBackend(half, "us-east-1"), ROLE, None)
    assert got.creds is None and "S3CRET" not in got.why and "no credentials document" in got.why
    down = ExecAnswers((0, "--rbv-meta--\n\n--rbv-end-- 000\n\n--rbv-end-- 000\n--rbv-spot--\n", ""))
    assert "no answer" in one_exec(AwsCliBackend(down, "us-east-1"), ROLE, None).why
    distroless = ExecAnswers((126, "", "exec: \"sh\": executable file not found in $PATH"))
    assert "ran no shell" in one_exec(AwsCliBackend(distroless, "us-east-1"), ROLE, None).why
    nocli = ExecAnswers((127, listing, "env: 'aws': No such file or directory\n"))
    got = one_exec(AwsCliBackend(nocli, "us-east-1"), ROLE, "b")
    assert got.cli_missing and got.spot is None and got.creds is not None


COUNTING = """#!/bin/sh
echo "$$ {name}" >> "$RBV_LOG"
{body}
"""
FAKE_CURL = r"""for a in "$@"; do case "$a" in
  */security-credentials/) printf '%s\n--rbv-end-- 200\n' nettech-s3-read-write ;;
  */security-credentials/*) printf '%s\n--rbv-end-- 200\n' "$RBV_CREDS" ;;
esac; done"""


def run_in_a_real_shell(tmp_path, tools, hint, spot, token="-"):
    """The generated one-exec script in a real POSIX shell (the system's sh), with a PATH of counting wrappers:
    each logs its process id; `env` is the real one (it execs aws in its own process, as in a pod)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    for name, body in tools.items():
        (bin_ / name).write_text(COUNTING.format(name=name, body=body))
        (bin_ / name).chmod(0o755)
    log = tmp_path / "pids.log"
    log.write_text("")
    env = {"PATH": str(bin_), "RBV_LOG": str(log), "RBV_CREDS": GOOD}
    argv = [shutil.which("sh"), "-c", ONE_EXEC_SCRIPT, "rbacbridge-verify", hint, token,
            *(AwsCliBackend(None, "us-east-1").argv("s3api", "list-objects-v2", "--bucket", spot) if spot else [])]
    with open(tmp_path / "sh.pid", "w") as pidfile:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        out, err = proc.communicate(timeout=30)
        pidfile.write(str(proc.pid))
    entries = [line.split() for line in log.read_text().splitlines()]
    return proc, out, err, entries


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_the_one_exec_runs_two_processes_in_a_pod(tmp_path):
    """Issue 25: at most 2 processes per pod in the common path — the shell, which becomes the spot check's aws
    (exec; env execs aws in place), and one curl for both metadata fetches. No subshell, no pipe."""
    tools = {"curl": FAKE_CURL, "env": 'exec /usr/bin/env "$@"',
             "aws": 'echo "{\\"Contents\\": []}"'}
    proc, out, err, entries = run_in_a_real_shell(tmp_path, tools, ROLE, "nettech-helm-test")
    assert proc.returncode == 0, err
    pids = {pid for pid, _ in entries}
    assert [name for _, name in entries] == ["curl", "env", "aws"]
    assert len(pids | {str(proc.pid)}) == 2, entries  # curl's own; env and aws are the shell itself
    assert dict((name, pid) for pid, name in entries)["aws"] == str(proc.pid)
    from rbacbridge.verify.one_exec import parse_exec

    got = parse_exec(proc.returncode, out, err, ROLE, True)
    assert (got.listed, got.creds.token, got.spot.allowed) == (ROLE, "TOKEN-1", True)
    if shutil.which("strace") and os.geteuid() == 0:  # the kernel's own count: processes the exec created
        trace = tmp_path / "trace"
        env = {"PATH": str(tmp_path / "bin"), "RBV_LOG": str(tmp_path / "pids.log"), "RBV_CREDS": GOOD}
        subprocess.run([shutil.which("strace"), "-f", "-qq", "-e", "trace=clone,clone3,fork,vfork", "-o", str(trace), shutil.which("sh"),
                        "-c", ONE_EXEC_SCRIPT, "x", ROLE, "-", "env", "aws", "s3api"], env=env, check=True, capture_output=True)
        created = [ln for ln in trace.read_text().splitlines() if "clone" in ln or "fork" in ln]
        assert len(created) == 1, created  # one child (curl): with the shell itself, 2 processes


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_the_one_exec_falls_back_to_wget_then_the_clis_export(tmp_path):
    fake_wget = r"""for a in "$@"; do case "$a" in
  */security-credentials/) printf nettech-s3-read-write ;;
  */security-credentials/*) printf '%s' "$RBV_CREDS" ;;
esac; done"""
    proc, out, err, entries = run_in_a_real_shell(tmp_path, {"wget": fake_wget}, ROLE, None)
    from rbacbridge.verify.one_exec import parse_exec

    got = parse_exec(proc.returncode, out, err, ROLE, False)
    assert (got.listed, got.creds.token) == (ROLE, "TOKEN-1") and [n for _, n in entries] == ["wget", "wget"]
    tmp2 = tmp_path / "cli"
    tmp2.mkdir()
    export = 'case "$*" in *export-credentials*) printf \'%s\' "$RBV_CREDS";; *) exit 2;; esac'
    proc, out, err, entries = run_in_a_real_shell(tmp2, {"aws": export}, ROLE, None)
    got = parse_exec(proc.returncode, out, err, ROLE, False)
    assert (got.listed, got.creds.token, got.why) == (None, "TOKEN-1", None)


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_the_host_asks_for_an_imdsv2_token_first(tmp_path):
    """The host node (and hostNetwork pods) reach EC2's own metadata service, which may require IMDSv2: one curl for
    the token (a command substitution: one process), one for both fetches with it, then the spot check's aws."""
    curl = r"""case "$*" in *"-X PUT"*) printf lab-token; exit 0;; esac
case "$*" in *"X-aws-ec2-metadata-token: lab-token"*) ;; *) echo "no token header: $*" >&2; exit 22;; esac
""" + FAKE_CURL
    tools = {"curl": curl, "env": 'exec /usr/bin/env "$@"', "aws": 'echo "{\\"Contents\\": []}"'}
    proc, out, err, entries = run_in_a_real_shell(tmp_path, tools, "node-role", "nettech-helm-test", token="v2")
    assert proc.returncode == 0 and not err, err
    assert [name for _, name in entries] == ["curl", "curl", "env", "aws"]
    assert len({pid for pid, _ in entries} | {str(proc.pid)}) == 3, entries
    from rbacbridge.verify.one_exec import parse_exec

    got = parse_exec(proc.returncode, out, err, "nettech-s3-read-write", True)
    assert got.listed == "nettech-s3-read-write" and got.creds.token == "TOKEN-1" and got.spot.allowed is True
