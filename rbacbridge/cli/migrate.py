"""`rbacbridge migrate plan`: what moving off kube2iam to IRSA or EKS Pod Identity would change (rbacbridge/migrate/)."""

import re
from typing import Annotated, Optional

import typer

from rbacbridge.cli.common import dump, run_context
from rbacbridge.cli.examples import examples
from rbacbridge.cli.group import Group
from rbacbridge.cli.options import (AccountOpt, ConfigOpt, ContextOpt, EndpointOpt, KubeconfigOpt, OutputOpt, ProfileOpt,
                                    RegionOpt, choice, config_from, output_format)
from rbacbridge.errors import EXIT_CHANGES_PENDING, EXIT_FAILED, UsageError, shown

TARGETS = ("irsa", "pod-identity")  # rbacbridge.migrate.TARGETS, kept here so --help imports nothing more
_ISSUER = re.compile(r"^https?://[^\s/?#]+[^\s?#]*$")
_CLUSTER_NAME = re.compile(r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$")  # EKS CreateCluster's name pattern

migrate_app = typer.Typer(
    epilog=examples("migrate"),
    cls=Group,
    help="Move the cluster off kube2iam to IRSA or EKS Pod Identity, in phases. Only `plan` is built so far.",
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
