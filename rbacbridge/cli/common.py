"""What the commands share once they run: the planner Context with progress on stderr, the rule for
asking before a change, and structured output (json, yaml) on stdout."""

from __future__ import annotations

import sys

import typer

from rbacbridge.errors import UsageError


def dump(fmt: str, data) -> None:
    """Structured output on stdout: json or yaml."""
    from rbacbridge import output as out
    from rbacbridge.cli.options import flush_said

    flush_said()

    if fmt == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True))
    else:
        out.dump_json(data)


class CliReporter:
    """Progress to stderr, so stdout stays clean for `-o json` and pipes."""

    def __init__(self, output: str):
        self._err = None
        self.output = output

    @property
    def err(self):
        """rich's console, made when there is something to say (`-o json` with nothing to report never loads rich)."""
        if self._err is None:
            from rbacbridge.cli.options import flush_said
            from rbacbridge.output import console

            flush_said()

            self._err = console(stderr=True)
        return self._err

    def progress(self, message: str) -> None:
        self.err.print(f"[dim]...[/dim] {message}")

    def note(self, message: str) -> None:
        self.err.print(f"[dim]note:[/dim] {message}")

    def step_started(self, step) -> None:
        pass

    def step_done(self, step) -> None:
        from rbacbridge.output import step_line

        self.err.print(step_line(step, done=True))

    def show_plan(self, plan, title: str) -> None:
        from rbacbridge.output import print_plan

        print_plan(plan, title, to_stderr=True)


def run_context(cfg, only, output, force=False, adopt=False):
    """The planner's Context for a command: its Config, the parts `--only` names, progress on stderr."""
    from rbacbridge.planner import Context, parse_parts

    parts = parse_parts(only)
    return Context(config=cfg, parts=parts, force=force, adopt=adopt, reporter=CliReporter(output))


def approve(changes: int, yes: bool, command: str) -> None:
    """Like terraform and eksctl: ask on a terminal; without one, refuse unless --yes was given."""
    if yes or not changes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{changes} change(s) planned and no terminal to confirm them: "
                         f"run `rbacbridge {command}` again with --yes to apply this plan (nothing changed)")
    if not typer.confirm(f"Apply these {changes} changes?", default=False, err=True):
        raise UsageError("not confirmed: nothing changed")
