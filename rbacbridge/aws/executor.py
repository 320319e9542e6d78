"""Running the AWS steps: in plan order, the per-instance association steps through a bounded pool."""

from __future__ import annotations

from rbacbridge.aws.client import ASSOCIATION_WORKERS
from rbacbridge.aws.resources import ProfileAssociation
from rbacbridge.plan import Execution, Step, execute_in_parallel


def execute(ctx, steps: list[Step]) -> Execution:
    """Run the AWS steps in plan order, except that a run of consecutive association steps (one
    group per instance; the record is written before them) goes through a bounded pool. Stops at
    the first failure, after the other instances of that batch have finished."""
    reporter = ctx.reporter
    result = Execution()
    batch: list[Step] = []

    def run(part: Execution) -> bool:
        result.done += part.done
        if not part.ok:
            result.failed, result.error = part.failed, part.error
        return part.ok

    def flush() -> bool:
        if not batch:
            return True
        part = execute_in_parallel(list(batch), lambda step: step.name, ASSOCIATION_WORKERS,
                                   reporter.step_started, reporter.step_done)
        batch.clear()
        return run(part)

    from rbacbridge.plan import execute as in_order

    for step in steps:
        if not step.changes or step.run is None:
            continue
        if step.kind == ProfileAssociation.kind:
            batch.append(step)
            continue
        if not flush() or not run(in_order([step], reporter.step_started, reporter.step_done)):
            return result
    flush()
    return result
