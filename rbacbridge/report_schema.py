"""The JSON Schema (draft 2020-12) of `rbacbridge verify -o json` (schema rbacbridge.verify/v7).

`docs/verify-schema.json` is a copy of it (a test keeps them equal). Data only."""

from __future__ import annotations

from rbacbridge.verify import CHECKS, EXPLAINERS, LAYERS, PROBE_FROM
from rbacbridge.verify.credential_source import SOURCES

SCHEMA = "rbacbridge.verify/v7"

_NULLABLE_STRING = {"type": ["string", "null"]}

_CELL_SCHEMA = {
    "type": "object",
    "required": ["check", "bucket", "target", "expected", "observed", "predicted", "match", "error", "detail", "blame",
                 "owners", "cross_tenant", "probed_from", "source", "settle"],
    "additionalProperties": False,
    "properties": {
        "check": {"enum": list(CHECKS)},
        "bucket": _NULLABLE_STRING,
        "target": _NULLABLE_STRING,
        "expected": {"type": ["string", "boolean", "null"]},
        "observed": {"type": ["string", "boolean", "null"]},
        "predicted": {"type": ["boolean", "null"]},
        "match": {"type": "boolean"},
        "error": _NULLABLE_STRING,
        "detail": {"type": "string"},
        "blame": {
            "oneOf": [
                {"type": "null"},
                {"type": "object", "required": ["layer", "message", "explained_by"], "additionalProperties": False,
                 "properties": {"layer": {"enum": list(LAYERS)}, "message": {"type": "string"},
                                "explained_by": {"enum": [*EXPLAINERS, None]}}},
            ]
        },
        "owners": {"type": "array", "items": {"type": "string"}},
        "cross_tenant": {"type": "boolean"},
        "probed_from": {"enum": list(PROBE_FROM)},
        "settle": {  # null: observed once (no settle window, or it agreed)
            "oneOf": [
                {"type": "null"},
                {"type": "object", "required": ["attempts", "settled", "after_seconds"], "additionalProperties": False,
                 "properties": {"attempts": {"type": "integer", "minimum": 1}, "settled": {"type": "boolean"},
                                "after_seconds": {"type": "number", "minimum": 0}}},
            ]
        },
        # identity cells: the path that served the credentials (kube2iam, web-identity, pod-identity, ...); else null
        "source": {"enum": [*SOURCES, None]},
    },
}

_PRINCIPAL_SCHEMA = {
    "type": "object",
    "required": ["name", "kind", "tenant", "namespace", "pod", "node", "managed", "probe_pod", "configured_annotation",
                 "live_annotation",
                 "expected_role", "expected_because", "observed_arn", "observed_role", "cells"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "kind": {"enum": ["host", "pod"]},
        "tenant": _NULLABLE_STRING,
        "namespace": _NULLABLE_STRING,
        "pod": _NULLABLE_STRING,
        "node": _NULLABLE_STRING,
        "managed": {"type": "boolean"},
        "probe_pod": {"type": "boolean"},
        "configured_annotation": _NULLABLE_STRING,
        "live_annotation": _NULLABLE_STRING,
        "expected_role": _NULLABLE_STRING,
        "expected_because": {"type": "string"},
        "observed_arn": _NULLABLE_STRING,
        "observed_role": _NULLABLE_STRING,
        "cells": {"type": "array", "items": _CELL_SCHEMA},
    },
}

_GAP_SCHEMA = {  # a tenant (null: the default role) with no evidence on a node, and why
    "type": "object",
    "required": ["tenant", "namespace", "node", "reason"],
    "additionalProperties": False,
    "properties": {"tenant": _NULLABLE_STRING, "namespace": {"type": "string"}, "node": _NULLABLE_STRING,
                   "reason": {"type": "string"}},
}

_COUNTS = {"type": "object", "required": ["cells", "matched", "mismatched"], "additionalProperties": False,
           "properties": {k: {"type": "integer", "minimum": 0} for k in ("cells", "matched", "mismatched")}}

JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA,
    "type": "object",
    "required": ["schema", "stage", "account", "region", "buckets", "roles", "ok", "exit_code", "summary", "unverified",
                 "accept_unverified", "drift", "tenants", "others", "findings", "settle", "notes", "baseline"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": SCHEMA},
        "stage": {"enum": ["before", "after"]},
        "account": {"type": "string", "pattern": "^[0-9]{12}$"},
        "region": {"type": "string"},
        "buckets": {"type": "array", "items": {"type": "string"}},
        "roles": {"type": "object", "additionalProperties": {"type": "string"},
                  "propertyNames": {"enum": ["default", "node"]}},
        "ok": {"type": "boolean"},
        "exit_code": {"enum": [0, 1, 3]},
        "summary": {"type": "object", "required": ["cells", "matched", "mismatched", "findings", "tenants_verified",
                                                   "tenants_unverified"], "additionalProperties": False,
                    "properties": {k: {"type": "integer", "minimum": 0} for k in (
                        "cells", "matched", "mismatched", "findings", "tenants_verified", "tenants_unverified")}},
        "unverified": {"type": "array", "items": _GAP_SCHEMA},
        "accept_unverified": {"type": "boolean"},
        "drift": {"type": "object", "required": ["checked", "steps", "differences"], "additionalProperties": False,
                  "properties": {"checked": {"type": "boolean"}, "steps": {"type": "integer", "minimum": 0},
                                 "differences": {"type": "integer", "minimum": 0}}},
        "tenants": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "namespaces", "role", "role_arn", "managed", "read", "write", "ok", "verified",
                             "unverified", "summary", "principals"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "namespaces": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "role": {"type": "string"},
                    "role_arn": {"type": "string"},
                    "managed": {"type": "boolean"},
                    "read": {"type": "array", "items": {"type": "string"}},
                    "write": {"type": "array", "items": {"type": "string"}},
                    "ok": {"type": "boolean"},
                    "verified": {"type": "boolean"},
                    "unverified": {"type": "array", "items": _GAP_SCHEMA},
                    "summary": _COUNTS,
                    "principals": {"type": "array", "items": _PRINCIPAL_SCHEMA},
                },
            },
        },
        "others": {"type": "array", "items": _PRINCIPAL_SCHEMA},
        "findings": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["kind", "subject", "message", "reason", "layer", "node"],
                "additionalProperties": False,
                "properties": {
                    "kind": {"enum": ["drift", "hostNetwork", "outsiderNamespace"]},
                    "subject": {"type": "string"},
                    "message": {"type": "string"},
                    "reason": {"type": "string"},
                    "layer": {"enum": list(LAYERS)},
                    "node": _NULLABLE_STRING,
                },
            },
        },
        "settle": {"type": "object", "required": ["source", "seconds", "until", "changed_at", "retried", "settled"],
                   "additionalProperties": False,
                   "properties": {"source": {"enum": ["record", "--settle", "none"]},
                                  "seconds": {"type": "number", "minimum": 0},
                                  "until": _NULLABLE_STRING, "changed_at": _NULLABLE_STRING,
                                  "retried": {"type": "integer", "minimum": 0},
                                  "settled": {"type": "integer", "minimum": 0}}},
        "notes": {"type": "array", "items": {"type": "string"}},
        # verify --baseline FILE: how the cells compare with that earlier report (null: no baseline given)
        "baseline": {"oneOf": [{"type": "null"}, {
            "type": "object", "additionalProperties": False,
            "required": ["compared", "changed", "gained", "lost", "source_changed", "new", "missing"],
            "properties": {k: {"type": "integer", "minimum": 0} for k in (
                "compared", "changed", "gained", "lost", "source_changed", "new", "missing")}}]},
    },
}
