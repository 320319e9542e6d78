"""Templates are data: Jinja2 files shipped as the package `rbacbridge.templates`.

The JSON policy documents use a small part of Jinja2's syntax ({{ name }}, {{ name | tojson }},
{% if name %}...{% endif %}, {# comments #}); render_json reads those itself (importing and compiling
Jinja2 costs ~20 ms, a third of what `setup --only aws` spends above a bare boto3 script making the
same calls). Any template using more than that goes through Jinja2, and tests/test_templating.py checks
both give the same documents."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any


def template_dir() -> Path:
    """`templates/` of the source tree, or the installed package `rbacbridge.templates`."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "templates" / "node-policy.json.j2").is_file():
        return root / "templates"
    from importlib.resources import files

    return Path(str(files("rbacbridge.templates")))


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_text(name: str, **context: Any) -> str:
    return _environment().get_template(name).render(**context)


# The subset: every tag in the template must be one of these, else Jinja2 renders it.
_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_VARIABLE = re.compile(r"\{\{\s*(\w+)\s*(\|\s*tojson\s*)?\}\}")
_IF = re.compile(r"\{%\s*if\s+(\w+)\s*%\}")
_ENDIF = re.compile(r"\{%\s*endif\s*%\}")
_COMMENT = re.compile(r"\{#.*?#\}", re.S)
_IF_BLOCK = re.compile(r"\{%\s*if\s+(\w+)\s*%\}((?:(?!\{%).)*?)\{%\s*endif\s*%\}", re.S)


class _Missing(KeyError):
    pass


@lru_cache(maxsize=None)
def _simple_source(name: str) -> str | None:
    """The template's text when it uses only the subset (and no nested ifs), else None."""
    text = (template_dir() / name).read_text()
    for tag in _TAG.findall(text):
        if not (_VARIABLE.fullmatch(tag) or _IF.fullmatch(tag) or _ENDIF.fullmatch(tag) or _COMMENT.fullmatch(tag)):
            return None
    if len(_IF.findall(text)) != len(_IF_BLOCK.findall(_COMMENT.sub("", text))):
        return None  # nested or unbalanced blocks: Jinja2's business
    return text


def _lookup(context: dict[str, Any], name: str) -> Any:
    if name not in context:
        raise _Missing(name)
    return context[name]


def _render_simple(text: str, context: dict[str, Any]) -> str:
    text = _COMMENT.sub("", text)
    text = _IF_BLOCK.sub(lambda m: m.group(2) if _lookup(context, m.group(1)) else "", text)

    def variable(m: re.Match) -> str:
        value = _lookup(context, m.group(1))
        return json.dumps(value, sort_keys=True) if m.group(2) else str(value)

    return _VARIABLE.sub(variable, text)


def render_json(name: str, **context: Any) -> Any:
    text = _simple_source(name)
    if text is not None:
        try:
            return json.loads(_render_simple(text, context))
        except _Missing:
            pass  # Jinja2 says what is undefined, in its own words
    return json.loads(render_text(name, **context))
