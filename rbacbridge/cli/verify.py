"""`rbacbridge verify`: the S3 access matrix and the role chains, expected vs observed (rbacbridge/verify/)."""

import sys
from typing import Annotated, Optional

import typer

from rbacbridge.cli.common import dump, run_context
from rbacbridge.cli.options import (AcceptNewOpt, AccountOpt, ConfigOpt, ContextOpt, EndpointOpt, KnownHostsOpt, KubeconfigOpt,
                                    NginxNamespaceOpt, OldNamespaceOpt, ProfileOpt, RegionOpt, SshConfigOpt, SshKeyOpt, SshPortOpt, SshUserOpt,
                                    ViaOpt, choice, config_from)
from rbacbridge.errors import RbacbridgeError, UsageError


def verify(
    stage: Annotated[str, typer.Option("--stage", metavar="[before|after]", help="before: every principal expects the node role (article steps 10-11); after: kube2iam's matrix (step 15)")] = "after",
    output: Annotated[str, typer.Option("--output", "-o", metavar="[table|json|yaml|junit]", help="output format")] = "table",
    junit_file: Annotated[Optional[str], typer.Option("--junit-file", metavar="FILE", help="also write a JUnit XML report here", show_default=False)] = None,
    probe: Annotated[str, typer.Option("--probe", metavar="[exec|ephemeral]", help="exec: the AWS CLI inside the pod; ephemeral: an ephemeral AWS CLI container")] = "exec",
    probe_from: Annotated[str, typer.Option("--probe-from", metavar="[rbacbridge|pod]", help="rbacbridge: one exec per pod reads its identity and the credentials it received, and rbacbridge makes the bucket and chain calls with them (one per role, location and action), spot-checked in each pod; pod: every cell's call made inside the pod")] = "rbacbridge",
    settle: Annotated[Optional[str], typer.Option("--settle", metavar="SECONDS", help="observe cells that disagree again, with backoff, for up to SECONDS from the start (IAM propagation right after a change); 0: never. Default: on real AWS, until 60 s after the last trust or policy change setup's record notes; none with an endpoint override", show_default=False)] = None,
    install_cli: Annotated[bool, typer.Option("--install-cli", help="install the AWS CLI in pods that lack it (article step 9)")] = False,
    node: Annotated[Optional[str], typer.Option("--node", metavar="HOST[:PORT]", help="SSH address of the host node (else the nodes the pods run on)", show_default=False)] = None,
    host_ip: Annotated[Optional[str], typer.Option("--host-ip", metavar="IP", help="node IP kube2iam's DNAT rule should point at (for messages)", show_default=False)] = None,
    no_drift_check: Annotated[bool, typer.Option("--no-drift-check", help="skip comparing live IAM and Kubernetes state with what setup wants")] = False,
    every_node: Annotated[bool, typer.Option("--every-node", help="probe every cell on every node (default: bucket and chain cells once per workload and observed role)")] = False,
    tenant: Annotated[Optional[str], typer.Option("--tenant", metavar="NAME", help="only this tenant's pods (their own and cross-tenant cells); no host, no default-role pod", show_default=False)] = None,
    no_annotation_probe: Annotated[bool, typer.Option("--no-annotation-probe", help="skip the annotation cells: no probe pod in one tenant's namespace annotated with another tenant's role")] = False,
    baseline: Annotated[Optional[str], typer.Option("--baseline", metavar="FILE", help="compare every cell with an earlier `verify -o json` report (e.g. taken before a migration): a cell that gained or lost access, or now gets another role, fails on the layer migration", show_default=False)] = None,
    allow_unverified: Annotated[bool, typer.Option("--allow-unverified", help="a tenant with no running pod whose probe pod could not run (admission, RBAC, no node, image) is reported \"not verified\" but does not fail the run (else exit 3)")] = False,
    config: ConfigOpt = None, account_id: AccountOpt = None,
    profile: ProfileOpt = None, region: RegionOpt = None, endpoint_url: EndpointOpt = None,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None, nginx_namespace: NginxNamespaceOpt = None, namespace: OldNamespaceOpt = None,
    ssh_user: SshUserOpt = None, ssh_key: SshKeyOpt = None, known_hosts: KnownHostsOpt = None, ssh_port: SshPortOpt = None,
    ssh_config: SshConfigOpt = None, accept_new_host_keys: AcceptNewOpt = False, via: ViaOpt = None,
) -> None:
    """Check the S3 access matrix per tenant and the chains into managed roles: expected (from the configuration)
    vs observed (real calls), after a drift check; a tenant without a running pod on a node is checked from a probe
    pod there. Exit 0 all match, 1 a mismatch or finding, 3 could not verify (AWS unreachable, a tenant not verified)."""
    cfg = config_from(verify, locals())

    from rbacbridge import report
    from rbacbridge.config import node_addresses
    from rbacbridge.errors import shown
    from rbacbridge.verify import PROBE_FROM, STAGES, LiveOptions, run_live

    choice("--stage", stage, STAGES)
    choice("--output", output, tuple(report.FORMATS) + ("yaml",))
    choice("--probe", probe, ("exec", "ephemeral"))
    choice("--probe-from", probe_from, PROBE_FROM)
    from rbacbridge.verify.settle import parse_settle

    settle_seconds = parse_settle(settle)
    earlier = None
    if baseline is not None:
        from rbacbridge.verify.migration import load_baseline

        earlier = load_baseline(baseline)  # unreadable or not a report: one line, exit 2, before anything is contacted
    if tenant is not None:
        cfg.tenant(tenant)  # an unknown name: one line, exit 2, before anything is contacted
    if node is not None:
        node_addresses("--node", node)
    if host_ip is not None:
        import ipaddress

        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise UsageError(f"invalid --host-ip {shown(host_ip)}: not an IP address") from None
    ctx = run_context(cfg, None, "json" if output != "table" else "table")
    from rbacbridge.errors import IncompleteError

    try:
        result = run_live(ctx, LiveOptions(stage=stage, probe=probe, install_cli=install_cli, node=node, host_ip=host_ip,
                                           drift_check=not no_drift_check, tenant=tenant, share=not every_node,
                                           annotation_probe=not no_annotation_probe, allow_unverified=allow_unverified,
                                           probe_from=probe_from, settle=settle_seconds))
    except IncompleteError as exc:
        report.github_error(str(exc))  # only under GITHUB_ACTIONS=true; the one-line error follows
        raise
    if earlier is not None:
        from rbacbridge.verify.migration import apply_baseline

        apply_baseline(result, earlier, f"--baseline {baseline}")
    _render_verify(result, output, junit_file)
    raise typer.Exit(result.exit_code)


def _render_verify(result, output: str, junit_file: str | None) -> None:
    from rbacbridge import report

    if junit_file:
        try:
            with open(junit_file, "w", encoding="utf-8") as fh:
                fh.write(report.to_junit(result))
        except OSError as exc:
            raise RbacbridgeError(f"cannot write --junit-file {junit_file}: {exc.strerror or exc}") from None
    if output == "json":
        sys.stdout.write(report.to_json(result))
    elif output == "yaml":
        import json

        dump("yaml", json.loads(report.to_json(result)))
    elif output == "junit":
        sys.stdout.write(report.to_junit(result))
    else:
        report.print_table(result)
    report.github_output(result)  # only under GITHUB_ACTIONS=true
