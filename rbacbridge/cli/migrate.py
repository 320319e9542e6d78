"""`rbacbridge migrate plan|apply|rollback|status`: moving off kube2iam to IRSA or EKS Pod Identity (rbacbridge/migrate/)."""

import re
from typing import Annotated, Optional

import typer

from rbacbridge.cli.common import dump, run_context
from rbacbridge.cli.examples import examples
from rbacbridge.cli.group import Group
from rbacbridge.cli.options import (AccountOpt, ConfigOpt, ContextOpt, DryRunOpt, EndpointOpt, KubeconfigOpt, OutputOpt,
                                    ProfileOpt, RegionOpt, YesOpt, choice, config_from, output_format)
from rbacbridge.errors import EXIT_CHANGES_PENDING, EXIT_FAILED, UsageError, shown

TARGETS = ("irsa", "pod-identity")  # rbacbridge.migrate.TARGETS, kept here so --help imports nothing more
_ISSUER = re.compile(r"^https?://[^\s/?#]+[^\s?#]*$")
_CLUSTER_NAME = re.compile(r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$")  # EKS CreateCluster's name pattern

migrate_app = typer.Typer(
    epilog=examples("migrate"),
    cls=Group,
    help="Move the cluster off kube2iam to IRSA or EKS Pod Identity, in phases: plan, apply --phase dual|cutover, status, rollback (finish is not built yet).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@migrate_app.command("plan", epilog=examples("migrate plan"))
def migrate_plan(
    to: Annotated[Optional[str], typer.Option("--to", metavar="[irsa|pod-identity]", help="the target: irsa (any cluster whose service-account issuer is public) or pod-identity (EKS)", show_default=False)] = None,
    issuer: Annotated[Optional[str], typer.Option("--issuer", metavar="URL", help="irsa: the service-account issuer (else read from the API server's /.well-known/openid-configuration)", show_default=False)] = None,
    cluster_name: Annotated[Optional[str], typer.Option("--cluster-name", metavar="NAME", help="pod-identity: the EKS cluster's name (needed)", show_default=False)] = None,
    exit_code: Annotated[bool, typer.Option("--exit-code", help="exit 1 when the plan has a blocker, else 4 when it has changes, 0 when it has neither")] = False,
    output: OutputOpt = "table",
    config: ConfigOpt = None, account_id: AccountOpt = None,
    profile: ProfileOpt = None, region: RegionOpt = None, endpoint_url: EndpointOpt = None,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
) -> None:
    """Inventory the workloads kube2iam hands a role, map each to a ServiceAccount, list the changes each
    phase would make and what blocks the migration. Read-only: changes nothing."""
    if to is None:
        raise UsageError("migrate plan needs --to: choose from irsa, pod-identity")
    target = choice("--to", to, TARGETS)
    if issuer is not None and (target != "irsa" or not _ISSUER.match(issuer) or len(issuer) > 255):
        raise UsageError(f"invalid --issuer {shown(issuer)}: an https URL, with --to irsa only")
    if target == "pod-identity" and not cluster_name:
        raise UsageError("--to pod-identity needs --cluster-name: the EKS cluster's name")
    if cluster_name is not None and (target != "pod-identity" or not _CLUSTER_NAME.match(cluster_name)):
        raise UsageError(f"invalid --cluster-name {shown(cluster_name)}: an EKS cluster name, with --to pod-identity only")
    fmt = output_format(output)
    cfg = config_from(migrate_plan, locals())

    from rbacbridge.migrate import plan_migration

    result = plan_migration(run_context(cfg, None, fmt), target, issuer=issuer, cluster_name=cluster_name)
    if fmt != "table":
        dump(fmt, result.to_dict())
    else:
        from rbacbridge.migrate.render import print_migrate_plan

        print_migrate_plan(result)
    if exit_code and result.blockers:
        raise typer.Exit(EXIT_FAILED)  # a human must resolve them first
    if exit_code and result.changes:
        raise typer.Exit(EXIT_CHANGES_PENDING)


PHASES = ("dual", "cutover", "finish")
TimeoutOpt = Annotated[float, typer.Option("--timeout", metavar="SECONDS", help="cutover and rollback: how long to wait for the restarted workloads to roll out", show_default=True)]


def _check_target(to: Optional[str], issuer: Optional[str], cluster_name: Optional[str], command: str) -> str:
    if to is None:
        raise UsageError(f"migrate {command} needs --to: choose from irsa, pod-identity")
    target = choice("--to", to, TARGETS)
    if issuer is not None and (target != "irsa" or not _ISSUER.match(issuer) or len(issuer) > 255):
        raise UsageError(f"invalid --issuer {shown(issuer)}: an https URL, with --to irsa only")
    if target == "pod-identity" and not cluster_name:
        raise UsageError("--to pod-identity needs --cluster-name: the EKS cluster's name")
    if cluster_name is not None and (target != "pod-identity" or not _CLUSTER_NAME.match(cluster_name)):
        raise UsageError(f"invalid --cluster-name {shown(cluster_name)}: an EKS cluster name, with --to pod-identity only")
    return target


def _check_timeout(timeout: float) -> None:
    if not 0 < timeout <= 3600:
        raise UsageError(f"invalid --timeout {timeout:g}: seconds, more than 0 and at most 3600")


@migrate_app.command("apply", epilog=examples("migrate apply"))
def migrate_apply(
    phase: Annotated[Optional[str], typer.Option("--phase", metavar="[dual|cutover|finish]", help="the phase to apply: dual (new trust beside kube2iam's, ServiceAccounts; no restart), cutover (restart the workloads onto the new path), finish (not built yet)", show_default=False)] = None,
    to: Annotated[Optional[str], typer.Option("--to", metavar="[irsa|pod-identity]", help="the target: irsa or pod-identity (EKS)", show_default=False)] = None,
    issuer: Annotated[Optional[str], typer.Option("--issuer", metavar="URL", help="irsa: the service-account issuer (else read from the API server)", show_default=False)] = None,
    cluster_name: Annotated[Optional[str], typer.Option("--cluster-name", metavar="NAME", help="pod-identity: the EKS cluster's name (needed)", show_default=False)] = None,
    timeout: TimeoutOpt = 300.0,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    output: OutputOpt = "table",
    config: ConfigOpt = None, account_id: AccountOpt = None,
    profile: ProfileOpt = None, region: RegionOpt = None, endpoint_url: EndpointOpt = None,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
) -> None:
    """Apply one phase of the migration: the plan's steps of that phase, shown first; asks on a terminal, and
    without one needs --yes. Re-running a phase makes no change; a run stopped half-way is finished by running
    it again (the signed migration record says what it replaced and created)."""
    if phase is None:
        raise UsageError("migrate apply needs --phase: choose from dual, cutover, finish")
    phase = choice("--phase", phase, PHASES)
    target = _check_target(to, issuer, cluster_name, "apply")
    _check_timeout(timeout)
    if phase == "finish":
        raise UsageError("migrate apply --phase finish is not built yet: keep kube2iam serving beside the new path (it "
                         "keeps pods off the node role); do not run teardown for it (teardown deletes the pod roles)")
    fmt = output_format(output)
    cfg = config_from(migrate_apply, locals())

    from rbacbridge.migrate.phases import plan_phase

    ctx = run_context(cfg, None, fmt)
    phase_plan = plan_phase(ctx, target, phase, issuer, cluster_name, timeout)
    raise typer.Exit(_apply_phase(ctx, phase_plan, f"migrate apply --phase {phase}", fmt, dry_run, yes))


@migrate_app.command("rollback", epilog=examples("migrate rollback"))
def migrate_rollback(
    timeout: TimeoutOpt = 300.0,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    output: OutputOpt = "table",
    config: ConfigOpt = None, account_id: AccountOpt = None,
    profile: ProfileOpt = None, region: RegionOpt = None, endpoint_url: EndpointOpt = None,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
) -> None:
    """Return from the last phase applied to the one before it, from the signed migration record alone:
    cutover -> dual (each workload back on its ServiceAccount, restarted), dual -> kube2iam (the trust policies
    recorded before dual, the ServiceAccounts and OIDC provider dual created deleted, its annotations removed)."""
    _check_timeout(timeout)
    fmt = output_format(output)
    cfg = config_from(migrate_rollback, locals())

    from rbacbridge.migrate.rollback import plan_rollback

    ctx = run_context(cfg, None, fmt)
    phase_plan = plan_rollback(ctx, timeout)
    raise typer.Exit(_apply_phase(ctx, phase_plan, "migrate rollback", fmt, dry_run, yes))


@migrate_app.command("status", epilog=examples("migrate status"))
def migrate_status(
    output: OutputOpt = "table",
    config: ConfigOpt = None, account_id: AccountOpt = None,
    profile: ProfileOpt = None, region: RegionOpt = None, endpoint_url: EndpointOpt = None,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
) -> None:
    """The migration's phase and, per workload kube2iam hands a role, the path its pods are on (kube2iam, irsa,
    pod-identity: from their injected environment) and whether it was restarted since dual. Read-only."""
    fmt = output_format(output)
    cfg = config_from(migrate_status, locals())

    from rbacbridge.migrate.status import migration_status, print_status

    status = migration_status(run_context(cfg, None, fmt))
    if fmt != "table":
        dump(fmt, status)
    else:
        print_status(status)


def _apply_phase(ctx, phase_plan, command: str, fmt: str, dry_run: bool, yes: bool) -> int:
    from rbacbridge import output as out
    from rbacbridge.cli.common import approve
    from rbacbridge.errors import EXIT_OK, IncompleteError, RbacbridgeError
    from rbacbridge.migrate.phases import run_phase

    plan = phase_plan.plan
    if fmt == "table":
        out.print_plan(plan, f"rbacbridge {command} plan")
    else:
        out.print_notes(plan, notes=False)

    def refuse(error: str) -> None:
        if fmt != "table":
            dump(fmt, {"phase": phase_plan.phase, "plan": plan.to_dict(), "applied": [], "ok": False, "error": error})
        raise RbacbridgeError(error)

    if phase_plan.blockers:
        first = phase_plan.blockers[0]
        refuse(f"{len(phase_plan.blockers)} blocker(s), nothing changed: {first.kind} {first.object}: {first.reason} "
               "(see `rbacbridge migrate plan`)")
    if plan.conflicts:
        refuse(f"{len(plan.conflicts)} conflict(s), nothing changed: "
               + ", ".join(f"{s.kind} {s.name}" for s in plan.conflicts) + " (see the plan: each says why)")
    if dry_run:
        if fmt != "table":
            dump(fmt, {"phase": phase_plan.phase, "plan": plan.to_dict(), "applied": [], "ok": True, "dry_run": True})
        return EXIT_OK
    try:
        approve(len(plan.changes), yes, command)
    except UsageError as exc:
        if fmt != "table":
            dump(fmt, {"phase": phase_plan.phase, "plan": plan.to_dict(), "applied": [], "ok": False, "error": str(exc)})
        raise
    execution = run_phase(phase_plan, ctx.reporter)
    error = None if execution.ok else f"{execution.failed.message} failed: {execution.error}"
    if fmt != "table":
        dump(fmt, {"phase": phase_plan.phase, "plan": plan.to_dict(), "applied": [s.to_dict() for s in execution.done],
                   "ok": execution.ok, "error": error})
    else:
        out.console().print(f"{command}: {len(execution.done)} change(s) made" + ("" if execution.ok else ", then it stopped"))
    if error:
        kind = IncompleteError if isinstance(execution.error, IncompleteError) else RbacbridgeError
        raise kind(f"{error} (re-run `rbacbridge {command}` to finish; it plans again from the record and live state)")
    return EXIT_OK
