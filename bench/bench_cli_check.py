"""verify's AWS CLI presence check before the matrix (issue 14): old vs new, A/B interleaved.

  old  `aws --version` per principal, one after another (starts the CLI's Python each time)
  new  `sh -c 'command -v aws'` per principal (a shell builtin), all principals concurrently
       (rbacbridge.verify.ensure_cli_all)

Both run locally through rbacbridge.verify.LocalRunner for N principals (default 6: host + 2 pods on
2 nodes). In a pod each check is one exec round trip more; the ratio is what this bench shows.

    python bench/bench_cli_check.py [--rounds 5] [--principals 6]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rbacbridge import verify as v  # noqa: E402


def _old(runners) -> None:
    for runner in runners:
        rc, _, err = runner.run(["aws", "--version"], 30)
        assert rc == 0, err


def _new(runners) -> None:
    v.ensure_cli_all([(runner, False, "bench") for runner in runners])


def _timed(fn, runners) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    fn(runners)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--principals", type=int, default=6)
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    runners = [v.LocalRunner() for _ in range(args.principals)]
    results: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    for round_no in range(args.rounds):  # interleaved, the order flipping every round: A B, B A, A B, ...
        for name in (("old", "new") if round_no % 2 == 0 else ("new", "old")):
            results[name].append(_timed(_old if name == "old" else _new, runners))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.principals} principals, "
          f"median of {args.rounds} (nothing written, no temporary files)")
    medians = {}
    for name, rows in results.items():
        wall = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        medians[name] = wall
        print(f"  {name}: wall {wall * 1000:8.1f} ms   cpu {cpu * 1000:8.1f} ms")
    print(f"  new / old (wall): {medians['new'] / medians['old']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
