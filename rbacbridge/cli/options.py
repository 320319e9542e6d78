"""The options several commands share, declared once, and the checks of option values.

boto3, kubernetes and paramiko are imported inside the commands, never here, so that
`rbacbridge --help` stays instant.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from rbacbridge.errors import Interrupted, UsageError

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
ACCOUNT = (("account_id", AccountOpt, None, "account_id", None),)
AWS = (("profile", ProfileOpt, None, "profile", None), ("region", RegionOpt, None, "region", None),
        ("endpoint_url", EndpointOpt, None, "endpoint_url", None))
INSTANCES = (("instance_id", InstanceOpt, None, "instance_ids", _as_tuple),)
KUBE = (("kubeconfig", KubeconfigOpt, None, "kubeconfig", None), ("context", ContextOpt, None, "context", None))
NAMESPACE = (("namespace", NamespaceOpt, None, "namespace", None),)
INTERFACE = (("host_interface", HostInterfaceOpt, None, "host_interface", None),)
SELECTOR = (("node_selector", NodeSelectorOpt, None, "node_selector", None),)
NODES = (("node", NodeOpt, None, "node_hosts", _as_tuple),)
SSH = (("ssh_user", SshUserOpt, None, "ssh_user", None), ("ssh_key", SshKeyOpt, None, "ssh_key", None),
        ("known_hosts", KnownHostsOpt, None, "known_hosts", None), ("ssh_port", SshPortOpt, None, "ssh_port", None),
        ("ssh_config", SshConfigOpt, None, "ssh_config", None),
        ("accept_new_host_keys", AcceptNewOpt, False, "accept_new_host_keys", _flag_set))
VIA = (("via", ViaOpt, None, "node_via", None),)
RULE = (("host_ip", HostIpOpt, None, "host_ip", None), ("port", PortOpt, None, "kube2iam_port", None),
         ("add_missing", AddMissingOpt, False, "add_missing", _flag_set))
STALE = (("stale_port", StalePortOpt, None, "node_stale_ports", _as_tuple),)


def with_config(*groups):
    """Give a command `--config` plus the shared options of `groups`, and hand it the validated
    Config as `cfg` (the file over the defaults, the flags over the file)."""
    import functools
    import inspect

    flags = [("config", ConfigOpt, None, None, None)] + [flag for group in groups for flag in group]
    labels = {field: flag_name(annotation) for _, annotation, _, field, _ in flags if field}
    needs_region = AWS in groups

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
                cfg = load_config(values["config"], labels, **overrides)
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


def flag_name(annotation) -> str | None:
    """The long option name (`--instance-id`) declared in an Annotated[..., typer.Option(...)]."""
    for meta in getattr(annotation, "__metadata__", ()):
        # typer keeps the first declaration of an Annotated option in `default`
        declared = [getattr(meta, "default", None), *(getattr(meta, "param_decls", ()) or ())]
        names = [d for d in declared if isinstance(d, str) and d.startswith("--")]
        if names:
            return names[0]
    return None


def load_config(config_path: str | None, labels: dict[str, str | None], **overrides):
    from rbacbridge import config as config_module

    base = config_module.load(config_path)
    return base.with_overrides(flags=labels, **overrides)


def choice(flag: str, value: str, choices) -> str:
    from rbacbridge.errors import shown

    if value not in choices:
        raise UsageError(f"invalid {flag} {shown(value)}: choose from {', '.join(choices)}")
    return value


def output_format(value: str) -> str:
    return choice("--output", value, FORMATS)

