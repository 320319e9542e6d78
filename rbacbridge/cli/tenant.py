"""`rbacbridge tenant add|remove|list`: edit the tenants: of the config file, then print the plan."""

from typing import Annotated, Optional

import typer

from rbacbridge.cli.common import dump
from rbacbridge.cli.group import Group
from rbacbridge.cli.examples import examples
from rbacbridge.cli.options import (AccountOpt, ConfigOpt, ContextOpt, EndpointOpt, KubeconfigOpt, OnlyOpt, OutputOpt,
                                    ProfileOpt, RegionOpt, config_from, output_format)
from rbacbridge.cli.plan_apply import show_plan
from rbacbridge.errors import Interrupted, RbacbridgeError

tenant_app = typer.Typer(
    epilog=examples("tenant"),
    cls=Group,
    help="Edit the tenants: of the config file (-c, else RBACBRIDGE_CONFIG, else ./rbacbridge.yaml; comments and "
         "order kept), then print the plan that applies it. Changes nothing but the file.",
    no_args_is_help=True,
)

NoPlanOpt = Annotated[bool, typer.Option("--no-plan", help="only edit the file; do not plan against AWS and the cluster")]


def _config_file(config: str | None, command: str):
    """The file to edit, found as every command finds its config (-c, RBACBRIDGE_CONFIG, ./rbacbridge.yaml);
    none: ./rbacbridge.yaml (tenant add creates it)."""
    from rbacbridge.config.discovery import find_for_edit

    return find_for_edit(config, f"tenant {command}")


def _after_edit(command, source, edit, values: dict, only, output: str, no_plan: bool) -> None:
    """Say what the edit did (stderr; first which file, when -c did not name it), then print the plan that
    applies it (stdout, as `rbacbridge plan`), with the Config of the file as written and `command`'s AWS and
    Kubernetes options (`values`)."""
    from rbacbridge.config.discovery import FLAG

    if source.how != FLAG:
        typer.echo(source.describe(), err=True)
    for message in edit.messages:
        typer.echo(message, err=True)
    if no_plan:
        return
    try:
        cfg = config_from(command, {**values, "config": str(edit.path)})
        show_plan(cfg, only, output)
    except (RbacbridgeError, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted("interrupted") from None
        # the file is written: not "nothing changed" (exit 2), but an incomplete command (exit 3)
        from rbacbridge.errors import IncompleteError

        raise IncompleteError(f"{edit.path} was updated, but the plan could not be made: {exc} "
                              f"(run `rbacbridge plan -c {edit.path}` when it can)") from None


@tenant_app.command("add", epilog=examples("tenant add"))
def tenant_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="tenant name (Kubernetes name rules)", show_default=False)],
    namespace: Annotated[Optional[list[str]], typer.Option("--namespace", "-n", metavar="NS", help="a namespace of the tenant (repeatable; the first holds its workloads)", show_default=False)] = None,
    read: Annotated[Optional[list[str]], typer.Option("--read", metavar="BUCKET[/PREFIX/*]", help="bucket it may list and read (repeatable)", show_default=False)] = None,
    write: Annotated[Optional[list[str]], typer.Option("--write", metavar="BUCKET[/PREFIX/*]", help="bucket it may list, read, write and delete in (repeatable)", show_default=False)] = None,
    role: Annotated[Optional[str], typer.Option("--role", metavar="NAME", help="role rbacbridge creates for it [default: NAME-s3]", show_default=False)] = None,
    existing_role: Annotated[Optional[str], typer.Option("--existing-role", metavar="ARN", help="an existing role rbacbridge only links (never creates, changes or deletes)", show_default=False)] = None,
    policy: Annotated[Optional[str], typer.Option("--policy", metavar="NAME", help="name of its S3 policy [default: the role name]", show_default=False)] = None,
    workload: Annotated[Optional[list[str]], typer.Option("--workload", metavar="NAME", help="nginx Deployment setup creates in its first namespace, with its role (repeatable; for verify)", show_default=False)] = None,
    keep_article_tenant: Annotated[bool, typer.Option("--keep-article-tenant", help="a file without tenants: also keeps the article's tenant (nginx-annotated, namespace default, writes lanre.k8s.dev) as an explicit entry")] = False,
    config: ConfigOpt = None,
    only: OnlyOpt = None,
    no_plan: NoPlanOpt = False,
    output: OutputOpt = "table",
    account_id: AccountOpt = None, profile: ProfileOpt = None, region: RegionOpt = None, endpoint_url: EndpointOpt = None,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
) -> None:
    """Add a tenant to the config file (created when missing), validate the whole result, write it
    atomically, print the plan. A file without tenants: gets only this tenant, unless it sets the article's
    tenant itself (iam.pod_role, iam.pod_policy, buckets.tenant) or --keep-article-tenant is given."""
    from rbacbridge.config import tenant_edits as tenants

    fmt = output_format(output)
    source = _config_file(config, "add")
    edit = tenants.add(source.path, name, list(namespace or []), list(read or []), list(write or []),
                       role, existing_role, policy, list(workload or []), keep_article_tenant=keep_article_tenant)
    _after_edit(tenant_add, source, edit, locals(), only, fmt, no_plan)


@tenant_app.command("remove", epilog=examples("tenant remove"))
def tenant_remove(
    name: Annotated[str, typer.Argument(metavar="NAME", help="the tenant to remove", show_default=False)],
    config: ConfigOpt = None,
    only: OnlyOpt = None,
    no_plan: NoPlanOpt = False,
    output: OutputOpt = "table",
    account_id: AccountOpt = None, profile: ProfileOpt = None, region: RegionOpt = None, endpoint_url: EndpointOpt = None,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
) -> None:
    """Remove a tenant from the config file, then print the plan (setup deletes what rbacbridge made for it)."""
    from rbacbridge.config import tenant_edits as tenants

    fmt = output_format(output)
    source = _config_file(config, "remove")
    edit = tenants.remove(source.path, name)
    _after_edit(tenant_remove, source, edit, locals(), only, fmt, no_plan)


@tenant_app.command("list", epilog=examples("tenant list"))
def tenant_list(output: OutputOpt = "table", config: ConfigOpt = None) -> None:
    """The tenants of the config (without tenants: the article's one, from the legacy keys). Offline."""
    cfg = config_from(tenant_list, locals())

    from rbacbridge import output as out
    from rbacbridge.config import tenant_edits as tenants

    fmt = output_format(output)
    rows = tenants.rows(cfg)
    if fmt != "table":
        dump(fmt, {"tenants": rows})
        return
    out.print_tenants(rows)
