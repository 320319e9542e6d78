"""Start-up of every `rbacbridge ... --help` against `python -c "import typer, rich"` (the floor).

Whole processes, A/B interleaved (the reference, then each help command, round after round, so a
load change hits both), median of N rounds, wall and CPU time (user+sys of the child, from
wait4). The load average is printed before and after: on a shared machine, compare ratios, not
absolute times. Run each variant both with and without PYTHONDONTWRITEBYTECODE=1 (without it the
first round writes .pyc files; --warm runs every command once first, untimed).

    python bench/bench_startup.py                      # this tree, the installed typer
    python bench/bench_startup.py --rounds 9 --dont-write-bytecode
    python bench/bench_startup.py --tree /work/main    # another checkout (e.g. before the fix)
    python bench/bench_startup.py --extra-path /tmp/typer027   # a typer<0.28 installed with pip --target

Exit 1 if any help takes more than --limit (1.5) times the reference median (wall time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = ("import typer, rich", [sys.executable, "-c", "import typer, rich"])


_DISCOVER = """
import json, typer.main
from rbacbridge.cli import app
found = [[]]
def walk(command, path):
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found.append(path + [name])
        walk(sub, path + [name])
walk(typer.main.get_command(app), [])
print(json.dumps(found))
"""


def help_commands(env: dict[str, str]) -> list[list[str]]:
    """The top-level help and every sub-command's, discovered from the tree under test (not a hand-kept list)."""
    import json

    out = subprocess.run([sys.executable, "-c", _DISCOVER], capture_output=True, text=True, env=env, check=True).stdout
    return [c + ["--help"] for c in json.loads(out)]


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    err = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {process.returncode}: {err.strip()[-300:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="rounds (median of these; at least 5)")
    parser.add_argument("--tree", default=str(REPO), help="source tree to measure (PYTHONPATH)")
    parser.add_argument("--extra-path", default="", help="prepended to PYTHONPATH (e.g. a pip --target dir with another typer)")
    parser.add_argument("--dont-write-bytecode", action="store_true", help="set PYTHONDONTWRITEBYTECODE=1")
    parser.add_argument("--no-warm", action="store_true", help="do not run each command once, untimed, first")
    parser.add_argument("--limit", type=float, default=1.5, help="allowed ratio to the reference (wall)")
    parser.add_argument("--only", default="", help="measure only help commands containing this text")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (args.extra_path, args.tree) if p)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if args.dont_write_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["COLUMNS"] = "100"
    typer_version = subprocess.run([sys.executable, "-c", "import importlib.metadata as m, typer, os; "
                                    "print(m.version('typer'), os.path.dirname(typer.__file__))"],
                                   capture_output=True, text=True, env=env).stdout.strip()

    cli = [sys.executable, "-m", "rbacbridge"]
    cases = [(REFERENCE[0], REFERENCE[1])] + [
        ("rbacbridge " + " ".join(h), cli + h) for h in help_commands(env) if args.only in " ".join(h)
    ]
    if not args.no_warm:
        for _, argv in cases:
            run_once(argv, env)
    print(f"python {sys.version.split()[0]}  typer {typer_version}  tree {args.tree}")
    print(f"PYTHONDONTWRITEBYTECODE={'1' if args.dont_write_bytecode else 'unset'}  rounds {args.rounds}  "
          f"warm {'no' if args.no_warm else 'yes'}  load average before {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    walls: dict[str, list[float]] = {name: [] for name, _ in cases}
    cpus: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.rounds):
        for name, argv in cases:  # interleaved: the reference and every help in each round
            wall, cpu = run_once(argv, env)
            walls[name].append(wall)
            cpus[name].append(cpu)
    print(f"load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    # "x ref": the median of the per-round ratios (each command against the reference run in the
    # same round), which a slow drift of the machine's load does not skew the way a ratio of medians is.
    print(f"{'command':42} {'wall ms':>8} {'x ref':>6} {'cpu ms':>8} {'x ref':>6}")
    worst = 0.0
    ref = REFERENCE[0]
    for name, _ in cases:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        ratio = statistics.median(a / b for a, b in zip(walls[name], walls[ref]))
        cpu_ratio = statistics.median(a / b for a, b in zip(cpus[name], cpus[ref]))
        if name != ref:
            worst = max(worst, ratio)
        print(f"{name:42} {wall * 1000:8.1f} {ratio:6.2f} {cpu * 1000:8.1f} {cpu_ratio:6.2f}")
    verdict = "ok" if worst <= args.limit else "TOO SLOW"
    print(f"worst help / reference (wall): {worst:.2f} (limit {args.limit}) {verdict}")
    return 0 if worst <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
