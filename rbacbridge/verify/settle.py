"""The settle window (issue 25): right after setup, a denial can be only propagation, never hidden otherwise.

IAM changes take seconds to reach every endpoint, so `setup && verify` can observe a cell that disagrees only
because a trust or policy change has not arrived yet. Within a settle window, verify observes such a cell again
(its principal's cells, the same way as the first time) with backoff until it agrees or the window ends, and the
report says which cells settled and after how long (Cell.settle). Outside the window nothing is retried: a cell
that disagrees fails on its first observation.

The window (`settle_window`):
  --settle SECONDS   from the start of verify, whatever the record says (0: never retry); at most MAX_SETTLE
  else, real AWS     DEFAULT_WINDOW after the last trust or policy change setup's record notes (Record.changed)
  else               none: an endpoint override (AWS_ENDPOINT_URL..., aws.endpoint_url: moto, LocalStack), the
                     sandbox, or a record that notes no change

Cells retried: identity, read, write and chain cells (what IAM propagation can change); annotation cells are
kube2iam's answers, not IAM's, and are not."""

from __future__ import annotations

import math
import os
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from rbacbridge.errors import UsageError, shown
from rbacbridge.verify.model import (CHAIN, IDENTITY, READ, WRITE, Cell, Expected, Observed, PrincipalResult, Settled,
                                     SettleWindow, VerifyResult)

DEFAULT_WINDOW = 60.0  # seconds after setup's last trust or policy change (real AWS)
MAX_SETTLE = 900.0  # --settle at most this (15 minutes)
FIRST_BACKOFF, MAX_BACKOFF = 1.0, 8.0  # seconds between observations: 1, 2, 4, 8, 8, ... never past the window
SETTLED_CHECKS = (IDENTITY, READ, WRITE, CHAIN)
SOURCE_FLAG, SOURCE_RECORD, SOURCE_NONE = "--settle", "record", "none"
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IAM", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_S3")


def parse_settle(value: str | None) -> float | None:
    """--settle SECONDS: a number 0..MAX_SETTLE (one line, exit 2 otherwise)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SETTLE:
        raise UsageError(f"invalid --settle {shown(value)}: a number of seconds from 0 to {MAX_SETTLE:g}")
    return seconds


def real_aws(endpoint_url: str | None) -> bool:
    """No endpoint override: the calls go to AWS (else a stand-in: moto, LocalStack)."""
    return not endpoint_url and not any(os.environ.get(name) for name in _ENDPOINT_VARIABLES)


def settle_window(explicit: float | None, changed_at: datetime | None = None, aws: bool = False,
                  now: datetime | None = None, unknown: str = "") -> SettleWindow:
    """The window verify runs in (see the module's docstring); `unknown`: why the record could not say."""
    now = now or datetime.now(timezone.utc)
    if explicit is not None:
        if explicit <= 0:
            return SettleWindow(SOURCE_FLAG, 0.0, None, None, "--settle 0: no cell is retried")
        return SettleWindow(SOURCE_FLAG, explicit, now + timedelta(seconds=explicit), None,
                            f"--settle {explicit:g}: cells that disagree are observed again for up to {explicit:g} s")
    if not aws:
        return SettleWindow(SOURCE_NONE, 0.0, None, None, "")
    if changed_at is None:
        return SettleWindow(SOURCE_NONE, 0.0, None, None, unknown or "setup's record notes no trust or policy change: "
                                                                     "no cell is retried")
    until = changed_at + timedelta(seconds=DEFAULT_WINDOW)
    stamp = changed_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    if until <= now:
        return SettleWindow(SOURCE_RECORD, DEFAULT_WINDOW, None, changed_at,
                            f"setup last changed a trust or policy at {stamp}, more than {DEFAULT_WINDOW:g} s ago: "
                            "no cell is retried")
    return SettleWindow(SOURCE_RECORD, DEFAULT_WINDOW, until, changed_at,
                        f"setup last changed a trust or policy at {stamp}: cells that disagree are observed again "
                        f"until {DEFAULT_WINDOW:g} s after it ({until.strftime('%H:%M:%SZ')})")


def _key(principal: str, cell: Cell) -> tuple[Any, ...]:
    return principal, cell.check, cell.bucket, cell.target


def _disagreeing(results: list[PrincipalResult]) -> list[tuple[Any, ...]]:
    return [_key(p.principal.name, c) for p in results for c in [p.identity, *p.cells]
            if not c.match and c.check in SETTLED_CHECKS]


def settle(result: VerifyResult, window: SettleWindow | None, observe_again: Callable[[list[str]], list[Observed]],
           compare_again: Callable[[list[Expected], list[Observed]], VerifyResult],
           sleep: Callable[[float], None] = time.sleep, first_seen: float | None = None,
           progress: Callable[[str], None] | None = None) -> int:
    """Observe again, with backoff, the principals whose cells disagree, while the window is open; replace their
    results in `result` and mark the retried cells (Cell.settle). Returns how many observations were made again."""
    result.settle = window
    if window is None or window.until is None or datetime.now(timezone.utc) >= window.until:
        return 0  # outside the window (or it ended before the cells were compared): nothing is retried
    clock = time.monotonic
    start = clock() if first_seen is None else first_seen
    since: dict[tuple[Any, ...], float] = {k: start for k in _disagreeing(result.principals)}
    attempts: dict[tuple[Any, ...], int] = {k: 1 for k in since}
    last: dict[tuple[Any, ...], float] = {}
    agreed: dict[tuple[Any, ...], tuple[int, float]] = {}  # (observations, time) when it came to agree
    pending = set(since)
    rounds, delay = 0, FIRST_BACKOFF
    while pending:
        remaining = (window.until - datetime.now(timezone.utc)).total_seconds()
        if remaining <= 0:
            break
        if progress is not None:  # a pipeline waiting in silence looks hung
            progress(f"settle window: {len(pending)} cell(s) disagree; observing them again in {min(delay, remaining):.0f} s "
                     f"(until {window.until.strftime('%H:%M:%SZ')})")
        sleep(min(delay, remaining))
        delay = min(delay * 2, MAX_BACKOFF)
        names = sorted({k[0] for k in pending})
        by_name = {p.principal.name: p for p in result.principals}
        observed = observe_again(names)
        fresh = compare_again([by_name[o.principal.name].expected for o in observed], observed).principals
        now = clock()
        rounds += 1
        for index, p in enumerate(result.principals):
            replacement = next((f for f in fresh if f.principal.name == p.principal.name), None)
            if replacement is not None:
                result.principals[index] = replacement
        for p in fresh:
            for c in [p.identity, *p.cells]:
                key = _key(p.principal.name, c)
                if key in since:
                    attempts[key] += 1
                    last[key] = now
                if c.match:
                    pending.discard(key)
                    if key in since and key not in agreed:
                        agreed[key] = (attempts[key], now)
                elif c.check in SETTLED_CHECKS:
                    if key not in since:  # agreed first, disagrees now: tracked from here, never hidden
                        since[key], attempts[key], last[key] = now, 1, now
                    agreed.pop(key, None)
                    pending.add(key)
    for p in result.principals:
        for c in [p.identity, *p.cells]:
            key = _key(p.principal.name, c)
            if key in agreed and c.match:  # after how long it first agreed (and has agreed since)
                c.settle = Settled(agreed[key][0], True, round(agreed[key][1] - since[key], 1))
            elif key in since and attempts[key] > 1:
                c.settle = Settled(attempts[key], c.match, round(last[key] - since[key], 1))
            elif key in since:  # agreed at first, disagreed in the last observation the window allowed
                c.settle = Settled(1, False, 0.0)
    return rounds


def settle_notes(result: VerifyResult) -> list[str]:
    window = result.settle
    if window is None or (window.source == SOURCE_NONE and not window.why):
        return []
    notes = [f"settle window: {window.why}"] if window.why else []
    retried = [(p.principal.name, c) for p in result.principals for c in [p.identity, *p.cells] if c.settle]
    settled = [(n, c) for n, c in retried if c.settle.settled]
    if settled:
        notes.append(f"{len(settled)} cell(s) disagreed at first and settled within the window (IAM propagation): "
                     + ", ".join(f"{n} {_what(c)} after {c.settle.after_seconds:g} s" for n, c in settled[:10])
                     + (" ..." if len(settled) > 10 else ""))
    still = [(n, c) for n, c in retried if not c.settle.settled]
    if still:
        notes.append(f"{len(still)} cell(s) still disagreed when the settle window ended: not propagation")
    return notes


def _what(cell: Cell) -> str:
    return cell.check + (f" {cell.bucket}" if cell.bucket else f" {cell.target}" if cell.target else "")


__all__ = ["DEFAULT_WINDOW", "MAX_SETTLE", "parse_settle", "real_aws", "settle", "settle_notes", "settle_window"]
