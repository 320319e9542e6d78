"""Reading rbacbridge.yaml over the defaults: strict YAML (duplicate keys, YAML 1.1 surprises refused),
dotted sections flattened onto the option table, each value checked by its validator, then the whole.

Flags go over the result through `Config.with_overrides`; the AWS_* environment is read by `rbacbridge.aws`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rbacbridge.config.model import Config
from rbacbridge.config.schema import _BY_PATH, _SECTIONS, SCHEMA
from rbacbridge.config.tenancy import LEGACY_KEYS, tenants
from rbacbridge.config.values import _READING_FILE, Text, _is_null, _key, _kind
from rbacbridge.errors import UsageError


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path in _SECTIONS:
            if _is_null(value):
                continue
            if not isinstance(value, dict):
                children = ", ".join(o.path.rsplit(".", 1)[1] for o in SCHEMA if o.path.startswith(path + "."))
                raise UsageError(f"invalid {path}: expected a mapping of settings ({children}), "
                                 f"not {_kind(value)}")
            out.update(_flatten(value, path + "."))
        elif path in _BY_PATH or not isinstance(value, dict) or not value:
            out[path] = value
        else:
            out.update(_flatten(value, path + "."))
    return out


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int):
        super().__init__(key)
        self.key, self.line = key, line


def _strict_loader():
    """yaml.SafeLoader that keeps every scalar as the text written (a `Text` that remembers what
    YAML 1.1 would have made of it) and refuses duplicate keys."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    def scalar(loader, node):
        text = Text(node.value)
        text.line = node.start_mark.line + 1
        text.yaml_type = node.tag.rsplit(":", 1)[-1]
        text.quoted = node.style is not None
        return text

    for tag in ("str", "int", "float", "bool", "null", "timestamp"):
        Loader.add_constructor(f"tag:yaml.org,2002:{tag}", scalar)
    return Loader


def load(path: str | Path | None, source=None) -> Config:
    """Read rbacbridge.yaml (if given; "-": standard input) over the defaults. `source`: a
    `discovery.Source` already found (it names where the file came from in error lines)."""
    from rbacbridge.config.discovery import FLAG, Source, read_bytes

    if source is None:
        source = Source(None if path is None else str(path), FLAG)
    raw = read_bytes(source)
    if raw is None:
        config = Config()
        config.check_consistency()
        return config
    where = source.named()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"config {where} is not UTF-8 text (offset {exc.start})") from None
    return load_text(text, where)


def load_text(text: str, where: str) -> Config:
    """rbacbridge.yaml's text over the defaults; `where` names it in messages (already quoted). An error line
    names the setting and the line, never a value or a text from the file (it may not be a config at all)."""
    token = _READING_FILE.set(True)
    try:
        return _load_text(text, where)
    finally:
        _READING_FILE.reset(token)


def _yaml_problem(problem: str) -> str:
    """PyYAML's problem text without what it quotes from the file (a character, an alias name)."""
    return re.sub(r"'[^']*'|\"[^\"]*\"", "…", problem)


def _load_text(text: str, where: str) -> Config:
    import yaml

    try:
        data = yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise UsageError(f"config {where}: duplicate key {_key(exc.key)} at line {exc.line} (each setting once)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        raise UsageError(f"config {where} is not valid YAML{line}" + (f": {_yaml_problem(problem)}" if problem else "")) from None
    if _is_null(data):
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"config {where} must be a mapping of settings (`key: value` lines), not {_kind(data)}")
    declared = None
    if "tenants" in data:
        data = dict(data)
        declared = tenants(data.pop("tenants"))
    values: dict[str, Any] = {}
    for key, value in _flatten(data).items():
        option = _BY_PATH.get(key)
        if option is None:
            raise UsageError(f"unknown setting {_key(key)} in config {where} (see `rbacbridge config-reference`)")
        if _is_null(value):
            if option.default in (None, ()):
                continue
            raise UsageError(f"invalid {key}: empty (remove the line to use the default, {option.default})")
        values[option.field] = option.check(key, value)
    if declared is not None:
        legacy = [o.path for o in SCHEMA if o.path in LEGACY_KEYS and o.field in values]
        if legacy:
            raise UsageError(f"config {where} has tenants: and the legacy {', '.join(legacy)}: move "
                             f"{'them' if len(legacy) > 1 else 'it'} into a tenant (role, policy, write) and remove the legacy key")
        config = Config(**values, tenants=declared, explicit=frozenset(values) | {"tenants"})
    else:
        config = Config(**values, explicit=frozenset(values))
    config.check_consistency()
    return config
