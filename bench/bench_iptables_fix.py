"""`rbacbridge iptables fix` on 8 namespace nodes vs 1 node (target: 8 nodes <= 2x one node).

Each node starts with a stale rule and two duplicates of the current one (3 deletions, 4 list calls
and 1 verification list over one SSH connection). Run as root: python bench/bench_iptables_fix.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rbacbridge.config import Config  # noqa: E402
from rbacbridge.nodes import run_iptables  # noqa: E402
from rbacbridge.planner import Context  # noqa: E402
from tests.netns import Node  # noqa: E402

SHAPE = "-d 169.254.169.254/32 -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination".split()
ROUNDS = 5


def seed(node: Node) -> None:
    node.exec(["iptables", "-t", "nat", "-F", "PREROUTING"])
    for port in (8181, 8282, 8282, 8282):
        node.iptables("-t", "nat", "-A", "PREROUTING", *SHAPE, f"{node.address}:{port}")


def fix_seconds(nodes: list[Node], known_hosts: Path) -> float:
    for node in nodes:
        seed(node)
    cfg = Config(node_hosts=tuple(n.host for n in nodes), ssh_user="root", ssh_key=str(nodes[0].client_key),
                 known_hosts=str(known_hosts), ssh_config="none", host_interface="docker0")
    start = time.perf_counter()
    result = run_iptables(Context(cfg), "fix")
    elapsed = time.perf_counter() - start
    assert result.ok and all(r.deleted == 3 and r.kept == 1 for r in result.reports), result.to_dict()
    return elapsed


def main() -> None:
    nodes: list[Node] = []
    try:
        nodes.append(Node.start("bench-0"))
        for i in range(1, 8):
            nodes.append(Node.start(f"bench-{i}", client_key=nodes[0].client_key))
        known = Path(tempfile.mkdtemp(prefix="rbn-bench-")) / "known_hosts"
        known.write_text("".join(f"{n.known_host_name} {n.host_public_key}\n" for n in nodes))
        fix_seconds(nodes[:1], known)  # warm-up (imports, first handshake)
        one = [fix_seconds(nodes[:1], known) for _ in range(ROUNDS)]
        eight = [fix_seconds(nodes, known) for _ in range(ROUNDS)]
        m1, m8 = statistics.median(one), statistics.median(eight)
        print(f"fix, 1 node : median {m1 * 1000:.0f} ms  (runs: {', '.join(f'{x * 1000:.0f}' for x in one)})")
        print(f"fix, 8 nodes: median {m8 * 1000:.0f} ms  (runs: {', '.join(f'{x * 1000:.0f}' for x in eight)})")
        print(f"ratio 8/1   : {m8 / m1:.2f}x (target <= 2x)")
    finally:
        for node in nodes:
            node.close()


if __name__ == "__main__":
    main()
