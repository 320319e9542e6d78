"""`rbacbridge iptables fix` on 32 namespace nodes vs 1 node (target: 32 nodes <= 2x one node), and the
SSH round trips per node (target: <= 3 in the common case).

Each node starts with a stale rule (a dead port) and two duplicates of the current one: 3 deletions.
Runs are interleaved (1 node, 32 nodes, 1 node, ...), median of --rounds (>= 5), wall and CPU time of
this process; the load average is printed before and after. Everything it makes (namespaces, veths,
temp directory) is removed at the end. Run as root: python bench/bench_iptables_fix.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rbacbridge import ssh  # noqa: E402
from rbacbridge.config import Config  # noqa: E402
from rbacbridge.nodes import run_iptables  # noqa: E402
from rbacbridge.planner import Context  # noqa: E402
from tests.netns import Node  # noqa: E402

SHAPE = "-d 169.254.169.254/32 -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination".split()

_execs = 0
_lock = threading.Lock()
_run = ssh.SshSession.run


def _counting_run(self, *args, **kwargs):
    global _execs
    with _lock:
        _execs += 1
    return _run(self, *args, **kwargs)


ssh.SshSession.run = _counting_run  # counts the execs (SSH round trips after the handshake)


def seed(node: Node) -> None:
    node.exec(["iptables", "-t", "nat", "-F", "PREROUTING"])
    for port in (8181, 8282, 8282, 8282):
        node.iptables("-t", "nat", "-A", "PREROUTING", *SHAPE, f"{node.address}:{port}")


PARALLEL: int | None = None  # --parallel: nodes.parallel for the run (default: the config's)


def server_cpu(nodes: list[Node]) -> float:
    """CPU seconds the nodes' sshd spent, with the per-connection sessions and commands they reaped."""
    total = 0
    for node in nodes:
        fields = Path(f"/proc/{node._sshd.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def fix(nodes: list[Node], known_hosts: Path) -> tuple[float, float, int, float]:
    """(wall s, CPU s of this process, execs per node, CPU s on the nodes' side) of one `fix`."""
    global _execs
    for node in nodes:
        seed(node)
    time.sleep(0.1)
    before = server_cpu(nodes)
    cfg = Config(node_hosts=tuple(n.host for n in nodes), ssh_user="root", ssh_key=str(nodes[0].client_key),
                 known_hosts=str(known_hosts), ssh_config="none", host_interface="docker0",
                 **({"node_parallelism": PARALLEL} if PARALLEL else {}))
    _execs = 0
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_iptables(Context(cfg), "fix")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert result.ok and all(r.deleted == 3 and r.kept == 1 for r in result.reports), result.to_dict()
    time.sleep(0.1)  # sshd reaps its session processes
    return wall, cpu, _execs // len(nodes), server_cpu(nodes) - before


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--parallel", type=int, default=None, help="nodes.parallel (default: the config's)")
    args = parser.parse_args()
    global PARALLEL
    PARALLEL = args.parallel
    print(f"nodes.parallel = {args.parallel or Config().node_parallelism}")
    nodes: list[Node] = []
    scratch = Path(tempfile.mkdtemp(prefix="rbn-bench-"))
    try:
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        nodes.append(Node.start("bench-0"))
        for i in range(1, args.nodes):
            nodes.append(Node.start(f"bench-{i}", client_key=nodes[0].client_key))
        known = scratch / "known_hosts"
        known.write_text("".join(f"{n.known_host_name} {n.host_public_key}\n" for n in nodes))
        fix(nodes[:1], known)  # warm-up (imports, first handshake)
        one, many = [], []
        for _ in range(max(5, args.rounds)):
            one.append(fix(nodes[:1], known))
            many.append(fix(nodes, known))
        for label, runs in ((" 1 node ", one), (f"{args.nodes} nodes", many)):
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            nodes_cpu = statistics.median(r[3] for r in runs)
            floor = (cpu + nodes_cpu) / (os.cpu_count() or 1)
            print(f"fix, {label}: wall median {wall * 1000:.0f} ms, CPU median {cpu * 1000:.0f} ms (rbacbridge) + "
                  f"{nodes_cpu * 1000:.0f} ms (the nodes' sshd, shells, iptables), CPU floor on {os.cpu_count()} cores "
                  f"{floor * 1000:.0f} ms, SSH execs per node {runs[0][2]}  (wall runs: {', '.join(f'{r[0] * 1000:.0f}' for r in runs)})")
        ratio = statistics.median(r[0] for r in many) / statistics.median(r[0] for r in one)
        print(f"ratio {args.nodes}/1 (wall): {ratio:.2f}x (target <= 2x)")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        for node in nodes:
            node.close()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
