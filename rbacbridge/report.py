"""Rendering of a VerifyResult: rich table, JSON (schema rbacbridge.verify/v1), JUnit XML. No work here."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from rbacbridge.verify import IDENTITY, Cell, VerifyResult

SCHEMA = "rbacbridge.verify/v1"
FORMATS = ("table", "json", "junit")


def _value(cell: Cell, which: Any) -> str:
    if cell.check == IDENTITY:
        return which or "none"
    return {True: "allowed", False: "denied", None: "?"}[which]


def cell_name(cell: Cell) -> str:
    return f"{cell.principal} {cell.check}" + (f" {cell.bucket}" if cell.bucket else "")


def to_dict(result: VerifyResult) -> dict[str, Any]:
    """The stable JSON document (see docs/verify.md, "JSON output", for the schema)."""

    def cell(c: Cell) -> dict[str, Any]:
        return {
            "check": c.check,
            "bucket": c.bucket,
            "expected": c.expected,
            "observed": c.observed,
            "match": c.match,
            "error": c.error,
            "detail": c.detail,
            "blame": {"layer": c.blame.layer, "message": c.blame.message} if c.blame else None,
        }

    cells = result.all_cells
    return {
        "schema": SCHEMA,
        "stage": result.stage,
        "account": result.account,
        "region": result.region,
        "buckets": list(result.buckets),
        "ok": result.ok,
        "summary": {"cells": len(cells), "matched": sum(c.match for c in cells), "mismatched": len(result.mismatches)},
        "principals": [
            {
                "name": p.principal.name,
                "kind": p.principal.kind,
                "namespace": p.principal.namespace,
                "pod": p.principal.pod,
                "node": p.principal.node,
                "expected_role": p.expected.role,
                "expected_because": p.expected.why,
                "observed_arn": p.observed.arn,
                "observed_role": p.observed.role,
                "cells": [cell(p.identity)] + [cell(c) for c in p.cells],
            }
            for p in result.principals
        ],
        "notes": list(result.notes),
    }


def to_json(result: VerifyResult) -> str:
    return json.dumps(to_dict(result), indent=2) + "\n"


def to_junit(result: VerifyResult) -> str:
    """One <testcase> per cell (identity + read/write per bucket); failures carry the blame."""
    cells = result.all_cells
    suites = ET.Element("testsuites", name="rbacbridge verify", tests=str(len(cells)), failures=str(len(result.mismatches)), errors="0")
    for p in result.principals:
        own = [p.identity, *p.cells]
        suite = ET.SubElement(suites, "testsuite", name=f"rbacbridge.verify.{result.stage}.{p.principal.name}",
                              tests=str(len(own)), failures=str(sum(not c.match for c in own)), errors="0", skipped="0")
        for c in own:
            case = ET.SubElement(suite, "testcase", classname=f"rbacbridge.verify.{p.principal.name}", name=cell_name(c))
            if not c.match:
                layer = c.blame.layer if c.blame else "unknown"
                message = f"expected {_value(c, c.expected)}, observed {_value(c, c.observed)}: [{layer}] " + (c.blame.message if c.blame else "")
                failure = ET.SubElement(case, "failure", message=message, type=layer)
                failure.text = c.detail
            else:
                ET.SubElement(case, "system-out").text = c.detail
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def table(result: VerifyResult):
    from rich.table import Table

    t = Table(title=f"rbacbridge verify ({result.stage} kube2iam) — account {result.account}", title_justify="left", show_lines=True)
    t.add_column("principal", no_wrap=True)
    t.add_column("role", overflow="fold", min_width=14)
    for bucket in result.buckets:
        t.add_column(f"{bucket}\nread", justify="center", overflow="fold")
        t.add_column(f"{bucket}\nwrite", justify="center", overflow="fold")
    for p in result.principals:
        ident = p.identity
        got = p.observed.role or f"none ({ident.error})"
        want = p.expected.role or "none (refused)"
        row = [p.principal.name, f"[green]✓[/green] {got}" if ident.match else f"[red]✗[/red] {got}\n[dim]want {want}[/dim]"]
        by_key = {(c.bucket, c.check): c for c in p.cells}
        for bucket in result.buckets:
            for op in ("read", "write"):
                c = by_key.get((bucket, op))
                if c is None:
                    row.append("")
                    continue
                want, seen = _short(c.expected), _short(c.observed)
                row.append(f"[green]✓[/green] {seen}" if c.match else f"[red]✗[/red] {seen}\n[dim]want {want}[/dim]")
        t.add_row(*row)
    return t


def _short(value: Any) -> str:
    return {True: "yes", False: "no", None: "?"}[value]


def print_table(result: VerifyResult) -> None:
    from rbacbridge.output import console

    out = console()
    out.print(table(result))
    for p in result.principals:
        out.print(f"{p.principal.name} got: {p.observed.arn or 'no credentials (' + (p.identity.detail or '') + ')'}")
    for c in result.mismatches:
        layer = c.blame.layer if c.blame else "unknown"
        out.print(f"[red]✗[/red] {cell_name(c)}: [bold]{layer}[/bold] — {c.blame.message if c.blame else c.detail}")
    for note in result.notes:
        out.print(f"[dim]note:[/dim] {note}")
    cells = result.all_cells
    verdict = "[green]all match[/green]" if result.ok else f"[red]{len(result.mismatches)} mismatch(es)[/red]"
    out.print(f"{len(cells)} checks, {verdict}")


_CELL_SCHEMA = {
    "type": "object",
    "required": ["check", "bucket", "expected", "observed", "match", "error", "detail", "blame"],
    "additionalProperties": False,
    "properties": {
        "check": {"enum": ["identity", "read", "write"]},
        "bucket": {"type": ["string", "null"]},
        "expected": {"type": ["string", "boolean", "null"]},
        "observed": {"type": ["string", "boolean", "null"]},
        "match": {"type": "boolean"},
        "error": {"type": ["string", "null"]},
        "detail": {"type": "string"},
        "blame": {
            "oneOf": [
                {"type": "null"},
                {"type": "object", "required": ["layer", "message"], "additionalProperties": False,
                 "properties": {"layer": {"enum": ["interception", "kube2iam", "trust", "permissions", "network", "bucket", "probe"]},
                                "message": {"type": "string"}}},
            ]
        },
    },
}

# JSON Schema (draft 2020-12) of `rbacbridge verify -o json`; docs/verify.md ("JSON output") explains each field.
JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "rbacbridge.verify/v1",
    "type": "object",
    "required": ["schema", "stage", "account", "region", "buckets", "ok", "summary", "principals", "notes"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": SCHEMA},
        "stage": {"enum": ["before", "after"]},
        "account": {"type": "string", "pattern": "^[0-9]{12}$"},
        "region": {"type": "string"},
        "buckets": {"type": "array", "items": {"type": "string"}},
        "ok": {"type": "boolean"},
        "summary": {"type": "object", "required": ["cells", "matched", "mismatched"], "additionalProperties": False,
                    "properties": {k: {"type": "integer", "minimum": 0} for k in ("cells", "matched", "mismatched")}},
        "principals": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "kind", "namespace", "pod", "node", "expected_role", "expected_because",
                             "observed_arn", "observed_role", "cells"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "kind": {"enum": ["host", "pod"]},
                    "namespace": {"type": ["string", "null"]},
                    "pod": {"type": ["string", "null"]},
                    "node": {"type": ["string", "null"]},
                    "expected_role": {"type": ["string", "null"]},
                    "expected_because": {"type": "string"},
                    "observed_arn": {"type": ["string", "null"]},
                    "observed_role": {"type": ["string", "null"]},
                    "cells": {"type": "array", "items": _CELL_SCHEMA},
                },
            },
        },
        "notes": {"type": "array", "items": {"type": "string"}},
    },
}
