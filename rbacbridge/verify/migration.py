"""`verify --baseline FILE`: the matrix compared with one taken earlier (a `verify -o json` document), cell by
cell. Made for a migration off kube2iam (`rbacbridge migrate`): after each phase every cell must answer as it
did before — only the path that serves the credentials may change. A cell that gained access, lost it, or
now gets another role fails on the `migration` layer, whatever the configuration expects.

Cells are matched by (principal, check, bucket, target); a principal is named by workload and node, so a
restarted pod (a new pod name) is still the same principal. Cells present on one side only are reported in
notes, never silently passed."""

from __future__ import annotations

import json
from typing import Any

from rbacbridge.errors import UsageError, shown
from rbacbridge.verify.model import IDENTITY, MIGRATION, Blame, Cell, VerifyResult

Key = tuple[str, str, str | None, str | None]


def load_baseline(path: str) -> dict[str, Any]:
    """A `verify -o json` document (schema rbacbridge.verify/v3 or later), or one clear line (exit 2)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(4 * 1024 * 1024 + 1)
    except OSError as exc:
        raise UsageError(f"--baseline {shown(path)}: {exc.strerror or exc}") from None
    if len(text) > 4 * 1024 * 1024:
        raise UsageError(f"--baseline {shown(path)}: larger than 4 MiB; not a verify report")
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--baseline {shown(path)}: not JSON ({exc.msg} at line {exc.lineno})") from None
    schema = document.get("schema") if isinstance(document, dict) else None
    if not isinstance(schema, str) or not schema.startswith("rbacbridge.verify/v"):
        what = f"schema {shown(schema)}" if schema is not None else "no schema field"
        raise UsageError(f"--baseline {shown(path)}: not a `rbacbridge verify -o json` report ({what})")
    try:
        version = int(schema.rsplit("/v", 1)[1])
    except ValueError:
        version = 0
    if version < 3:
        raise UsageError(f"--baseline {shown(path)}: schema {schema} is too old (v3 or later: run verify -o json again)")
    if not isinstance(document.get("tenants"), list) or not isinstance(document.get("others"), list):
        raise UsageError(f"--baseline {shown(path)}: no tenants/others lists; not a verify report")
    return document


def baseline_cells(document: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    cells: dict[Key, dict[str, Any]] = {}
    principals = [p for t in document["tenants"] for p in t.get("principals", [])] + list(document["others"])
    for principal in principals:
        for cell in principal.get("cells", []):
            cells[(principal["name"], cell["check"], cell.get("bucket"), cell.get("target"))] = {
                **cell, "_source": cell.get("source")}
    return cells


def _key(cell: Cell) -> Key:
    return (cell.principal, cell.check, cell.bucket, cell.target)


def _answer(check: str, value: Any) -> str:
    if check == IDENTITY:
        return f"role {value}" if value else "no credentials"
    return {True: "allowed", False: "denied", None: "could not tell"}[value if value in (True, False) else None]


def apply_baseline(result: VerifyResult, document: dict[str, Any], label: str = "the baseline") -> dict[str, int]:
    """Fail (layer `migration`) every cell whose observed answer differs from the baseline's; note the cells
    present on one side only and the credential sources that changed. Returns counts for the report."""
    before = baseline_cells(document)
    seen: set[Key] = set()
    counts = {"compared": 0, "changed": 0, "gained": 0, "lost": 0, "source_changed": 0, "new": 0, "missing": 0}
    for cell in result.all_cells:
        key = _key(cell)
        old = before.get(key)
        if old is None:
            counts["new"] += 1
            continue
        seen.add(key)
        counts["compared"] += 1
        if cell.check == IDENTITY and old.get("_source") and cell.source and old["_source"] != cell.source:
            counts["source_changed"] += 1
        if cell.error is not None and cell.observed is None:
            continue  # could not tell now: already a mismatch of its own layer when it matters
        if cell.observed == old.get("observed"):
            continue
        counts["changed"] += 1
        gained = cell.observed is True or (cell.check == IDENTITY and cell.observed and not old.get("observed"))
        lost = old.get("observed") is True or (cell.check == IDENTITY and old.get("observed") and not cell.observed)
        if gained and not lost:
            counts["gained"] += 1
            what = "gained access"
        elif lost and not gained:
            counts["lost"] += 1
            what = "lost access"
        else:
            what = "changed"
        via = f" (now via {cell.source})" if cell.source else ""
        message = (f"{what} since {label}: {_answer(cell.check, old.get('observed'))} before, "
                   f"{_answer(cell.check, cell.observed)} now{via}")
        cell.match = False
        cell.blame = Blame(MIGRATION, message + (f"; also: {cell.blame.message}" if cell.blame else ""))
    missing = [k for k in before if k not in seen]
    counts["missing"] = len(missing)
    if counts["new"]:
        result.notes.append(f"--baseline: {counts['new']} cell(s) not in {label} (new principals or checks): not compared")
    if missing:
        first = missing[0]
        result.notes.append(f"--baseline: {len(missing)} cell(s) of {label} not observed now, e.g. "
                            f"{first[0]} {first[1]}{' ' + first[2] if first[2] else ''}{' ' + first[3] if first[3] else ''}")
    result.notes.append(f"--baseline: {counts['compared']} cells compared with {label}: {counts['changed']} changed "
                        f"({counts['gained']} gained access, {counts['lost']} lost), {counts['source_changed']} identities "
                        f"served by another path")
    result.baseline = counts
    return counts
