"""Commands that print a document: `config-reference` (every setting), `config-schema` (its JSON Schema), `permissions` (the operator's IAM
policy), `render` (the Kubernetes manifests)."""

import sys
from typing import Annotated, Optional

import typer

from rbacbridge.cli.options import (AccountOpt, ConfigOpt, ContextOpt, EndpointOpt, HostInterfaceOpt, InstanceOpt, KubeconfigOpt,
                                    NginxNamespaceOpt, OldNamespaceOpt, ProfileOpt, RegionOpt, config_from)
from rbacbridge.errors import UsageError


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


def config_schema() -> None:
    """The JSON Schema (draft 2020-12) of rbacbridge.yaml, for editors and linters. Offline."""
    from rbacbridge.config_schema import schema_json

    sys.stdout.write(schema_json())


def permissions(
    restore_role: Annotated[Optional[list[str]], typer.Option("--restore-role", help="role of an instance profile the nodes had before setup (teardown gives it back; repeatable)", show_default=False)] = None,
    migrate: Annotated[bool, typer.Option("--migrate", help="also what `rbacbridge migrate` needs: the OIDC provider, the pod roles' trust (the tenants' roles and each --pod-role), the migration record's tags")] = False,
    pod_role: Annotated[Optional[list[str]], typer.Option("--pod-role", help="with --migrate: another role pods get from kube2iam (a name or ARN; repeatable; `migrate plan` lists them)", show_default=False)] = None,
    config: ConfigOpt = None, account_id: AccountOpt = None,
    profile: ProfileOpt = None, region: RegionOpt = None, endpoint_url: EndpointOpt = None, instance_id: InstanceOpt = None,
) -> None:
    """Print the least-privilege IAM policy (JSON) the operator needs for plan, setup, teardown and verify,
    scoped to the configured names, account, region and --instance-id's. Offline."""
    cfg = config_from(permissions, locals())

    import json

    from rbacbridge.permissions import operator_policy

    document = operator_policy(cfg, cfg.account_id, tuple(restore_role or ()), migrate, tuple(pod_role or ()))
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def render(
    output: Annotated[str, typer.Option("--output", "-o", metavar="[yaml|json]", help="yaml (a multi-document stream) or json (one List)")] = "yaml",
    out_dir: Annotated[Optional[str], typer.Option("--out-dir", help="write one file per object into this directory (the whole set or nothing; symlinks refused) instead of stdout", show_default=False)] = None,
    config: ConfigOpt = None, account_id: AccountOpt = None, host_interface: HostInterfaceOpt = None,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None, nginx_namespace: NginxNamespaceOpt = None, namespace: OldNamespaceOpt = None,
) -> None:
    """Write the Kubernetes manifests (kube2iam RBAC + DaemonSet, nginx Deployments, namespace annotation)
    for `kubectl apply -f -` or GitOps. Offline unless --kubeconfig/--context is given (then
    --host-interface auto is detected from that cluster; offline it falls back to docker0)."""
    cfg = config_from(render, locals())

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
