"""The documentation site's generated parts (docs/hooks/reference.py) and its shape, without building it
(.ci/run runs `mkdocs build --strict`, which also fails on a broken link or a page missing from the nav):
every command and every flag reach the CLI reference, every setting reaches the configuration reference,
every command has its page ending in its generated options, and the README stays short."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import typer
import yaml

from rbacbridge import config
from rbacbridge.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", DOCS / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOK = _hook()


def _commands(command, ctx, words=()):
    """(words, command, context) for every command and group under the app."""
    for name in command.list_commands(ctx):
        child = command.get_command(ctx, name)
        child_ctx = child.context_class(child, info_name=name, parent=ctx)
        yield (*words, name), child, child_ctx
        if hasattr(child, "list_commands"):
            yield from _commands(child, child_ctx, (*words, name))


ROOT = typer.main.get_command(app)
ROOT_CTX = ROOT.context_class(ROOT, info_name="rbacbridge")
COMMANDS = list(_commands(ROOT, ROOT_CTX))


def test_the_cli_reference_has_every_command_and_every_flag():
    reference = HOOK.cli_reference()
    assert len(COMMANDS) >= 15, [w for w, _, _ in COMMANDS]
    for words, command, ctx in COMMANDS:
        assert f"`rbacbridge {' '.join(words)}` {{ #cli-{'-'.join(words)} }}" in reference, words
        for param in command.get_params(ctx):
            for flag in [*param.opts, *param.secondary_opts]:
                if flag.startswith("-"):
                    assert re.search(rf"`[^`]*{re.escape(flag)}\b[^`]*`", reference), (words, flag)
    for flag in ("--version", "--debug"):
        assert flag in reference


def test_the_configuration_reference_has_every_setting_and_tenant_key():
    table = HOOK.config_table()
    for option in config.SCHEMA:
        assert f"| `{option.path}` |" in table, option.path
    for path, _, _ in config.TENANT_REFERENCE:
        assert f"| `{path}` |" in table, path


def test_markers_expand_and_an_unknown_one_is_refused():
    page = "intro\n\n<!-- generated: cli tenant add -->\n\n<!-- generated: config-schema -->\n"
    expanded = HOOK.expand(page)
    assert "`--existing-role ARN`" in expanded and '"$schema"' in expanded and "<!--" not in expanded
    with pytest.raises(KeyError):
        HOOK.expand("<!-- generated: cli no-such-command -->\n")
    with pytest.raises(KeyError):
        HOOK.expand("<!-- generated: something-else -->\n")


def test_every_command_has_its_page_in_the_nav():
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    for words, _, _ in COMMANDS:
        if len(words) != 1:
            continue  # subcommands live on their group's page
        page = DOCS / "commands" / f"{words[0]}.md"
        assert page.exists(), page
        assert f"<!-- generated: cli {words[0]} -->" in page.read_text(encoding="utf-8"), page
        assert f"commands/{words[0]}.md" in nav, words


def test_every_markdown_page_is_in_the_nav():
    config_text = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    nav = yaml.load(config_text, Loader=_IgnoreTags)["nav"]

    def pages(entries):
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            if isinstance(value, list):
                yield from pages(value)
            else:
                yield value

    listed = set(pages(nav))
    present = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "hooks" not in p.parts}
    assert present == listed


def test_the_readme_stays_short():
    assert (REPO / "README.md").stat().st_size <= 20_000


class _IgnoreTags(yaml.SafeLoader):
    """mkdocs.yml's `!!python/name:` tags, read as plain text."""


_IgnoreTags.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
