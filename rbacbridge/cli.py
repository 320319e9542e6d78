"""Command line: parse, call, render. The work lives in the part modules and the planner.

boto3, kubernetes and paramiko are imported inside the commands, never here, so that
`rbacbridge --help` stays instant.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer
import typer.core

from rbacbridge.errors import (EXIT_CHANGES_PENDING, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE,
                               INTERRUPTED_MESSAGE, Interrupted, RbacbridgeError, UsageError, one_line)

EPILOG = ("Exit codes (every command): 0 ok, 1 failed, 2 bad input or refused (nothing changed), "
          "3 could not complete, 4 changes pending (plan --exit-code), 130 interrupted.")

class _Group(typer.core.TyperGroup):
    """typer >= 0.28 coerces every option value through a pydantic TypeAdapter, built on first use:
    a group's own flags left unset (value None) made `rbacbridge SUB --help` import pydantic and
    build one (~2.5x the start-up of `import typer, rich`). An unset flag of a group is False, which
    needs no coercion (bench/bench_startup.py measures it; docs/startup.md)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.default is None:
                param.default = False
            _plain_strings(param)
        return params

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        help_option = command.get_help_option(ctx) if command is not None else None
        for param in [*getattr(command, "params", ()), *([help_option] if help_option else [])]:
            _plain_strings(param)
        return command


def _plain_strings(param) -> None:
    """typer >= 0.28 coerces every option's value through a pydantic TypeAdapter it builds on first use,
    for unset options too: importing pydantic and building the adapters costs ~50 ms of every command
    (bench/bench_aws_setup.py --floor). Here an unset option stays unset without an adapter, and a `str` /
    `list[str]` option takes the strings click parsed as they are (what the adapter returns: a list for
    `list[str]`); anything else goes through typer's own coercion, built when first needed. A typer
    without this internal (`_runtime_param`) is left alone."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or getattr(param, "_runtime_param", False) is not None:
        return
    try:
        from typer._coercion import RuntimeParam, build_runtime_param
    except ImportError:
        return
    annotation = descriptor.annotation

    class Lazy(RuntimeParam):
        def _coerce_value(self, value, param, ctx):
            if annotation is str and isinstance(value, str):
                return value
            if annotation == list[str] and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return list(value)
            return build_runtime_param(descriptor)._coerce_value(value, param=param, ctx=ctx)

    param._runtime_param = Lazy(parameter_info=descriptor.parameter_info, annotation=annotation)


app = typer.Typer(
    cls=_Group,
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


# --- options shared by the commands -----------------------------------------------------------

FORMATS = ("table", "json", "yaml")

ConfigOpt = Annotated[Optional[str], typer.Option("--config", "-c", metavar="FILE", help="rbacbridge.yaml (article values are the defaults)", show_default=False)]
AccountOpt = Annotated[Optional[str], typer.Option("--account-id", metavar="ACCOUNT", help="AWS account id (12 digits); must match the credentials in use", show_default=False)]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", metavar="PROFILE", help="AWS profile (else AWS_PROFILE, env, instance role)", show_default=False)]
RegionOpt = Annotated[Optional[str], typer.Option("--region", metavar="REGION", help="AWS region; else aws.region in the config, AWS_REGION, AWS_DEFAULT_REGION, the profile's region, us-east-1", show_default=False)]
EndpointOpt = Annotated[Optional[str], typer.Option("--endpoint-url", metavar="URL", help="AWS endpoint (else AWS_ENDPOINT_URL)", show_default=False)]
InstanceOpt = Annotated[Optional[list[str]], typer.Option("--instance-id", metavar="ID", help="worker instance id (repeatable; else from the nodes' providerID)", show_default=False)]
KubeconfigOpt = Annotated[Optional[str], typer.Option("--kubeconfig", metavar="FILE", help="kubeconfig file", show_default=False)]
ContextOpt = Annotated[Optional[str], typer.Option("--context", metavar="NAME", help="kubeconfig context", show_default=False)]
NamespaceOpt = Annotated[Optional[str], typer.Option("--namespace", "-n", metavar="NAMESPACE", help="namespace of the nginx Deployments, the tenant's namespace [default: default]", show_default=False)]
HostInterfaceOpt = Annotated[Optional[str], typer.Option("--host-interface", metavar="IFACE", help="kube2iam --host-interface [default: auto = from the cluster's network plugin]", show_default=False)]
NodeSelectorOpt = Annotated[Optional[str], typer.Option("--node-selector", metavar="SELECTOR", help="label selector for the worker nodes", show_default=False)]
OnlyOpt = Annotated[Optional[str], typer.Option("--only", metavar="PARTS", help="parts to act on, comma-separated: aws,kube,nodes [default: all]", show_default=False)]
OutputOpt = Annotated[str, typer.Option("--output", "-o", metavar="[table|json|yaml]", help="output format")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="apply without asking (needed when there is no terminal)")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print the plan only; change nothing")]
NodeOpt = Annotated[Optional[list[str]], typer.Option("--node", metavar="HOST[:PORT]", help="node address or ssh-config alias (repeatable; else nodes.hosts, else the cluster's nodes)", show_default=False)]
SshUserOpt = Annotated[Optional[str], typer.Option("--ssh-user", metavar="USER", help="SSH user (else ~/.ssh/config, else the local user); non-root uses sudo -n", show_default=False)]
SshKeyOpt = Annotated[Optional[str], typer.Option("--ssh-key", metavar="FILE", help="SSH private key (else ~/.ssh/config IdentityFile, agent, ~/.ssh/id_*)", show_default=False)]
KnownHostsOpt = Annotated[Optional[str], typer.Option("--known-hosts", metavar="FILE", help="known_hosts file [default: ~/.ssh/known_hosts]; host keys are always verified", show_default=False)]
SshPortOpt = Annotated[Optional[int], typer.Option("--ssh-port", metavar="PORT", help="SSH port when HOST has none (else ~/.ssh/config, else 22)", show_default=False)]
SshConfigOpt = Annotated[Optional[str], typer.Option("--ssh-config", metavar="FILE", help="ssh config file [default: ~/.ssh/config]; 'none' to ignore", show_default=False)]
AcceptNewOpt = Annotated[bool, typer.Option("--accept-new-host-keys", help="record unknown host keys (OpenSSH accept-new); a changed key is always refused")]
HostIpOpt = Annotated[Optional[str], typer.Option("--host-ip", metavar="IP", help="host IP in kube2iam's rule (else the node's InternalIP, else the address SSH reached)", show_default=False)]
PortOpt = Annotated[Optional[int], typer.Option("--port", metavar="PORT", help="kube2iam --app-port in the rule [default: 8282]", show_default=False)]
ViaOpt = Annotated[Optional[str], typer.Option("--via", metavar="[ssh|kubernetes|auto]", help="how to reach the nodes: ssh, kubernetes (exec in kube2iam's pod there, else a short-lived pod), auto = ssh when --node or SSH options are given [default: auto]", show_default=False)]
AddMissingOpt = Annotated[bool, typer.Option("--add-missing", help="add the iptables rule where it is missing (else kube2iam adds it once it runs)")]
StalePortOpt = Annotated[Optional[list[int]], typer.Option("--stale-port", metavar="PORT", help="an old kube2iam port: its rules to the node are rbacbridge's left-overs, deleted when nothing uses the port (repeatable; else nodes.stale_ports)", show_default=False)]


def _flag_set(value: bool) -> bool | None:
    return True if value else None  # an unset boolean flag must not override the config file


def _as_tuple(value: list[str] | None) -> tuple[str, ...] | None:
    return tuple(value) if value else None


# Options several commands share: (parameter, type, default, Config field, conversion).
_ACCOUNT = (("account_id", AccountOpt, None, "account_id", None),)
_AWS = (("profile", ProfileOpt, None, "profile", None), ("region", RegionOpt, None, "region", None),
        ("endpoint_url", EndpointOpt, None, "endpoint_url", None))
_INSTANCES = (("instance_id", InstanceOpt, None, "instance_ids", _as_tuple),)
_KUBE = (("kubeconfig", KubeconfigOpt, None, "kubeconfig", None), ("context", ContextOpt, None, "context", None))
_NAMESPACE = (("namespace", NamespaceOpt, None, "namespace", None),)
_INTERFACE = (("host_interface", HostInterfaceOpt, None, "host_interface", None),)
_SELECTOR = (("node_selector", NodeSelectorOpt, None, "node_selector", None),)
_NODES = (("node", NodeOpt, None, "node_hosts", _as_tuple),)
_SSH = (("ssh_user", SshUserOpt, None, "ssh_user", None), ("ssh_key", SshKeyOpt, None, "ssh_key", None),
        ("known_hosts", KnownHostsOpt, None, "known_hosts", None), ("ssh_port", SshPortOpt, None, "ssh_port", None),
        ("ssh_config", SshConfigOpt, None, "ssh_config", None),
        ("accept_new_host_keys", AcceptNewOpt, False, "accept_new_host_keys", _flag_set))
_VIA = (("via", ViaOpt, None, "node_via", None),)
_RULE = (("host_ip", HostIpOpt, None, "host_ip", None), ("port", PortOpt, None, "kube2iam_port", None),
         ("add_missing", AddMissingOpt, False, "add_missing", _flag_set))
_STALE = (("stale_port", StalePortOpt, None, "node_stale_ports", _as_tuple),)


def with_config(*groups):
    """Give a command `--config` plus the shared options of `groups`, and hand it the validated
    Config as `cfg` (the file over the defaults, the flags over the file)."""
    import functools
    import inspect

    flags = [("config", ConfigOpt, None, None, None)] + [flag for group in groups for flag in group]
    labels = {field: _flag_name(annotation) for _, annotation, _, field, _ in flags if field}
    needs_region = _AWS in groups

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "cfg"]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
                  for name, annotation, default, _, _ in flags]

        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {name: kwargs.pop(name) for name, *_ in flags}
            overrides = {field: (convert(values[name]) if convert else values[name])
                         for name, _, _, field, convert in flags if field}
            try:
                cfg = _config(values["config"], labels, **overrides)
                if needs_region:
                    from rbacbridge.aws import resolve_region

                    cfg, _ = resolve_region(cfg)
                return command(cfg=cfg, **kwargs)
            except KeyboardInterrupt:
                raise Interrupted("interrupted") from None

        del wrapper.__wrapped__  # typer must read the new signature, not the command's own
        wrapper.__signature__ = signature.replace(parameters=own + shared)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
        return wrapper

    return decorate


def _flag_name(annotation) -> str | None:
    """The long option name (`--instance-id`) declared in an Annotated[..., typer.Option(...)]."""
    for meta in getattr(annotation, "__metadata__", ()):
        # typer keeps the first declaration of an Annotated option in `default`
        declared = [getattr(meta, "default", None), *(getattr(meta, "param_decls", ()) or ())]
        names = [d for d in declared if isinstance(d, str) and d.startswith("--")]
        if names:
            return names[0]
    return None


def _config(config_path: str | None, labels: dict[str, str | None], **overrides):
    from rbacbridge import config as config_module

    base = config_module.load(config_path)
    return base.with_overrides(flags=labels, **overrides)


def _choice(flag: str, value: str, choices) -> str:
    from rbacbridge.errors import shown

    if value not in choices:
        raise UsageError(f"invalid {flag} {shown(value)}: choose from {', '.join(choices)}")
    return value


def _output_format(value: str) -> str:
    return _choice("--output", value, FORMATS)


def _dump(fmt: str, data) -> None:
    """Structured output on stdout: json or yaml."""
    from rbacbridge import output as out

    if fmt == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True))
    else:
        out.dump_json(data)


class _CliReporter:
    """Progress to stderr, so stdout stays clean for `-o json` and pipes."""

    def __init__(self, output: str):
        self._err = None
        self.output = output

    @property
    def err(self):
        """rich's console, made when there is something to say (`-o json` with nothing to report never loads rich)."""
        if self._err is None:
            from rbacbridge.output import console

            self._err = console(stderr=True)
        return self._err

    def progress(self, message: str) -> None:
        self.err.print(f"[dim]...[/dim] {message}")

    def note(self, message: str) -> None:
        self.err.print(f"[dim]note:[/dim] {message}")

    def step_started(self, step) -> None:
        pass

    def step_done(self, step) -> None:
        from rbacbridge.output import step_line

        self.err.print(step_line(step, done=True))

    def show_plan(self, plan, title: str) -> None:
        from rbacbridge.output import print_plan

        print_plan(plan, title, to_stderr=True)


def _context(cfg, only, output, force=False, adopt=False):
    from rbacbridge.planner import Context, parse_parts

    return Context(config=cfg, parts=parse_parts(only), force=force, adopt=adopt, reporter=_CliReporter(output))


def _approve(changes: int, yes: bool, command: str) -> None:
    """Like terraform and eksctl: ask on a terminal; without one, refuse unless --yes was given."""
    if yes or not changes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{changes} change(s) planned and no terminal to confirm them: "
                         f"run `rbacbridge {command}` again with --yes to apply this plan (nothing changed)")
    if not typer.confirm(f"Apply these {changes} changes?", default=False, err=True):
        raise UsageError("not confirmed: nothing changed")


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
            _dump(output, {"plan": plan.to_dict(), "applied": [], "ok": False, "error": f"conflicts: {names}"})
        raise RbacbridgeError(f"{len(plan.conflicts)} conflict(s), nothing changed: {names} (see the plan: each conflict says how to resolve it)")
    if dry_run:
        if output != "table":
            _dump(output, {"plan": plan.to_dict(), "applied": [], "ok": True, "dry_run": True})
        return EXIT_OK
    try:
        _approve(len(plan.changes), yes, verb)
    except UsageError as exc:
        if output != "table":
            _dump(output, {"plan": plan.to_dict(), "applied": [], "ok": False, "error": str(exc)})
        raise
    outcome = run(ctx, plan, teardown=teardown)
    error = None
    if not outcome.ok:
        failure = outcome.failure
        error = f"{failure.failed.message} failed: {failure.error}"
    if output != "table":
        _dump(output, {"plan": outcome.plan.to_dict(), "applied": [s.to_dict() for s in outcome.done], "ok": outcome.ok, "error": error})
    else:
        con = out.console()
        con.print(f"{verb}: {len(outcome.done)} change(s) made" + ("" if outcome.ok else ", then it stopped"))
    if error:
        if getattr(outcome.failure.error, "denied", False):
            # Re-running cannot help: the credentials lack a permission (named in the error).
            raise RbacbridgeError(f"{error} ({len(outcome.done)} change(s) made before it)")
        raise RbacbridgeError(f"{error} (re-run `rbacbridge {verb}` to finish; it plans again from live state)")
    return EXIT_OK


# --- commands ---------------------------------------------------------------------------------


@app.command()
@with_config(_ACCOUNT, _AWS, _INSTANCES, _KUBE, _NAMESPACE, _INTERFACE, _SELECTOR, _NODES, _SSH, _VIA, _STALE)
def plan(
    cfg,
    only: OnlyOpt = None,
    teardown: Annotated[bool, typer.Option("--teardown", help="plan the teardown instead")] = False,
    exit_code: Annotated[bool, typer.Option("--exit-code", help="exit 4 when the plan has changes or conflicts, 1 when it has a finding (an exposure setup does not change), 0 when it has neither (like git diff --exit-code)")] = False,
    output: OutputOpt = "table",
) -> None:
    """Show every step setup (or teardown) would take against live state. Changes nothing."""
    fmt = _output_format(output)
    result = _show_plan(cfg, only, fmt, teardown)
    if exit_code and result.findings:
        raise typer.Exit(EXIT_FAILED)  # setup cannot fix it: a human must
    if exit_code and (result.changes or result.conflicts):
        raise typer.Exit(EXIT_CHANGES_PENDING)


def _show_plan(cfg, only, fmt: str, teardown: bool = False):
    """Plan against live state and print it (what `rbacbridge plan` shows)."""
    from rbacbridge import output as out
    from rbacbridge import planner

    ctx = _context(cfg, only, fmt)
    result = planner.plan_teardown(ctx) if teardown else planner.plan_setup(ctx)
    if fmt != "table":
        out.print_notes(result, notes=False)
        _dump(fmt, result.to_dict())
    else:
        out.print_plan(result, "rbacbridge teardown plan" if teardown else "rbacbridge setup plan")
    return result


@app.command()
@with_config(_ACCOUNT, _AWS, _INSTANCES, _KUBE, _NAMESPACE, _INTERFACE, _SELECTOR, _NODES, _SSH, _VIA, _STALE)
def setup(
    cfg,
    only: OnlyOpt = None,
    adopt: Annotated[bool, typer.Option("--adopt", help="take over same-named resources that exist without rbacbridge's tag (and a kube2iam DaemonSet at rbacbridge's name and namespace)")] = False,
    force: Annotated[bool, typer.Option("--force", help="nodes: also delete iptables rules to this node that a running interceptor uses (a conflict otherwise)")] = False,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    output: OutputOpt = "table",
) -> None:
    """Create or update everything (IAM, instance profiles, kube2iam, iptables) idempotently.
    Shows the plan first; asks on a terminal, and without one needs --yes."""
    from rbacbridge import planner

    fmt = _output_format(output)
    ctx = _context(cfg, only, fmt, force=force, adopt=adopt)
    if "aws" in ctx.parts and not cfg.account_id:
        raise UsageError("setup needs --account-id (or account_id in the config): the account you mean to change")
    raise typer.Exit(_apply(ctx, planner.plan_setup(ctx), fmt, dry_run, yes, teardown=False))


@app.command()
@with_config(_ACCOUNT, _AWS, _INSTANCES, _KUBE, _NAMESPACE, _INTERFACE, _SELECTOR, _NODES, _SSH, _VIA, _STALE)
def teardown(
    cfg,
    only: OnlyOpt = None,
    force: Annotated[bool, typer.Option("--force", help="also delete same-named resources without rbacbridge's tag, and iptables rules to a node that a running interceptor uses")] = False,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    output: OutputOpt = "table",
) -> None:
    """Undo setup in reverse order; delete only what rbacbridge owns; restore what it replaced.
    Shows the plan first; asks on a terminal, and without one needs --yes."""
    from rbacbridge import planner

    fmt = _output_format(output)
    ctx = _context(cfg, only, fmt, force=force)
    raise typer.Exit(_apply(ctx, planner.plan_teardown(ctx), fmt, dry_run, yes, teardown=True))


@app.command()
def demo(
    keep: Annotated[bool, typer.Option("--keep", help="leave the sandbox running until Ctrl-C")] = False,
    break_: Annotated[Optional[str], typer.Option("--break", metavar="[trust|policy|iptables|namespace]", help="plant one fault for verify to catch: trust, policy, iptables or namespace", show_default=False)] = None,
    scenario: Annotated[str, typer.Option("--scenario", metavar="[article|abc]", help="article: the walkthrough's one tenant; abc: clients A, B and C, only C with a bucket (the breach before kube2iam, isolation after)")] = "article",
    config: Annotated[Optional[str], typer.Option("--config", "-c", metavar="FILE", help="run the sandbox with this rbacbridge.yaml's tenants (instead of --scenario)", show_default=False)] = None,
    output: Annotated[str, typer.Option("--output", "-o", metavar="[table|json]", help="json: the before and after matrices on stdout (the story on stderr)")] = "table",
) -> None:
    """Sandbox walk-through on an embedded moto server: plan, setup, no-op re-run, verify matrix before and after
    kube2iam, teardown. Try your own tenants with -c FILE; no AWS account needed."""
    from rbacbridge.demo import OUTPUTS, SCENARIOS, run_demo

    if break_ is not None:
        from rbacbridge.sandbox import FAULTS

        _choice("--break", break_, FAULTS)
    _choice("--scenario", scenario, SCENARIOS)
    _choice("--output", output, OUTPUTS)
    if config is not None and scenario != "article":
        raise UsageError("give --scenario or -c FILE, not both")
    raise typer.Exit(run_demo(keep=keep, fault=break_, config_path=config, scenario=scenario, output=output))


@app.command("config-reference")
def config_reference() -> None:
    """Every setting of rbacbridge.yaml with its default."""
    from rbacbridge.config import SCHEMA, TENANT_REFERENCE

    for option in SCHEMA:
        default = option.default
        if default in ((), None):
            default = "-"
        elif isinstance(default, tuple) and isinstance(default[0], dict):  # tolerations: as YAML flow style
            import json

            default = json.dumps(list(default)).replace('"', "")
        typer.echo(f"{option.path:32} {str(default):28} {option.help}")
    for path, default, text in TENANT_REFERENCE:
        typer.echo(f"{path:32} {default:28} {text}")


@app.command("config-schema")
def config_schema() -> None:
    """The JSON Schema (draft 2020-12) of rbacbridge.yaml, for editors and linters. Offline."""
    from rbacbridge.config_schema import schema_json

    sys.stdout.write(schema_json())


@app.command()
@with_config(_ACCOUNT, _AWS, _INSTANCES)
def permissions(
    cfg,
    restore_role: Annotated[Optional[list[str]], typer.Option("--restore-role", help="role of an instance profile the nodes had before setup (teardown gives it back; repeatable)", show_default=False)] = None,
) -> None:
    """Print the least-privilege IAM policy (JSON) the operator needs for plan, setup, teardown and verify,
    scoped to the configured names, account, region and --instance-id's. Offline."""
    import json

    from rbacbridge.permissions import operator_policy

    document = operator_policy(cfg, cfg.account_id, tuple(restore_role or ()))
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


@app.command()
@with_config(_ACCOUNT, _INTERFACE, _KUBE, _NAMESPACE)
def render(
    cfg,
    output: Annotated[str, typer.Option("--output", "-o", metavar="[yaml|json]", help="yaml (a multi-document stream) or json (one List)")] = "yaml",
    out_dir: Annotated[Optional[str], typer.Option("--out-dir", help="write one file per object into this directory (the whole set or nothing; symlinks refused) instead of stdout", show_default=False)] = None,
) -> None:
    """Write the Kubernetes manifests (kube2iam RBAC + DaemonSet, nginx Deployments, namespace annotation)
    for `kubectl apply -f -` or GitOps. Offline unless --kubeconfig/--context is given (then
    --host-interface auto is detected from that cluster; offline it falls back to docker0)."""
    from rbacbridge import kube

    if output not in kube.RENDER_FORMATS:
        raise UsageError(f"invalid --output {output!r}: choose from {', '.join(kube.RENDER_FORMATS)}")
    if out_dir is not None and not out_dir.strip():
        raise UsageError("--out-dir must name a directory (got an empty string)")
    if not cfg.account_id:
        raise UsageError("render needs --account-id (or account_id in the config) for kube2iam's --base-role-arn")
    err = sys.stderr
    if cfg.host_interface != "auto":
        interface = cfg.host_interface
    elif cfg.kubeconfig or cfg.context:
        from rbacbridge.planner import Context

        interface, reason = kube.host_interface(Context(config=cfg, parts=("kube",)))
        print(f"note: {reason}", file=err)
    else:
        interface = kube.FALLBACK_INTERFACE
        print(f"note: host interface {interface} (offline; pass --host-interface, or --kubeconfig/--context to detect it)", file=err)
    objects = kube.desired_objects(cfg, interface)
    if out_dir is None:
        sys.stdout.write(kube.render_stream(objects, output))
        return
    documents = kube.render_documents(objects, output)
    directory = kube.write_manifests(out_dir, documents)
    print(f"wrote {len(documents)} manifests to {directory}", file=err)
# --- rbacbridge iptables status|fix|remove -----------------------------------------------------

tenant_app = typer.Typer(
    cls=_Group,
    help="Edit the tenants: of the config file (-c; comments and order kept), then print the plan that applies it. "
         "Changes nothing but the file.",
    no_args_is_help=True,
)
app.add_typer(tenant_app, name="tenant")

NoPlanOpt = Annotated[bool, typer.Option("--no-plan", help="only edit the file; do not plan against AWS and the cluster")]
_PLAN_FLAGS = _ACCOUNT + _AWS + _KUBE


def _config_file(config: str | None) -> str:
    if not config:
        raise UsageError("tenant commands edit a config file: give it with -c/--config FILE")
    return config


def _after_edit(edit, plan_values: dict, only, output: str, no_plan: bool) -> None:
    """Say what the edit did (stderr), then print the plan that applies it (stdout, as `rbacbridge plan`)."""
    for message in edit.messages:
        typer.echo(message, err=True)
    if no_plan:
        return
    labels = {field: _flag_name(annotation) for _, annotation, _, field, _ in _PLAN_FLAGS}
    overrides = {field: plan_values[name] for name, _, _, field, _ in _PLAN_FLAGS}
    try:
        from rbacbridge.aws import resolve_region

        cfg = _config(str(edit.path), labels, **overrides)
        cfg, _ = resolve_region(cfg)
        _show_plan(cfg, only, output)
    except (RbacbridgeError, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted("interrupted") from None
        # the file is written: not "nothing changed" (exit 2), but an incomplete command (exit 3)
        from rbacbridge.errors import IncompleteError

        raise IncompleteError(f"{edit.path} was updated, but the plan could not be made: {exc} "
                              f"(run `rbacbridge plan -c {edit.path}` when it can)") from None


@tenant_app.command("add")
def tenant_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="tenant name (Kubernetes name rules)", show_default=False)],
    namespace: Annotated[Optional[list[str]], typer.Option("--namespace", "-n", metavar="NS", help="a namespace of the tenant (repeatable; the first holds its workloads)", show_default=False)] = None,
    read: Annotated[Optional[list[str]], typer.Option("--read", metavar="BUCKET[/PREFIX/*]", help="bucket it may list and read (repeatable)", show_default=False)] = None,
    write: Annotated[Optional[list[str]], typer.Option("--write", metavar="BUCKET[/PREFIX/*]", help="bucket it may list, read, write and delete in (repeatable)", show_default=False)] = None,
    role: Annotated[Optional[str], typer.Option("--role", metavar="NAME", help="role rbacbridge creates for it [default: NAME-s3]", show_default=False)] = None,
    existing_role: Annotated[Optional[str], typer.Option("--existing-role", metavar="ARN", help="an existing role rbacbridge only links (never creates, changes or deletes)", show_default=False)] = None,
    policy: Annotated[Optional[str], typer.Option("--policy", metavar="NAME", help="name of its S3 policy [default: the role name]", show_default=False)] = None,
    workload: Annotated[Optional[list[str]], typer.Option("--workload", metavar="NAME", help="nginx Deployment setup creates in its first namespace, with its role (repeatable; for verify)", show_default=False)] = None,
    config: ConfigOpt = None,
    only: OnlyOpt = None,
    no_plan: NoPlanOpt = False,
    output: OutputOpt = "table",
    account_id: AccountOpt = None, profile: ProfileOpt = None, region: RegionOpt = None, endpoint_url: EndpointOpt = None,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
) -> None:
    """Add a tenant to the config file (a file without tenants: first gets the article's tenant as an
    explicit entry), validate the whole result, write it atomically, print the plan."""
    from rbacbridge import tenants

    fmt = _output_format(output)
    edit = tenants.add(_config_file(config), name, list(namespace or []), list(read or []), list(write or []),
                       role, existing_role, policy, list(workload or []))
    _after_edit(edit, locals(), only, fmt, no_plan)


@tenant_app.command("remove")
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
    from rbacbridge import tenants

    fmt = _output_format(output)
    edit = tenants.remove(_config_file(config), name)
    _after_edit(edit, locals(), only, fmt, no_plan)


@tenant_app.command("list")
@with_config()
def tenant_list(cfg, output: OutputOpt = "table") -> None:
    """The tenants of the config (without tenants: the article's one, from the legacy keys). Offline."""
    from rbacbridge import output as out
    from rbacbridge import tenants

    fmt = _output_format(output)
    rows = tenants.rows(cfg)
    if fmt != "table":
        _dump(fmt, {"tenants": rows})
        return
    out.print_tenants(rows)


iptables_app = typer.Typer(
    cls=_Group,
    help="kube2iam's iptables rule on each node (over SSH or through Kubernetes, --via): report it, keep exactly one, or remove it.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(iptables_app, name="iptables")



def _iptables_run(cfg, command: str, dry_run: bool, yes: bool, output: str, force: bool = False) -> None:
    from rbacbridge import output as out
    from rbacbridge.nodes import run_iptables

    fmt = _output_format(output)
    ctx = _context(cfg, "nodes", fmt, force=force)

    def show_plan(plan) -> None:
        out.print_plan(plan, f"rbacbridge iptables {command} plan" + (" (dry run)" if dry_run else ""), to_stderr=fmt != "table")

    def confirm(plan) -> bool:
        _approve(len(plan.changes), yes, f"iptables {command}")
        return True

    result = run_iptables(ctx, command, show_plan=show_plan, confirm=confirm, dry_run=dry_run)
    if fmt != "table":
        _dump(fmt, result.to_dict())
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
    @with_config(_NODES, _SSH, _RULE, _INTERFACE, _KUBE, _VIA, _STALE)
    def cmd(cfg, dry_run: DryRunOpt = False, yes: YesOpt = False, output: OutputOpt = "table",
            force: Annotated[bool, typer.Option("--force", help="also delete rules to this node that a running interceptor uses (a conflict otherwise)")] = False) -> None:
        _iptables_run(cfg, command, dry_run, yes, output, force)

    cmd.__doc__ = doc
    iptables_app.command(command)(cmd)


@iptables_app.command("status")
@with_config(_NODES, _SSH, _RULE, _INTERFACE, _KUBE, _VIA, _STALE)
def iptables_status(cfg, output: OutputOpt = "table") -> None:
    """Show each node's kube2iam rules: kept, duplicate, stale, missing, other tools'. Changes nothing."""
    _iptables_run(cfg, "status", dry_run=False, yes=False, output=output)


_iptables_cmd("fix", "Keep exactly one rule matching the kube2iam settings on each node; delete duplicates and stale rules.")
_iptables_cmd("remove", "Delete kube2iam's rules to this node on each node (teardown: no pod's metadata call goes to a dead port); other tools' and other interceptors' rules are left alone.")


@app.command()
@with_config(_ACCOUNT, _AWS, _KUBE, _NAMESPACE, _SSH, _VIA)
def verify(
    cfg,
    stage: Annotated[str, typer.Option("--stage", metavar="[before|after]", help="before: every principal expects the node role (article steps 10-11); after: kube2iam's matrix (step 15)")] = "after",
    output: Annotated[str, typer.Option("--output", "-o", metavar="[table|json|yaml|junit]", help="output format")] = "table",
    junit_file: Annotated[Optional[str], typer.Option("--junit-file", metavar="FILE", help="also write a JUnit XML report here", show_default=False)] = None,
    probe: Annotated[str, typer.Option("--probe", metavar="[exec|ephemeral]", help="exec: the AWS CLI inside the pod; ephemeral: an ephemeral AWS CLI container")] = "exec",
    install_cli: Annotated[bool, typer.Option("--install-cli", help="install the AWS CLI in pods that lack it (article step 9)")] = False,
    node: Annotated[Optional[str], typer.Option("--node", metavar="HOST[:PORT]", help="SSH address of the host node (else the nodes the pods run on)", show_default=False)] = None,
    host_ip: Annotated[Optional[str], typer.Option("--host-ip", metavar="IP", help="node IP kube2iam's DNAT rule should point at (for messages)", show_default=False)] = None,
    no_drift_check: Annotated[bool, typer.Option("--no-drift-check", help="skip comparing live IAM and Kubernetes state with what setup wants")] = False,
    every_node: Annotated[bool, typer.Option("--every-node", help="probe every cell on every node (default: bucket and chain cells once per workload and observed role)")] = False,
    tenant: Annotated[Optional[str], typer.Option("--tenant", metavar="NAME", help="only this tenant's pods (their own and cross-tenant cells); no host, no default-role pod", show_default=False)] = None,
    no_annotation_probe: Annotated[bool, typer.Option("--no-annotation-probe", help="create no probe pods: skip the annotation cells (a pod in one tenant's namespace annotated with another tenant's role)")] = False,
) -> None:
    """Check the S3 access matrix per tenant and the chains into managed roles: expected (from the configuration)
    vs observed (real calls), after a drift check. Exit 0 all match, 1 a mismatch or finding, 3 could not verify."""
    from rbacbridge import report
    from rbacbridge.config import node_addresses
    from rbacbridge.errors import shown
    from rbacbridge.verify import STAGES, LiveOptions, run_live

    _choice("--stage", stage, STAGES)
    _choice("--output", output, tuple(report.FORMATS) + ("yaml",))
    _choice("--probe", probe, ("exec", "ephemeral"))
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
    ctx = _context(cfg, None, "json" if output != "table" else "table")
    from rbacbridge.errors import IncompleteError

    try:
        result = run_live(ctx, LiveOptions(stage=stage, probe=probe, install_cli=install_cli, node=node, host_ip=host_ip,
                                           drift_check=not no_drift_check, tenant=tenant, share=not every_node,
                                           annotation_probe=not no_annotation_probe))
    except IncompleteError as exc:
        report.github_error(str(exc))  # only under GITHUB_ACTIONS=true; the one-line error follows
        raise
    _render_verify(result, output, junit_file)
    raise typer.Exit(result.exit_code)


@app.command()
@with_config(_AWS, _KUBE, _INTERFACE, _NODES, _SSH, _RULE[:2], _VIA)
def audit(
    cfg,
    click_ctx: typer.Context,
    only: OnlyOpt = None,
    output: Annotated[str, typer.Option("--output", "-o", metavar="[table|json|junit]", help="output format")] = "table",
    fail_on: Annotated[str, typer.Option("--fail-on", metavar="[high|medium|low]", help="exit 1 when a finding reaches this severity")] = "high",
    junit_file: Annotated[Optional[str], typer.Option("--junit-file", help="also write a JUnit XML report here", show_default=False)] = None,
) -> None:
    """Read-only health check of any kube2iam installation (Helm, by hand or rbacbridge's): findings with
    severity, evidence and fix. Needs no config. Exit 0 clean, 1 a finding reaches --fail-on, 3 incomplete."""
    from rbacbridge.audit import FAIL_ON, exit_code, run_audit
    from rbacbridge.audit import render

    if output not in render.FORMATS:
        raise UsageError(f"invalid --output {output!r}: choose from {', '.join(render.FORMATS)}")
    if fail_on not in FAIL_ON:
        raise UsageError(f"invalid --fail-on {fail_on!r}: choose from {', '.join(FAIL_ON)}")
    ctx = _context(cfg, only, "json" if output != "table" else "table")
    result = run_audit(ctx, config_given=click_ctx.params.get("config") is not None, explicit_parts=only is not None)
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
    else:
        render.print_table(result, fail_on)
    raise typer.Exit(exit_code(result, fail_on))


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

        _dump("yaml", json.loads(report.to_json(result)))
    elif output == "junit":
        sys.stdout.write(report.to_junit(result))
    else:
        report.print_table(result)
    report.github_output(result)  # only under GITHUB_ACTIONS=true


def main() -> None:
    """Run the CLI: one line on stderr and an exit code from rbacbridge.errors for every failure."""
    argv = sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("RBACBRIDGE_DEBUG") == "1"
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
    _handle_signals()
    try:
        code = _run(argv, debug)
    except KeyboardInterrupt:
        code = interrupted()
    _exit(code)


def _handle_signals() -> None:
    """SIGTERM (a CI job cancelled, `kill`, a pod stopped) is handled like Ctrl-C: the same KeyboardInterrupt,
    so the same `finally` blocks delete what the run created, the same line and exit code 130. Both also set
    rbacbridge.cleanup's stop flag, which ends worker threads' waits and new creations at once. A signal the
    process inherited as ignored (nohup, a background job) stays ignored."""
    import signal

    from rbacbridge import cleanup

    cleanup.reset()
    _interrupt_said.clear()

    def interrupt(signum, frame):
        cleanup.stop()
        _watchdog()
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupt)


INTERRUPT_GRACE = 5.0  # seconds the unwinding may take after Ctrl-C / SIGTERM before the watchdog ends the run
_interrupt_said = []


def _watchdog() -> None:
    """After the first Ctrl-C / SIGTERM: if the process has not exited INTERRUPT_GRACE seconds later (the main
    thread joining a worker stuck in a node command, say), delete what the run created, say so, exit 130."""
    import threading

    if getattr(_watchdog, "started", False):
        return
    _watchdog.started = True  # type: ignore[attr-defined]

    def run() -> None:
        import time

        from rbacbridge import cleanup

        time.sleep(INTERRUPT_GRACE)
        cleanup.undo_all()
        if not _interrupt_said:
            _error_line(INTERRUPTED_MESSAGE)
        os._exit(EXIT_INTERRUPTED)

    threading.Thread(target=run, name="rbacbridge-interrupted", daemon=True).start()


def interrupted() -> int:
    """Ctrl-C or SIGTERM, wherever it came: one line, exit 130. A re-run plans again from live state."""
    import signal

    from rbacbridge import cleanup

    cleanup.stop()
    for signum in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the clean-up short
        signal.signal(signum, signal.SIG_IGN)
    if not _interrupt_said:
        _interrupt_said.append(True)
        _error_line(INTERRUPTED_MESSAGE)
    return EXIT_INTERRUPTED


def _error_line(text: str) -> None:
    from rbacbridge.errors import redact

    try:
        sys.stderr.write(f"error: {one_line(redact(str(text)), 293)}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _exit(code: int) -> None:
    import signal

    # The exit code is decided: a Ctrl-C (or SIGTERM) from now on must not replace it with a traceback or -2.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from rbacbridge import cleanup

    if code == EXIT_INTERRUPTED or cleanup.pending():
        # Pods this run created and has not deleted (a worker thread still waiting, a wait cut short) go now,
        # before os._exit below stops every thread.
        cleanup.undo_all()
        if code != EXIT_INTERRUPTED:
            cleanup.reset()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code == EXIT_INTERRUPTED:
        # Leave now: do not wait for worker threads (SSH commands) or run exit hooks that a
        # second Ctrl-C could interrupt with a traceback (or an exit status of -2).
        os._exit(code)
    sys.exit(code)


def _run(argv: list[str], debug: bool) -> int:
    try:
        code = app(args=argv, prog_name="rbacbridge", standalone_mode=False)
        if code == EXIT_INTERRUPTED:
            return interrupted()  # typer turned Ctrl-C into a silent exit code 130
        return code if isinstance(code, int) else EXIT_OK
    except typer.Exit as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return interrupted()  # typer turns Ctrl-C into a silent Exit(130)
        return exc.exit_code
    except RbacbridgeError as exc:
        if isinstance(exc, Interrupted):
            return interrupted()
        if debug:
            _trace()
        _error_line(str(exc))
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001
        # typer ships its own copy of click's exception classes: recognise them by shape.
        if type(exc).__name__ == "Abort":
            return interrupted()  # Ctrl-C (or end of input) at a prompt
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(exc.format_message())
            return EXIT_OK
        if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
            _error_line(f"{exc.format_message()} (see `rbacbridge --help`)")
            return EXIT_USAGE if exc.exit_code == 2 else exc.exit_code
        if debug:
            _trace()
        _error_line(f"unexpected {type(exc).__name__}: {exc}" + ("" if debug else " (run with --debug for a trace)"))
        return EXIT_FAILED


def _trace() -> None:
    """--debug: the Python trace of the exception being handled, redacted like the error line."""
    import traceback

    from rbacbridge.errors import redact

    try:
        sys.stderr.write(redact(traceback.format_exc()))
    except (OSError, ValueError):
        pass
