"""`rbacbridge iptables fix --yes` on 16 namespace nodes, the whole command (a CLI process), three ways:
over SSH, through Kubernetes in the kube2iam pod on each node, and through Kubernetes in a short-lived
pod per node (no kube2iam pod runs). A/B/C interleaved, median of --rounds (>= 5).

Each node starts with a stale rule (a dead port, named stale: 8181) and two duplicates of the current one: 3 deletions.
The Kubernetes API server is the project's test server (tests/kube_apiserver.py) in this process; its
pod exec runs the command inside the node's network namespace (tests/fixtures_kube_nodes.py), with a
PATH without `ss` like upstream's image. Measured: wall time of the CLI process, its CPU (rusage of
that process), and the other side's CPU: the nodes' sshd (SSH) or this process's API server threads +
the exec'd commands (Kubernetes). Load average before and after. Nothing is left: no pod in the API
server after a run (asserted), namespaces/veths/temp files removed at the end (checked).
Run as root: python bench/bench_iptables_via.py [--rounds 5] [--nodes 16]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures_kube import KubeApi, write_kubeconfig  # noqa: E402
from tests.fixtures_kube_nodes import NodeCluster, image_path  # noqa: E402
from tests.kube_apiserver import KubeApiServer  # noqa: E402
from tests.netns import Node, leftovers  # noqa: E402

SHAPE = "-d 169.254.169.254/32 -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination".split()


def seed(node: Node) -> None:
    node.exec(["iptables", "-t", "nat", "-F", "PREROUTING"])
    for port in (8181, 8282, 8282, 8282):
        node.iptables("-t", "nat", "-A", "PREROUTING", *SHAPE, f"{node.address}:{port}")


def sshd_cpu(nodes: list[Node]) -> float:
    total = 0
    for node in nodes:
        fields = Path(f"/proc/{node._sshd.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """This process (API server threads) + its reaped children other than the CLI (the exec'd commands)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_cli(args: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s of the CLI process, stderr) of one command."""
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "rbacbridge", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env)
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err
    return wall, usage.ru_utime + usage.ru_stime, err


def fix(cluster: NodeCluster, args: list[str], ssh: bool) -> tuple[float, float, float]:
    """(wall, CLI CPU, other side's CPU) of one `fix`; asserts the end state and that no pod is left."""
    for node in cluster.nodes:
        seed(node)
    time.sleep(0.1)
    side = sshd_cpu(cluster.nodes) if ssh else own_cpu()
    wall, cpu, _ = run_cli(["iptables", "fix", "--yes", "--stale-port", "8181", *args])
    time.sleep(0.1)
    side = (sshd_cpu(cluster.nodes) if ssh else own_cpu()) - side - (cpu if not ssh else 0)
    for node in cluster.nodes:
        rules = [r for r in node.nat_rules() if "169.254.169.254" in r]
        assert rules == [f"-A PREROUTING {' '.join(SHAPE)} {node.address}:8282"], rules
    assert not [p for p in cluster.api.store.objects_of("Pod") if p["metadata"]["name"].startswith("rbacbridge-")]
    return wall, cpu, side


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=16)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="rbb-bench-via-"))
    server = KubeApiServer().start()
    nodes: list[Node] = []
    try:
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        server.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}})
        kubeconfig = write_kubeconfig(scratch / "kubeconfig", {"bench": server.url}, current="bench")
        nodes.append(Node.start("bench-0"))
        for i in range(1, args.nodes):
            nodes.append(Node.start(f"bench-{i}", client_key=nodes[0].client_key))
        cluster = NodeCluster(KubeApi(server, str(kubeconfig)), nodes)
        for node in nodes:
            server.store.add_node(node.name, node.address)
        server.exec_handler = cluster.exec
        known = scratch / "known_hosts"
        known.write_text("".join(f"{n.known_host_name} {n.host_public_key}\n" for n in nodes))
        common = ["--kubeconfig", str(kubeconfig), "--host-interface", "docker0"]
        ssh_args = ["--via", "ssh", *[a for n in nodes for a in ("--node", n.host)], "--ssh-user", "root",
                    "--ssh-key", str(nodes[0].client_key), "--known-hosts", str(known), "--ssh-config", "none", *common]
        kube_args = ["--via", "kubernetes", *common]

        def with_kube2iam(present: bool) -> None:
            for node in nodes:
                server.store.delete("Pod", f"kube2iam-{node.name}", "kube-system")
            if present:
                for node in nodes:
                    cluster.add_kube2iam(node)
            elif cluster.daemonset is not None:
                server.store.delete("DaemonSet", "kube2iam", "kube-system")
                cluster.daemonset = None

        ways = {"ssh": (ssh_args, True, True), "kubernetes, kube2iam pods": (kube_args, False, True),
                "kubernetes, short-lived pods": (kube_args, False, False)}
        for label, (cli_args, ssh, present) in ways.items():  # warm-up
            with_kube2iam(present)
            fix(cluster, cli_args, ssh)
        results: dict[str, list[tuple[float, float, float]]] = {label: [] for label in ways}
        for _ in range(max(5, args.rounds)):
            for label, (cli_args, ssh, present) in ways.items():
                with_kube2iam(present)
                results[label].append(fix(cluster, cli_args, ssh))
        print(f"fix on {args.nodes} nodes, whole command (a CLI process), median of {max(5, args.rounds)} interleaved rounds:")
        for label, runs in results.items():
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            side = statistics.median(r[2] for r in runs)
            other = "the nodes' sshd + shells + iptables" if label == "ssh" else "API server + exec'd shells + iptables"
            print(f"  {label:30} wall {wall * 1000:6.0f} ms   CPU {cpu * 1000:5.0f} ms (rbacbridge)  + {side * 1000:5.0f} ms "
                  f"({other})   wall runs: {', '.join(f'{r[0] * 1000:.0f}' for r in runs)}")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        for node in nodes:
            node.close()
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(image_path(), ignore_errors=True)
        left = [n for n in leftovers() if any(n.startswith(node.namespace) or node.namespace.replace("-", "") in n
                                              for node in nodes)]
        print("left behind: " + (", ".join(left) if left else "nothing"))


if __name__ == "__main__":
    main()
