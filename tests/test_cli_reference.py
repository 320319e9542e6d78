"""The whole command-line surface against a golden file: every command's `--help` (100 columns) and
its click parameters (name, flags, type, metavar, default, help, ...), in order.

It fails on any change to a flag, its spelling, help, default or place in `--help`: when that change
is meant, look at the diff and write the file again with

    RBACBRIDGE_UPDATE_GOLDEN=1 python -m pytest tests/test_cli_reference.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden" / "cli-reference.txt"

# Run in a fresh process: the real app as `python -m rbacbridge` builds it, a fixed terminal width.
_SURFACE = r'''
import contextlib, io, sys
import typer.main
from rbacbridge.cli import app

def commands(command, path):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, path + [name])

def shown(field, value):
    if field == "type_descriptor":
        return f"annotation={value.annotation!r} file_annotation={value.file_annotation!r}"
    if callable(value):
        return value.__name__
    return repr(value)

def described(param):
    # every attribute click and typer keep, but typer's lazily built coercion (rbacbridge sets its own)
    return "\n".join(f"    {field}={shown(field, value)}" for field, value in sorted(vars(param).items())
                     if field != "_runtime_param")

root = typer.main.get_command(app)
for path, command in commands(root, []):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = app(args=[*path, "--help"], prog_name="rbacbridge", standalone_mode=False)
    print(f"=== rbacbridge {' '.join(path + ['--help'])} (exit {code})")
    print(out.getvalue().rstrip("\n"))
    print(f"--- parameters of rbacbridge {' '.join(path)}".rstrip())
    print(f"  no_args_is_help={getattr(command, 'no_args_is_help', None)!r} epilog={command.epilog!r}")
    for param in command.params:
        print(f"  - {param.name}")
        print(described(param))
'''


def surface() -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TERM", "NO_COLOR", "FORCE_COLOR")}
    env.update(COLUMNS="100", LINES="50", TERM="dumb")
    done = subprocess.run([sys.executable, "-c", _SURFACE], capture_output=True, text=True, env=env, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_command_help_and_parameter_is_as_recorded():
    text = surface()
    if os.environ.get("RBACBRIDGE_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "the CLI surface changed: diff it against tests/golden/cli-reference.txt"
