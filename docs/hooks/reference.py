"""MkDocs hook (mkdocs.yml `hooks:`): the parts of the site generated from the code at build time, so they
never drift from it. A page asks for one with a marker line, replaced before the page is rendered:

    <!-- generated: cli -->                 every command, its usage, arguments and options (the typer app)
    <!-- generated: cli plan -->            one command (or group: `cli tenant`, `cli iptables fix`)
    <!-- generated: config-table -->        every setting of rbacbridge.yaml with its default (the option table)
    <!-- generated: config-schema -->       the JSON Schema of rbacbridge.yaml (`rbacbridge config-schema`)

Only public names are used: `rbacbridge.cli.app`, `rbacbridge.config.SCHEMA` / `TENANT_REFERENCE`,
`rbacbridge.config_schema.schema_json`. An unknown marker or command fails the build. Table rows also lose
GitHub's `\\|` escapes inside code spans (`table_pipes`).
"""

from __future__ import annotations

import json
import re
from typing import Any

MARKER = re.compile(r"^<!-- generated: ([a-z-]+)((?: [a-z-]+)*) -->$", re.M)


def escape(text: str) -> str:
    """Help text as Markdown: code spans kept, the rest escaped (`*`, `_`, `<`, `|` are literal in help)."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(p if p.startswith("`") else re.sub(r"([\\*_<>|\[\]])", r"\\\1", p) for p in parts)


def cell(text: str) -> str:
    return escape(" ".join(text.split()))


def _root():
    import typer

    from rbacbridge.cli import app

    command = typer.main.get_command(app)
    return command, command.context_class(command, info_name="rbacbridge", **(command.context_settings or {}))


def _is_group(command) -> bool:
    return hasattr(command, "list_commands")


def _children(command, ctx):
    for name in command.list_commands(ctx):
        child = command.get_command(ctx, name)
        if child is not None and not getattr(child, "hidden", False):
            yield child, child.context_class(child, info_name=name, parent=ctx)


def _find(words: list[str]):
    command, ctx = _root()
    for word in words:
        found = dict((c.name, (c, x)) for c, x in _children(command, ctx)) if _is_group(command) else {}
        if word not in found:
            raise KeyError(f"no command `rbacbridge {' '.join(words)}`")
        command, ctx = found[word]
    return command, ctx


def _row(param, ctx) -> str | None:
    """A parameter as `--help` shows it (click's own help record: names, metavar, help, default)."""
    record = param.get_help_record(ctx)
    if record is None:
        return None
    names, text = record
    return f"| `{names}` | {cell(text)} |"


def command_markdown(words: list[str], level: int = 2, recurse: bool = True) -> str:
    """One command (and, for a group, its subcommands) as Markdown: usage, help, arguments, options."""
    command, ctx = _find(words)
    title = " ".join(["rbacbridge", *words])
    lines = [f"{'#' * level} `{title}` {{ #{'-'.join(['cli', *words]) if words else 'cli-rbacbridge'} }}", ""]
    usage = command.get_usage(ctx).removeprefix("Usage: ").strip()
    lines += ["```text", usage, "```", ""]
    if command.help:
        lines += [escape(command.help.strip()), ""]
    params = command.get_params(ctx)
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name == "option" and not getattr(p, "hidden", False)]
    for kind, group in (("argument", arguments), ("option", options)):
        rows = [row for row in (_row(p, ctx) for p in group) if row]
        if rows:
            lines += [f"| {kind} | meaning |", "|---|---|", *rows, ""]
    epilog = getattr(command, "epilog", None)
    if epilog:
        lines += epilog_markdown(epilog)
    if _is_group(command) and recurse:
        children = list(_children(command, ctx))
        if children:
            lines += ["| command | what |", "|---|---|"]
            for child, _ in children:
                anchor = "-".join(["cli", *words, child.name])
                lines.append(f"| [`{child.name}`](#{anchor}) | {cell((child.get_short_help_str(limit=200)))} |")
            lines.append("")
            for child, _ in children:
                lines.append(command_markdown([*words, child.name], level + 1 if words else level, recurse))
    return "\n".join(lines)


def epilog_markdown(epilog: str) -> list[str]:
    """A command's epilog: its text paragraphs escaped; a paragraph click keeps as written (`\\b`, the
    examples of rbacbridge/cli/examples.py) as its heading line, then a code block."""
    lines: list[str] = []
    for paragraph in epilog.strip().split("\n\n"):
        if paragraph.startswith("\b\n"):
            heading, *body = paragraph[2:].split("\n")
            lines += [escape(heading), "", "```text", *(line.strip() for line in body), "```", ""]
        else:
            lines += [escape(paragraph.strip()), ""]
    return lines


def cli_reference() -> str:
    return command_markdown([], level=2)


def _default(value: Any) -> str:
    if value in ((), None):
        return "—"
    if isinstance(value, tuple) and value and isinstance(value[0], dict):  # tolerations, as YAML flow style
        return f"`{json.dumps(list(value)).replace(chr(34), '')}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


_LEGACY = " (legacy: only in a file without `tenants:`, [tenants](../guide/tenants.md))"


def config_table() -> str:
    """The settings of rbacbridge.yaml by section, then the tenant keys: what `rbacbridge config-reference`
    prints, from the same option table."""
    from rbacbridge.config import LEGACY_KEYS, SCHEMA, TENANT_REFERENCE

    sections: dict[str, list] = {}
    for option in SCHEMA:
        sections.setdefault(option.path.rpartition(".")[0] or "top level", []).append(option)
    lines: list[str] = []
    for section, options in sections.items():
        lines += [f"### `{section}`" if section != "top level" else "### Top level", "",
                  "| setting | default | meaning |", "|---|---|---|"]
        lines += [f"| `{o.path}` | {_default(o.default)} | {cell(o.help)}{_LEGACY if o.path in LEGACY_KEYS else ''} |"
                  for o in options]
        lines.append("")
    lines += ["### `tenants`", "", "| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{path}` | {cell(default)} | {cell(text)} |" for path, default, text in TENANT_REFERENCE]
    return "\n".join(lines) + "\n"


def config_schema() -> str:
    from rbacbridge.config_schema import schema_json

    return "```json\n" + schema_json() + "```\n"


def generate(name: str, args: list[str]) -> str:
    if name == "cli":
        return command_markdown(args, level=2 if not args else 3) if args else cli_reference()
    if name == "config-table" and not args:
        return config_table()
    if name == "config-schema" and not args:
        return config_schema()
    raise KeyError(f"unknown generated block {name!r} {' '.join(args)}".strip())


def expand(markdown: str) -> str:
    return MARKER.sub(lambda m: generate(m.group(1), m.group(2).split()), markdown)


def table_pipes(markdown: str) -> str:
    """The pages are read on GitHub too, which needs `a\\|b` for a pipe in a code span in a table row;
    Python-Markdown keeps such a pipe in the code span by itself and would show the backslash."""
    return "\n".join(re.sub(r"`[^`]*`", lambda m: m.group(0).replace("\\|", "|"), line) if line.startswith("|") else line
                     for line in markdown.split("\n"))


def on_page_markdown(markdown: str, page, config, files) -> str:
    try:
        return table_pipes(expand(markdown))
    except KeyError as exc:
        from mkdocs.exceptions import PluginError

        raise PluginError(f"{page.file.src_path}: {exc.args[0]}") from None
