"""The AWS CLI probe run inside a network namespace (a stand-in node) that reaches a moto server
running inside another namespace of ours; addresses exist only inside the two namespaces."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rbacbridge import verify as v
from rbacbridge.config import Config
from tests.fixtures_verify import ACCOUNT

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("aws") is None,
                                                    reason="needs root, ip netns and the AWS CLI")]

HELPER = """
import json, sys, urllib.request
import boto3
from rbacbridge.config import Config
from tests.fixtures_verify import ACCOUNT, DUMMY, create_managed_resources, bucket_keys
url, what = sys.argv[1], sys.argv[2]
config = Config(account_id=ACCOUNT)
if what == "setup":
    create_managed_resources(url, config)
    sts = boto3.client("sts", endpoint_url=url, region_name="us-east-1", **DUMMY)
    c = sts.assume_role(RoleArn=config.role_arn(ACCOUNT, config.node_role), RoleSessionName="i-0netns")["Credentials"]
    req = urllib.request.Request(url + "/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
    print(json.dumps({"AWS_ACCESS_KEY_ID": c["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": c["SecretAccessKey"], "AWS_SESSION_TOKEN": c["SessionToken"]}))
else:
    req = urllib.request.Request(url + "/moto-api/reset-auth", data=b"inf", method="POST", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
    print(json.dumps(bucket_keys(url, config.shared_bucket) + bucket_keys(url, config.tenant_bucket)))
"""


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


@pytest.fixture
def namespaces():
    tag = f"{os.getpid() % 100000}"
    moto_ns, node_ns = f"rbv-{tag}-moto", f"rbv-{tag}-node"
    moto_if, node_if = f"rbvm{tag}", f"rbvn{tag}"
    moto_ip, node_ip = "10.231.7.1", "10.231.7.2"
    procs = []
    try:
        for ns in (moto_ns, node_ns):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", moto_if, "netns", moto_ns, "type", "veth", "peer", "name", node_if, "netns", node_ns)
        sh("ip", "-n", moto_ns, "addr", "add", f"{moto_ip}/30", "dev", moto_if)
        sh("ip", "-n", node_ns, "addr", "add", f"{node_ip}/30", "dev", node_if)
        sh("ip", "-n", moto_ns, "link", "set", moto_if, "up")
        sh("ip", "-n", node_ns, "link", "set", node_if, "up")
        procs.append(subprocess.Popen(["ip", "netns", "exec", moto_ns, sys.executable, "-m", "moto.server", "-H", moto_ip, "-p", "5000"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        url = f"http://{moto_ip}:5000"
        for _ in range(100):
            if sh("ip", "netns", "exec", node_ns, sys.executable, "-c",
                  f"import urllib.request; urllib.request.urlopen('{url}/moto-api/', timeout=1)", check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail("moto did not come up inside the namespace")
        yield node_ns, url
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in (moto_ns, node_ns):
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "del", ns, check=False)
        assert not {moto_ns, node_ns} & {line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line}
        assert moto_if not in sh("ip", "link").stdout


def in_node(node_ns, url, what):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(["ip", "netns", "exec", node_ns, sys.executable, "-c", HELPER, url, what],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_host_probe_inside_a_namespace_node(namespaces, tmp_path):
    node_ns, url = namespaces
    creds = in_node(node_ns, url, "setup")
    env = {k: val for k, val in os.environ.items() if not k.startswith("AWS_")}
    env.update(creds, HOME=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    runner = v.LocalRunner(prefix=["ip", "netns", "exec", node_ns], env=env)
    backend = v.AwsCliBackend(runner, "us-east-1", url)
    config = Config(account_id=ACCOUNT)
    result = v.run_matrix(config, ACCOUNT, "after", [(v.Principal(v.HOST, "host", node=node_ns), backend)])
    leftover = in_node(node_ns, url, "keys")
    assert result.ok, [(c.check, c.bucket, c.detail) for c in result.mismatches]
    assert result.principals[0].observed.arn.endswith(":assumed-role/nettech-s3-read-only/i-0netns")
    assert leftover == []
    # the same node, but its view of AWS is cut: network, blamed on the network layer
    cut = v.AwsCliBackend(v.LocalRunner(prefix=["ip", "netns", "exec", node_ns], env=dict(env, AWS_MAX_ATTEMPTS="1")),
                          "us-east-1", "http://10.231.8.1:5000", timeout=8)  # no route to it
    (observed,) = v.observe([(v.Principal(v.HOST, "host"), cut)], [config.shared_bucket])
    assert observed.identity.category == v.NETWORK
