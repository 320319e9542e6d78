"""`rbacbridge audit`: the read-only health check of any kube2iam installation (rbacbridge/audit/)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from rbacbridge.cli.common import run_context
from rbacbridge.cli.options import AWS, INTERFACE, KUBE, NODES, RULE, SSH, VIA, OnlyOpt, with_config
from rbacbridge.errors import RbacbridgeError, UsageError

@with_config(AWS, KUBE, INTERFACE, NODES, SSH, RULE[:2], VIA)
def audit(
    cfg,
    click_ctx: typer.Context,
    only: OnlyOpt = None,
    output: Annotated[str, typer.Option("--output", "-o", metavar="[table|json|junit]", help="output format")] = "table",
    fail_on: Annotated[str, typer.Option("--fail-on", metavar="[high|medium|low]", help="exit 1 when a finding reaches this severity")] = "high",
    junit_file: Annotated[Optional[str], typer.Option("--junit-file", help="also write a JUnit XML report here", show_default=False)] = None,
) -> None:
    """Read-only health check of any kube2iam installation (Helm, by hand or rbacbridge's): findings with
    severity, evidence and fix. Needs no config. Exit 0 clean, 1 a finding reaches --fail-on, 3 incomplete."""
    from rbacbridge.audit import FAIL_ON, exit_code, run_audit
    from rbacbridge.audit import render

    if output not in render.FORMATS:
        raise UsageError(f"invalid --output {output!r}: choose from {', '.join(render.FORMATS)}")
    if fail_on not in FAIL_ON:
        raise UsageError(f"invalid --fail-on {fail_on!r}: choose from {', '.join(FAIL_ON)}")
    ctx = run_context(cfg, only, "json" if output != "table" else "table")
    result = run_audit(ctx, config_given=click_ctx.params.get("config") is not None, explicit_parts=only is not None)
    if junit_file:
        try:
            with open(junit_file, "w", encoding="utf-8") as fh:
                fh.write(render.to_junit(result, fail_on))
        except OSError as exc:
            raise RbacbridgeError(f"cannot write --junit-file {junit_file}: {exc.strerror or exc}") from None
    if output == "json":
        sys.stdout.write(render.to_json(result, fail_on))
    elif output == "junit":
        sys.stdout.write(render.to_junit(result, fail_on))
    else:
        render.print_table(result, fail_on)
    raise typer.Exit(exit_code(result, fail_on))

