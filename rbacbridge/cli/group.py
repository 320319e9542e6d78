"""The typer group class every group of the CLI uses (`rbacbridge`, `rbacbridge iptables`, `rbacbridge tenant`):
it keeps `--help` from importing pydantic (docs/startup.md; bench/bench_startup.py measures it), and turns a
Ctrl-C inside a command into `Interrupted` (one line, exit 130: rbacbridge.cli.entry)."""

from __future__ import annotations

import typer.core

from rbacbridge.errors import Interrupted


class Group(typer.core.TyperGroup):
    """typer >= 0.28 coerces every option value through a pydantic TypeAdapter, built on first use:
    a group's own flags left unset (value None) made `rbacbridge SUB --help` import pydantic and
    build one (~2.5x the start-up of `import typer, rich`). An unset flag of a group is False, which
    needs no coercion (bench/bench_startup.py measures it; docs/startup.md)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.default is None:
                param.default = False
            _plain_strings(param)
            _completes(param)
        return params

    def invoke(self, ctx):
        """Ctrl-C in a command is `Interrupted`: one line and exit 130, whatever typer does with a KeyboardInterrupt."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        help_option = command.get_help_option(ctx) if command is not None else None
        for param in [*getattr(command, "params", ()), *([help_option] if help_option else [])]:
            _plain_strings(param)
            _completes(param)
        return command


def _completes(param) -> None:
    """A choice option (metavar `[a|b|c]`) completes its values in the shell; `--only` its parts, comma by comma."""
    if getattr(param, "_custom_shell_complete", False) is not None:
        return
    from rbacbridge.cli import completion

    if "--only" in getattr(param, "opts", ()):
        param._custom_shell_complete = completion.complete_parts
    elif completion.choices_of(param):
        param._custom_shell_complete = completion.complete_choices(completion.choices_of(param))


def _plain_strings(param) -> None:
    """typer >= 0.28 coerces every option's value through a pydantic TypeAdapter it builds on first use,
    for unset options too: importing pydantic and building the adapters costs ~50 ms of every command
    (bench/bench_aws_setup.py --floor). Here an unset option stays unset without an adapter, and a `str` /
    `list[str]` option takes the strings click parsed as they are (what the adapter returns: a list for
    `list[str]`); anything else goes through typer's own coercion, built when first needed. A typer
    without this internal (`_runtime_param`) is left alone."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or getattr(param, "_runtime_param", False) is not None:
        return
    try:
        from typer._coercion import RuntimeParam, build_runtime_param
    except ImportError:
        return
    annotation = descriptor.annotation

    class Lazy(RuntimeParam):
        def _coerce_value(self, value, param, ctx):
            if annotation is str and isinstance(value, str):
                return value
            if annotation == list[str] and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return list(value)
            return build_runtime_param(descriptor)._coerce_value(value, param=param, ctx=ctx)

    param._runtime_param = Lazy(parameter_info=descriptor.parameter_info, annotation=annotation)
