"""Templates are data: Jinja2 files shipped as the package `rbacbridge.templates`."""

from __future__ import annotations

import json
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


def render_json(name: str, **context: Any) -> Any:
    return json.loads(render_text(name, **context))
