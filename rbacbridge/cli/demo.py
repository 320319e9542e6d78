"""`rbacbridge demo`: the sandbox walk-through (rbacbridge/demo.py) on an embedded moto server."""

from typing import Annotated, Optional

import typer

from rbacbridge.cli.options import choice
from rbacbridge.errors import UsageError


def demo(
    keep: Annotated[bool, typer.Option("--keep", help="leave the sandbox running until Ctrl-C")] = False,
    break_: Annotated[Optional[str], typer.Option("--break", metavar="[trust|policy|iptables|namespace]", help="plant one fault for verify to catch: trust, policy, iptables or namespace", show_default=False)] = None,
    scenario: Annotated[str, typer.Option("--scenario", metavar="[article|abc|migrate]", help="article: the walkthrough's one tenant; abc: clients A, B and C, only C with a bucket (the breach before kube2iam, isolation after); migrate: the article, then off kube2iam to IRSA phase by phase (the matrix after each, compared with the one before) and back")] = "article",
    config: Annotated[Optional[str], typer.Option("--config", "-c", metavar="FILE", help="run the sandbox with this rbacbridge.yaml's tenants (instead of --scenario; - reads standard input)", show_default=False)] = None,
    output: Annotated[str, typer.Option("--output", "-o", metavar="[table|json]", help="json: the before and after matrices on stdout (the story on stderr)")] = "table",
) -> None:
    """Sandbox walk-through on an embedded moto server: plan, setup, no-op re-run, verify matrix before and after
    kube2iam, teardown. Try your own tenants with -c FILE; no AWS account needed."""
    from rbacbridge.demo import OUTPUTS, SCENARIOS, run_demo

    if break_ is not None:
        from rbacbridge.sandbox import FAULTS

        choice("--break", break_, FAULTS)
    choice("--scenario", scenario, SCENARIOS)
    choice("--output", output, OUTPUTS)
    if config is not None and scenario != "article":
        raise UsageError("give --scenario or -c FILE, not both")
    if break_ is not None and scenario == "migrate":
        raise UsageError("--break plants a fault in the article's matrix; it does not combine with --scenario migrate")
    raise typer.Exit(run_demo(keep=keep, fault=break_, config_path=config, scenario=scenario, output=output))
