"""The typer app: the global options and the table of commands (in the order `rbacbridge --help` lists them)."""

from typing import Annotated

import typer

from rbacbridge.cli import audit, demo, documents, iptables, migrate, plan_apply, tenant, verify
from rbacbridge.cli.group import Group
from rbacbridge.errors import EXIT_OK

EPILOG = ("Exit codes (every command): 0 ok, 1 failed, 2 bad input or refused (nothing changed), "
          "3 could not complete, 4 changes pending (plan --exit-code), 130 interrupted.")

app = typer.Typer(
    cls=Group,
    name="rbacbridge",
    help="Set up, verify and tear down kube2iam's Kubernetes-to-AWS IAM bridge (pods stop inheriting the node's IAM role).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from rbacbridge import __version__

        typer.echo(f"rbacbridge {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback(epilog=EPILOG)
def _root(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit", is_eager=True, callback=_print_version)] = False,
    debug: Annotated[bool, typer.Option("--debug", help="on an error, also print the Python trace (anywhere on the line; or RBACBRIDGE_DEBUG=1)")] = False,
) -> None:
    """Global options (they go before the command; --debug may go anywhere)."""


# Commands first, then the groups: `--help` lists them in this order.
app.command()(plan_apply.plan)
app.command()(plan_apply.setup)
app.command()(plan_apply.teardown)
app.command()(demo.demo)
app.command("config-reference")(documents.config_reference)
app.command("config-schema")(documents.config_schema)
app.command()(documents.permissions)
app.command()(documents.render)
app.command()(verify.verify)
app.command()(audit.audit)
app.add_typer(tenant.tenant_app, name="tenant")
app.add_typer(iptables.iptables_app, name="iptables")
app.add_typer(migrate.migrate_app, name="migrate")
