"""How a value from rbacbridge.yaml or a flag is read before a validator looks at it.

`Text` is a scalar of the file as written (with what YAML 1.1 would have made of it, whether it was
quoted and its line); `_text`, `_whole`, `_number` and `_as_list` turn a value into text, a whole number,
a number or a list, refusing what YAML would silently read as something else. `_fail` builds the one-line
error, quoting a flag's value but never a file's (the file may hold secrets: only its line is named).
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Any

from rbacbridge.errors import UsageError, shown

_WHOLE = re.compile(r"0|[1-9][0-9]*")  # decimal, no sign, no leading zero (YAML 1.1 reads 017 as octal)
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")


class Text(str):
    """A scalar of rbacbridge.yaml as written, plus what YAML 1.1 would have read it as
    (`yaml_type`: str, int, float, bool, null, timestamp), whether it was quoted and its line."""

    yaml_type = "str"
    quoted = True
    line = 0


# True while a config file's text is read and checked: its values are never quoted back in an error line
# (`-c .env` must not print `AWS_ACCESS_KEY_ID=AKIA...`); the setting and the line say where to look.
_READING_FILE: ContextVar[bool] = ContextVar("rbacbridge_reading_config_file", default=False)
_SETTING_NAME = re.compile(r"[a-z][a-z0-9_]{0,40}(\[[0-9]{1,4}\])?(\.[a-z][a-z0-9_]{0,40}(\[[0-9]{1,4}\])?){0,3}")


def _quote(value: Any) -> str:
    """How an error line names a bad value: quoted (shortened) when it came from a flag; from a config file
    only its line, never the value."""
    line = getattr(value, "line", 0) if isinstance(value, Text) else 0
    if line:
        return f"(line {line})"
    if isinstance(value, Text) or _READING_FILE.get():
        return "(in the config file)"
    return shown(value)


def _key(text: Any) -> str:
    """A key of the config file, quoted only when it looks like a setting's name (a typo worth showing)."""
    return shown(str(text)) if _SETTING_NAME.fullmatch(str(text)) else "(a key that is no setting name, not shown)"


def _piece(whole: Any, part: str) -> Any:
    """A part of a file's scalar (a bucket of `bucket/prefix/*`, an item of `a, b`), keeping its line."""
    if not isinstance(whole, Text):
        return part
    text = Text(part)
    text.line = whole.line
    return text


def _fail(key: str, value: Any, why: str) -> UsageError:
    return UsageError(f"invalid {key} {_quote(value)}: {why}")


def _text(key: str, value: Any) -> str:
    """The value as text; refuses what is not text, and unquoted YAML that YAML 1.1 reads as
    something else than it looks (yes/no/on/off, octal, 1_000, 1e3, .inf)."""
    if isinstance(value, Text):
        if not value.quoted and value.yaml_type == "bool":
            raise _fail(key, value, "YAML reads an unquoted true/false/yes/no/on/off as a boolean; quote it if you mean the text")
        if not value.quoted and value.yaml_type in ("int", "float") and not _DECIMAL.fullmatch(value):
            raise _fail(key, value, "YAML 1.1 reads this as a number in another form (octal, 1_000, 1e3); quote it")
        return str.__str__(value)
    if isinstance(value, bool):
        raise _fail(key, value, "expected text, not a boolean")
    if isinstance(value, (dict, list, tuple, set)):
        raise UsageError(f"invalid {key}: expected a single value, not {_kind(value)}")
    if not isinstance(value, (str, int, float)):
        raise _fail(key, type(value).__name__, "expected text")
    return str(value)


def _whole(key: str, value: Any, why: str) -> int:
    if isinstance(value, bool) or (isinstance(value, Text) and value.yaml_type == "bool" and not value.quoted):
        raise _fail(key, value, why)
    if isinstance(value, int):
        return value
    if isinstance(value, (str, float)) and _WHOLE.fullmatch(str(value)):
        return int(str(value))
    raise _fail(key, value, why)


def _number(key: str, value: Any, why: str) -> float:
    if isinstance(value, bool) or (isinstance(value, Text) and value.yaml_type == "bool" and not value.quoted):
        raise _fail(key, value, why)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        return float(str(value))
    raise _fail(key, value, why)


def _as_list(key: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        text = _text(key, value)
        return [_piece(value, v) for v in re.split(r"[,\s]+", text) if v]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise _fail(key, type(value).__name__, "expected a list")


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, Text) and value.yaml_type == "null" and not value.quoted)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Text) or _READING_FILE.get():
        return f"a single value {_quote(value)}"
    return f"the value {shown(value)}"
