"""`rbacbridge audit` of a 50-node, 500-pod cluster: wall time and request count.

The test API server (tests/kube_apiserver.py) holds 50 nodes (providerIDs of 50 moto instances),
a Helm-style kube2iam DaemonSet with a ready pod per node, flannel, 10 tenant namespaces and 450
workload pods (half annotated with a role; some started before kube2iam, one namespace without
allowed-roles, a few hostNetwork pods), so the audit has findings to report. moto (in-process
server) holds the IAM side. Reads must be one list per kind (4 Kubernetes requests) and a handful of
AWS calls, whatever the number of pods.

    python bench/bench_audit.py [--rounds 3] [--nodes 50] [--pods 500]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rbacbridge.audit import run_audit  # noqa: E402
from rbacbridge.aws import AwsGateway  # noqa: E402
from rbacbridge.config import Config  # noqa: E402
from rbacbridge.planner import Context  # noqa: E402
from tests.fixtures_audit import ALLOWED, BASE_ARGS, HELM_LABELS, NODE_ROLE_ARN, ROLE, T0, Brownfield, allow, daemonset, trust  # noqa: E402
from tests.fixtures_aws import Sandbox  # noqa: E402
from tests.fixtures_kube import KubeApi, write_kubeconfig  # noqa: E402
from tests.kube_apiserver import KubeApiServer  # noqa: E402


def build(field: Brownfield, nodes: int, pods: int) -> None:
    iam, ec2, store = field.iam, field.ec2, field.store
    iam.create_role(RoleName="k8s-node", AssumeRolePolicyDocument=trust(service="ec2.amazonaws.com"))
    tenants = [f"tenant-{i:02d}" for i in range(10)]
    arns = [ROLE + f"{t}-role" for t in tenants] + [ROLE + "k8s-default"]
    policy = iam.create_policy(PolicyName="k8s-node-kube2iam", PolicyDocument=allow("sts:AssumeRole", *arns))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName="k8s-node", PolicyArn=policy)
    for t in tenants:
        iam.create_role(RoleName=f"{t}-role", AssumeRolePolicyDocument=trust(NODE_ROLE_ARN))
    iam.create_role(RoleName="k8s-default", AssumeRolePolicyDocument=trust(NODE_ROLE_ARN))
    iam.create_instance_profile(InstanceProfileName="k8s-node-profile")
    iam.add_role_to_instance_profile(InstanceProfileName="k8s-node-profile", RoleName="k8s-node")
    instances = [i["InstanceId"] for i in ec2.run_instances(ImageId="ami-12345678", MinCount=nodes, MaxCount=nodes)["Instances"]]
    for index, instance in enumerate(instances):
        ec2.associate_iam_instance_profile(InstanceId=instance, IamInstanceProfile={"Name": "k8s-node-profile"})
        store.add_node(f"n{index:02d}", f"10.0.{index // 250}.{index % 250 + 1}", provider_id=f"aws:///us-east-1a/{instance}",
                       labels={"kubernetes.io/os": "linux"})
    for i, t in enumerate(tenants):
        annotations = {ALLOWED: f'["{t}-role"]'} if i else {}  # tenant-00 has no allowed-roles: a finding
        store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": t, "annotations": annotations}})
    store.put(daemonset("kube-system", "kube-flannel-ds", "flannel/flannel:v0.25.1", ["--ip-masq"]))
    field.kube2iam(args=BASE_ARGS, labels=HELM_LABELS, nodes=tuple(f"n{i:02d}" for i in range(nodes)))
    workload = pods - nodes
    for p in range(workload):
        tenant = tenants[p % len(tenants)]
        node = f"n{p % nodes:02d}"
        started = T0 + timedelta(minutes=5) if p % 37 else T0 - timedelta(minutes=5)  # a few older than kube2iam
        annotations = {"iam.amazonaws.com/role": f"{tenant}-role"} if p % 3 else {}
        field.pod(tenant, f"app-{p:04d}", node, started, annotations=annotations, host_network=p % 101 == 0)


def time_rules(config: Config, sandbox: Sandbox, rounds: int) -> list[float]:
    from rbacbridge.audit import checks
    from rbacbridge.audit.collect import read_aws, read_kube
    from rbacbridge.kube import KubeGateway

    kube_state = read_kube(KubeGateway.from_config(config))
    ids = [i for i in (checks._instance_of(n) for n in kube_state.nodes) if i]
    aws_state = read_aws(AwsGateway(config, session=sandbox.session(record=False)), ids)
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        inputs = checks.Inputs(config=config, config_given=False, kube=kube_state, aws=aws_state)
        outcome = checks.Outcome()
        found = checks.check_kube(inputs, outcome)
        kube2iams = [i for i in found if i.tool == "kube2iam"]
        checks.check_imdsv2(inputs, kube2iams, outcome)
        checks.check_iam(inputs, kube2iams, outcome)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--pods", type=int, default=500)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    server = KubeApiServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        for ns in ("default", "kube-system"):
            server.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        kubeconfig = write_kubeconfig(workdir / "kubeconfig", {"bench": server.url}, current="bench")
        sandbox = Sandbox(f"http://{host}:{port}")
        field = Brownfield(KubeApi(server, str(kubeconfig)), sandbox)
        build(field, args.nodes, args.pods)
        total_pods = len(server.store.objects_of("Pod"))
        config = Config(kubeconfig=str(kubeconfig), endpoint_url=sandbox.url)
        walls, findings, kube_requests, aws_calls = [], None, None, None
        for _ in range(args.rounds):
            server.store.requests.clear()
            sandbox.calls.clear()
            ctx = Context(config=config, parts=("aws", "kube"), gateways={"aws": AwsGateway(config, session=sandbox.session())})
            start = time.perf_counter()
            result = run_audit(ctx)
            walls.append(time.perf_counter() - start)
            assert result.complete, result.errors
            findings = sorted(result.ids())
            kube_requests = [(r.method, r.path) for r in server.store.requests]
            aws_calls = [op for _, op, _ in sandbox.calls]
            assert not [op for op in aws_calls if not op.startswith(("Get", "Describe", "List"))]
            assert {m for m, _ in kube_requests} == {"GET"}
        rules = time_rules(config, sandbox, args.rounds)
        env = dict(sandbox.env())
        cli = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "rbacbridge", "audit", "--kubeconfig", str(kubeconfig), "-o", "json"],
                                 capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
            cli.append(time.perf_counter() - start)
            assert run.returncode == 1, run.stderr
        print(f"cluster: {args.nodes} nodes, {total_pods} pods, {len(server.store.objects_of('Namespace'))} namespaces")
        warm = walls[1:] or walls
        print(f"audit in-process (aws+kube): first {walls[0]:.3f} s, then median {statistics.median(warm):.3f} s, min {min(warm):.3f} s")
        print(f"the rules alone (collected state in, findings out): median {statistics.median(rules) * 1000:.1f} ms")
        print(f"rbacbridge audit -o json (whole process): median {statistics.median(cli):.3f} s")
        print(f"Kubernetes requests: {len(kube_requests)} ({', '.join(p for _, p in kube_requests)})")
        print(f"AWS calls: {len(aws_calls)} ({', '.join(aws_calls)}), 0 mutating")
        print(f"finding kinds: {', '.join(findings)}")
    finally:
        server.stop()
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    main()
