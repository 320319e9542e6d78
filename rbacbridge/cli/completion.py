"""Shell completion: `--show-completion [SHELL]` and `--install-completion [SHELL]` for bash, zsh, fish and
PowerShell, and the values of choice options (`-o`, `--via`, `--only`, ...) completed like commands and flags.

typer's own two flags take no value and guess the shell from the parent processes, so `--show-completion zsh`
printed the bash script when run from bash. Here the shell named wins; without one it is detected, and a shell
that cannot be told is one line, exit 2. click's parser has no optional option values, so the leading
`--show-completion [SHELL]` is taken before the app parses the line (`early`); the declared options (in
rbacbridge.cli.app) document them in `--help` and take `--show-completion=zsh`.

A choice option completes from its metavar (`[table|json|yaml]`, the same list `--help` shows; Group sets it
up, rbacbridge.cli.group), `--only` from the planner's parts, one comma-separated item at a time.
"""

from __future__ import annotations

import os
import re

from rbacbridge.errors import UsageError, shown

PROG = "rbacbridge"
COMPLETE_VAR = "_RBACBRIDGE_COMPLETE"
SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")
FLAGS = ("--show-completion", "--install-completion")
_CHOICES = re.compile(r"^\[([a-z0-9-]+(?:\|[a-z0-9-]+)+)\]$")


def enable() -> None:
    """The shell asks for completions (the scripts set _RBACBRIDGE_COMPLETE): typer's per-shell classes
    answer, the ones its scripts expect."""
    if os.environ.get(COMPLETE_VAR):
        from typer.completion import completion_init

        completion_init()


def early(argv: list[str]) -> bool:
    """`rbacbridge --show-completion [SHELL]` / `--install-completion [SHELL]`: done here (True), else False."""
    if not argv:
        return False
    flag, _, value = argv[0].partition("=")
    if flag not in FLAGS:
        return False
    rest = ([value] if value else []) + argv[1:]
    if len(rest) > 1:
        raise UsageError(f"{flag} takes one SHELL at most ({', '.join(SHELLS[:4])}), not {shown(' '.join(rest))}")
    run(flag, rest[0] if rest else None)
    return True


def run(flag: str, shell: str | None) -> None:
    shell = _shell(flag, shell)
    if flag == "--show-completion":
        from typer.completion import get_completion_script

        print(get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell))
        return
    from typer.completion import install

    name, path = install(shell=shell, prog_name=PROG, complete_var=COMPLETE_VAR)
    print(f"{name} completion installed in {path}; it takes effect in a new shell")


def _shell(flag: str, shell: str | None) -> str:
    if shell is None:
        try:
            import shellingham

            shell = shellingham.detect_shell()[0]
        except Exception:  # noqa: BLE001 - shellingham.ShellDetectionFailure, or no process table to read
            raise UsageError(f"cannot tell which shell runs rbacbridge: name it ({flag} bash|zsh|fish|powershell)") from None
        if shell not in SHELLS:
            raise UsageError(f"no completion for the shell running rbacbridge ({shown(shell)}): "
                             f"name one ({flag} bash|zsh|fish|powershell)")
    if shell not in SHELLS:
        raise UsageError(f"invalid shell {shown(shell)} for {flag}: choose from {', '.join(SHELLS[:4])}")
    return shell


def show_callback(ctx, param, value):
    """`--show-completion=SHELL` (or anywhere typer's parser sees it with a value)."""
    if value is not None and not ctx.resilient_parsing:
        import typer

        run("--show-completion", value)
        raise typer.Exit(0)
    return value


def install_callback(ctx, param, value):
    if value is not None and not ctx.resilient_parsing:
        import typer

        run("--install-completion", value)
        raise typer.Exit(0)
    return value


def choices_of(param) -> tuple[str, ...]:
    """The values a `[a|b|c]` metavar lists (empty for any other)."""
    match = _CHOICES.match(getattr(param, "metavar", None) or "")
    return tuple(match.group(1).split("|")) if match else ()


def complete_choices(values: tuple[str, ...]):
    def complete(ctx, param, incomplete: str):
        from typer._click.shell_completion import CompletionItem

        return [CompletionItem(v) for v in values if v.startswith(incomplete)]

    return complete


def complete_parts(ctx, param, incomplete: str):
    """`--only aws,ku<TAB>` -> `aws,kube`: the parts not yet listed, after the ones typed."""
    from typer._click.shell_completion import CompletionItem

    from rbacbridge.planner import PARTS

    done, _, last = incomplete.rpartition(",")
    typed = [p for p in done.split(",") if p]
    prefix = f"{done}," if done else ""
    return [CompletionItem(prefix + p) for p in PARTS if p.startswith(last) and p not in typed]
