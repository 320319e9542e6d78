"""The audit as SARIF 2.1.0 (`-o sarif`), for GitHub code scanning and other SARIF consumers.

One rule per finding kind (ruleId = the kind's id, stable across releases), each with a
`security-severity` (GitHub's 0-10 scale: high 8.0, medium 5.5, low 3.0, info 0.0); one result per
finding with level error/warning/note, a `partialFingerprints` entry that stays the same across runs
while the finding is about the same thing (kind + its first object, and the rest only where two
findings of a run would otherwise share it), and logical locations for its objects (namespace, role,
subject, node). A cluster has no source file: with `-c` the results also point at the configuration
file (GitHub shows alerts on files), otherwise they carry logical locations only. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from rbacbridge import __version__
from rbacbridge.audit import SCHEMA_ID, exit_code
from rbacbridge.audit.findings import KINDS, AuditResult, Finding
from rbacbridge.audit.render import SCHEMA_ID_WHO_CAN

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
INFORMATION_URI = "https://github.com/rbacbridge/rbacbridge"
SECURITY_SEVERITY = {"high": "8.0", "medium": "5.5", "low": "3.0", "info": "0.0"}
LEVEL = {"high": "error", "medium": "warning", "low": "note", "info": "note"}
FINGERPRINT = "rbacbridgeFinding/v1"
_LOCATION_KINDS = {"Namespace": "namespace", "Role": "resource", "Node": "resource", "Pod": "resource",
                   "DaemonSet": "resource", "User": "member", "Group": "member", "ServiceAccount": "member"}


def _rule(kind) -> dict[str, Any]:
    text = kind.title[0].upper() + kind.title[1:]
    help_text = f"{text}. Fix: {kind.fix}" + (f" (kube2iam {kind.upstream})" if kind.upstream else "")
    return {"id": kind.id, "name": "".join(w.capitalize() for w in kind.id.split("-")),
            "shortDescription": {"text": text}, "fullDescription": {"text": help_text},
            "help": {"text": help_text, "markdown": f"**{text}**\n\nFix: {kind.fix}"},
            "helpUri": f"{INFORMATION_URI}/blob/main/docs/audit.md#{kind.id}",
            "defaultConfiguration": {"level": LEVEL[kind.severity]},
            "properties": {"security-severity": SECURITY_SEVERITY[kind.severity], "precision": "high",
                           "problem.severity": {"error": "error", "warning": "warning"}.get(LEVEL[kind.severity], "recommendation"),
                           "tags": ["security", f"rbacbridge/{kind.part}"]}}


def _logical(obj: str) -> dict[str, Any]:
    kind, _, name = obj.partition(" ")
    if not name:
        return {"name": obj, "fullyQualifiedName": obj, "kind": "resource"}
    return {"name": name, "fullyQualifiedName": obj, "kind": _LOCATION_KINDS.get(kind, "resource")}


def fingerprints(findings: list[Finding]) -> list[str]:
    """A stable identity per finding: sha256 of kind + first object; the other objects join in only to
    tell apart two findings of one run that would share it."""
    keys = [f"{f.kind}|{f.objects[0] if f.objects else ''}" for f in findings]
    shared = {k for k in keys if keys.count(k) > 1} if len(keys) < 5000 else _repeated(keys)
    out = []
    for finding, key in zip(findings, keys):
        if key in shared:
            key += "|" + "|".join(finding.objects[1:])
        out.append(hashlib.sha256(key.encode()).hexdigest())
    return out


def _repeated(keys: list[str]) -> set[str]:
    seen: set[str] = set()
    twice: set[str] = set()
    for key in keys:
        (twice if key in seen else seen).add(key)
    return twice


def _artifact(path: str) -> dict[str, str]:
    """A relative path stays relative to where rbacbridge ran (GitHub matches it to the repository); an
    absolute one becomes a file:// URI."""
    from pathlib import Path, PurePosixPath

    if Path(path).is_absolute():
        return {"uri": Path(path).as_uri()}
    return {"uri": str(PurePosixPath(*Path(path).parts)), "uriBaseId": "%SRCROOT%"}


def to_sarif_dict(result: AuditResult, fail_on: str, config_path: str | None = None) -> dict[str, Any]:
    code = exit_code(result, fail_on)
    index = {k.id: i for i, k in enumerate(KINDS)}
    findings = result.sorted_findings()
    results = []
    for finding, fingerprint in zip(findings, fingerprints(findings)):
        location: dict[str, Any] = {"logicalLocations": [_logical(o) for o in finding.objects[:10]] or [_logical("cluster")],
                                    "message": {"text": ", ".join(finding.objects[:10]) or "cluster"}}
        if config_path:
            location["physicalLocation"] = {"artifactLocation": _artifact(config_path)}
        results.append({
            "ruleId": finding.kind, "ruleIndex": index[finding.kind], "level": LEVEL[finding.severity],
            "message": {"text": f"{finding.message}. Seen: {finding.evidence}. Fix: {finding.fix}"},
            "locations": [location],
            "partialFingerprints": {FINGERPRINT: fingerprint},
            "properties": {"severity": finding.severity, "security-severity": SECURITY_SEVERITY[finding.severity],
                           "objects": list(finding.objects), "evidence": finding.evidence, "fix": finding.fix},
        })
    notifications = [{"level": "error", "message": {"text": e}} for e in result.errors]
    notifications += [{"level": "note", "message": {"text": n}} for n in result.notes]
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "rbacbridge", "fullName": "rbacbridge audit", "version": __version__,
                            "semanticVersion": __version__, "informationUri": INFORMATION_URI,
                            "rules": [_rule(k) for k in KINDS]}},
        "automationDetails": {"id": "rbacbridge/audit/"},
        "invocations": [{"executionSuccessful": result.complete, "exitCode": code,
                         "toolExecutionNotifications": notifications}],
        "results": results,
        "properties": {"rbacbridge": {"schema": SCHEMA_ID if result.who_can is None else SCHEMA_ID_WHO_CAN, "fail_on": fail_on, "exit_code": code, "ok": code == 0,
                                      "complete": result.complete, "parts": list(result.parts), "checked": list(result.checked),
                                      "counts": dict(result.counts)}},
    }
    if config_path and "uriBaseId" in _artifact(config_path):
        run["originalUriBaseIds"] = {"%SRCROOT%": {"description": {"text": "the directory rbacbridge ran in"}}}
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}


def to_sarif(result: AuditResult, fail_on: str, config_path: str | None = None) -> str:
    return json.dumps(to_sarif_dict(result, fail_on, config_path), indent=2) + "\n"
