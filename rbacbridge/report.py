"""Rendering of a VerifyResult: table (fits 80 columns), JSON (schema rbacbridge.verify/v7), JUnit XML,
GitHub Actions annotations and job summary. No work here.

The JSON Schema is `JSON_SCHEMA` (rbacbridge/report_schema.py); `docs/verify-schema.json` is a copy of it
(a test keeps them equal).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from typing import Any

from rbacbridge.report_schema import JSON_SCHEMA, SCHEMA  # noqa: F401 - the schema lives there (data only)
from rbacbridge.verify import ANNOTATION, CHAIN, IDENTITY, Cell, Finding, PrincipalResult, Unverified, VerifyResult
FORMATS = ("table", "json", "junit")
OK_GLYPH, BAD_GLYPH = "✓", "✗"


def _value(cell: Cell, which: Any) -> str:
    if cell.check == IDENTITY:
        return which or "none"
    return {True: "allowed", False: "denied", None: "?"}[which]


def cell_name(cell: Cell) -> str:
    if cell.check in (CHAIN, ANNOTATION):
        return f"{cell.principal} {cell.check} {cell.target}"
    return f"{cell.principal} {cell.check}" + (f" {cell.bucket}" if cell.bucket else "")


def finding_name(finding: Finding) -> str:
    return f"{finding.kind} {finding.subject}"


def _layer(cell: Cell) -> str:
    return cell.blame.layer if cell.blame else "unknown"


def failure_text(cell: Cell) -> str:
    """One line: expected vs observed, the layer, why."""
    if cell.check == CHAIN:
        return f"[{_layer(cell)}] " + (cell.blame.message if cell.blame else cell.detail)
    return (f"expected {_value(cell, cell.expected)}, observed {_value(cell, cell.observed)}: [{_layer(cell)}] "
            + (cell.blame.message if cell.blame else cell.detail))


def cell_notes(cell: Cell) -> list[str]:
    """What the settle window did with a cell, and who explained its blame (JUnit, the table's failures)."""
    notes = []
    if cell.settle and cell.settle.settled:
        notes.append(f"settled after {cell.settle.after_seconds:g} s ({cell.settle.attempts} observations): "
                     "IAM propagation right after a change")
    elif cell.settle:
        notes.append(f"still disagreed after {cell.settle.after_seconds:g} s ({cell.settle.attempts} observations) "
                     "when the settle window ended")
    if cell.blame and cell.blame.explained_by:
        notes.append(f"explained by {cell.blame.explained_by}")
    return notes


def finding_text(finding: Finding) -> str:
    return f"[{finding.layer}] {finding.message}" + (f" ({finding.reason})" if finding.reason else "")


def gap_name(gap: Unverified) -> str:
    return f"{gap.subject} not verified" + (f" on node {gap.node}" if gap.node else "")


def gap_text(gap: Unverified) -> str:
    return f"{gap_name(gap)}: {gap.reason}"


def principal_label(principal: Any) -> str:
    """What the table shows under a principal's name: its tenant, and whether it is a probe pod verify started."""
    parts = [f"tenant {principal.tenant}"] if principal.tenant else []
    return ", ".join(parts + (["probe pod"] if principal.probe_pod else []))


# --- JSON ------------------------------------------------------------------------------------------

def to_dict(result: VerifyResult) -> dict[str, Any]:
    """The stable JSON document (JSON_SCHEMA below; docs/verify-schema.json): cells per principal, principals
    grouped by tenant (`tenants`), the host node(s) and the default-role pod under `others`."""

    def cell(c: Cell) -> dict[str, Any]:
        return {
            "check": c.check,
            "bucket": c.bucket,
            "target": c.target,
            "expected": c.expected,
            "observed": c.observed,
            "predicted": c.predicted,
            "match": c.match,
            "error": c.error,
            "detail": c.detail,
            "blame": {"layer": c.blame.layer, "message": c.blame.message, "explained_by": c.blame.explained_by}
            if c.blame else None,
            "owners": list(c.owners),
            "cross_tenant": c.cross_tenant,
            "probed_from": c.probed_from,
            "source": c.source,
            "settle": {"attempts": c.settle.attempts, "settled": c.settle.settled,
                       "after_seconds": c.settle.after_seconds} if c.settle else None,
        }

    def principal(p: PrincipalResult) -> dict[str, Any]:
        return {
            "name": p.principal.name,
            "kind": p.principal.kind,
            "tenant": p.principal.tenant,
            "namespace": p.principal.namespace,
            "pod": p.principal.pod,
            "node": p.principal.node,
            "managed": p.principal.managed,
            "probe_pod": p.principal.probe_pod,
            "configured_annotation": p.principal.role_annotation,
            "live_annotation": p.principal.live_annotation if p.principal.annotation_seen else None,
            "expected_role": p.expected.role,
            "expected_because": p.expected.why,
            "observed_arn": p.observed.arn,
            "observed_role": p.observed.role,
            "cells": [cell(p.identity)] + [cell(c) for c in p.cells],
        }

    def summary(cells: list[Cell]) -> dict[str, int]:
        return {"cells": len(cells), "matched": sum(c.match for c in cells), "mismatched": sum(not c.match for c in cells)}

    unverified = result.unverified_tenants

    def tenant(t: Any) -> dict[str, Any]:
        from rbacbridge.config.partitions import partition_for

        members = [p for p in result.principals if p.principal.tenant == t.name]
        cells = [c for p in members for c in [p.identity, *p.cells]]
        verified = t.name not in unverified
        return {"name": t.name, "namespaces": list(t.namespaces), "role": t.role, "role_arn": t.role_arn(result.account, partition_for(result.region).name),
                "managed": t.managed, "read": list(t.read), "write": list(t.write),
                "ok": verified and bool(cells) and all(c.match for c in cells), "verified": verified,
                "unverified": [gap(u) for u in result.unverified if u.tenant == t.name],
                "summary": summary(cells), "principals": [principal(p) for p in members]}

    def gap(u: Unverified) -> dict[str, Any]:
        return {"tenant": u.tenant, "namespace": u.namespace, "node": u.node, "reason": u.reason}

    cells = result.all_cells
    drift = [f for f in result.findings if f.kind == "drift"]
    named = [t.name for t in result.tenants]
    return {
        "schema": SCHEMA,
        "stage": result.stage,
        "account": result.account,
        "region": result.region,
        "buckets": list(result.buckets),
        "roles": {k: result.roles[k] for k in ("default", "node") if k in result.roles},
        "ok": result.ok,
        "exit_code": result.exit_code,
        "summary": {**summary(cells), "findings": len(result.findings),
                    "tenants_verified": sum(n not in unverified for n in named),
                    "tenants_unverified": sum(n in unverified for n in named)},
        "unverified": [gap(u) for u in result.unverified],
        "accept_unverified": result.accept_unverified,
        "drift": {"checked": result.drift_checked, "steps": result.drift_steps, "differences": len(drift)},
        "tenants": [tenant(t) for t in result.tenants],
        "others": [principal(p) for p in result.principals if p.principal.tenant is None],
        "findings": [{"kind": f.kind, "subject": f.subject, "message": f.message, "reason": f.reason,
                      "layer": f.layer, "node": f.node} for f in result.findings],
        "settle": settle_dict(result),
        "notes": list(result.notes),
        "baseline": dict(result.baseline) if result.baseline is not None else None,
    }


def settle_dict(result: VerifyResult) -> dict[str, Any]:
    """The settle window verify ran in (verify.settle) and what it did: cells retried, settled."""
    window = result.settle
    retried = [c for c in result.all_cells if c.settle]
    return {"source": window.source if window else "none", "seconds": window.seconds if window else 0,
            "until": window.until.strftime("%Y-%m-%dT%H:%M:%SZ") if window and window.until else None,
            "changed_at": window.changed_at.strftime("%Y-%m-%dT%H:%M:%SZ") if window and window.changed_at else None,
            "retried": len(retried), "settled": sum(c.settle.settled for c in retried)}


def principals_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every principal of a v3 document, flat (the tenants' and the others)."""
    return [p for t in document["tenants"] for p in t["principals"]] + list(document["others"])


def to_json(result: VerifyResult) -> str:
    return json.dumps(to_dict(result), indent=2) + "\n"


# --- JUnit -----------------------------------------------------------------------------------------

def to_junit(result: VerifyResult) -> str:
    """One <testcase> per cell (identity, read/write per bucket, chain per role), one per finding, and one
    for the drift check itself (skipped with --no-drift-check); failures carry the layer."""
    cells = result.all_cells
    drift = [f for f in result.findings if f.kind == "drift"]
    others = [f for f in result.findings if f.kind != "drift"]
    drift_cases = max(1, len(drift))
    gaps = result.unverified
    tests = len(cells) + drift_cases + len(others) + len(gaps)
    failures = len(result.mismatches) + len(result.findings)
    errors = 0 if result.accept_unverified else len(gaps)
    suites = ET.Element("testsuites", name="rbacbridge verify", tests=str(tests), failures=str(failures), errors=str(errors))
    for p in result.principals:
        own = [p.identity, *p.cells]
        suite = ET.SubElement(suites, "testsuite", name=f"rbacbridge.verify.{result.stage}.{p.principal.name}",
                              tests=str(len(own)), failures=str(sum(not c.match for c in own)), errors="0", skipped="0")
        if p.principal.probe_pod:  # a short-lived pod verify started for a tenant with no running pod there
            ET.SubElement(ET.SubElement(suite, "properties"), "property", name="probe_pod", value="true")
        for c in own:
            case = ET.SubElement(suite, "testcase", classname=f"rbacbridge.verify.{p.principal.name}", name=cell_name(c))
            if not c.match:
                failure = ET.SubElement(case, "failure", message=failure_text(c), type=_layer(c))
                failure.text = c.detail + "".join(f"\n{n}" for n in cell_notes(c))
            else:
                ET.SubElement(case, "system-out").text = c.detail + "".join(f"\n{n}" for n in cell_notes(c))
    suite = ET.SubElement(suites, "testsuite", name=f"rbacbridge.verify.{result.stage}.drift", tests=str(drift_cases),
                          failures=str(len(drift)), errors="0", skipped="0" if result.drift_checked else "1")
    if drift:
        for f in drift:
            case = ET.SubElement(suite, "testcase", classname="rbacbridge.verify.drift", name=finding_name(f))
            ET.SubElement(case, "failure", message=finding_text(f), type=f.layer).text = f.reason
    else:
        case = ET.SubElement(suite, "testcase", classname="rbacbridge.verify.drift", name="drift check")
        if result.drift_checked:
            ET.SubElement(case, "system-out").text = f"{result.drift_steps} planned steps compared: no drift"
        else:
            ET.SubElement(case, "skipped", message="--no-drift-check")
    if others:
        suite = ET.SubElement(suites, "testsuite", name=f"rbacbridge.verify.{result.stage}.findings", tests=str(len(others)),
                              failures=str(len(others)), errors="0", skipped="0")
        for f in others:
            case = ET.SubElement(suite, "testcase", classname=f"rbacbridge.verify.{f.kind}", name=finding_name(f))
            ET.SubElement(case, "failure", message=finding_text(f), type=f.layer).text = f.reason
    if gaps:  # no evidence: an error (could not run), or skipped with --allow-unverified
        suite = ET.SubElement(suites, "testsuite", name=f"rbacbridge.verify.{result.stage}.unverified", tests=str(len(gaps)),
                              failures="0", errors=str(errors), skipped=str(len(gaps) - errors))
        for gap in gaps:
            case = ET.SubElement(suite, "testcase", classname="rbacbridge.verify.unverified", name=gap_name(gap))
            if result.accept_unverified:
                ET.SubElement(case, "skipped", message=f"{gap_text(gap)} (--allow-unverified)")
            else:
                ET.SubElement(case, "error", message=gap_text(gap), type="not-verified").text = gap.reason
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


# --- table -----------------------------------------------------------------------------------------

def console():
    """stdout, as wide as rbacbridge.output.width says (COLUMNS, else the terminal, else 80): the matrix fits 80 columns."""
    from rbacbridge.output import console as make

    return make()


def _short(value: Any) -> str:
    return {True: "yes", False: "no", None: "?"}[value]


def _mark(cell: Cell | None) -> str:
    if cell is None:
        return ""
    return f"[green]{OK_GLYPH}[/green] {_short(cell.observed)}" if cell.match else f"[red]{BAD_GLYPH}[/red] {_short(cell.observed)}"


def _labels(result: VerifyResult) -> dict[str, str]:
    """role name -> short label for the chain column (a tenant's name, or pod for the article's tenant;
    default, node; the node label wins a tie)."""
    out: dict[str, str] = {}
    for label in [k for k in result.roles if k not in ("default", "node")] + ["default", "node"]:
        if label in result.roles:
            out[result.roles[label]] = label
    return out


def table(result: VerifyResult):
    """One row per principal x location (read, write), the principal's chain cells beside them (one per
    role, short labels) and its annotation cells (ask: another tenant's role asked of kube2iam), a ✓/✗ for
    its identity, its tenant under its name. Full identities and failures are printed below."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    labels = _labels(result)
    side_checks = (CHAIN, ANNOTATION)
    has_side = any(c.check in side_checks for c in result.all_cells)
    asks = any(c.check == ANNOTATION for c in result.all_cells)
    t = Table(title=f"rbacbridge verify ({result.stage} kube2iam), account {result.account}", title_justify="left",
              box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    t.add_column("principal", overflow="fold", ratio=None)
    t.add_column("id", no_wrap=True)
    t.add_column("bucket", overflow="fold")
    t.add_column("read", no_wrap=True)
    t.add_column("write", no_wrap=True)
    if has_side:
        t.add_column("assume-role / ask" if asks else "assume-role", overflow="fold")
    for index, p in enumerate(result.principals):
        by_key = {(c.bucket, c.check): c for c in p.cells}
        side = [c for c in p.cells if c.check in side_checks]
        label = principal_label(p.principal)
        tenant = f"[dim]{escape(label)}[/dim]" if label else ""
        rows = max(len(result.buckets), len(side), 2 if tenant else 1)
        for i in range(rows):
            bucket = result.buckets[i] if i < len(result.buckets) else None
            row = [escape(p.principal.name) if i == 0 else tenant if i == 1 else "",
                   (f"[green]{OK_GLYPH}[/green]" if p.identity.match else f"[red]{BAD_GLYPH}[/red]") if i == 0 else "",
                   escape(bucket or ""), _mark(by_key.get((bucket, "read"))), _mark(by_key.get((bucket, "write")))]
            if has_side:
                cell = side[i] if i < len(side) else None
                label = escape(labels.get(cell.target, cell.target)) if cell else ""
                row.append("" if cell is None else f"{'ask ' if cell.check == ANNOTATION else ''}{label} {_mark(cell)}")
            t.add_row(*row, end_section=i == rows - 1 and index < len(result.principals) - 1)
    return t


def print_table(result: VerifyResult) -> None:
    from rich.markup import escape

    out = console()
    out.print(table(result))
    labels = _labels(result)
    if any(c.check == CHAIN for c in result.all_cells):
        out.print("assume-role: can the principal itself sts:AssumeRole into " +
                  ", ".join(f"{escape(label)} = {escape(role)}" for role, label in labels.items()) + "? (must be no)")
    if any(c.check == ANNOTATION for c in result.all_cells):
        out.print("ask: does kube2iam hand a tenant's pod another tenant's role if the pod asks for it (annotated "
                  "with it)? (must be no)")
    out.print("identities:")
    for p in result.principals:
        want = p.expected.role or "none (kube2iam must refuse)"
        got = p.observed.arn or "no credentials (" + (p.identity.detail or "") + ")"
        mark = f"[green]{OK_GLYPH}[/green]" if p.identity.match else f"[red]{BAD_GLYPH}[/red]"
        out.print(f"  {mark} {escape(p.principal.name)}: {escape(got)}" + ("" if p.identity.match else f" [dim](want {escape(want)})[/dim]"))
    for c in result.mismatches:
        extra = cell_notes(c)
        out.print(f"[red]{BAD_GLYPH}[/red] {escape(cell_name(c))}: [bold]{_layer(c)}[/bold]: "
                  + escape(c.blame.message if c.blame else c.detail) + (f" [dim]({escape('; '.join(extra))})[/dim]" if extra else ""))
    if result.drift_checked:
        drift = [f for f in result.findings if f.kind == "drift"]
        out.print(f"drift check: {result.drift_steps} planned steps compared, "
                  + (f"[red]{len(drift)} differ[/red]" if drift else "[green]no drift[/green]"))
    else:
        out.print("drift check: [yellow]skipped[/yellow]")
    for f in result.findings:
        out.print(f"[red]{BAD_GLYPH}[/red] {escape(f.kind)} {escape(f.subject)}: [bold]{f.layer}[/bold]: {escape(f.message)}"
                  + (f" [dim]({escape(f.reason)})[/dim]" if f.reason else ""))
    for gap in result.unverified:
        mark = "[yellow]![/yellow]" if result.accept_unverified else f"[red]{BAD_GLYPH}[/red]"
        out.print(f"{mark} [bold]{escape(gap_name(gap))}[/bold]: {escape(gap.reason)}")
    for note in result.notes:
        out.print(f"[dim]note:[/dim] {escape(note)}")
    out.print(verdict(result))


def tenant_count(result: VerifyResult) -> str:
    """How many of the run's tenants were verified (evidence on every node), how many not; the default role too."""
    names, unverified = [t.name for t in result.tenants], result.unverified_tenants
    if not names and not unverified:
        return ""
    bad = sum(n in unverified for n in names)
    text = f"tenants: {len(names) - bad} verified, {bad} not verified"
    if None in unverified:
        text += "; default role not verified"
    if unverified and result.accept_unverified:
        text += " (accepted: --allow-unverified)"
    return text


def verdict(result: VerifyResult) -> str:
    cells = result.all_cells
    count = tenant_count(result)
    count = f"; {count}" if count else ""
    if result.ok:
        return f"{len(cells)} checks, all match" + count
    parts = []
    if result.mismatches:
        parts.append(f"{len(result.mismatches)} mismatch(es)")
    if result.findings:
        parts.append(f"{len(result.findings)} finding(s)")
    why = []
    if result.exit_code == 3:
        if result.mismatches:
            why.append("AWS unreachable")
        if result.unverified_tenants and not result.accept_unverified:
            why.append("not every tenant verified, --allow-unverified accepts that")
    tail = f" (could not verify: {'; '.join(why)})" if why else ""
    return f"{len(cells)} checks" + (", " + ", ".join(parts) if parts else "") + tail + count


# --- GitHub Actions --------------------------------------------------------------------------------

def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(result: VerifyResult) -> list[str]:
    """`::error` workflow commands, one per failed cell and per finding."""
    lines = [f"::error title={_escape_property('rbacbridge verify: ' + cell_name(c))}::{_escape_data(failure_text(c))}"
             for c in result.mismatches]
    lines += [f"::error title={_escape_property('rbacbridge verify: ' + finding_name(f))}::{_escape_data(finding_text(f))}"
              for f in result.findings]
    level = "warning" if result.accept_unverified else "error"
    lines += [f"::{level} title={_escape_property('rbacbridge verify: ' + gap_name(g))}::{_escape_data(g.reason)}"
              for g in result.unverified]
    return lines


def github_error(message: str, environ: dict[str, str] | None = None, stream=None) -> None:
    """One `::error` annotation for a run that could not verify (exit 3), in GitHub Actions only."""
    import sys

    env = os.environ if environ is None else environ
    if env.get("GITHUB_ACTIONS") == "true":
        (stream or sys.stderr).write(f"::error title=rbacbridge verify::{_escape_data(message)}\n")


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_cell(cell: Cell | None) -> str:
    if cell is None:
        return ""
    return f"{OK_GLYPH if cell.match else BAD_GLYPH} {_short(cell.observed)}"


def to_markdown(result: VerifyResult) -> str:
    """The matrix as GitHub-flavoured markdown (for $GITHUB_STEP_SUMMARY)."""
    labels = _labels(result)
    head = f"### rbacbridge verify ({result.stage} kube2iam): {verdict(result)}\n\n"
    lines = ["| principal | identity | bucket | read | write |", "|---|---|---|---|---|"]
    named = {t.name for t in result.tenants if not t.legacy}  # the article's one tenant goes unnamed
    chain_lines = ["| principal | assume-role into | observed | path |", "|---|---|---|---|"]
    for p in result.principals:
        by_key = {(c.bucket, c.check): c for c in p.cells}
        ident = f"{OK_GLYPH if p.identity.match else BAD_GLYPH} {p.observed.role or 'none'}" + \
            (f" (tenant {p.principal.tenant})" if p.principal.tenant in named else "") + \
            (" (probe pod)" if p.principal.probe_pod else "")
        for i, bucket in enumerate(result.buckets):
            lines.append(f"| {_md(p.principal.name) if i == 0 else ''} | {_md(ident) if i == 0 else ''} | {_md(bucket)} | "
                         f"{_md_cell(by_key.get((bucket, 'read')))} | {_md_cell(by_key.get((bucket, 'write')))} |")
        for c in (c for c in p.cells if c.check in (CHAIN, ANNOTATION)):
            how = "ask kube2iam: " if c.check == ANNOTATION else ""
            chain_lines.append(f"| {_md(p.principal.name)} | {how}{_md(labels.get(c.target, ''))} `{_md(c.target)}` | "
                               f"{_md_cell(c)} | {_md(c.detail)} |")
    body = "\n".join(lines) + "\n"
    if len(chain_lines) > 2:
        body += "\n" + "\n".join(chain_lines) + "\n"
    problems = [f"- **{_md(cell_name(c))}**: {_md(failure_text(c))}" for c in result.mismatches]
    problems += [f"- **{_md(finding_name(f))}**: {_md(finding_text(f))}" for f in result.findings]
    problems += [f"- **{_md(gap_name(g))}**: {_md(g.reason)}" for g in result.unverified]
    drift = ("drift check: skipped (--no-drift-check)" if not result.drift_checked else
             f"drift check: {result.drift_steps} planned steps compared, "
             f"{sum(f.kind == 'drift' for f in result.findings)} differ")
    return head + body + "\n" + drift + "\n" + ("\n" + "\n".join(problems) + "\n" if problems else "")


def github_output(result: VerifyResult, environ: dict[str, str] | None = None, stream=None) -> None:
    """In GitHub Actions (GITHUB_ACTIONS=true): annotations on stderr, the matrix appended to the job summary."""
    import sys

    env = os.environ if environ is None else environ
    if env.get("GITHUB_ACTIONS") != "true":
        return
    out = stream or sys.stderr
    for line in github_annotations(result):
        out.write(line + "\n")
    summary = env.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as fh:
                fh.write(to_markdown(result) + "\n")
        except OSError as exc:
            out.write(f"::warning title=rbacbridge verify::cannot write the job summary: {_escape_data(str(exc.strerror or exc))}\n")
