"""`rbacbridge audit --who-can` on a large cluster: 2,000 namespaces, 20,000 RBAC bindings, 500 IAM roles
(and 500 RBAC Roles/ClusterRoles).
Bindings give deployers, job runners, exec and (in 1 namespace of 50) namespace editors.

The test API server (tests/kube_apiserver.py) holds 2,000 namespaces of 500 tenants (4 each, allowed-roles
`["tNNN-*"]` glob, every 7th without a Pod Security label), 450 namespaced Roles + 50 ClusterRoles (two
aggregated), 19,990 RoleBindings (10 per namespace: service accounts, users, groups) and 10
ClusterRoleBindings; moto holds 500 IAM roles (one per tenant, every 10th able to chain into the next)
and the node role. Measured: the whole process (`rbacbridge audit --who-can --only aws,kube -c CFG -o json`,
wall and CPU), and in-process the reads vs the join + rules alone.

    python bench/bench_who_can.py [--rounds 3] [--namespaces 2000] [--bindings 20000] [--roles 500]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rbacbridge.audit import run_audit  # noqa: E402
from rbacbridge.aws import AwsGateway  # noqa: E402
from rbacbridge.config.loading import load  # noqa: E402
from rbacbridge.planner import Context  # noqa: E402
from tests.fixtures_audit import BASE_ARGS, HELM_LABELS, NODE_ROLE_ARN, ROLE, Brownfield, allow, trust  # noqa: E402
from tests.fixtures_aws import Sandbox  # noqa: E402
from tests.fixtures_kube import KubeApi, write_kubeconfig  # noqa: E402
from tests.fixtures_who_can import binding, cluster_role, group, service_account, user  # noqa: E402
from tests.kube_apiserver import KubeApiServer  # noqa: E402

RBAC = "rbac.authorization.k8s.io/v1"


def build(field: Brownfield, namespaces: int, bindings: int, roles: int) -> str:
    """The cluster and IAM; returns the config text (tenants = the IAM roles' owners)."""
    iam, store = field.iam, field.store
    iam.create_role(RoleName="k8s-node", AssumeRolePolicyDocument=trust(service="ec2.amazonaws.com"))
    policy = iam.create_policy(PolicyName="k8s-node-kube2iam", PolicyDocument=allow("sts:AssumeRole", ROLE + "t*"))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName="k8s-node", PolicyArn=policy)
    iam.create_instance_profile(InstanceProfileName="k8s-node-profile")
    iam.add_role_to_instance_profile(InstanceProfileName="k8s-node-profile", RoleName="k8s-node")
    for r in range(roles):
        name = f"t{r:03d}-role"
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust(NODE_ROLE_ARN, ROLE + f"t{r - 1:03d}-role"))
        if r % 10 == 0:
            iam.put_role_policy(RoleName=name, PolicyName="chain", PolicyDocument=allow("sts:AssumeRole", ROLE + f"t{r + 1:03d}-role"))
    field.node("n1", "10.0.0.11")
    field.node("n2", "10.0.0.12")
    field.kube2iam(args=BASE_ARGS, labels=HELM_LABELS)
    tenants: dict[int, list[str]] = {}
    for n in range(namespaces):
        tenant = n % roles
        name = f"ns-{n:04d}"
        tenants.setdefault(tenant, []).append(name)
        labels = {} if n % 7 == 0 else {"pod-security.kubernetes.io/enforce": "baseline"}
        store.put({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": name, "labels": labels, "annotations": {"iam.amazonaws.com/allowed-roles": f'["t{tenant:03d}-*"]'}}})
    cluster_roles = [
        cluster_role("cluster-admin", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
        cluster_role("deployer", [], aggregate={"agg/deployer": "true"}),
        cluster_role("deployer-apps", [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "patch"]}],
                     labels={"agg/deployer": "true"}),
        cluster_role("job-runner", [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]}]),
        cluster_role("exec", [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]),
        cluster_role("ns-editor", [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["patch"]}]),
    ]
    cluster_roles += [cluster_role(f"viewer-{i:02d}", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}])
                      for i in range(50 - len(cluster_roles))]
    for obj in cluster_roles:
        store.put(obj)
    role_namespaces = [f"ns-{n:04d}" for n in range(0, namespaces, max(1, namespaces // 450))][:450]
    for ns in role_namespaces:
        store.put({"apiVersion": RBAC, "kind": "Role", "metadata": {"name": "local-runner", "namespace": ns},
                   "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]})
    made = 0
    cluster_bindings = 10
    for i in range(cluster_bindings):
        store.put(binding("ClusterRoleBinding", f"admins-{i}", "ClusterRole", "cluster-admin" if i == 0 else f"viewer-{i:02d}",
                          [user(f"admin-{i}")]))
    made += cluster_bindings
    kinds = ("deployer", "job-runner", "exec", "ns-editor", "viewer-10")
    per_namespace = max(1, -(-(bindings - made) // namespaces))
    for n in range(namespaces):
        ns = f"ns-{n:04d}"
        for k in range(per_namespace):
            if made >= bindings:
                break
            role = kinds[k % len(kinds)]
            if role == "ns-editor" and n % 50:  # a namespace editor in 1 namespace of 50 (every role there is theirs)
                role = "deployer"
            subject = (service_account(ns, f"app-{k}") if k < 4 else user(f"user-{(n * 7 + k) % 1000:03d}") if k < 8
                       else group(f"team-{n % roles:03d}"))
            ref = ("Role", "local-runner") if ns in role_namespaces and k == 9 else ("ClusterRole", role)
            store.put(binding("RoleBinding", f"b-{k}", ref[0], ref[1], [subject], ns))
            made += 1
    lines = ['account_id: "123456789012"', "iam:", "  node_role: k8s-node", "tenants:"]
    for tenant, names in sorted(tenants.items()):
        lines += [f"  - name: t{tenant:03d}", f"    namespaces: [{', '.join(names)}]", f"    role: t{tenant:03d}-role",
                  "    read: [shared-data]"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--namespaces", type=int, default=2000)
    parser.add_argument("--bindings", type=int, default=20000)
    parser.add_argument("--roles", type=int, default=500)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    server = KubeApiServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-who-can-"))
    try:
        kubeconfig = write_kubeconfig(workdir / "kubeconfig", {"bench": server.url}, current="bench")
        sandbox = Sandbox(f"http://{host}:{port}")
        field = Brownfield(KubeApi(server, str(kubeconfig)), sandbox)
        start = time.perf_counter()
        config_path = workdir / "rbacbridge.yaml"
        config_path.write_text(build(field, args.namespaces, args.bindings, args.roles))
        built = time.perf_counter() - start
        counts = {k: len(server.store.objects_of(k)) for k in ("Namespace", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")}
        env = dict(sandbox.env())
        argv = [sys.executable, "-m", "rbacbridge", "audit", "--who-can", "--only", "aws,kube", "-c", str(config_path),
                "--kubeconfig", str(kubeconfig), "-o", "json"]
        walls, cpus, size = [], [], 0
        for _ in range(args.rounds):
            server.store.requests.clear()
            before, start = os.times(), time.perf_counter()
            run = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
            walls.append(time.perf_counter() - start)
            after = os.times()
            cpus.append((after.children_user - before.children_user) + (after.children_system - before.children_system))
            assert run.returncode in (0, 1), run.stderr[-2000:]
            size = len(run.stdout)
            assert {r.method for r in server.store.requests} == {"GET"}
        kube_requests = sorted(r.path for r in server.store.requests)
        # in-process: the reads, then the join + rules alone on what was read
        from rbacbridge.audit import who_can
        from rbacbridge.audit.who_can import rules
        from rbacbridge.audit.who_can.join import run_join
        from rbacbridge.kube import KubeGateway

        cfg = load(config_path)
        cfg = type(cfg)(**{**cfg.__dict__, "kubeconfig": str(kubeconfig), "endpoint_url": sandbox.url})
        ctx = Context(config=cfg, parts=("aws", "kube"), gateways={"aws": AwsGateway(cfg, session=sandbox.session(record=False))})
        start = time.perf_counter()
        result = run_audit(ctx, config_given=True)
        gw = KubeGateway.from_config(cfg)
        objects = {kind: gw.list(kind) for kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")}
        reads = time.perf_counter() - start
        joins, join_cpu = [], []
        for _ in range(args.rounds):
            start, cpu = time.perf_counter(), time.process_time()
            world, tenancy, intended, _ = who_can.build_world(ctx.facts["audit.inputs"], objects, True, result.findings)
            join, answers = run_join(world)
            found = rules.findings(join, answers, tenancy, intended)
            joins.append(time.perf_counter() - start)
            join_cpu.append(time.process_time() - cpu)
        print(f"cluster: {counts['Namespace']} namespaces, {counts['Role']} Roles + {counts['ClusterRole']} ClusterRoles, "
              f"{counts['RoleBinding']} RoleBindings + {counts['ClusterRoleBinding']} ClusterRoleBindings, "
              f"{args.roles + 1} IAM roles (built in {built:.1f} s)")
        print(f"rbacbridge audit --who-can -o json (whole process): median {statistics.median(walls):.2f} s wall, "
              f"{statistics.median(cpus):.2f} s CPU ({len(walls)} rounds; min {min(walls):.2f} s); report {size / 1e6:.1f} MB")
        print(f"in-process: audit reads + 4 RBAC lists {reads:.2f} s; join + rules median {statistics.median(joins):.2f} s "
              f"(min {min(joins):.2f} s, CPU {statistics.median(join_cpu):.2f} s); {len(answers)} subjects answered, {len(found)} who-can findings")
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
        print(f"Kubernetes requests: {len(kube_requests)} ({', '.join(kube_requests)}), all GET")
    finally:
        server.stop()
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    main()
