"""Benchmark: `rbacbridge setup` (AWS part, whole process) vs the article's AWS steps typed as AWS CLI
commands, one process each, against the same moto server; a no-op re-run; `--help` start-up.

    python bench/bench_aws_setup.py [--rounds 3]

Prints a small table; figures go in docs/benchmarks.md. Not a test.
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

ACCOUNT = "123456789012"


def start_moto():
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def post(url: str, body: bytes = b"") -> bytes:
    return urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST")).read()


def env_for(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
               AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true", PYTHONPATH=str(ROOT))
    return env


def new_instance(url: str) -> str:
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench")
    return ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]


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


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return elapsed


def mutating_requests(url: str) -> int:
    text = urllib.request.urlopen(f"{url}/moto-api/recorder/download-recording").read().decode()
    count = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        body = record.get("body") or ""
        if record.get("body_encoded"):
            body = base64.b64decode(body).decode(errors="replace")
        action = next((p.split("=", 1)[1] for p in str(body).split("&") if p.startswith("Action=")), "")
        if action.startswith(("Create", "Delete", "Update", "Attach", "Detach", "Put", "Add", "Remove", "Tag",
                              "Untag", "Associate", "Disassociate", "Replace")):
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ["MOTO_ENABLE_RECORDING"] = "True"
    server, url = start_moto()
    env = env_for(url)
    rb = [sys.executable, "-m", "rbacbridge"]
    cli_times, rb_times, noop_times, noop_mutating = [], [], [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                post(f"{url}/moto-api/reset")
                instance = new_instance(url)
                commands = article_cli_commands(instance, Path(tmp))
                cli_times.append(sum(timed(["aws", *c], env) for c in commands))

                post(f"{url}/moto-api/reset")
                instance = new_instance(url)
                post(f"{url}/moto-api/recorder/reset-recording")
                post(f"{url}/moto-api/recorder/start-recording")
                rb_times.append(timed([*rb, "setup", "--only", "aws", "--yes", "--account-id", ACCOUNT,
                                       "--instance-id", instance], env))
                post(f"{url}/moto-api/recorder/stop-recording")
                fresh_mutating = mutating_requests(url)
                post(f"{url}/moto-api/recorder/reset-recording")
                post(f"{url}/moto-api/recorder/start-recording")
                noop_times.append(timed([*rb, "setup", "--only", "aws", "--yes", "--account-id", ACCOUNT,
                                         "--instance-id", instance], env))
                post(f"{url}/moto-api/recorder/stop-recording")
                noop_mutating.append(mutating_requests(url))
        help_times = [timed([*rb, "--help"], env) for _ in range(10)]
        import_times = [timed([sys.executable, "-c", "import typer, rich"], env) for _ in range(10)]
    finally:
        server.stop()

    cli, rbt = statistics.median(cli_times), statistics.median(rb_times)
    print(f"article AWS steps as {len(commands)} AWS CLI processes : {cli:6.2f} s (median of {args.rounds})")
    print(f"rbacbridge setup --only aws (fresh, whole process) : {rbt:6.2f} s  -> {rbt / cli:.2f}x the CLI (target <= 0.15x), "
          f"{fresh_mutating} mutating calls")
    print(f"rbacbridge setup again (no-op)                      : {statistics.median(noop_times):6.2f} s, "
          f"mutating calls: {max(noop_mutating)} (target 0)")
    h, i = statistics.median(help_times), statistics.median(import_times)
    print(f"rbacbridge --help                                   : {h * 1000:6.0f} ms vs import typer, rich {i * 1000:.0f} ms "
          f"-> {h / i:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
