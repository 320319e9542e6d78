"""`rbacbridge plan`, `setup`, `teardown`: the planner's steps against live state, printed, then applied
(asking first) or not (plan, --dry-run)."""

from typing import Annotated

import typer

from rbacbridge.cli.common import approve, dump, run_context
from rbacbridge.cli.options import (AcceptNewOpt, AccountOpt, ConfigOpt, ContextOpt, DryRunOpt, EndpointOpt, HostInterfaceOpt,
                                    InstanceOpt, KnownHostsOpt, KubeconfigOpt, NamespaceOpt, NodeOpt, NodeSelectorOpt, OnlyOpt,
                                    OutputOpt, ProfileOpt, RegionOpt, SshConfigOpt, SshKeyOpt, SshPortOpt, SshUserOpt,
                                    StalePortOpt, ViaOpt, YesOpt, config_from, output_format)
from rbacbridge.errors import EXIT_CHANGES_PENDING, EXIT_FAILED, EXIT_OK, IncompleteError, RbacbridgeError, UsageError


def plan(
    only: OnlyOpt = None,
    teardown: Annotated[bool, typer.Option("--teardown", help="plan the teardown instead")] = False,
    exit_code: Annotated[bool, typer.Option("--exit-code", help="exit 4 when the plan has changes or conflicts, 1 when it has a finding (an exposure setup does not change), 0 when it has neither (like git diff --exit-code)")] = False,
    output: OutputOpt = "table",
    config: ConfigOpt = None, account_id: AccountOpt = None,
    profile: ProfileOpt = None, region: RegionOpt = None, endpoint_url: EndpointOpt = None, instance_id: InstanceOpt = None,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None, namespace: NamespaceOpt = None,
    host_interface: HostInterfaceOpt = None, node_selector: NodeSelectorOpt = None, node: NodeOpt = None,
    ssh_user: SshUserOpt = None, ssh_key: SshKeyOpt = None, known_hosts: KnownHostsOpt = None, ssh_port: SshPortOpt = None,
    ssh_config: SshConfigOpt = None, accept_new_host_keys: AcceptNewOpt = False, via: ViaOpt = None,
    stale_port: StalePortOpt = None,
) -> None:
    """Show every step setup (or teardown) would take against live state. Changes nothing."""
    cfg = config_from(plan, locals())
    fmt = output_format(output)
    result = show_plan(cfg, only, fmt, teardown)
    if exit_code and result.findings:
        raise typer.Exit(EXIT_FAILED)  # setup cannot fix it: a human must
    if exit_code and (result.changes or result.conflicts):
        raise typer.Exit(EXIT_CHANGES_PENDING)


def show_plan(cfg, only, fmt: str, teardown: bool = False):
    """Plan against live state and print it (what `rbacbridge plan` shows)."""
    from rbacbridge import output as out
    from rbacbridge import planner

    ctx = run_context(cfg, only, fmt)
    result = planner.plan_teardown(ctx) if teardown else planner.plan_setup(ctx)
    if fmt != "table":
        out.print_notes(result, notes=False)
        dump(fmt, result.to_dict())
    else:
        out.print_plan(result, "rbacbridge teardown plan" if teardown else "rbacbridge setup plan")
    return result


def setup(
    only: OnlyOpt = None,
    adopt: Annotated[bool, typer.Option("--adopt", help="take over same-named resources that exist without rbacbridge's tag (and a kube2iam DaemonSet at rbacbridge's name and namespace)")] = False,
    force: Annotated[bool, typer.Option("--force", help="nodes: also delete iptables rules to this node that a running interceptor uses (a conflict otherwise)")] = False,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    output: OutputOpt = "table",
    config: ConfigOpt = None, account_id: AccountOpt = None,
    profile: ProfileOpt = None, region: RegionOpt = None, endpoint_url: EndpointOpt = None, instance_id: InstanceOpt = None,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None, namespace: NamespaceOpt = None,
    host_interface: HostInterfaceOpt = None, node_selector: NodeSelectorOpt = None, node: NodeOpt = None,
    ssh_user: SshUserOpt = None, ssh_key: SshKeyOpt = None, known_hosts: KnownHostsOpt = None, ssh_port: SshPortOpt = None,
    ssh_config: SshConfigOpt = None, accept_new_host_keys: AcceptNewOpt = False, via: ViaOpt = None,
    stale_port: StalePortOpt = None,
) -> None:
    """Create or update everything (IAM, instance profiles, kube2iam, iptables) idempotently.
    Shows the plan first; asks on a terminal, and without one needs --yes."""
    cfg = config_from(setup, locals())

    from rbacbridge import planner

    fmt = output_format(output)
    ctx = run_context(cfg, only, fmt, force=force, adopt=adopt)
    if "aws" in ctx.parts and not cfg.account_id:
        raise UsageError("setup needs --account-id (or account_id in the config): the account you mean to change")
    raise typer.Exit(_apply(ctx, planner.plan_setup(ctx), fmt, dry_run, yes, teardown=False))


def teardown(
    only: OnlyOpt = None,
    force: Annotated[bool, typer.Option("--force", help="also delete same-named resources without rbacbridge's tag, and iptables rules to a node that a running interceptor uses")] = False,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    output: OutputOpt = "table",
    config: ConfigOpt = None, account_id: AccountOpt = None,
    profile: ProfileOpt = None, region: RegionOpt = None, endpoint_url: EndpointOpt = None, instance_id: InstanceOpt = None,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None, namespace: NamespaceOpt = None,
    host_interface: HostInterfaceOpt = None, node_selector: NodeSelectorOpt = None, node: NodeOpt = None,
    ssh_user: SshUserOpt = None, ssh_key: SshKeyOpt = None, known_hosts: KnownHostsOpt = None, ssh_port: SshPortOpt = None,
    ssh_config: SshConfigOpt = None, accept_new_host_keys: AcceptNewOpt = False, via: ViaOpt = None,
    stale_port: StalePortOpt = None,
) -> None:
    """Undo setup in reverse order; delete only what rbacbridge owns; restore what it replaced.
    Shows the plan first; asks on a terminal, and without one needs --yes."""
    cfg = config_from(teardown, locals())

    from rbacbridge import planner

    fmt = output_format(output)
    ctx = run_context(cfg, only, fmt, force=force)
    raise typer.Exit(_apply(ctx, planner.plan_teardown(ctx), fmt, dry_run, yes, teardown=True))


def _apply(ctx, plan, output: str, dry_run: bool, yes: bool, teardown: bool) -> int:
    from rbacbridge import output as out
    from rbacbridge.planner import run

    verb = "teardown" if teardown else "setup"
    if output == "table":
        out.print_plan(plan, f"rbacbridge {verb} plan")
    else:
        out.print_notes(plan, notes=False)  # the JSON has them too; a warning must not go unseen in a CI log
    if plan.conflicts:
        names = ", ".join(f"{s.kind} {s.name}" for s in plan.conflicts)
        if output != "table":
            dump(output, {"plan": plan.to_dict(), "applied": [], "ok": False, "error": f"conflicts: {names}"})
        raise RbacbridgeError(f"{len(plan.conflicts)} conflict(s), nothing changed: {names} (see the plan: each conflict says how to resolve it)")
    if dry_run:
        if output != "table":
            dump(output, {"plan": plan.to_dict(), "applied": [], "ok": True, "dry_run": True})
        return EXIT_OK
    try:
        approve(len(plan.changes), yes, verb)
    except UsageError as exc:
        if output != "table":
            dump(output, {"plan": plan.to_dict(), "applied": [], "ok": False, "error": str(exc)})
        raise
    outcome = run(ctx, plan, teardown=teardown)
    error = None
    if not outcome.ok:
        failure = outcome.failure
        error = f"{failure.failed.message} failed: {failure.error}"
    if output != "table":
        dump(output, {"plan": outcome.plan.to_dict(), "applied": [s.to_dict() for s in outcome.done], "ok": outcome.ok, "error": error})
    else:
        con = out.console()
        con.print(f"{verb}: {len(outcome.done)} change(s) made" + ("" if outcome.ok else ", then it stopped"))
    if error:
        if getattr(outcome.failure.error, "denied", False):
            # Re-running cannot help: the credentials lack a permission (named in the error).
            raise RbacbridgeError(f"{error} ({len(outcome.done)} change(s) made before it)")
        kind = IncompleteError if isinstance(outcome.failure.error, IncompleteError) else RbacbridgeError
        raise kind(f"{error} (re-run `rbacbridge {verb}` to finish; it plans again from live state)")
    return EXIT_OK
