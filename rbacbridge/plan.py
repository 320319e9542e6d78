"""Plans and their execution.

Every part of rbacbridge (AWS, Kubernetes, nodes) turns the desired state into a list of
`Step`s by reading live state only. `plan` and `--dry-run` print the steps; `setup` and
`teardown` hand the same list to `execute`. A step that changes nothing has no `run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

# Actions, in the words the plan prints.
CREATE = "create"
UPDATE = "update"
DELETE = "delete"
RESTORE = "restore"
UNCHANGED = "unchanged"
LEFT_ALONE = "left-alone"  # exists but is not rbacbridge's: reported, never touched
CONFLICT = "conflict"  # blocks the run: exists, not ours, and setup would need to change it
FINDING = "finding"  # an exposure rbacbridge does not change (not its object): reported, fails `plan --exit-code`

ACTIONS_THAT_CHANGE = (CREATE, UPDATE, DELETE, RESTORE)


@dataclass
class Step:
    system: str  # "aws" | "kube" | "nodes"
    action: str
    kind: str  # e.g. "iam-role", "ClusterRole", "iptables-rule"
    name: str
    message: str  # one human sentence: what this step does
    reason: str = ""  # why it is needed ("trust policy differs: ...")
    run: Callable[[], Any] | None = field(default=None, repr=False, compare=False)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return self.action in ACTIONS_THAT_CHANGE

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "system": self.system,
            "action": self.action,
            "kind": self.kind,
            "name": self.name,
            "message": self.message,
        }
        if self.reason:
            out["reason"] = self.reason
        if self.details:
            out["details"] = self.details
        return out


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # choices the planner made, e.g. interface
    warnings: list[str] = field(default_factory=list)  # risks the configuration accepts (e.g. pods get the node role)
    facts: dict[str, Any] = field(default_factory=dict)  # structured findings for `-o json` (e.g. metadata_options)

    def extend(self, steps: Iterable[Step]) -> None:
        self.steps.extend(steps)

    @property
    def changes(self) -> list[Step]:
        return [s for s in self.steps if s.changes]

    @property
    def conflicts(self) -> list[Step]:
        return [s for s in self.steps if s.action == CONFLICT]

    @property
    def findings(self) -> list[Step]:
        return [s for s in self.steps if s.action == FINDING]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for step in self.steps:
            counts[step.action] = counts.get(step.action, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": [s.to_dict() for s in self.steps],
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            **self.facts,
            "summary": self.counts(),
        }


class StepFailed(Exception):
    def __init__(self, step: Step, error: BaseException):
        super().__init__(f"{step.message}: {error}")
        self.step = step
        self.error = error


@dataclass
class Execution:
    done: list[Step] = field(default_factory=list)
    failed: Step | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.failed is None


def execute(
    steps: Iterable[Step],
    on_start: Callable[[Step], None] | None = None,
    on_done: Callable[[Step], None] | None = None,
) -> Execution:
    """Run the steps that change something, in order; stop at the first failure.

    Later steps may depend on earlier ones (a role before its policy attachment), so a
    failure ends the run. Re-running plans again from live state and finishes the job.
    """
    result = Execution()
    for step in steps:
        if not step.changes or step.run is None:
            continue
        if on_start:
            on_start(step)
        try:
            step.run()
        except Exception as exc:  # noqa: BLE001 - reported with the step that failed
            result.failed, result.error = step, exc
            return result
        result.done.append(step)
        if on_done:
            on_done(step)
    return result


def execute_in_parallel(
    steps: Iterable[Step],
    group: Callable[[Step], str],
    workers: int,
    on_start: Callable[[Step], None] | None = None,
    on_done: Callable[[Step], None] | None = None,
) -> Execution:
    """Run independent groups of steps (one per node, say) side by side, each group in order and
    stopped at its own first failure; the other groups still finish. The first failure is reported."""
    groups: dict[str, list[Step]] = {}
    for step in steps:
        if step.changes and step.run is not None:
            groups.setdefault(group(step), []).append(step)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(groups))), thread_name_prefix="steps") as pool:
        results = list(pool.map(lambda members: execute(members, on_start, on_done), groups.values()))
    merged = Execution(done=[s for r in results for s in r.done])
    failed = next((r for r in results if not r.ok), None)
    if failed is not None:
        merged.failed, merged.error = failed.failed, failed.error
    return merged
