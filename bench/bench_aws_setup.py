"""Benchmark: `rbacbridge setup --only aws` as users run it (whole process), N=1 vs N=50 instances.

Every request goes through bench_verify's LatencyProxy (50 ms per request by default: the round
trip a real AWS endpoint costs, which loopback does not have). moto runs as its own process with
request recording on; the recording file lives in a temporary directory (never in the cwd).
A/B interleaved (the order flips every round), median of --rounds (>= 5), wall and CPU time of the
rbacbridge process, the load average printed before and after. Half the instances start with
another profile associated (setup replaces it and records it), half with none.

    python bench/bench_aws_setup.py [--rounds 5] [--latency-ms 50] [--instances 50] [--article] [--code DIR]

Rows: fresh setup (record + associations), the same setup again (no-op: reads only, counted).
Targets (issue 14): fresh N=50 <= 1.5x N=1; no-op reads independent of N (<= 16 calls).
--article adds the older rows: the article's steps typed as AWS CLI commands (no proxy), and
`rbacbridge --help` vs `import typer, rich` (both interleaved too).
Figures go in docs/aws.md (the --article rows in docs/benchmarks.md). Not a test.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ACCOUNT = "123456789012"
MUTATING = ("Create", "Delete", "Update", "Attach", "Detach", "Put", "Add", "Remove", "Tag", "Untag",
            "Associate", "Disassociate", "Replace")


def post(url: str, body: bytes = b"") -> bytes:
    return urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST")).read()


CODE = ROOT  # the checkout whose rbacbridge is timed (--code: compare with another one, e.g. main)


def env_for(url: str) -> dict[str, str]:
    # Bytecode is written and used as in any installed package (this environment sets PYTHONDONTWRITEBYTECODE,
    # which would make rbacbridge compile its modules from source on every run, unlike boto3's).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_")) and k != "PYTHONDONTWRITEBYTECODE"}
    env.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
               AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull, PYTHONPATH=str(CODE))
    return env


def client(url: str, service: str):
    import boto3

    return boto3.client(service, endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                        aws_secret_access_key="bench")


def new_instances(url: str, count: int) -> list[str]:
    """`count` instances straight on moto (not through the proxy); every second one has a profile."""
    ec2, iam = client(url, "ec2"), client(url, "iam")
    ids = sorted(i["InstanceId"] for i in ec2.run_instances(ImageId="ami-12345678", MinCount=count, MaxCount=count)["Instances"])
    iam.create_instance_profile(InstanceProfileName="legacy")
    for instance in ids[1::2]:
        ec2.associate_iam_instance_profile(InstanceId=instance, IamInstanceProfile={"Name": "legacy"})
    return ids


def timed_child(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one whole process; CPU is the child's user + system time."""
    before, start = os.times(), time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - start, os.times()
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} ... failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def recorded_actions(url: str) -> list[str]:
    text = urllib.request.urlopen(f"{url}/moto-api/recorder/download-recording").read().decode()
    actions = []
    for line in text.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        body = record.get("body") or ""
        if record.get("body_encoded"):
            body = base64.b64decode(body).decode(errors="replace")
        action = next((p.split("=", 1)[1] for p in str(body).split("&") if p.startswith("Action=")), "")
        if action:
            actions.append(action)
    return actions


def recording(url: str, argv: list[str], env: dict[str, str]) -> tuple[float, float, list[str]]:
    post(f"{url}/moto-api/recorder/reset-recording")
    post(f"{url}/moto-api/recorder/start-recording")
    wall, cpu = timed_child(argv, env)
    post(f"{url}/moto-api/recorder/stop-recording")
    return wall, cpu, recorded_actions(url)


def scaling(args) -> None:
    from bench_verify import LatencyProxy, start_moto

    workdir = tempfile.mkdtemp(prefix="rbb-bench-aws-")
    os.environ["MOTO_ENABLE_RECORDING"] = "True"
    os.environ["MOTO_RECORDER_FILEPATH"] = str(Path(workdir) / "moto_recording")
    proc, url = start_moto()
    proxy = LatencyProxy(int(url.rsplit(":", 1)[1]), args.latency_ms / 1000)
    env = env_for(f"http://127.0.0.1:{proxy.port}")
    rb = [sys.executable, "-m", "rbacbridge", "setup", "--only", "aws", "--yes", "--account-id", ACCOUNT]
    sizes = [1, args.instances]
    samples: dict[tuple[int, str], list[tuple[float, float]]] = {}
    calls: dict[tuple[int, str], list[str]] = {}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  ({os.cpu_count()} CPUs, "
          f"{args.latency_ms:.0f} ms per request through the proxy, {args.rounds} rounds, A/B interleaved)")
    try:
        for round_no in range(args.rounds):
            for size in (sizes if round_no % 2 == 0 else sizes[::-1]):
                post(f"{url}/moto-api/reset")
                ids = new_instances(url, size)
                argv = rb + [a for i in ids for a in ("--instance-id", i)]
                for kind in ("fresh", "no-op"):
                    wall, cpu, actions = recording(url, argv, env)
                    samples.setdefault((size, kind), []).append((wall, cpu))
                    calls[(size, kind)] = actions
                check = client(url, "ec2").describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"]
                assert sorted(a["InstanceId"] for a in check if a["IamInstanceProfile"]["Arn"].endswith("/nettech-instance-profile")) == ids
    finally:
        proxy.close()
        proc.terminate()
        proc.wait(10)
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'run':22} {'wall (median)':>14} {'CPU (median)':>13} {'calls':>6} {'mutating':>9}")
    for kind in ("fresh", "no-op"):
        for size in sizes:
            wall = statistics.median(w for w, _ in samples[(size, kind)])
            cpu = statistics.median(c for _, c in samples[(size, kind)])
            actions = calls[(size, kind)]
            mutating = sum(a.startswith(MUTATING) for a in actions)
            print(f"{kind + f' N={size}':22} {wall:12.2f} s {cpu:11.2f} s {len(actions):6d} {mutating:9d}")
    for kind in ("fresh", "no-op"):
        a = statistics.median(w for w, _ in samples[(1, kind)])
        b = statistics.median(w for w, _ in samples[(args.instances, kind)])
        ca = statistics.median(c for _, c in samples[(1, kind)])
        cb = statistics.median(c for _, c in samples[(args.instances, kind)])
        target = "target <= 1.5x" if kind == "fresh" else f"reads {len(calls[(args.instances, kind)])} (target <= 16)"
        print(f"{kind}: N={args.instances} / N=1 = {b / a:.2f}x wall, {cb / ca:.2f}x CPU ({target})")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def article_cli_commands(instance: str, docs: Path) -> list[list[str]]:
    """The same resources rbacbridge creates, the way the article has you type them."""
    from rbacbridge.aws import ManagedPolicy, Role, desired_resources
    from rbacbridge.config import Config

    commands: list[list[str]] = []
    for resource in desired_resources(Config(), ACCOUNT, [instance]):
        if isinstance(resource, ManagedPolicy):
            path = docs / f"{resource.name}.json"
            path.write_text(json.dumps(resource.document))
            commands.append(["iam", "create-policy", "--policy-name", resource.name, "--policy-document", f"file://{path}"])
        elif isinstance(resource, Role):
            path = docs / f"{resource.name}-trust.json"
            path.write_text(json.dumps(resource.trust))
            commands.append(["iam", "create-role", "--role-name", resource.name, "--assume-role-policy-document", f"file://{path}"])
            for policy in resource.policies:
                commands.append(["iam", "attach-role-policy", "--role-name", resource.name,
                                 "--policy-arn", f"arn:aws:iam::{ACCOUNT}:policy/{policy}"])
        elif resource.kind == "iam-instance-profile":
            commands.append(["iam", "create-instance-profile", "--instance-profile-name", resource.name])
            commands.append(["iam", "add-role-to-instance-profile", "--instance-profile-name", resource.name, "--role-name", resource.role])
        else:
            commands.append(["ec2", "associate-iam-instance-profile", "--instance-id", instance,
                             "--iam-instance-profile", f"Name={resource.profile}"])
    return commands


def article(args) -> None:
    """rbacbridge (whole process) vs the article's steps as AWS CLI processes, interleaved, no proxy."""
    from bench_verify import start_moto

    workdir = Path(tempfile.mkdtemp(prefix="rbb-bench-aws-"))
    os.environ["MOTO_ENABLE_RECORDING"] = "True"
    os.environ["MOTO_RECORDER_FILEPATH"] = str(workdir / "moto_recording")
    proc, url = start_moto()
    env = env_for(url)
    rb = [sys.executable, "-m", "rbacbridge", "setup", "--only", "aws", "--yes", "--account-id", ACCOUNT]
    cli_times, rb_times = [], []
    try:
        for round_no in range(args.rounds):
            for which in (("cli", "rb") if round_no % 2 == 0 else ("rb", "cli")):
                post(f"{url}/moto-api/reset")
                instance = client(url, "ec2").run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
                if which == "cli":
                    commands = article_cli_commands(instance, workdir)
                    cli_times.append(sum(timed_child(["aws", *c], env)[0] for c in commands))
                else:
                    rb_times.append(timed_child(rb + ["--instance-id", instance], env)[0])
    finally:
        proc.terminate()
        proc.wait(10)
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    cli, rbt = statistics.median(cli_times), statistics.median(rb_times)
    print(f"article AWS steps as {len(commands)} AWS CLI processes : {cli:6.2f} s (median of {args.rounds})")
    print(f"rbacbridge setup --only aws (fresh, whole process) : {rbt:6.2f} s  -> {rbt / cli:.2f}x the CLI")
    help_times, import_times = [], []
    for round_no in range(max(args.rounds, 10)):
        for which in (("help", "import") if round_no % 2 == 0 else ("import", "help")):
            if which == "help":
                help_times.append(timed_child([sys.executable, "-m", "rbacbridge", "--help"], env)[0])
            else:
                import_times.append(timed_child([sys.executable, "-c", "import typer, rich"], env)[0])
    h, i = statistics.median(help_times), statistics.median(import_times)
    print(f"rbacbridge --help                                  : {h * 1000:6.0f} ms vs import typer, rich {i * 1000:.0f} ms "
          f"-> {h / i:.2f}x (target <= 1.5x)")


def floor(args) -> None:
    """rbacbridge setup --only aws (whole process) vs a whole-process boto3 floor making the same calls
    (bench/aws_floor.py: recorded from rbacbridge with a botocore hook, replayed by a script that only imports
    boto3), fresh and no-op, N=1, straight to moto (no proxy: what is left is the processes' own cost)."""
    import shutil

    from bench_verify import start_moto

    workdir = Path(tempfile.mkdtemp(prefix="rbb-bench-aws-"))
    os.environ.pop("MOTO_ENABLE_RECORDING", None)
    proc, url = start_moto()
    env = env_for(url)
    tool = str(ROOT / "bench" / "aws_floor.py")
    rb = ["setup", "--only", "aws", "--yes", "--account-id", ACCOUNT]
    samples: dict[str, list[tuple[float, float]]] = {}
    counts: dict[str, int] = {}

    def instance() -> str:
        post(f"{url}/moto-api/reset")
        return client(url, "ec2").run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  ({os.cpu_count()} CPUs, no proxy, "
          f"{args.rounds} rounds, A/B interleaved)")
    try:
        recorded = instance()
        for kind in ("fresh", "no-op"):
            timed_child([sys.executable, tool, "record", str(workdir / f"{kind}.json"), "--", *rb, "--instance-id", recorded], env)
            counts[kind] = len(json.loads((workdir / f"{kind}.json").read_text()))
        for round_no in range(args.rounds):
            for which in (("rbacbridge", "floor") if round_no % 2 == 0 else ("floor", "rbacbridge")):
                iid = instance()
                for kind in ("fresh", "no-op"):
                    if which == "rbacbridge":
                        argv = [sys.executable, "-m", "rbacbridge", *rb, "--instance-id", iid]
                    else:
                        argv = [sys.executable, tool, "replay", str(workdir / f"{kind}.json"), f"{recorded}={iid}"]
                    samples.setdefault(f"{which} {kind}", []).append(timed_child(argv, env))
                done = client(url, "ec2").describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"]
                assert [a["InstanceId"] for a in done] == [iid], f"{which} did not associate the profile"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'run (whole process)':26} {'wall (median)':>14} {'CPU (median)':>13} {'calls':>6}")
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in samples.items()}
    for kind in ("fresh", "no-op"):
        for which in ("rbacbridge", "floor"):
            wall, cpu = med[f"{which} {kind}"]
            print(f"{which + ' ' + kind:26} {wall:12.3f} s {cpu:11.3f} s {counts[kind]:6d}")
    for kind in ("fresh", "no-op"):
        (w, c), (fw, fc) = med[f"rbacbridge {kind}"], med[f"floor {kind}"]
        print(f"{kind}: rbacbridge / floor = {w / fw:.2f}x wall, {c / fc:.2f}x CPU (target <= 1.2x)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--article", action="store_true", help="also compare with the article's AWS CLI commands")
    parser.add_argument("--floor", action="store_true", help="only the whole-process boto3 floor rows (same calls, N=1)")
    parser.add_argument("--code", default=str(ROOT), help="checkout whose rbacbridge is timed [default: this one]")
    args = parser.parse_args()
    global CODE
    CODE = Path(args.code).resolve()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5 (medians of fewer runs swing with load)")
    if args.floor:
        floor(args)
        return
    scaling(args)
    if args.article:
        article(args)


if __name__ == "__main__":
    main()
