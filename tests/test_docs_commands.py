"""Every `rbacbridge ...` command the README and the documentation site's pages (docs/**/*.md) show (in
their code blocks) and the demo prints (in backticks) parses and exits 0 — the offline ones: help, config-reference, render, permissions, and
plan/setup/teardown against moto (AWS_ENDPOINT_URL; setup/teardown with --dry-run added, and
`--only aws` when the command names no part; an example instance id is replaced by one that exists
in moto). Commands that need a real cluster, nodes or account
are skipped by the small explicit list SKIP below, each with its reason.

The extractor is generic (any code block, `$ ` prompts, `python -m rbacbridge`, pipes, redirects and
trailing comments cut off), so the README and the pages can be rewritten without touching this test.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_aws import moto_url, reset_moto  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

# (pattern searched in the command, why it is not run here)
SKIP: tuple[tuple[str, str], ...] = (
    (r"\bverify\b", "verify needs a cluster (tests/test_verify_*.py, tests/test_lab.py)"),
    (r"\biptables\s+(status|fix|remove)\b", "needs nodes over SSH (tests/test_nodes_netns.py)"),
    (r"--kubeconfig|--context\b|\bKUBECONFIG\b", "needs a cluster"),
    (r"--only[ =]\S*(kube|nodes)", "needs a cluster or nodes"),
    (r"--node\b", "needs nodes over SSH"),
    (r"\bdemo\b", "runs the sandbox (tests/test_demo.py)"),
    (r"\bmigrate\s+plan\b", "needs a cluster (tests/test_migrate_plan.py)"),
    (r"\bmigrate\s+(apply|rollback|status)\b", "needs a cluster (tests/test_migrate_apply.py)"),
    (r"rbl-lab-|XXXX", "the lab's generated files (tests/test_lab.py)"),
    (r"\[[A-Z_ ]+\]|\.\.\.|<[^>]*>|\|\S", "a synopsis with placeholders, not a command"),
    (r"\$[A-Za-z_{(]", "needs shell variables"),
)
HELP = re.compile(r"(^|\s)(--help|-h)(\s|$)")
_START = re.compile(r"(?:^|[;&|(]\s*|^\$\s+)(?:python3?\s+-m\s+)?(rbacbridge(?:\s.*)?)$")


def code_lines(markdown: str) -> list[str]:
    """Lines of fenced and indented code blocks."""
    lines, fenced, previous_blank = [], False, True
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            lines.append(line)
        elif line.startswith(("    ", "\t")) and (previous_blank or lines) and not line.lstrip().startswith(("-", "*", "|")):
            lines.append(line)
        previous_blank = not line.strip()
    return lines


def commands_in(lines: list[str]) -> list[str]:
    found: list[str] = []
    for raw in lines:
        line = raw.strip()
        line = re.sub(r"^\$\s+", "", line)
        for part in re.split(r"\s(?:&&|\|\||;)\s", line):
            match = _START.search(part.strip())
            if not match:
                continue
            command = match.group(1)
            if part.strip()[:match.start(1)].endswith("$("):  # eval "$(rbacbridge ...)": the command ends at its ")"
                command = command.split(")", 1)[0]
            command = re.split(r"\s+#|\s\|\s|\s\d?>>?|\s<\s", command)[0].strip()  # comments, pipes, redirects
            if command not in found:
                found.append(command)
    return found


def readme_commands() -> list[str]:
    readme = REPO / "README.md"
    return commands_in(code_lines(readme.read_text(encoding="utf-8"))) if readme.exists() else []


def documented_commands() -> list[str]:
    """The README's commands, then those of every page of the documentation site not already shown."""
    found = readme_commands()
    for page in sorted((REPO / "docs").rglob("*.md")):
        for command in commands_in(code_lines(page.read_text(encoding="utf-8"))):
            if command not in found:
                found.append(command)
    return found


def skip_reason(command: str) -> str | None:
    if HELP.search(command) and not re.search(r"\$[A-Za-z_{(]|<[^>]*>", command):
        return None  # any help is offline
    for pattern, why in SKIP:
        if re.search(pattern, command):
            return why
    return None


def runnable(command: str) -> list[str]:
    """argv (after `rbacbridge`) as run here: AWS commands made safe for moto."""
    argv = shlex.split(command)[1:]
    verb = argv[0] if argv else ""
    if verb in ("plan", "setup", "teardown") and not HELP.search(command):
        if not any(a == "--only" or a.startswith("--only=") for a in argv):
            argv += ["--only", "aws"]
        if verb != "plan" and "--dry-run" not in argv:
            argv.append("--dry-run")
    return argv


def run(argv: list[str], cwd: Path, moto: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RBACBRIDGE_"))}
    env.update(PYTHONPATH=str(REPO), COLUMNS="200", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
               AWS_EC2_METADATA_DISABLED="true", HOME=str(cwd))
    if moto:
        env.update(AWS_ENDPOINT_URL=moto, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1")
    return subprocess.run([sys.executable, "-m", "rbacbridge", *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120, stdin=subprocess.DEVNULL)


def check(command: str, tmp_path: Path, moto: str) -> None:
    why = skip_reason(command)
    if why:
        pytest.skip(f"{command}: {why}")
    shutil.copy(REPO / "examples" / "rbacbridge.yaml", tmp_path / "rbacbridge.yaml")  # `-c rbacbridge.yaml`
    reset_moto(moto)
    argv = runnable(command)
    if any(re.fullmatch(r"i-[0-9a-f]{8,17}", a) for a in argv):  # an example instance id: one that exists in moto
        import boto3

        ec2 = boto3.client("ec2", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="testing",
                           aws_secret_access_key="testing")
        instance = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        argv = [instance if re.fullmatch(r"i-[0-9a-f]{8,17}", a) else a for a in argv]
    result = run(argv, tmp_path, moto)
    assert result.returncode == 0, f"`{command}` (run as {shlex.join(argv)}) exited {result.returncode}: {result.stderr[-800:]}"


README_COMMANDS = readme_commands()
DOCUMENTED_COMMANDS = documented_commands()


def test_the_extractor_finds_commands_and_cuts_shell_syntax():
    text = "intro\n\n    $ rbacbridge plan -o json | jq '.steps'   # what changes\n    python -m rbacbridge --help\n\n" \
           "```sh\nrbacbridge render --account-id 1 > all.yaml && rbacbridge verify\n```\nrbacbridge in prose\n"
    assert commands_in(code_lines(text)) == ["rbacbridge plan -o json", "rbacbridge --help",
                                             "rbacbridge render --account-id 1", "rbacbridge verify"]
    assert runnable("rbacbridge setup --account-id 1") == ["setup", "--account-id", "1", "--only", "aws", "--dry-run"]
    assert skip_reason("rbacbridge verify --stage before") and not skip_reason("rbacbridge verify --help")
    assert len(README_COMMANDS) >= 3, README_COMMANDS  # the README shows commands; none found means a broken extractor
    assert sum(skip_reason(c) is None for c in README_COMMANDS) >= 2, README_COMMANDS
    assert len(DOCUMENTED_COMMANDS) > len(README_COMMANDS), "no command found in docs/: a broken extractor"


@pytest.mark.parametrize("command", DOCUMENTED_COMMANDS or ["rbacbridge --help"])
def test_documented_command_runs(command, tmp_path, moto_url):
    check(command, tmp_path, moto_url)


def test_commands_the_demo_prints_run(tmp_path, moto_url):
    demo = run(["demo"], tmp_path, None)
    assert demo.returncode == 0, demo.stderr[-800:]
    printed = [c for c in re.findall(r"`(rbacbridge [^`]+)`", demo.stdout)]
    assert printed, "the demo prints no command hint"
    ran = 0
    for command in dict.fromkeys(printed):
        if skip_reason(command) is None:
            check(command, tmp_path, moto_url)
            ran += 1
    assert ran >= 1, printed
