"""`rbacbridge iptables fix` on N namespace nodes (default 32) vs 1 node (target: N nodes <= 2x one node),
the SSH round trips per node (target: <= 3 in the common case), and the floor: the same number of bare
SSH connections running `true` with paramiko and strict host keys.

Rows (each for 1 node and for N nodes):
- fix:             `run_iptables(ctx, "fix")`, as `rbacbridge iptables fix --yes` runs it. Each node starts
                   with a stale rule (a dead port, named stale: 8181) and two duplicates of the current one:
                   3 deletions.
- floor, paramiko: per node SSHClient + load_host_keys + RejectPolicy + connect(key) + exec `true` +
                   close, the nodes side by side in a pool of N threads (plain paramiko, as documented).
- floor, ssh.py:   the same through rbacbridge.nodes.ssh (connect + run(["true"])): the SSH cost `fix` cannot go
                   below with its own transport.
- --compare DIR:   `fix` again with the rbacbridge found in DIR (e.g. a checkout of main): old vs new.

Every row runs in its own worker process (imports and one handshake done before timing), started once;
rounds interleave the rows in a rotating order; median of --rounds (>= 5) of wall time, CPU time of
the worker, and CPU time of the nodes' side (their sshd with the sessions, shells and iptables it reaped:
the nodes share this machine's cores with rbacbridge). The load average is printed before and after.
Everything it makes (namespaces, veths, workers, temp directory) is removed at the end.
Run as root: python bench/bench_iptables_fix.py [--rounds 5] [--nodes 32] [--compare /work/main]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.netns import Node  # noqa: E402

SHAPE = "-d 169.254.169.254/32 -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination".split()

# The worker: imports one checkout's rbacbridge, answers one JSON request per line with one JSON line.
WORKER = r'''
import json, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
try:
    from rbacbridge.nodes import ssh
except ImportError:  # --compare with a checkout from before the nodes package
    from rbacbridge import ssh
from rbacbridge.config import Config
from rbacbridge.nodes import run_iptables
from rbacbridge.planner import Context
import paramiko

execs = [0]
lock = threading.Lock()
real_run = ssh.SshSession.run
def counting_run(self, *args, **kwargs):
    with lock:
        execs[0] += 1
    return real_run(self, *args, **kwargs)
ssh.SshSession.run = counting_run  # counts the execs (SSH round trips after the handshake)

def fix(req):
    cfg = Config(node_hosts=tuple(req["hosts"]), ssh_user="root", ssh_key=req["key"], known_hosts=req["known"],
                 ssh_config="none", host_interface="docker0", node_stale_ports=(8181,),
                 **({"node_parallelism": req["parallel"]} if req["parallel"] else {}))
    result = run_iptables(Context(cfg), "fix")
    assert result.ok and all(r.deleted == 3 and r.kept == 1 for r in result.reports), result.to_dict()

def floor_paramiko(req):
    def one(host):
        client = paramiko.SSHClient()
        client.load_host_keys(req["known"])
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(host, username="root", key_filename=req["key"], allow_agent=False, look_for_keys=False, timeout=10)
        try:
            _, out, _ = client.exec_command("true")
            assert out.channel.recv_exit_status() == 0
        finally:
            client.close()
    with ThreadPoolExecutor(max_workers=len(req["hosts"])) as pool:
        list(pool.map(one, req["hosts"]))

def floor_ssh(req):
    def one(host):
        target = ssh.SshTarget(host=host, user="root", key_file=req["key"], known_hosts=req["known"], ssh_config="none")
        with ssh.connect(target) as session:
            assert session.run(["true"])[0] == 0
    with ThreadPoolExecutor(max_workers=len(req["hosts"])) as pool:
        list(pool.map(one, req["hosts"]))

for line in sys.stdin:
    req = json.loads(line)
    execs[0] = 0
    wall, cpu = time.perf_counter(), time.process_time()
    {"fix": fix, "floor-paramiko": floor_paramiko, "floor-ssh": floor_ssh}[req["what"]](req)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"wall": wall, "cpu": cpu, "execs": execs[0]}), flush=True)
'''


class Worker:
    def __init__(self, code: Path):
        env = {**os.environ, "PYTHONPATH": str(code)}
        self.code = code
        self.process = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env, cwd=str(code))

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker for {self.code} died (see its stderr above)")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.process.stdin.close()
            self.process.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.process.kill()
            self.process.wait()


def seed(node: Node) -> None:
    node.exec(["iptables", "-t", "nat", "-F", "PREROUTING"])
    for port in (8181, 8282, 8282, 8282):
        node.iptables("-t", "nat", "-A", "PREROUTING", *SHAPE, f"{node.address}:{port}")


def server_cpu(nodes: list[Node]) -> float:
    """CPU seconds the nodes' sshd spent, with the per-connection sessions and commands they reaped."""
    total = 0
    for node in nodes:
        fields = Path(f"/proc/{node._sshd.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def settle(nodes: list[Node], limit: float = 3.0) -> None:
    """Wait until every node's sshd has reaped its per-connection processes (their CPU time is counted
    in sshd's cutime/cstime only then; it takes up to ~0.2 s after the client closes)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{n._sshd.pid}/task/{n._sshd.pid}/children").read_text().split() for n in nodes):
            return
        time.sleep(0.02)


def measure(worker: Worker, what: str, nodes: list[Node], known: Path, parallel: int | None) -> tuple[float, float, int, float]:
    """(wall s, CPU s of the worker, execs per node, CPU s on the nodes' side) of one run."""
    if what == "fix":
        for node in nodes:
            seed(node)
    settle(nodes)
    before = server_cpu(nodes)
    answer = worker.ask(what=what, hosts=[n.host for n in nodes], key=str(nodes[0].client_key), known=str(known),
                        parallel=parallel)
    settle(nodes)
    return answer["wall"], answer["cpu"], answer["execs"] // len(nodes), server_cpu(nodes) - before


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--parallel", type=int, default=None, help="nodes.parallel (default: the config's)")
    parser.add_argument("--compare", type=Path, default=None, help="another checkout: its `fix` as an extra row")
    parser.add_argument("--no-floors", action="store_true", help="fix rows only")
    args = parser.parse_args()
    nodes: list[Node] = []
    workers: dict[str, Worker] = {}
    scratch = Path(tempfile.mkdtemp(prefix="rbn-bench-"))
    try:
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        nodes.append(Node.start("bench-0"))
        for i in range(1, args.nodes):
            nodes.append(Node.start(f"bench-{i}", client_key=nodes[0].client_key))
        known = scratch / "known_hosts"
        known.write_text("".join(f"{n.known_host_name} {n.host_public_key}\n" for n in nodes))
        rows = [("fix", "fix", ROOT)]
        if args.compare:
            rows.append((f"fix ({args.compare})", "fix", args.compare.resolve()))
        if not args.no_floors:
            rows += [("floor, paramiko", "floor-paramiko", ROOT), ("floor, ssh.py", "floor-ssh", ROOT)]
        for label, what, code in rows:
            workers[label] = Worker(code)
            measure(workers[label], what, nodes[:1], known, args.parallel)  # warm-up (imports, first handshake)
        runs: dict[tuple[str, int], list[tuple[float, float, int, float]]] = {}
        order = [(row, n) for row in rows for n in (1, args.nodes)]
        for round_ in range(max(5, args.rounds)):
            shift = round_ % len(order)
            for (label, what, _), n in order[shift:] + order[:shift]:
                runs.setdefault((label, n), []).append(measure(workers[label], what, nodes[:n], known, args.parallel))
        print(f"nodes.parallel: {args.parallel or 'the config default'}; {os.cpu_count()} cores shared by rbacbridge "
              f"and the {args.nodes} nodes; medians of {max(5, args.rounds)} interleaved rounds")
        print("| row | nodes | wall ms | CPU ms, rbacbridge/client | CPU ms, nodes' side | CPU floor on the cores | "
              "SSH execs per node | N/1 wall |")
        print("|---|---|---|---|---|---|---|---|")
        for label, _, _ in rows:
            one = statistics.median(r[0] for r in runs[(label, 1)])
            for n in (1, args.nodes):
                rs = runs[(label, n)]
                wall, cpu, nodes_cpu = (statistics.median(r[i] for r in rs) for i in (0, 1, 3))
                floor = (cpu + nodes_cpu) / (os.cpu_count() or 1)
                ratio = f"{wall / one:.2f}x" if n != 1 else ""
                print(f"| {label} | {n} | {wall * 1000:.0f} | {cpu * 1000:.0f} | {nodes_cpu * 1000:.0f} | {floor * 1000:.0f} | "
                      f"{rs[0][2]} | {ratio} |")
        print("wall runs (ms): " + "; ".join(f"{label} x{n}: {', '.join(f'{r[0] * 1000:.0f}' for r in rs)}"
                                          for (label, n), rs in runs.items()))
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        for worker in workers.values():
            worker.close()
        for node in nodes:
            node.close()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
