"""The typer app: the global options and the table of commands (in the order `rbacbridge --help` lists them)."""

from typing import Annotated, Optional

import typer

from rbacbridge.cli import audit, completion, demo, documents, iptables, migrate, plan_apply, tenant, verify
from rbacbridge.cli.examples import examples
from rbacbridge.cli.group import Group
from rbacbridge.errors import EXIT_OK

EPILOG = ("Exit codes (every command): 0 ok, 1 failed, 2 bad input or refused (nothing changed), "
          "3 could not complete, 4 changes pending (plan --exit-code), 130 interrupted.")

app = typer.Typer(
    cls=Group,
    name="rbacbridge",
    help="Set up, verify and tear down kube2iam's Kubernetes-to-AWS IAM bridge (pods stop inheriting the node's IAM role).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command and group
    add_completion=False,  # rbacbridge.cli.completion: the shell named wins over the one detected
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from rbacbridge import __version__

        typer.echo(f"rbacbridge {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback(epilog=EPILOG + "\n\n" + examples(""))
def _root(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit", is_eager=True, callback=_print_version)] = False,
    debug: Annotated[bool, typer.Option("--debug", help="on an error, also print the Python trace (anywhere on the line; or RBACBRIDGE_DEBUG=1)")] = False,
    install_completion: Annotated[Optional[str], typer.Option("--install-completion", metavar="[SHELL]", help="install completion for SHELL: bash, zsh, fish or powershell (else the shell running rbacbridge)", is_eager=True, expose_value=False, callback=completion.install_callback, show_default=False)] = None,
    show_completion: Annotated[Optional[str], typer.Option("--show-completion", metavar="[SHELL]", help="print the completion script for SHELL (else the shell running rbacbridge)", is_eager=True, expose_value=False, callback=completion.show_callback, show_default=False)] = None,
) -> None:
    """Global options (they go before the command; --debug may go anywhere)."""


# Commands first, then the groups: `--help` lists them in this order.
app.command(epilog=examples("plan"))(plan_apply.plan)
app.command(epilog=examples("setup"))(plan_apply.setup)
app.command(epilog=examples("teardown"))(plan_apply.teardown)
app.command(epilog=examples("demo"))(demo.demo)
app.command("config-reference", epilog=examples("config-reference"))(documents.config_reference)
app.command("config-schema", epilog=examples("config-schema"))(documents.config_schema)
app.command(epilog=examples("permissions"))(documents.permissions)
app.command(epilog=examples("render"))(documents.render)
app.command(epilog=examples("verify"))(verify.verify)
app.command(epilog=examples("audit"))(audit.audit)
app.add_typer(tenant.tenant_app, name="tenant")
app.add_typer(iptables.iptables_app, name="iptables")
app.add_typer(migrate.migrate_app, name="migrate")
