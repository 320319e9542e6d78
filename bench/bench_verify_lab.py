"""`rbacbridge verify` — the real command, whole process — in the lab (tests/lab.py), vs one read probe in a pod.

Rows, interleaved round by round (probe, verify on 1 node, verify on every node, ...):
  probe    one `aws s3api list-objects-v2` in the pod nginx-vanilla on node-a (its network namespace; credentials
           through kube2iam's DNAT rule), whole process: the floor verify is measured against
  verify@1 `rbacbridge verify -o json` with workloads on 1 node (the other nodes' nginx pods marked Pending in
           the lab's API server, so verify probes one node's pods and host)
  verify@N the same with workloads on every node of the lab (N = --nodes, default 4)
Wall time, and CPU time split: the rbacbridge process itself (wait4), the pod execs (processes this bench
reaps: the lab's API server runs them), the lab namespaces' processes (moto, sshd and the `aws` processes SSH
runs on the nodes) and the lab's own threads (this process: API server, metadata and kube2iam stand-ins).
  verify@N --every-node   the same without sharing cells between nodes (what sharing saves; --no-every-node drops it)
All "nodes" share this machine's cores, so the probes' CPU adds up here where a real cluster's nodes each
spend their own. Targets (issue 14): verify@1 <= 3x probe, verify@N <= 1.5x
verify@1. Pod execs (one per AWS CLI call, CLI check or annotation probe in a pod) are counted at the lab's
API server.

--scenario tenants (issue 12): two labs side by side — 1 node with 1 tenant, 2 nodes with --tenants (10)
tenants (each: read the shared bucket, read/write its own; one workload, pods on every node) — rows: one
probe in the small lab's tenant pod, verify of the small lab, verify of the big one. Target: big <= 3x small.

Run it under the lab lock:

    flock /tmp/rbb-netns.lock python bench/bench_verify_lab.py [--rounds 5] [--nodes 4]
    flock /tmp/rbb-netns.lock python bench/bench_verify_lab.py --scenario tenants [--rounds 3] [--tenants 10,50]
        [--pod-mode-tenants 10] [--no-count-processes]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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


def measure(fn, namespaces: list[str]) -> tuple[float, dict[str, float], object]:
    """Wall time and CPU split: `cli` the rbacbridge process itself (when fn reports it), `pods` the processes
    this process reaped (pod execs, the probe), `nodes` the lab namespaces' processes (sshd and what SSH runs,
    moto), `lab` this process's threads (API server, metadata and kube2iam stand-ins)."""
    c0, s0, n0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF), namespace_cpu(namespaces)
    t0 = time.perf_counter()
    out, cli_cpu = fn()
    wall = time.perf_counter() - t0
    c1, s1, n1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF), namespace_cpu(namespaces)
    children = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
    cpu = {"cli": cli_cpu, "pods": max(0.0, children - cli_cpu), "nodes": max(0.0, n1 - n0),
           "lab": (s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime)}
    cpu["total"] = sum(cpu.values())
    return wall, cpu, out


def run_cli(lab: Lab, argv: list[str], timeout: float = 600) -> tuple[int, str, str, float]:
    """The CLI as lab.cli runs it, reaped with wait4 so its own CPU time is known: (rc, stdout, stderr, cpu)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "rbacbridge", *argv], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=lab.env(), cwd=lab.workdir)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.01)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return proc.returncode, out.read().decode(), err.read().decode(), usage.ru_utime + usage.ru_stime


def set_workload_nodes(lab: Lab, count: int) -> None:
    """Workload pods (every Deployment's, any namespace) Running on the first `count` nodes, Pending elsewhere
    (verify probes running pods only)."""
    active = {n.name for n in lab.nodes[:count]}
    for pod in lab.api.store.objects_of("Pod"):
        if (pod["metadata"].get("ownerReferences") or [{}])[0].get("kind") != "Deployment":
            continue
        phase = "Running" if pod["spec"]["nodeName"] in active else "Pending"
        if pod["status"]["phase"] != phase:
            pod["status"]["phase"] = phase
            lab.api.store.put(pod)


PHASES = ("run_live", "drift_findings", "live_targets", "ensure_cli_all", "host_network_findings", "live_diagnostics",
          "kube2iam_missing", "run_matrix", "observe", "compare", "interception_problems")


def phases(lab: Lab, verify_argv: list[str], counts: tuple[int, ...]) -> None:
    """Where verify's wall time goes: one extra run per node count under cProfile (its clock is wall time),
    cumulative time of verify's phases (rbacbridge.verify), and of the imports."""
    import pstats

    for count in counts:
        set_workload_nodes(lab, count)
        profile = lab.workdir / f"verify-{count}.prof"
        done = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "rbacbridge", *verify_argv],
                              capture_output=True, text=True, env=lab.env(), cwd=lab.workdir, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        stats = pstats.Stats(str(profile)).stats
        cum: dict[str, float] = {}
        for (path, _, name), (_, _, _, ct, _) in stats.items():
            if "rbacbridge/verify/" in path and name in PHASES:
                cum[name] = max(cum.get(name, 0.0), ct)
        imports = max((ct for (path, _, name), (_, _, _, ct, _) in stats.items() if name == "_find_and_load" and "importlib" in path),
                      default=0.0)
        total = max((ct for (_, _, name), (_, _, _, ct, _) in stats.items() if name == "<module>"), default=0.0)
        print(f"phases, {count} node(s), one run under cProfile (slower than the rows above): whole {total:.2f} s, "
              f"imports {imports:.2f} s; " + ", ".join(f"{k} {cum[k]:.2f} s" for k in PHASES if k in cum), flush=True)


def interleaved(rows: list[tuple[str, Any]], rounds: int, namespaces: list[str]) -> tuple[dict, dict]:
    """Every row once per round, the order flipping every round; medians of wall and of each CPU share, and
    each row's last output. Prints each round, then the table (each row against the row `rows` names as its ref)."""
    results: dict[str, list[tuple[float, dict[str, float]]]] = {name: [] for name, _, _ in rows}
    outs: dict[str, object] = {}
    for r in range(rounds):
        for name, fn, _ in (rows if r % 2 == 0 else rows[::-1]):
            try:
                wall, cpu, outs[name] = measure(fn, namespaces)
            except AssertionError as exc:  # a failed run is reported and left out of the medians, never timed
                print(f"round {r + 1}: {name} FAILED (left out): {str(exc)[:600]}", flush=True)
                continue
            results[name].append((wall, cpu))
        print(f"round {r + 1}: " + ", ".join(f"{name.split(':')[0]} {results[name][-1][0]:.2f} s" for name, _, _ in rows
                                             if results[name]), flush=True)
    med = {name: (statistics.median(w for w, _ in v), {k: statistics.median(c[k] for _, c in v) for k in v[0][1]})
           for name, v in results.items() if v}
    print("runs per row: " + ", ".join(f"{name.split(',')[-1].strip()} {len(v)}" for name, v in results.items()))
    print(f"\nmedian of {rounds} interleaved rounds; load average after: {os.getloadavg()}")
    print(f"{'what':58} {'wall':>7} {'x ref':>6}  CPU: {'total':>6} {'x ref':>6} {'rbacbridge':>10} {'pods':>6} {'nodes':>6} {'lab':>6}")
    for name, _, ref_name in rows:
        if name not in med or ref_name not in med:
            print(f"{name:58} no successful run")
            continue
        (wall, cpu), ref = med[name], med[ref_name]
        print(f"{name:58} {wall:6.2f}s {wall / ref[0]:5.2f}x       {cpu['total']:5.2f}s {cpu['total'] / ref[1]['total']:5.2f}x "
              f"{cpu['cli']:9.2f}s {cpu['pods']:5.2f}s {cpu['nodes']:5.2f}s {cpu['lab']:5.2f}s")
    return med, outs


def tenants(count: int) -> list[dict]:
    """`count` tenants shaped like the article's annotated pod: read the shared bucket, read/write their own."""
    return [{"name": f"client-{i:02d}", "namespaces": [f"client-{i:02d}"], "role": f"client-{i:02d}-s3",
             "read": ["nettech-helm-test"], "write": [f"client-{i:02d}-data"], "workloads": [f"nginx-client-{i:02d}"]}
            for i in range(1, count + 1)]


class Execs:
    """Counts the pod execs the lab's API server runs (one per AWS CLI call or CLI check in a pod). With `trace` set
    (a directory), each exec runs under strace -f into a file there (counted by _count)."""

    def __init__(self, lab: Lab):
        self.count, self.aws, self._inner = 0, 0, lab.api.exec_handler
        self.trace: Path | None = None
        self.kinds: dict[int, str] = {}  # traced exec number -> what it ran
        self._lock = threading.Lock()
        lab.api.exec_handler = self

    def __call__(self, *args):
        with self._lock:
            self.count += 1
            number = self.count
        self.aws += "aws" in args[3]  # argv (namespace, pod, container, argv): an exec that starts the AWS CLI
        if self.trace is not None:
            argv = args[3]
            self.kinds[number] = ("sh -c " + argv[2][:24] if argv[:2] == ["sh", "-c"] else " ".join(argv[:4]))
            out = self.trace / f"exec-{number}.trace"
            args = (*args[:3], ["strace", "-f", "-qq", "-e", "trace=clone,clone3,fork,vfork", "-o", str(out), *args[3]], *args[4:])
        return self._inner(*args)


def tenant_lab(node_count: int, tenant_count: int, extra: list[str]) -> tuple[Lab, list[str], str]:
    """A lab with `node_count` nodes and `tenant_count` tenants set up (their pods on every node, kube2iam's rule on
    every node); returns it, the verify command line and the config file."""
    lab = Lab.start(tuple(f"node-{chr(ord('a') + i)}" for i in range(node_count)))
    try:
        wanted = tenants(tenant_count)
        lab.add_buckets([t["write"][0] for t in wanted])
        for tenant in wanted:
            lab.api.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": tenant["namespaces"][0]}})
        config = lab.write_tenants_config("tenants.yaml", wanted)
        done = lab.cli("setup", "-c", config, "--kubeconfig", lab.kubeconfig, "--account-id", ACCOUNT, "--only", "aws,kube", "--yes",
                       timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        lab.play_controllers()
        for n in lab.nodes:
            lab.kube2iam_start(n.name)
    except BaseException:
        lab.close()
        raise
    argv = ["verify", "-c", config, "--kubeconfig", lab.kubeconfig, "--known-hosts", lab.known_hosts, "--ssh-key", lab.ssh_key,
            "-o", "json", *extra]
    return lab, argv, config


def tenants_scenario(args) -> int:
    """Issue 12's row and issue 25's: verify for N tenants x 2 nodes (each N of --tenants) vs 1 tenant x 1 node, the
    labs side by side, interleaved; --probe-from modes side by side (--pod-mode-tenants limits the big labs pod mode
    runs on). After the rounds, one more run per row under process accounting (strace in every pod exec, not timed):
    the processes the pods ran."""
    sizes, many_nodes = [int(x) for x in str(args.tenants).split(",")], 2
    pod_sizes = [int(x) for x in args.pod_mode_tenants.split(",")] if args.pod_mode_tenants else sizes
    labs: list[Lab] = []
    try:
        small, small_argv, _ = tenant_lab(1, 1, args.args.split())
        labs.append(small)
        bigs = {}
        for size in sizes:
            started = time.perf_counter()
            bigs[size] = tenant_lab(many_nodes, size, args.args.split())[:2]
            labs.append(bigs[size][0])
            print(f"lab with {size} tenants x {many_nodes} nodes set up in {time.perf_counter() - started:.1f} s", flush=True)
        counters = {id(lab_): Execs(lab_) for lab_ in labs}
        namespaces = [lab_.aws.namespace for lab_ in labs] + [n.node.namespace for lab_ in labs for n in lab_.nodes]

        def probe():
            done = small.pod_exec("client-01", "nginx-client-01-node-a", ["aws", "s3api", "list-objects-v2", "--bucket", "client-01-data"])
            assert done.returncode == 0, done.stderr[-1000:]
            return None, 0.0

        def verify(lab: Lab, argv: list[str], nodes: int):
            def run():
                before, aws_before = counters[id(lab)].count, counters[id(lab)].aws
                rc, stdout, stderr, cpu = run_cli(lab, argv, timeout=1800)
                from rbacbridge.report import principals_of  # -o json v3: principals grouped by tenant

                if rc != 0:
                    try:
                        bad = [(p["name"], c["check"], c["bucket"] or c["target"], c["detail"], c["blame"])
                               for p in principals_of(json.loads(stdout)) for c in p["cells"] if not c["match"]]
                    except ValueError:
                        bad = []
                    raise AssertionError(f"verify exited {rc}: {bad[:10]} {stderr[-1500:]}")
                report = json.loads(stdout)
                principals = principals_of(report)
                assert len({p["node"] for p in principals}) == nodes, principals
                cells = sum(len(p["cells"]) for p in principals)
                pods = len({p["pod"] for p in principals if p["kind"] == "pod"})
                ours = sum(c["probed_from"] == "rbacbridge" for p in principals for c in p["cells"])
                return (len(principals), cells, counters[id(lab)].count - before, counters[id(lab)].aws - aws_before, pods,
                        ours), cpu
            return run

        probe_name = "probe: one list-objects-v2 in a pod"
        rows = [(probe_name, probe, probe_name)]
        pairs, runs = [], {}
        for mode in args.probe_from.split(","):  # issue 25: both modes side by side
            small_name = f"verify --probe-from {mode}, 1 tenant x 1 node"
            rows.append((small_name, verify(small, [*small_argv, "--probe-from", mode], 1), probe_name))
            runs[small_name] = (small, [*small_argv, "--probe-from", mode])
            for size in sizes:
                if mode == "pod" and size not in pod_sizes:
                    continue
                lab_, argv = bigs[size]
                big_name = f"verify --probe-from {mode}, {size} tenants x {many_nodes} nodes"
                rows.append((big_name, verify(lab_, [*argv, "--probe-from", mode], many_nodes), small_name))
                runs[big_name] = (lab_, [*argv, "--probe-from", mode])
                pairs.append((small_name, big_name, size))
        probe()
        med, outs = interleaved(rows, args.rounds, namespaces)
        for small_name, big_name, size in pairs:
            if small_name not in med or big_name not in med:
                continue
            one, many = med[small_name], med[big_name]
            target = 3 if size <= 10 else 8
            print(f"\ntarget: {big_name} <= {target}x {small_name}: {many[0] / one[0]:.2f}x "
                  f"{'met' if many[0] <= target * one[0] else 'MISSED'} (CPU {many[1]['total'] / one[1]['total']:.2f}x)")
        for name, _, _ in rows[1:]:
            if name not in outs:
                continue
            principals, cells, execs, aws, pods, ours = outs[name]
            print(f"{name}: {principals} principals ({pods} pods), {cells} cells ({ours} called by rbacbridge), "
                  f"{execs} pod execs, {aws} of them starting the AWS CLI")
        if args.count_processes:
            print(f"\nprocess accounting (one more run per row, every pod exec under strace -f; not timed): load {os.getloadavg()}")
            for name, (lab_, argv) in runs.items():
                counter = counters[id(lab_)]
                with tempfile.TemporaryDirectory(prefix="rbv-trace-") as where:
                    counter.trace = Path(where)
                    try:
                        rc, stdout, stderr, _ = run_cli(lab_, argv, timeout=1800)
                    finally:
                        counter.trace = None
                        processes, by_kind = _count(Path(where), counter.kinds)
                from rbacbridge.report import principals_of

                principals = principals_of(json.loads(stdout)) if stdout.strip() else []
                pods = len({p["pod"] for p in principals if p["kind"] == "pod"})
                print(f"{name}: exit {rc}, {processes} processes in pod execs, {pods} pods probed "
                      f"({processes / max(pods, 1):.2f} per pod; annotation probe pods' execs included); by exec (execs, "
                      f"processes): {by_kind}", flush=True)
    finally:
        for lab_ in reversed(labs):
            lab_.close()
        left = [x for lab_ in labs for x in lab_.leftovers()]
        print(f"left behind: {left or 'nothing'}")
    return 0


def _count(where: Path, kinds: dict[int, str]) -> tuple[int, dict[str, list[int]]]:
    """Processes the traced execs ran: each exec's own, plus every fork/clone call that made a process, not a thread;
    and per kind of exec: [execs, processes]."""
    total, by_kind = 0, {}
    for trace in where.glob("exec-*.trace"):
        calls = [ln for ln in trace.read_text().splitlines() if any(f" {c}(" in ln for c in ("clone", "clone3", "fork", "vfork"))]
        made = 1 + sum("CLONE_THREAD" not in ln for ln in calls)
        total += made
        entry = by_kind.setdefault(kinds.get(int(trace.stem.split("-")[1]), "?"), [0, 0])
        entry[0], entry[1] = entry[0] + 1, entry[1] + made
    return total, by_kind


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--scenario", choices=("nodes", "tenants"), default="nodes",
                        help="nodes: 1 vs N nodes vs one probe (issue 14); tenants: --tenants x 2 nodes vs 1 x 1 (issue 12)")
    parser.add_argument("--tenants", default="10", help="tenants scenario: tenant counts of the big labs, e.g. 10,50")
    parser.add_argument("--pod-mode-tenants", default="",
                        help="tenants scenario: the big labs --probe-from pod runs on (default: all of --tenants)")
    parser.add_argument("--count-processes", action=argparse.BooleanOptionalAction, default=True,
                        help="tenants scenario: one more run per row with every pod exec under strace -f")
    parser.add_argument("--probe-from", default="rbacbridge,pod",
                        help="tenants scenario: verify --probe-from modes to measure side by side (comma-separated)")
    parser.add_argument("--every-node", action=argparse.BooleanOptionalAction, default=True,
                        help="nodes scenario: also a row with verify --every-node (no cells shared between nodes)")
    parser.add_argument("--phases", action=argparse.BooleanOptionalAction, default=True,
                        help="after the rounds, one profiled run per node count: where verify's time goes")
    parser.add_argument("--args", default="", help="extra verify arguments, e.g. --no-drift-check")
    args = parser.parse_args()
    why = available()
    if why:
        print(f"the lab cannot run here: {why}")
        return 1
    print(f"load average before: {os.getloadavg()}")
    if args.scenario == "tenants":
        return tenants_scenario(args)
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
        execs = Execs(lab)
        verify_argv = ["verify", "-c", lab.config_file, "--kubeconfig", lab.kubeconfig, "--known-hosts", lab.known_hosts,
                       "--ssh-key", lab.ssh_key, "-o", "json", *args.args.split()]

        def probe():
            done = lab.pod_exec("default", "nginx-vanilla-node-a", ["aws", "s3api", "list-objects-v2", "--bucket", "nettech-helm-test"])
            assert done.returncode == 0, done.stderr[-1000:]
            return None, 0.0

        def verify(count: int, extra: tuple[str, ...] = ()):
            def run():
                set_workload_nodes(lab, count)
                before = execs.count
                rc, stdout, stderr, cpu = run_cli(lab, [*verify_argv, *extra])
                assert rc == 0, (rc, stdout[-2000:], stderr[-2000:])
                from rbacbridge.report import principals_of  # -o json v3: principals grouped by tenant

                principals = principals_of(json.loads(stdout))
                assert len({p["node"] for p in principals}) == count, principals
                return f"{len(principals)} principals, {execs.count - before} pod execs", cpu
            return run

        probe_name, one_name, many_name = "probe: one list-objects-v2 in a pod", "verify, 1 node", f"verify, {args.nodes} nodes"
        rows = [(probe_name, probe, probe_name), (one_name, verify(1), probe_name), (many_name, verify(args.nodes), one_name)]
        if args.every_node:  # the same without sharing cells between nodes: what sharing saves
            rows.append((f"verify, {args.nodes} nodes, --every-node", verify(args.nodes, ("--every-node",)), one_name))
        probe()  # warm: page cache, moto's S3 and STS, kube2iam's first answers
        med, outs = interleaved(rows, args.rounds, namespaces)
        base, one, many = med[probe_name], med[one_name], med[many_name]
        print(f"\ntargets: verify@1 <= 3x probe: {one[0] / base[0]:.2f}x {'met' if one[0] <= 3 * base[0] else 'MISSED'}; "
              f"verify@{args.nodes} <= 1.5x verify@1: {many[0] / one[0]:.2f}x {'met' if many[0] <= 1.5 * one[0] else 'MISSED'}")
        for name, _, _ in rows[1:]:
            print(f"{name}: {outs[name]}")
        if args.phases:
            phases(lab, verify_argv, (1, args.nodes))
    finally:
        lab.close()
        left = lab.leftovers()
        print(f"left behind: {left or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
