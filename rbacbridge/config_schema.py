"""The JSON Schema (draft 2020-12) of rbacbridge.yaml, built from what the loader validates with: the option
table `rbacbridge.config.SCHEMA` (path, default, validator, help) and the tenant keys. `rbacbridge
config-schema` prints it; docs/config-schema.json is a copy (a test keeps the two equal), which
examples/rbacbridge.yaml's `yaml-language-server` modeline points editors at.

The schema checks shape: which keys exist (unknown ones are refused, as the loader refuses them), each
value's type, choices, ranges and default, with the setting's help as its description. The loader keeps the
last word (IAM name rules, names that must differ, ...): a file the schema accepts may still be refused, but
a file the schema refuses is always refused by the loader (tests/test_config_schema.py).

Values are described as a YAML parser returns them. The loader reads YAML 1.1 strictly and takes an unquoted
decimal number where a name belongs (`namespace: 2024` is the text "2024"), so name settings accept numbers;
true/false settings accept YAML 1.1's yes/no/on/off, which a YAML 1.2 editor reads as text.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import rbacbridge.config as config

DRAFT = "https://json-schema.org/draft/2020-12/schema"

_NAME = {"type": ["string", "number"]}  # names and free text: the loader takes an unquoted number as its text
_TEXT = {"type": "string"}  # text that is never a number (a region, a URL, an ARN, an IP address)
_WHOLE = r"^(0|[1-9][0-9]*)$"  # a whole number written as text ("8282"), which the loader accepts
_DECIMAL = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$"
_YAML11_BOOLEANS = [w for word in ("yes", "no", "on", "off") for w in (word, word.capitalize(), word.upper())]


def _whole(minimum: int, maximum: int) -> dict[str, Any]:
    return {"type": ["integer", "string"], "minimum": minimum, "maximum": maximum, "pattern": _WHOLE}


def _list_of(item: dict[str, Any], number_alone: bool = False) -> dict[str, Any]:
    """A list; the loader also takes one text of items separated by commas or spaces (`hosts: a, b`)."""
    return {"type": ["array", "string", *(["number"] if number_alone else [])], "items": item}


_PORT = _whole(1, 65535)
_TOLERATION = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "key": _NAME,
        "operator": {"enum": ["Exists", "Equal"]},
        "value": _NAME,
        "effect": {"enum": ["", "NoSchedule", "PreferNoSchedule", "NoExecute"]},
        "tolerationSeconds": {"type": ["integer", "string"], "pattern": _WHOLE},
    },
    "allOf": [
        {"if": {"required": ["operator"], "properties": {"operator": {"const": "Exists"}}},
         "then": {"not": {"required": ["value"]}}},
        {"if": {"not": {"required": ["key"]}},
         "then": {"required": ["operator"], "properties": {"operator": {"const": "Exists"}}}},
    ],
}

# Each validator of the option table (a public function of rbacbridge.config, by name) and the shape of the
# values it can accept. A validator missing here fails tests/test_config_schema.py, never silently.
SHAPES: dict[str, dict[str, Any]] = {
    "account_id": {"type": ["string", "integer"], "pattern": r"^([0-9]{12})?$",
                   "minimum": 100000000000, "maximum": 999999999999},
    "region": {**_TEXT, "pattern": r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]{1,2}$"},
    "optional_text": _NAME,
    "endpoint_url": {**_TEXT, "pattern": r"^(https?://.+)?$"},
    "policy_name": {**_NAME, "minLength": 1, "maxLength": 128},
    "role_name": {**_NAME, "minLength": 1, "maxLength": 64},
    "profile_name": {**_NAME, "minLength": 1, "maxLength": 128},
    "policy_arns": _list_of({**_TEXT, "pattern": r"^arn:aws[a-z-]*:iam::(aws|[0-9]{12}):policy/"}),
    "bucket_name": {**_NAME, "minLength": 3, "maxLength": 63},
    "instance_ids": _list_of({**_TEXT, "pattern": r"^i-([0-9a-f]{8}|[0-9a-f]{17})$"}),
    "k8s_name": {**_NAME, "maxLength": 63},
    "optional_k8s_name": {**_NAME, "maxLength": 63},
    "image": {**_NAME, "maxLength": 255},
    "optional_image": {**_NAME, "maxLength": 255},
    "seconds": {"type": ["number", "string"], "exclusiveMinimum": 0, "maximum": 86400, "pattern": _DECIMAL},
    "label_selector": {**_NAME, "maxLength": 1024},
    "port": _PORT,
    "ports": _list_of(_PORT, number_alone=True),
    "interface": {**_NAME, "maxLength": 16},
    "default_role": {"anyOf": [{"enum": list(config.DEFAULT_ROLE_MODES)},
                               {**_NAME, "minLength": 1, "maxLength": 64, "description": "a role name"}]},
    "boolean": {"type": ["boolean", "string"], "enum": [True, False, "true", "false", *_YAML11_BOOLEANS]},
    "tolerations": {"type": "array", "items": _TOLERATION},
    "node_addresses": _list_of(_NAME, number_alone=True),
    "ssh_user": {**_TEXT, "pattern": r"^([a-z_][a-z0-9_-]{0,31})?$"},
    "ipv4": {**_TEXT, "pattern": r"^([0-9]{1,3}(\.[0-9]{1,3}){3})?$"},
    "parallelism": _whole(1, 256),
    "node_via": {"enum": list(config.NODE_VIA)},
    "install_id": {**_NAME, "maxLength": 64},
    "kms_key": _TEXT,
}

_TENANT_SHAPES: dict[str, dict[str, Any]] = {
    "name": {**_NAME, "maxLength": 63},
    "namespaces": {"type": ["array", "string", "number"], "items": {**_NAME, "maxLength": 63},
                   "minItems": 1, "uniqueItems": True},
    "role": {"anyOf": [
        {**_NAME, "minLength": 1, "maxLength": 64, "description": "a role rbacbridge creates and owns"},
        {"type": "object", "additionalProperties": False, "required": ["existing"],
         "properties": {"existing": {**_TEXT, "pattern": r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/"}},
         "description": "a role rbacbridge only links and never changes"},
    ]},
    "policy": {"type": ["string", "number", "null"], "minLength": 1, "maxLength": 128},
    "read": {"type": ["array", "string", "number", "null"], "items": _NAME, "uniqueItems": True},
    "write": {"type": ["array", "string", "number", "null"], "items": _NAME, "uniqueItems": True},
    "workloads": {"type": ["array", "string", "number", "null"], "items": {**_NAME, "maxLength": 63}, "uniqueItems": True},
}


def _validator_names() -> dict[Callable, str]:
    return {value: name for name, value in vars(config).items() if callable(value) and not name.startswith("_")}


def _plain(value: Any) -> Any:
    """A default as JSON: tuples as lists, 300.0 as 300."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _with_null(shape: dict[str, Any]) -> dict[str, Any]:
    """An empty value (`profile:`) means the default for settings whose default is none or an empty list."""
    if "anyOf" in shape or "enum" in shape:
        return {"anyOf": [shape, {"type": "null"}]}
    types = shape["type"] if isinstance(shape["type"], list) else [shape["type"]]
    return {**shape, "type": [*types, "null"]}


def option_schema(option: config.Option) -> dict[str, Any]:
    """One setting: the shape its validator accepts, its help, its default."""
    name = _validator_names().get(option.check)
    if name not in SHAPES:
        raise KeyError(f"{option.path}: validator {name or option.check!r} has no JSON Schema shape in rbacbridge.config_schema.SHAPES")
    shape = dict(SHAPES[name])
    if option.default in (None, ()):
        shape = _with_null(shape)
    description = option.help
    if option.path in config.LEGACY_KEYS:
        description += ". Legacy: only in a file without tenants:"
    shape["description"] = description
    if option.default is not None:
        shape["default"] = _plain(option.default)
    return shape


def _tenant_schema() -> dict[str, Any]:
    helps = {path.removeprefix("tenants[]."): text for path, _, text in config.TENANT_REFERENCE}
    missing = set(config.TENANT_KEYS) - set(_TENANT_SHAPES)
    if missing:
        raise KeyError(f"tenant keys without a JSON Schema shape: {', '.join(sorted(missing))}")
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "namespaces", "role"],
        "properties": {key: {**_TENANT_SHAPES[key], "description": helps.get(key, "")} for key in config.TENANT_KEYS},
    }


def _ref(path: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{path}"}


def config_schema() -> dict[str, Any]:
    """The JSON Schema of rbacbridge.yaml."""
    definitions = {option.path: option_schema(option) for option in config.SCHEMA}
    properties: dict[str, Any] = {}
    for option in config.SCHEMA:
        section, _, key = option.path.rpartition(".")
        if not section:
            properties[key] = _ref(option.path)
            continue
        group = properties.setdefault(section, {"type": ["object", "null"], "additionalProperties": False, "properties": {}})
        group["properties"][key] = _ref(option.path)
    tenants_help = next(text for path, _, text in config.TENANT_REFERENCE if path == "tenants")
    properties["tenants"] = {"type": "array", "items": _tenant_schema(),
                             "description": tenants_help + " ([] for no tenant; an empty tenants: is refused)"}
    legacy: dict[str, Any] = {}
    for path in config.LEGACY_KEYS:
        section, _, key = path.rpartition(".")
        legacy.setdefault(section, {"properties": {}})["properties"][key] = False
        legacy[path] = False
    return {
        "$schema": DRAFT,
        "title": "rbacbridge.yaml",
        "description": ("rbacbridge's configuration file. Every setting is optional; the defaults are the kube2iam "
                        "article's values, and flags override the file. Generated by `rbacbridge config-schema`."),
        "type": ["object", "null"],
        "additionalProperties": False,
        "properties": properties,
        # the loader also takes a setting by its dotted path at the top (`kube2iam.port: 8282`)
        "patternProperties": {"^" + option.path.replace(".", r"\.") + "$": _ref(option.path)
                              for option in config.SCHEMA if "." in option.path},
        # tenants: and the legacy keys of the article's single tenant exclude each other
        "dependentSchemas": {"tenants": {"properties": legacy}},
        "$defs": definitions,
    }


def schema_json() -> str:
    """What `rbacbridge config-schema` prints (and docs/config-schema.json holds)."""
    return json.dumps(config_schema(), indent=2) + "\n"
