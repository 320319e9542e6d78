"""`rbacbridge verify` — the real command, whole process — in the lab (tests/lab.py), vs one read probe in a pod.

Rows, interleaved round by round (probe, verify on 1 node, verify on every node, ...):
  probe    one `aws s3api list-objects-v2` in the pod nginx-vanilla on node-a (its network namespace; credentials
           through kube2iam's DNAT rule), whole process: the floor verify is measured against
  verify@1 `rbacbridge verify -o json` with workloads on 1 node (the other nodes' nginx pods marked Pending in
           the lab's API server, so verify probes one node's pods and host)
  verify@N the same with workloads on every node of the lab (N = --nodes, default 4)
Wall time, and CPU time: the CLI process and every process the bench reaps (pod execs), plus the lab's own
threads (this process: API server, metadata and kube2iam stand-ins), plus the lab namespaces' processes (moto,
sshd and the `aws` processes SSH runs on the nodes). Targets (issue 14): verify@1 <= 3x probe, verify@N <= 1.5x
verify@1. Run it under the lab lock:

    flock /tmp/rbb-netns.lock python bench/bench_verify_lab.py [--rounds 5] [--nodes 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lab import ACCOUNT, Lab, available  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def namespace_cpu(namespaces: list[str]) -> float:
    """CPU seconds (own + reaped children) of every process now in these network namespaces."""
    total = 0
    for ns in namespaces:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / TICK


def measure(fn, namespaces: list[str]) -> tuple[float, float, object]:
    c0, s0, n0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF), namespace_cpu(namespaces)
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    c1, s1, n1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF), namespace_cpu(namespaces)
    cpu = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) + (s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime) \
        + max(0.0, n1 - n0)
    return wall, cpu, out


def set_workload_nodes(lab: Lab, count: int) -> None:
    """nginx pods Running on the first `count` nodes, Pending elsewhere (verify probes running pods only)."""
    active = {n.name for n in lab.nodes[:count]}
    for pod in lab.api.store.objects_of("Pod", "default"):
        pod["status"]["phase"] = "Running" if pod["spec"]["nodeName"] in active else "Pending"
        lab.api.store.put(pod)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--args", default="", help="extra verify arguments, e.g. --no-drift-check")
    args = parser.parse_args()
    why = available()
    if why:
        print(f"the lab cannot run here: {why}")
        return 1
    print(f"load average before: {os.getloadavg()}")
    names = tuple(f"node-{chr(ord('a') + i)}" for i in range(args.nodes))
    lab = Lab.start(names)
    try:
        print(f"lab with {args.nodes} nodes started in {lab.timings['start']:.1f} s")
        done = lab.cli("setup", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--account-id", ACCOUNT,
                       "--only", "aws,kube", "--yes")
        assert done.returncode == 0, done.stderr[-2000:]
        lab.play_controllers()
        for n in lab.nodes:
            lab.kube2iam_start(n.name)
        namespaces = [lab.aws.namespace] + [n.node.namespace for n in lab.nodes]
        verify_argv = ["verify", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--known-hosts", lab.known_hosts,
                       "--ssh-key", lab.ssh_key, "-o", "json", *args.args.split()]

        def probe():
            done = lab.pod_exec("default", "nginx-vanilla-node-a", ["aws", "s3api", "list-objects-v2", "--bucket", "nettech-helm-test"])
            assert done.returncode == 0, done.stderr[-1000:]

        def verify(count: int):
            def run():
                set_workload_nodes(lab, count)
                done = lab.cli(*verify_argv, timeout=600)
                assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
                document = json.loads(done.stdout)
                assert len({p["node"] for p in document["principals"]}) == count, document["principals"]
                return len(document["principals"])
            return run

        rows = [("probe: one list-objects-v2 in a pod", probe), ("verify, 1 node", verify(1)),
                (f"verify, {args.nodes} nodes", verify(args.nodes))]
        probe()  # warm: page cache, moto's S3 and STS, kube2iam's first answers
        results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in rows}
        for r in range(args.rounds):
            for name, fn in rows:
                wall, cpu, _ = measure(fn, namespaces)
                results[name].append((wall, cpu))
            print(f"round {r + 1}: " + ", ".join(f"{name.split(':')[0]} {results[name][-1][0]:.2f} s" for name, _ in rows),
                  flush=True)
        med = {name: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for name, v in results.items()}
        base, one, many = (med[name] for name, _ in rows)
        print(f"\nmedian of {args.rounds} interleaved rounds; load average after: {os.getloadavg()}")
        print(f"{'what':40} {'wall':>8} {'cpu':>8}  ratio (wall / cpu)")
        for (name, _), (wall, cpu), ref in zip(rows, (base, one, many), (base, base, one)):
            print(f"{name:40} {wall:7.2f}s {cpu:7.2f}s  {wall / ref[0]:.2f}x / {cpu / ref[1]:.2f}x")
        print(f"\ntargets: verify@1 <= 3x probe: {one[0] / base[0]:.2f}x {'met' if one[0] <= 3 * base[0] else 'MISSED'}; "
              f"verify@{args.nodes} <= 1.5x verify@1: {many[0] / one[0]:.2f}x {'met' if many[0] <= 1.5 * one[0] else 'MISSED'}")
    finally:
        lab.close()
        left = lab.leftovers()
        print(f"left behind: {left or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
