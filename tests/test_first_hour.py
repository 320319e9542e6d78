"""Issue 24, items 4-10: a new user's first hour. Each test runs the command as the issue found it (a
subprocess, stdin not a terminal), and checks its exit code, its one line and that nothing was written."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT = "123456789012"


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in ("RBACBRIDGE_CONFIG", "COLUMNS", "RBACBRIDGE_DEBUG")}
    env["PYTHONPATH"] = str(ROOT)
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def run(*argv, cwd, env=None, stdin=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "rbacbridge", *argv], capture_output=True, text=True,
                          env=_env(**(env or {})), cwd=cwd, timeout=timeout,
                          **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}))


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def one_error_line(result, expected: str, code: int = 2) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert expected in lines[0], lines[0]
    assert len(lines[0]) <= 300
    return lines[0]


def roles(result) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [t["role"] for t in json.loads(result.stdout)["tenants"]]


# --- 4. config discovery ---------------------------------------------------------------------------


def test_config_is_found_like_kubectl_and_the_source_is_said(tmp_path):
    (tmp_path / "rbacbridge.yaml").write_text("iam:\n  pod_role: from-cwd\n")
    (tmp_path / "other.yaml").write_text("iam:\n  pod_role: from-env\n")
    before = files(tmp_path)

    found = run("tenant", "list", "-o", "json", cwd=tmp_path)
    assert roles(found) == ["from-cwd"]
    assert found.stderr.splitlines() == ["config: ./rbacbridge.yaml (found in the current directory)"]

    from_env = run("tenant", "list", "-o", "json", cwd=tmp_path, env={"RBACBRIDGE_CONFIG": str(tmp_path / "other.yaml")})
    assert roles(from_env) == ["from-env"]  # the environment wins over the current directory
    assert from_env.stderr.splitlines() == [f"config: {tmp_path / 'other.yaml'} (from RBACBRIDGE_CONFIG)"]

    flag = run("tenant", "list", "-o", "json", "-c", "-", cwd=tmp_path, env={"RBACBRIDGE_CONFIG": "other.yaml"},
               stdin="iam:\n  pod_role: from-stdin\n")
    assert roles(flag) == ["from-stdin"] and flag.stderr == ""  # -c wins; named on the line, not repeated

    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    defaults = run("tenant", "list", "-o", "json", cwd=elsewhere)
    assert roles(defaults) == ["nettech-s3-read-write"]
    assert defaults.stderr.splitlines() == [
        "config: built-in defaults (the article's values; no -c FILE, RBACBRIDGE_CONFIG or ./rbacbridge.yaml)"]

    missing = run("tenant", "list", cwd=tmp_path, env={"RBACBRIDGE_CONFIG": str(tmp_path / "nope.yaml")})
    one_error_line(missing, "(from RBACBRIDGE_CONFIG)")

    # the commands that write the file find it the same way
    added = run("tenant", "add", "client-c", "-n", "client-c", "--no-plan", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert added.stderr.splitlines()[0] == "config: ./rbacbridge.yaml (found in the current directory)"
    assert [t["name"] for t in json.loads(run("tenant", "list", "-o", "json", cwd=tmp_path).stdout)["tenants"]][-1] == "client-c"
    assert files(tmp_path)["other.yaml"] == before["other.yaml"]
    refused = run("tenant", "remove", "client-c", "-c", "-", cwd=tmp_path, stdin="")
    one_error_line(refused, "standard input")


# --- 5. tenant add on a new file ------------------------------------------------------------------


def test_tenant_add_on_a_new_file_writes_only_the_tenant_asked_for(tmp_path):
    added = run("tenant", "add", "client-c", "-n", "client-c", "--write", "client-c-data", "--no-plan", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    text = (tmp_path / "rbacbridge.yaml").read_text()
    assert [t["name"] for t in yaml.safe_load(text)["tenants"]] == ["client-c"]
    assert "lanre.k8s.dev" not in text and "default" not in text
    said = added.stderr
    assert "creating rbacbridge.yaml" in said and "not carried over: the article's built-in tenant nginx-annotated" in said
    assert "--keep-article-tenant" in said

    kept_dir = tmp_path / "kept"
    kept_dir.mkdir()
    (kept_dir / "rbacbridge.yaml").write_text('account_id: "123456789012"\n')  # a file without tenants: or legacy keys
    kept = run("tenant", "add", "client-c", "-n", "client-c", "--keep-article-tenant", "--no-plan", cwd=kept_dir)
    assert kept.returncode == 0, kept.stderr
    names = [t["name"] for t in yaml.safe_load((kept_dir / "rbacbridge.yaml").read_text())["tenants"]]
    assert names == ["nginx-annotated", "client-c"]
    assert "converted the article's tenant into an explicit entry" in kept.stderr and "(--keep-article-tenant)" in kept.stderr


# --- 6. output width ------------------------------------------------------------------------------


def test_columns_is_honoured_when_piped(tmp_path):
    demo = run("demo", cwd=tmp_path, env={"COLUMNS": "80"}, timeout=180)  # the issue's `COLUMNS=80 rbacbridge demo | awk`
    assert demo.returncode == 0, demo.stderr
    assert [line for line in demo.stdout.splitlines() if len(line) > 80] == []
    assert "rbacbridge plan" in demo.stdout and "end of sandbox" in demo.stdout
    (tmp_path / "rbacbridge.yaml").write_text("tenants:\n  - {name: a, namespaces: [a], role: r, read: [nettech-helm-test, lanre.k8s.dev]}\n")
    for columns, piped in (("60", 60), ("200", 200), (None, 80)):
        listed = run("tenant", "list", cwd=tmp_path, env={"COLUMNS": columns})
        widths = [len(line) for line in listed.stdout.splitlines()]
        assert listed.returncode == 0 and max(widths) <= piped and (max(widths) > 80) == (piped == 200), (columns, widths)
    assert sorted(files(tmp_path)) == ["rbacbridge.yaml"]


# --- 7. help and completion -----------------------------------------------------------------------


def _command_paths():
    import typer

    from rbacbridge.cli import app

    def walk(command, path):
        yield path
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def test_h_and_examples_everywhere_and_completion_for_the_shell_named(tmp_path):
    for path in _command_paths():
        shown = run(*path, "-h", cwd=tmp_path)
        assert shown.returncode == 0 and shown.stdout.startswith("Usage: rbacbridge"), (path, shown.stderr)
        assert "Examples:" in shown.stdout and "  rbacbridge " in shown.stdout.split("Examples:")[1], path
    scripts = {shell: run("--show-completion", shell, cwd=tmp_path) for shell in ("bash", "zsh", "fish")}
    assert all(r.returncode == 0 for r in scripts.values())
    assert "complete_bash" in scripts["bash"].stdout and "complete -o default" in scripts["bash"].stdout
    assert scripts["zsh"].stdout.lstrip().startswith("#compdef rbacbridge") and "complete_zsh" in scripts["zsh"].stdout
    assert scripts["fish"].stdout.startswith("complete --command rbacbridge") and "complete_fish" in scripts["fish"].stdout
    one_error_line(run("--show-completion", "tcsh", cwd=tmp_path), "invalid shell 'tcsh'")

    def complete(words: str) -> list[str]:
        done = run(cwd=tmp_path, env={"_RBACBRIDGE_COMPLETE": "complete_bash", "COMP_WORDS": words,
                                      "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))})
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("rbacbridge plan -o ") == ["table", "json", "yaml"]
    assert complete("rbacbridge verify --output j") == ["json", "junit"]
    assert complete("rbacbridge setup --via ") == ["ssh", "kubernetes", "auto"]
    assert complete("rbacbridge plan --only aws,") == ["aws,kube", "aws,nodes"]
    assert complete("rbacbridge audit --fail-on ") == ["high", "medium", "low"]
    assert complete("rbacbridge pl") == ["plan"]
    assert files(tmp_path) == {}


def test_every_example_in_help_parses():
    """The examples are commands a user copies: each one's flags and arguments are accepted by the parser."""
    import shlex

    import typer

    from rbacbridge.cli import app
    from rbacbridge.cli.examples import _EXAMPLES

    root = typer.main.get_command(app)
    for key, examples in _EXAMPLES.items():
        for line, _ in examples:
            words = shlex.split(line.split(" | ")[0].split(" > ")[0])[1:]
            command, ctx = root, root.make_context("rbacbridge", ["--version"] if not words else [], resilient_parsing=True)
            while words and hasattr(command, "commands") and words[0] in command.commands:
                command = command.commands[words.pop(0)]
            if words == ["-h"]:
                continue
            command.make_context(command.name, list(words), parent=ctx)  # raises on an unknown flag or a missing value


# --- 8. bounds ------------------------------------------------------------------------------------


def test_config_reads_are_bounded(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# padding\n" * (105 * 1024))  # just over 1 MiB
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    before = files(tmp_path)
    one_error_line(run("tenant", "list", "-c", "/dev/zero", cwd=tmp_path, timeout=20), "a device, not a regular file")
    one_error_line(run("plan", "-c", str(big), "--only", "aws", cwd=tmp_path, timeout=20), "over the 1 MiB limit")
    one_error_line(run("tenant", "list", "-c", str(fifo), cwd=tmp_path, timeout=20), "a pipe")
    one_error_line(run("tenant", "add", "x", "-n", "x", "-c", "/dev/zero", cwd=tmp_path, timeout=20), "a device")
    one_error_line(run("tenant", "list", "-c", "-", cwd=tmp_path, stdin="#" * (1024 * 1024 + 1), timeout=20),
                   "'-' (standard input): over the 1 MiB limit")
    assert files(tmp_path) == before


def test_ctrl_c_during_the_demo_says_what_is_left(tmp_path):
    demo = subprocess.Popen([sys.executable, "-m", "rbacbridge", "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(COLUMNS="200"), cwd=tmp_path, stdin=subprocess.DEVNULL)
    url = None
    for line in demo.stdout:
        url = url or (re.search(r"at (http://127\.0\.0\.1:\d+)", line) or [None, None])[1]
        if "1. rbacbridge plan" in line:
            break
    demo.send_signal(signal.SIGINT)
    _, err = demo.communicate(timeout=60)
    assert demo.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["error: interrupted: the demo stopped and its sandbox (the embedded moto server) is gone with "
                     "everything in it; nothing real was touched (`rbacbridge demo` starts a new one)"]
    assert "run the same command again" not in err
    with socket.socket() as probe:  # the sandbox really is gone
        assert probe.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1]))) != 0
    assert files(tmp_path) == {}


# --- 9. -n means one thing --------------------------------------------------------------------------


def _namespaces(result) -> set[str]:
    assert result.returncode == 0, result.stderr
    return {d["metadata"]["namespace"] for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Deployment"}


def test_n_is_a_tenants_namespace_and_the_old_spelling_still_works_with_a_warning(tmp_path):
    new = run("render", "--account-id", ACCOUNT, "--nginx-namespace", "team-a", cwd=tmp_path)
    assert _namespaces(new) == {"team-a"} and "deprecated" not in new.stderr
    for old in ("-n", "--namespace"):
        result = run("render", "--account-id", ACCOUNT, old, "team-b", cwd=tmp_path)
        assert _namespaces(result) == {"team-b"}
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert warnings == ["warning: -n/--namespace of `rbacbridge render` is deprecated: use --nginx-namespace "
                            "(-n/--namespace means a tenant's namespace, as in tenant add; the old spelling goes in the next release)"]
    one_error_line(run("plan", "--nginx-namespace", "a", "-n", "b", cwd=tmp_path), "give --nginx-namespace only")
    one_error_line(run("setup", "--yes", "--only", "kube", "-n", "Bad_NS", cwd=tmp_path), "invalid --namespace 'Bad_NS'")
    added = run("tenant", "add", "client-c", "-n", "client-c", "--no-plan", "-c", "t.yaml", cwd=tmp_path)
    assert added.returncode == 0 and "deprecated" not in added.stderr
    assert yaml.safe_load((tmp_path / "t.yaml").read_text())["tenants"][0]["namespaces"] == ["client-c"]
    assert sorted(files(tmp_path)) == ["t.yaml"]


def test_bad_inputs_page_lists_every_case():
    """docs/reference/bad-inputs.md names every bad-input case of the suite (it is written from their runs)."""
    from tests.test_cli_input import CASES
    from tests.test_tenant_cli import BAD

    page = (ROOT / "docs" / "reference" / "bad-inputs.md").read_text()
    for name, *_ in CASES:
        assert f"`test_bad_input_is_one_line_and_exit_2[{name}]`" in page, name
    for argv, _ in BAD:
        assert f"`test_bad_input_exit_2_file_unchanged[{' '.join(argv)}]`" in page, argv
    for test in ("test_config_reads_are_bounded", "test_config_is_found_like_kubectl_and_the_source_is_said",
                 "test_ctrl_c_during_the_demo_says_what_is_left", "test_missing_sandbox_extra_names_the_command_for_this_installation",
                 "test_n_is_a_tenants_namespace_and_the_old_spelling_still_works_with_a_warning"):
        assert f"`{test}`" in page, test


# --- 10. the sandbox extra, for how rbacbridge was installed ---------------------------------------------------

_WITHOUT_MOTO = ("import sys; sys.modules['moto'] = sys.modules['moto.server'] = None\n"
                 "{prefix}from rbacbridge.cli import main; sys.argv = ['rbacbridge', 'demo']; main()\n")


def _demo_without_moto(tmp_path, prefix: str = ""):
    return subprocess.run([sys.executable, "-c", _WITHOUT_MOTO.format(prefix=prefix)], capture_output=True, text=True,
                          env=_env(), cwd=tmp_path, timeout=60, stdin=subprocess.DEVNULL)


def test_missing_sandbox_extra_names_the_command_for_this_installation(tmp_path):
    pip = one_error_line(_demo_without_moto(tmp_path), "the sandbox needs moto (the [sandbox] extra)")
    assert f"pip: {sys.executable} -m pip install " in pip and "'moto[server]!=5.2.6,>=5.1'" in pip
    assert "rbacbridge[sandbox]" not in pip  # not on PyPI: that name would fetch someone else's package

    pipx_venv = tmp_path / "venvs" / "rbacbridge"
    pipx_venv.mkdir(parents=True)
    (pipx_venv / "pipx_metadata.json").write_text("{}")
    pipx = one_error_line(_demo_without_moto(tmp_path, f"sys.prefix = {str(pipx_venv)!r}\n"), "pipx inject")
    assert re.search(r"pipx: pipx inject (--pip-args='-c \S+/requirements.lock' )?rbacbridge 'moto\[server\]!=5.2.6,>=5.1'$", pipx), pipx
    assert sorted(files(tmp_path)) == ["venvs/rbacbridge/pipx_metadata.json"]


class _Dist:
    def __init__(self, files: dict[str, str]):
        self.files = files
        self.requires = ['typer>=0.12', 'moto[server]!=5.2.6,>=5.1; extra == "sandbox"', 'pytest>=8; extra == "test"']

    def read_text(self, name):
        return self.files.get(name)


@pytest.mark.parametrize("layout,installer,expected", [
    ("pipx_metadata.json", "pip", "pipx inject --pip-args='-c {src}/requirements.lock' env 'moto[server]!=5.2.6,>=5.1'"),
    ("uv-receipt.toml", "uv", "uv tool install --force -c {src}/requirements.lock --with 'moto[server]!=5.2.6,>=5.1' {src}"),
    (None, "uv", "uv pip install --python /env/bin/python -c {src}/requirements.lock 'moto[server]!=5.2.6,>=5.1'"),
    (None, "pip", "/env/bin/python -m pip install -c {src}/requirements.lock 'moto[server]!=5.2.6,>=5.1'"),
])
def test_install_command_per_installer(tmp_path, layout, installer, expected):
    from rbacbridge.installation import add_command, detect, extra_requirements

    env, src = tmp_path / "env", tmp_path / "src"
    env.mkdir()
    src.mkdir()
    (src / "requirements.lock").write_text("moto==5.2.5\n")
    if layout:
        (env / layout).write_text("")
    dist = _Dist({"INSTALLER": installer + "\n", "direct_url.json": json.dumps({"url": src.as_uri(), "dir_info": {}})})
    install = detect(prefix=env, python="/env/bin/python", dist=dist)
    assert add_command(extra_requirements("sandbox", dist), install) == expected.format(src=src)
