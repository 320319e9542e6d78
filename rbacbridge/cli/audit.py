"""`rbacbridge audit`: the read-only health check of any kube2iam installation (rbacbridge/audit/)."""

import sys
from typing import Annotated, Optional

import typer

from rbacbridge.cli.common import run_context
from rbacbridge.cli.options import (AcceptNewOpt, ConfigOpt, ContextOpt, EndpointOpt, HostInterfaceOpt, HostIpOpt, KnownHostsOpt,
                                    KubeconfigOpt, NodeOpt, OnlyOpt, PortOpt, ProfileOpt, RegionOpt, SshConfigOpt, SshKeyOpt,
                                    SshPortOpt, SshUserOpt, ViaOpt, config_from)
from rbacbridge.errors import RbacbridgeError, UsageError


def audit(
    only: OnlyOpt = None,
    output: Annotated[str, typer.Option("--output", "-o", metavar="[table|json|junit|sarif]", help="output format (sarif: SARIF 2.1.0 for code scanning)")] = "table",
    fail_on: Annotated[str, typer.Option("--fail-on", metavar="[high|medium|low]", help="exit 1 when a finding reaches this severity")] = "high",
    junit_file: Annotated[Optional[str], typer.Option("--junit-file", help="also write a JUnit XML report here", show_default=False)] = None,
    who_can: Annotated[bool, typer.Option("--who-can", help="also answer who (users, groups, service accounts) can obtain which AWS role: RBAC x allowed-roles x sts:AssumeRole chains")] = False,
    allow_absent: Annotated[bool, typer.Option("--allow-absent", help="nothing installed yet is expected: no kube2iam DaemonSet, or none of the roles -c names, is a note, not a finding (a partial install still is)")] = False,
    config: ConfigOpt = None, profile: ProfileOpt = None, region: RegionOpt = None, endpoint_url: EndpointOpt = None,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None, host_interface: HostInterfaceOpt = None, node: NodeOpt = None,
    ssh_user: SshUserOpt = None, ssh_key: SshKeyOpt = None, known_hosts: KnownHostsOpt = None, ssh_port: SshPortOpt = None,
    ssh_config: SshConfigOpt = None, accept_new_host_keys: AcceptNewOpt = False, host_ip: HostIpOpt = None, port: PortOpt = None,
    via: ViaOpt = None,
) -> None:
    """Read-only health check of any kube2iam installation (Helm, by hand or rbacbridge's): findings with
    severity, evidence and fix. Needs no config. Exit 0 clean, 1 a finding reaches --fail-on, 3 incomplete."""
    cfg = config_from(audit, locals())

    from rbacbridge.audit import FAIL_ON, exit_code, run_audit
    from rbacbridge.audit import render

    if output not in render.FORMATS:
        raise UsageError(f"invalid --output {output!r}: choose from {', '.join(render.FORMATS)}")
    if fail_on not in FAIL_ON:
        raise UsageError(f"invalid --fail-on {fail_on!r}: choose from {', '.join(FAIL_ON)}")
    ctx = run_context(cfg, only, "json" if output != "table" else "table")
    if who_can and "kube" not in ctx.parts:
        raise UsageError("--who-can needs the kube part: drop --only, or include kube (e.g. --only kube,aws)")
    result = run_audit(ctx, config_given=config is not None, explicit_parts=only is not None, allow_absent=allow_absent)
    if who_can:
        from rbacbridge.audit import who_can as who_can_part

        who_can_part.run(ctx, result, config_given=config is not None)
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
    elif output == "sarif":
        from rbacbridge.audit.sarif import to_sarif

        sys.stdout.write(to_sarif(result, fail_on, config_path=config))
    else:
        render.print_table(result, fail_on)
    raise typer.Exit(exit_code(result, fail_on))
