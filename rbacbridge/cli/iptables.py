"""`rbacbridge iptables status|fix|remove`: kube2iam's rule on each node (rbacbridge/nodes/)."""

from typing import Annotated

import typer

from rbacbridge.cli.common import approve, dump, run_context
from rbacbridge.cli.group import Group
from rbacbridge.cli.examples import examples
from rbacbridge.cli.options import (AcceptNewOpt, AddMissingOpt, ConfigOpt, ContextOpt, DryRunOpt, HostInterfaceOpt, HostIpOpt,
                                    KnownHostsOpt, KubeconfigOpt, NodeOpt, OutputOpt, PortOpt, SshConfigOpt, SshKeyOpt,
                                    SshPortOpt, SshUserOpt, StalePortOpt, ViaOpt, YesOpt, config_from, output_format)
from rbacbridge.errors import RbacbridgeError, one_line

iptables_app = typer.Typer(
    epilog=examples("iptables"),
    cls=Group,
    help="kube2iam's iptables rule on each node (over SSH or through Kubernetes, --via): report it, keep exactly one, or remove it.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _iptables_run(cfg, command: str, dry_run: bool, yes: bool, output: str, force: bool = False) -> None:
    from rbacbridge import output as out
    from rbacbridge.nodes import run_iptables

    fmt = output_format(output)
    ctx = run_context(cfg, "nodes", fmt, force=force)

    def show_plan(plan) -> None:
        out.print_plan(plan, f"rbacbridge iptables {command} plan" + (" (dry run)" if dry_run else ""), to_stderr=fmt != "table")

    def confirm(plan) -> bool:
        approve(len(plan.changes), yes, f"iptables {command}")
        return True

    result = run_iptables(ctx, command, show_plan=show_plan, confirm=confirm, dry_run=dry_run)
    if fmt != "table":
        dump(fmt, result.to_dict())
    else:
        out.print_iptables(result)
    if not result.ok:
        failed = [r for r in result.reports if r.error]
        reasons = "; ".join(r.error if r.error.startswith(r.node) else f"{r.node}: {r.error}" for r in failed)
        raise RbacbridgeError(one_line(f"{len(failed)} of {len(result.reports)} node(s) failed: {reasons}"))
    if result.conflicted and command != "status":
        names = ", ".join(r.node for r in result.conflicted)
        raise RbacbridgeError(f"{len(result.conflicted)} of {len(result.reports)} node(s) left unchanged because of a conflict: "
                              f"{names} (see the plan; --force deletes the rule anyway)")


def _iptables_cmd(command: str, doc: str):
    def cmd(
        dry_run: DryRunOpt = False, yes: YesOpt = False, output: OutputOpt = "table",
        force: Annotated[bool, typer.Option("--force", help="also delete rules to this node that a running interceptor uses (a conflict otherwise)")] = False,
        config: ConfigOpt = None, node: NodeOpt = None,
        ssh_user: SshUserOpt = None, ssh_key: SshKeyOpt = None, known_hosts: KnownHostsOpt = None, ssh_port: SshPortOpt = None,
        ssh_config: SshConfigOpt = None, accept_new_host_keys: AcceptNewOpt = False,
        host_ip: HostIpOpt = None, port: PortOpt = None, add_missing: AddMissingOpt = False, host_interface: HostInterfaceOpt = None,
        kubeconfig: KubeconfigOpt = None, context: ContextOpt = None, via: ViaOpt = None, stale_port: StalePortOpt = None,
    ) -> None:
        cfg = config_from(cmd, locals())
        _iptables_run(cfg, command, dry_run, yes, output, force)

    cmd.__doc__ = doc
    iptables_app.command(command, epilog=examples(f"iptables {command}"))(cmd)


@iptables_app.command("status", epilog=examples("iptables status"))
def iptables_status(
    output: OutputOpt = "table",
    config: ConfigOpt = None, node: NodeOpt = None,
    ssh_user: SshUserOpt = None, ssh_key: SshKeyOpt = None, known_hosts: KnownHostsOpt = None, ssh_port: SshPortOpt = None,
    ssh_config: SshConfigOpt = None, accept_new_host_keys: AcceptNewOpt = False,
    host_ip: HostIpOpt = None, port: PortOpt = None, add_missing: AddMissingOpt = False, host_interface: HostInterfaceOpt = None,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None, via: ViaOpt = None, stale_port: StalePortOpt = None,
) -> None:
    """Show each node's kube2iam rules: kept, duplicate, stale, missing, other tools'. Changes nothing."""
    cfg = config_from(iptables_status, locals())
    _iptables_run(cfg, "status", dry_run=False, yes=False, output=output)


_iptables_cmd("fix", "Keep exactly one rule matching the kube2iam settings on each node; delete duplicates and stale rules.")
_iptables_cmd("remove", "Delete kube2iam's rules to this node on each node (teardown: no pod's metadata call goes to a dead port); other tools' and other interceptors' rules are left alone.")
