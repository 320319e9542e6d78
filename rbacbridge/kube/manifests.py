"""The objects rbacbridge wants in the cluster, rendered from the Jinja2 templates in `templates/k8s/`
(templates are data: the kube2iam DaemonSet's shape is `daemonset.yaml.j2`, its values such as the image
and the tolerations come from the configuration), and their text for `rbacbridge render` (YAML files,
one stream, or a JSON List).
"""

from __future__ import annotations

import json
from typing import Any

from rbacbridge.errors import UsageError


# The objects, in the order setup applies them (teardown deletes in reverse): kube2iam's, then per
# tenant namespace its allowed-roles annotation, nginx-vanilla, then each tenant's workloads.
TEMPLATES = (
    "serviceaccount.yaml.j2",
    "clusterrole.yaml.j2",
    "clusterrolebinding.yaml.j2",
    "daemonset.yaml.j2",
)
NAMESPACE_TEMPLATE = "namespace-allowed-roles.yaml.j2"
VANILLA_TEMPLATE = "nginx-vanilla.yaml.j2"
TENANT_TEMPLATE = "nginx-tenant.yaml.j2"


def desired_objects(config, host_interface: str) -> list[dict[str, Any]]:
    """The objects rbacbridge manages, rendered from templates/k8s/ (in apply order)."""
    import yaml

    from rbacbridge.templating import render_text

    if not config.account_id:
        raise UsageError("the kube2iam DaemonSet needs --account-id (or account_id in the config) for --base-role-arn")
    def render(name: str, **context: Any) -> dict[str, Any]:
        return yaml.safe_load(render_text(f"k8s/{name}", config=config, account_id=config.account_id,
                                          host_interface=host_interface, **context))

    objects = [render(name) for name in TEMPLATES]
    if config.namespace_restrictions:
        for tenant in config.tenants:
            objects += [render(NAMESPACE_TEMPLATE, namespace=ns, allowed_roles=[role_reference(tenant)])
                        for ns in tenant.namespaces]
    objects.append(render(VANILLA_TEMPLATE))
    for tenant in config.tenants:
        objects += [render(TENANT_TEMPLATE, tenant=tenant, workload=w, role=role_reference(tenant)) for w in tenant.workloads]
    return objects


def role_reference(tenant) -> str:
    """How kube2iam is told a tenant's role (pod annotation, allowed-roles): the name of a role rbacbridge
    creates (kube2iam prefixes --base-role-arn, as in the article), the full ARN of an existing one."""
    return tenant.existing_role_arn or tenant.role


RENDER_FORMATS = ("yaml", "json")


def render_documents(objects: list[dict[str, Any]], fmt: str = "yaml") -> list[tuple[str, str]]:
    """(file name, text) per object, e.g. `03-daemonset-kube2iam.yaml` (or `.json`)."""
    import yaml

    out = []
    for index, obj in enumerate(objects, start=1):
        name = f"{index:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.{fmt}"
        if fmt == "json":
            out.append((name, json.dumps(obj, indent=2) + "\n"))
            continue
        text = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)
        if obj["kind"] == "Namespace":
            text = ("# Partial Namespace: only this annotation is rbacbridge's (apply it with --server-side);\n"
                    "# the namespace itself is never created or deleted by rbacbridge.\n") + text
        out.append((name, text))
    return out


def render_stream(objects: list[dict[str, Any]], fmt: str = "yaml") -> str:
    """All objects as one text for `kubectl apply -f -`: a multi-document YAML stream, or one
    JSON `List` (kubectl's own form for several objects in one JSON document)."""
    if fmt == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2) + "\n"
    return "".join(f"---\n{text}" for _, text in render_documents(objects, fmt))
