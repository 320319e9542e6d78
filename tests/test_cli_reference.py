"""The whole command-line surface against a golden file: every command's `--help` (100 columns) and
its parameters (name, flags, type, default, metavar, help), in order. Users' scripts and CI jobs
depend on these spellings; a refactoring must leave them as they are.

It fails on any change to a command, a flag, its spelling, help, default or place in `--help` (and on
a typer upgrade that renders help differently): when the change is meant, look at the diff and write
the file again with

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

def described(param):
    """One line: what a user can type and what it means when not typed."""
    # typer >= 0.28 keeps the Python type in type_descriptor; earlier ones a click type in `type`
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None) or param.type
    kind = str(annotation).removeprefix("<class '").removesuffix("'>")
    marks = [name for name in ("required", "is_flag", "multiple", "is_eager", "hidden") if getattr(param, name, False)]
    callback = getattr(param.callback, "__name__", None)
    return (f"  {param.name}: {' '.join(param.opts + param.secondary_opts)} {kind} default={param.default!r} "
            f"metavar={param.metavar!r} show_default={getattr(param, 'show_default', None)!r} envvar={param.envvar!r}"
            + "".join(f" {m}" for m in marks) + (f" callback={callback}" if callback else "")
            + f"\n    help={getattr(param, 'help', None)!r}")


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
