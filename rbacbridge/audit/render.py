"""Rendering only: the audit result as a table (rbacbridge.output.width: 80 columns in a pipe), JSON (schema rbacbridge.audit/v1) or JUnit."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from rbacbridge.audit import SCHEMA_ID, exit_code

SCHEMA_ID_WHO_CAN = "rbacbridge.audit/v2"  # the v1 report plus who_can and its finding kinds (audit --who-can)
from rbacbridge.audit.findings import KINDS, SEVERITIES, AuditResult

FORMATS = ("table", "json", "junit", "sarif")
SCHEMA_FILE = Path(__file__).with_name("schema.json")
MOST_WIDTH = 120  # the table fills the line: past 120 columns its rows get hard to read


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def to_dict(result: AuditResult, fail_on: str) -> dict[str, Any]:
    code = exit_code(result, fail_on)
    summary = {s: sum(1 for f in result.findings if f.severity == s) for s in reversed(SEVERITIES)}
    return {
        "schema": SCHEMA_ID if result.who_can is None else SCHEMA_ID_WHO_CAN,
        "ok": code == 0,
        "exit_code": code,
        "fail_on": fail_on,
        "complete": result.complete,
        "parts": list(result.parts),
        "summary": summary,
        "findings": [f.to_dict() for f in result.sorted_findings()],
        "checked": list(result.checked),
        "notes": list(result.notes),
        "errors": list(result.errors),
        "counts": dict(result.counts),
        **({"who_can": result.who_can.to_dict()} if result.who_can is not None else {}),
    }


def to_json(result: AuditResult, fail_on: str) -> str:
    return json.dumps(to_dict(result, fail_on), indent=2) + "\n"


def to_junit(result: AuditResult, fail_on: str) -> str:
    """One <testcase> per finding kind: failure when a finding of it reaches --fail-on, skipped when
    the kind was not checked; plus `audit-complete`, an error when a part could not be read."""
    cases = []
    for kind in KINDS:
        found = [f for f in result.sorted_findings() if f.kind == kind.id]
        cases.append((kind, found))
    failures = sum(1 for _, found in cases if any(f.reaches(fail_on) for f in found))
    suites = ET.Element("testsuites", name="rbacbridge audit", tests=str(len(cases) + 1), failures=str(failures),
                        errors=str(0 if result.complete else 1))
    suite = ET.SubElement(suites, "testsuite", name="rbacbridge.audit", tests=str(len(cases) + 1), failures=str(failures),
                          errors=str(0 if result.complete else 1),
                          skipped=str(sum(1 for k, _ in cases if k.id not in result.checked)))
    for kind, found in cases:
        case = ET.SubElement(suite, "testcase", classname=f"rbacbridge.audit.{kind.part}", name=kind.id)
        text = "\n".join(f"[{f.severity}] {f.message}\n  objects: {', '.join(f.objects)}\n  seen: {f.evidence}\n  fix: {f.fix}"
                         for f in found)
        failing = [f for f in found if f.reaches(fail_on)]
        if failing:
            failure = ET.SubElement(case, "failure", type=failing[0].severity,
                                    message=f"{len(failing)} finding(s) at or above {fail_on}: {failing[0].message}")
            failure.text = text
        elif kind.id not in result.checked:
            ET.SubElement(case, "skipped", message="not checked (part not selected or not readable)")
        else:
            ET.SubElement(case, "system-out").text = text or "no finding"
    case = ET.SubElement(suite, "testcase", classname="rbacbridge.audit", name="audit-complete")
    if not result.complete:
        ET.SubElement(case, "error", type="incomplete", message="; ".join(result.errors)[:500]).text = "\n".join(result.errors)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _objects(objects: list[str], limit: int = 6) -> str:
    shown = ", ".join(objects[:limit])
    return shown + (f" (+{len(objects) - limit} more, see -o json)" if len(objects) > limit else "")


_STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}


def print_table(result: AuditResult, fail_on: str, stream=None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from rbacbridge.output import console

    out = console(file=stream or sys.stdout, most=MOST_WIDTH)  # COLUMNS, else the terminal, else 80
    findings = result.sorted_findings()
    if findings:
        table = Table(title="rbacbridge audit", title_justify="left", show_lines=True, expand=True)
        table.add_column("sev", no_wrap=True, width=6)
        table.add_column("finding, objects, what was seen, fix", overflow="fold", ratio=1)
        for f in findings:
            style = _STYLE[f.severity]
            body = (f"[bold]{escape(f.kind)}[/bold]: {escape(f.message)}\n"
                    f"[dim]objects:[/dim] {escape(_objects(f.objects))}\n"
                    f"[dim]seen:[/dim] {escape(f.evidence)}\n"
                    f"[dim]fix:[/dim] {escape(f.fix)}")
            table.add_row(f"[{style}]{f.severity}[/{style}]", body)
        out.print(table)
    else:
        out.print("rbacbridge audit: no findings")
    if result.who_can is not None:
        from rbacbridge.audit.who_can.render import print_who_can

        print_who_can(result.who_can, out)
    for note in result.notes:
        out.print(f"[dim]note:[/dim] {escape(note)}", overflow="fold")
    for error in result.errors:
        out.print(f"[red]not read:[/red] {escape(error)}", overflow="fold")
    counts = {s: sum(1 for f in findings if f.severity == s) for s in reversed(SEVERITIES)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"
    code = exit_code(result, fail_on)
    verdict = {0: "pass", 1: f"FAIL (a finding reaches {fail_on})", 3: "INCOMPLETE (no verdict)"}[code]
    out.print(f"{len(findings)} finding(s): {summary}; --fail-on {fail_on}: {verdict}", overflow="fold")
