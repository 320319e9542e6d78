"""The options several commands share, each declared once as an `Annotated` alias, and the Config they build.

A command lists the aliases it takes among its own parameters, in the order `--help` shows them, and
builds its Config first thing:

    def plan(only: OnlyOpt = None, ..., config: ConfigOpt = None, account_id: AccountOpt = None, ...):
        cfg = config_from(plan, locals())

An alias marked `Sets("field")` overrides that Config field when the flag is given: `config_from` loads
`--config` and lays the command's marked options over it. An option of a command's own (verify's `--node`,
tenant add's `--namespace`) carries no mark and sets nothing, whatever its name.

A new setting with a flag: the field in rbacbridge/config/ (its check names the flag in errors), an
alias here marked `Sets("field")`, and the alias in the parameters of each command that takes it.
"""

from typing import Annotated, Any, Callable, Optional, get_type_hints

import typer

from rbacbridge.errors import UsageError


class Sets:
    """Marks a shared option: the Config field its value overrides (after `convert`; None is "not given").
    `replaced_by`: a deprecated spelling of that flag, still working for one release; using it says so on
    stderr."""

    def __init__(self, field: str, convert: Callable[[Any], Any] | None = None, replaced_by: str | None = None):
        self.field = field
        self.convert = convert
        self.replaced_by = replaced_by


def _flag_set(value: bool) -> bool | None:
    return True if value else None  # an unset boolean flag must not override the config file


def _as_tuple(value: list | None) -> tuple | None:
    return tuple(value) if value else None


FORMATS = ("table", "json", "yaml")

ConfigOpt = Annotated[Optional[str], typer.Option("--config", "-c", metavar="FILE", help="rbacbridge.yaml; - reads standard input [default: RBACBRIDGE_CONFIG, else ./rbacbridge.yaml, else the article's values]", show_default=False)]

# AWS
AccountOpt = Annotated[Optional[str], Sets("account_id"), typer.Option("--account-id", metavar="ACCOUNT", help="AWS account id (12 digits); must match the credentials in use", show_default=False)]
ProfileOpt = Annotated[Optional[str], Sets("profile"), typer.Option("--profile", metavar="PROFILE", help="AWS profile (else AWS_PROFILE, env, instance role)", show_default=False)]
RegionOpt = Annotated[Optional[str], Sets("region"), typer.Option("--region", metavar="REGION", help="AWS region; else aws.region in the config, AWS_REGION, AWS_DEFAULT_REGION, the profile's region, us-east-1", show_default=False)]
EndpointOpt = Annotated[Optional[str], Sets("endpoint_url"), typer.Option("--endpoint-url", metavar="URL", help="AWS endpoint (else AWS_ENDPOINT_URL)", show_default=False)]
InstanceOpt = Annotated[Optional[list[str]], Sets("instance_ids", _as_tuple), typer.Option("--instance-id", metavar="ID", help="worker instance id (repeatable; else from the nodes' providerID)", show_default=False)]

# Kubernetes
KubeconfigOpt = Annotated[Optional[str], Sets("kubeconfig"), typer.Option("--kubeconfig", metavar="FILE", help="kubeconfig file", show_default=False)]
ContextOpt = Annotated[Optional[str], Sets("context"), typer.Option("--context", metavar="NAME", help="kubeconfig context", show_default=False)]
NginxNamespaceOpt = Annotated[Optional[str], Sets("namespace"), typer.Option("--nginx-namespace", metavar="NAMESPACE", help="kubernetes.namespace: nginx-vanilla's namespace (and, without tenants:, the article's tenant's) [default: default]", show_default=False)]
# `-n/--namespace` is a tenant's namespace (tenant add); here it was kubernetes.namespace until 0.1: deprecated.
OldNamespaceOpt = Annotated[Optional[str], Sets("namespace", replaced_by="--nginx-namespace"), typer.Option("--namespace", "-n", metavar="NAMESPACE", help="deprecated: --nginx-namespace", hidden=True, show_default=False)]
HostInterfaceOpt = Annotated[Optional[str], Sets("host_interface"), typer.Option("--host-interface", metavar="IFACE", help="kube2iam --host-interface [default: auto = from the cluster's network plugin]", show_default=False)]
NodeSelectorOpt = Annotated[Optional[str], Sets("node_selector"), typer.Option("--node-selector", metavar="SELECTOR", help="label selector for the worker nodes", show_default=False)]

# nodes: how to reach them (SSH or Kubernetes) and kube2iam's iptables rule on them
NodeOpt = Annotated[Optional[list[str]], Sets("node_hosts", _as_tuple), typer.Option("--node", metavar="HOST[:PORT]", help="node address or ssh-config alias (repeatable; else nodes.hosts, else the cluster's nodes)", show_default=False)]
SshUserOpt = Annotated[Optional[str], Sets("ssh_user"), typer.Option("--ssh-user", metavar="USER", help="SSH user (else ~/.ssh/config, else the local user); non-root uses sudo -n", show_default=False)]
SshKeyOpt = Annotated[Optional[str], Sets("ssh_key"), typer.Option("--ssh-key", metavar="FILE", help="SSH private key (else ~/.ssh/config IdentityFile, agent, ~/.ssh/id_*)", show_default=False)]
KnownHostsOpt = Annotated[Optional[str], Sets("known_hosts"), typer.Option("--known-hosts", metavar="FILE", help="known_hosts file [default: ~/.ssh/known_hosts]; host keys are always verified", show_default=False)]
SshPortOpt = Annotated[Optional[int], Sets("ssh_port"), typer.Option("--ssh-port", metavar="PORT", help="SSH port when HOST has none (else ~/.ssh/config, else 22)", show_default=False)]
SshConfigOpt = Annotated[Optional[str], Sets("ssh_config"), typer.Option("--ssh-config", metavar="FILE", help="ssh config file [default: ~/.ssh/config]; 'none' to ignore", show_default=False)]
AcceptNewOpt = Annotated[bool, Sets("accept_new_host_keys", _flag_set), typer.Option("--accept-new-host-keys", help="record unknown host keys (OpenSSH accept-new); a changed key is always refused")]
ViaOpt = Annotated[Optional[str], Sets("node_via"), typer.Option("--via", metavar="[ssh|kubernetes|auto]", help="how to reach the nodes: ssh, kubernetes (exec in kube2iam's pod there, else a short-lived pod), auto = ssh when --node or SSH options are given [default: auto]", show_default=False)]
HostIpOpt = Annotated[Optional[str], Sets("host_ip"), typer.Option("--host-ip", metavar="IP", help="host IP in kube2iam's rule (else the node's InternalIP, else the address SSH reached)", show_default=False)]
PortOpt = Annotated[Optional[int], Sets("kube2iam_port"), typer.Option("--port", metavar="PORT", help="kube2iam --app-port in the rule [default: 8282]", show_default=False)]
AddMissingOpt = Annotated[bool, Sets("add_missing", _flag_set), typer.Option("--add-missing", help="add the iptables rule where it is missing (else kube2iam adds it once it runs)")]
StalePortOpt = Annotated[Optional[list[int]], Sets("node_stale_ports", _as_tuple), typer.Option("--stale-port", metavar="PORT", help="an old kube2iam port: its rules to the node are rbacbridge's left-overs, deleted when nothing uses the port (repeatable; else nodes.stale_ports)", show_default=False)]

# what a command does (no Config field)
OnlyOpt = Annotated[Optional[str], typer.Option("--only", metavar="PARTS", help="parts to act on, comma-separated: aws,kube,nodes [default: all]", show_default=False)]
OutputOpt = Annotated[str, typer.Option("--output", "-o", metavar="[table|json|yaml]", help="output format")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="apply without asking (needed when there is no terminal)")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print the plan only; change nothing")]


def config_from(command: Callable, values: dict[str, Any]):
    """The Config `command` runs with: the --config file over the defaults, then each option of `command`
    marked `Sets` that was given, over the file; `values` are its arguments (`locals()` on entry). The file is
    found as rbacbridge.config.discovery says; one line on stderr names it when `-c` did not.
    A command with --region gets the region resolved like the aws CLI (flag, config, environment, profile)."""

    overrides: dict[str, Any] = {}
    flags: dict[str, str] = {}  # Config field -> the flag that set it, for error messages
    deprecated: list[str] = []
    for name, annotation in get_type_hints(command, include_extras=True).items():
        for mark in getattr(annotation, "__metadata__", ()):
            if not isinstance(mark, Sets) or (mark.replaced_by and values[name] is None):
                continue
            if mark.replaced_by:
                if overrides.get(mark.field) is not None:
                    raise UsageError(f"give {mark.replaced_by} only ({_flag_name(annotation)} is its deprecated spelling)")
                deprecated.append(f"warning: {_spellings(annotation)} of `rbacbridge {_command_name(command)}` is deprecated: "
                                  f"use {mark.replaced_by} (-n/--namespace means a tenant's namespace, as in tenant add; "
                                  "the old spelling goes in the next release)")
            elif mark.field in overrides and values[name] is None:
                continue  # the deprecated spelling gave it
            overrides[mark.field] = mark.convert(values[name]) if mark.convert else values[name]
            flags[mark.field] = _flag_name(annotation)
    cfg, source = load_config(values["config"])
    cfg = cfg.with_overrides(flags=flags, **overrides)
    if "region" in overrides:
        from rbacbridge.aws import resolve_region

        cfg, _ = resolve_region(cfg)
    say_source(source)
    if deprecated:
        from rbacbridge.output import say_before_output

        say_before_output(deprecated, replace=False)
    return cfg


def _command_name(command: Callable) -> str:
    return command.__name__.removeprefix("tenant_").removeprefix("iptables_").replace("_", "-")


def _spellings(annotation) -> str:
    """`-n/--namespace`: every spelling an Annotated option declares, short first."""
    for mark in annotation.__metadata__:
        declared = [getattr(mark, "default", None), *(getattr(mark, "param_decls", ()) or ())]
        names = sorted((d for d in declared if isinstance(d, str) and d.startswith("-")), key=len)
        if names:
            return "/".join(names)
    raise ValueError(f"no flag declared in {annotation}")


def load_config(flag: str | None):
    """(Config, Source): the file `-c` names, else RBACBRIDGE_CONFIG, else ./rbacbridge.yaml, else the
    built-in defaults (rbacbridge.config.discovery)."""
    from rbacbridge import config
    from rbacbridge.config.discovery import find

    source = find(flag)
    return config.load(source.path, source=source), source


_read: list[bool] = []  # whether the last config_from read a file (-c or found), for audit's notes


def say_source(source) -> None:
    """One line on stderr naming the configuration when the command line did not (-c): found, or the defaults.
    Said with the command's first output (`flush_said`), or when it ends; a failure before any output
    (bad input, exit 2; an error, exit 1 or 3) stays its one `error:` line."""
    from rbacbridge.config.discovery import FLAG

    from rbacbridge.output import say_before_output

    _read[:] = [source.path is not None]
    say_before_output([source.describe()] if source.how != FLAG else [])


def config_was_read() -> bool:
    """The last config_from read a file (given with -c, or found), not only the built-in defaults."""
    return bool(_read and _read[0])


def flush_said(drop: bool = False) -> None:
    from rbacbridge.output import flush_before_output

    flush_before_output(drop)


def _flag_name(annotation) -> str:
    """The long option name (`--instance-id`) declared in an Annotated[..., typer.Option(...)]."""
    for mark in annotation.__metadata__:
        # typer keeps the first declaration of an Annotated option in `default`, the others in `param_decls`
        declared = [getattr(mark, "default", None), *(getattr(mark, "param_decls", ()) or ())]
        names = [d for d in declared if isinstance(d, str) and d.startswith("--")]
        if names:
            return names[0]
    raise ValueError(f"no --flag declared in {annotation}")


def choice(flag: str, value: str, choices) -> str:
    from rbacbridge.errors import shown

    if value not in choices:
        raise UsageError(f"invalid {flag} {shown(value)}: choose from {', '.join(choices)}")
    return value


def output_format(value: str) -> str:
    return choice("--output", value, FORMATS)
