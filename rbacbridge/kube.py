"""The Kubernetes part: kube2iam's RBAC and DaemonSet, the nginx Deployments, the namespace annotation.

Desired objects come from the Jinja2 templates in `templates/k8s/` (templates are data). Planning reads
each live object and compares only the fields rbacbridge sets; setup applies with server-side apply
(field manager `rbacbridge`, force), one PATCH per object that differs, none when nothing does.
Teardown deletes only objects labelled `app.kubernetes.io/managed-by: rbacbridge` and removes only
the namespace annotation that rbacbridge's field manager owns.

Other parts use `cluster_nodes(ctx)`, `host_interface(ctx)` and the gateway's `exec` / `list_pods`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from rbacbridge.errors import RbacbridgeError, UsageError
from rbacbridge.plan import CONFLICT, CREATE, DELETE, LEFT_ALONE, UNCHANGED, UPDATE, Step

SYSTEM = "kube"
FIELD_MANAGER = "rbacbridge"
MANAGED_BY = "app.kubernetes.io/managed-by"
OWNER = "rbacbridge"
ALLOWED_ROLES = "iam.amazonaws.com/allowed-roles"
KUBE2IAM_SELECTOR = f"app.kubernetes.io/name=kube2iam,{MANAGED_BY}={OWNER}"

# kind -> (API path prefix, plural, namespaced)
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Node": ("/api/v1", "nodes", False),
    "Pod": ("/api/v1", "pods", True),
    "Event": ("/api/v1", "events", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
}

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
TENANT_LABEL = "rbacbridge.io/tenant"  # on a declared tenant's workloads (not the article's nginx-annotated)

# Network plugin (DaemonSet / pod name prefix in the cluster) -> kube2iam --host-interface.
# Order matters: the AWS VPC CNI decides the pod interface even with Calico on top for policy,
# and canal ships a flannel container too.
NETWORK_PLUGINS: tuple[tuple[str, str, str], ...] = (
    ("aws-node", "eni+", "amazon-vpc-cni"),
    ("cilium", "lxc+", "Cilium"),
    ("canal", "cali+", "Canal"),
    ("calico-node", "cali+", "Calico"),
    ("weave-net", "weave", "Weave Net"),
    ("kube-router", "kube-bridge", "kube-router"),
    ("kube-flannel", "cni0", "flannel"),
    ("openshift-sdn", "tun0", "OpenShift SDN"),
)
FALLBACK_INTERFACE = "docker0"


# --- desired objects ------------------------------------------------------------------------


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


def describe(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]


def is_ours(obj: dict[str, Any]) -> bool:
    return (obj.get("metadata", {}).get("labels") or {}).get(MANAGED_BY) == OWNER


# --- comparing desired with live ------------------------------------------------------------


def differences(desired: Any, live: Any, path: str = "") -> list[str]:
    """Paths of the fields rbacbridge sets whose live value differs (fields others add are ignored).

    Lists of named items (containers, env, ports, volumes) match by name like server-side apply's
    associative lists; other lists (args, rules) are atomic and must be equal.
    """
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return [path or "."]
        out = []
        for key, value in desired.items():
            out += differences(value, live.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(desired, list) and desired and all(isinstance(i, dict) and "name" in i for i in desired):
        if not isinstance(live, list):
            return [path]
        by_name = {i.get("name"): i for i in live if isinstance(i, dict)}
        out = []
        for item in desired:
            where = f"{path}[{item['name']}]"
            out += differences(item, by_name[item["name"]], where) if item["name"] in by_name else [where]
        return out
    if desired == [] and live is None:
        return []  # the API server drops empty lists (omitempty): an empty tolerations list reads back absent
    return [] if desired == live else [path]


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    out = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    out["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
    return out


def owns_annotation(namespace: dict[str, Any], key: str = ALLOWED_ROLES) -> bool:
    """Does rbacbridge's field manager own this annotation (server-side apply bookkeeping)?"""
    for entry in namespace.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") != FIELD_MANAGER:
            continue
        annotations = (entry.get("fieldsV1") or {}).get("f:metadata", {}).get("f:annotations", {})
        if f"f:{key}" in annotations:
            return True
    return False


# --- the gateway ------------------------------------------------------------------------------


@dataclass
class ExecResult:
    rc: int
    stdout: str
    stderr: str


@dataclass
class ClusterNode:
    name: str
    internal_ip: str
    external_ip: str | None
    instance_id: str | None
    zone: str | None
    ssh_host: str


_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class KubeGateway:
    """The Kubernetes API, reached like kubectl: --kubeconfig, else KUBECONFIG, else ~/.kube/config,
    else the in-cluster service account. Every failure becomes one line (`RbacbridgeError`)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, timeout: float = 30):
        self.api_client, self.source = _load_client(kubeconfig, context)
        self.timeout = timeout
        self.patches = 0  # server-side apply requests sent (a no-op run sends none)

    @classmethod
    def from_config(cls, config) -> "KubeGateway":
        return cls(config.kubeconfig, config.context)

    @property
    def host(self) -> str:
        return self.api_client.configuration.host

    # -- raw requests --

    def request(self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
                content_type: str = "application/json", what: str | None = None) -> Any:
        """One API call; returns the decoded JSON, or None for 404 on GET (absent)."""
        import urllib3

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        client = self.api_client
        try:
            method_, url, headers, body_, _ = client.param_serialize(
                method, path, query_params=query or [], header_params=headers, body=body, auth_settings=["BearerToken"])
            response = client.call_api(method_, url, header_params=headers, body=body_,
                                       _request_timeout=(min(5, self.timeout), self.timeout))
            data = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise RbacbridgeError(f"cannot reach the Kubernetes API server at {self.host} ({self.source}): {_short(reason)}") from None
        if response.status == 404 and method == "GET":
            return None
        if response.status >= 400:
            raise _api_error(response.status, data, method, path, what)
        return json.loads(data) if data else None

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.request("GET", object_path(kind, name, namespace))

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        answer = self.request("GET", collection_path(kind, namespace), query=query)
        return (answer or {}).get("items", [])

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply, field manager rbacbridge, force (creates the object if missing)."""
        meta = obj["metadata"]
        self.patches += 1
        return self.request("PATCH", object_path(obj["kind"], meta["name"], meta.get("namespace")), body=obj,
                            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                            content_type="application/apply-patch+yaml")

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        return self.request("PATCH", object_path(kind, name, namespace), body=patch,
                            content_type="application/strategic-merge-patch+json")

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        path = object_path(kind, name, namespace)
        try:
            self.request("DELETE", path, body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})
        except RbacbridgeError as exc:
            if getattr(exc, "status", None) != 404:  # already gone: the goal is reached
                raise

    # -- what other parts use --

    def list_pods(self, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.list("Pod", namespace, label_selector)

    def exec(self, namespace: str, pod: str, argv: list[str], container: str | None = None, timeout: float = 60) -> ExecResult:
        """Run argv in a pod over the websocket exec API; rc comes from the status channel (3)."""
        from kubernetes.client import CoreV1Api
        from kubernetes.client.exceptions import ApiException
        from kubernetes.stream import stream

        if not argv:
            raise UsageError("exec needs a command")
        kwargs: dict[str, Any] = {"command": list(argv), "stdin": False, "stdout": True, "stderr": True,
                                  "tty": False, "_preload_content": False}
        if container:
            kwargs["container"] = container
        # kubernetes.stream.stream swaps the client's request method while it runs: on a client shared by
        # threads (verify probes pods concurrently) other calls would go out as websocket handshakes.
        from kubernetes.client import ApiClient

        private = ApiClient(configuration=self.api_client.configuration)
        try:
            ws = stream(CoreV1Api(private).connect_get_namespaced_pod_exec, pod, namespace, **kwargs)
        except ApiException as exc:
            raise _exec_error(self.host, namespace, pod, exc) from None
        except Exception as exc:  # noqa: BLE001 - websocket/socket errors
            raise RbacbridgeError(f"cannot exec in pod {namespace}/{pod} via {self.host}: {_short(exc)}") from None
        try:
            ws.run_forever(timeout=timeout)
            if ws.is_open():
                raise RbacbridgeError(f"exec in pod {namespace}/{pod} did not finish within {timeout:g}s: {' '.join(argv)[:80]}")
            stdout, stderr = ws.read_stdout(), ws.read_stderr()
            rc = ws.returncode
        finally:
            ws.close()
        return ExecResult(rc if rc is not None else -1, stdout or "", stderr or "")


def _exec_error(host: str, namespace: str, pod: str, exc) -> RbacbridgeError:
    """The client reports a refused websocket handshake as status 0 with the HTTP answer in its text."""
    import re

    path = f"{collection_path('Pod', namespace)}/{pod}/exec"
    if exc.status:
        return _api_error(exc.status, exc.body or b"", "EXEC", path)
    text = str(exc.reason or "")
    status = re.search(r"Handshake status (\d+)", text)
    if not status:
        return RbacbridgeError(f"cannot exec in pod {namespace}/{pod} via {host}: {_short(text)}")
    message = re.search(r'"message":\s*"((?:[^"\\]|\\.)*)"', text)
    body = json.dumps({"message": message.group(1) if message else ""})
    return _api_error(int(status.group(1)), body, "EXEC", path)


def object_path(kind: str, name: str, namespace: str | None = None) -> str:
    return f"{collection_path(kind, namespace)}/{quote(name, safe='')}"


def collection_path(kind: str, namespace: str | None = None) -> str:
    prefix, plural, namespaced = KINDS[kind]
    if namespaced and namespace:
        return f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{prefix}/{plural}"


def _short(exc: Any) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused"
    return text if len(text) <= 200 else text[:200] + "…"


class KubeApiError(RbacbridgeError):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _api_error(status: int, data: bytes | str, method: str, path: str, what: str | None = None) -> KubeApiError:
    try:
        body = json.loads(data)
        message = body.get("message") or ""
    except (ValueError, AttributeError, TypeError):
        message = (data.decode(errors="replace") if isinstance(data, bytes) else str(data)).strip()
    message = " ".join(message.split())[:300]
    verb, resource, namespace = _permission(method, path)
    scope = f" in namespace {namespace}" if namespace else ""
    if status == 401:
        text = f"the Kubernetes API server rejected the credentials (401 Unauthorized) on {verb} {resource}: check the kubeconfig user or token"
    elif status == 403:
        text = f"missing Kubernetes permission: {verb} {resource}{scope} (403 Forbidden: {message})"
    elif status == 409:
        text = f"conflict (409) on {verb} {resource}{scope}: {message}; re-run to plan again from live state"
    elif status == 422:
        text = f"the API server rejected {what or resource} as invalid (422): {message}"
    else:
        text = f"Kubernetes API error {status} on {verb} {resource}{scope}: {message or 'no message'}"
    return KubeApiError(text, status)


def _permission(method: str, path: str) -> tuple[str, str, str | None]:
    """The RBAC verb and resource (plural.group) a request needs, from its method and path."""
    segs = [s for s in path.split("?")[0].split("/") if s]
    group = "" if segs[:1] == ["api"] else (segs[1] if len(segs) > 1 else "")
    rest = segs[2:] if segs[:1] == ["api"] else segs[3:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if rest else "?"
    has_name = len(rest) > 1
    if len(rest) > 2:
        plural = f"{plural}/{rest[2]}"
    verb = "create" if method == "EXEC" else _VERBS.get(method, "get" if has_name else "list")
    return verb, f"{plural}.{group}" if group else plural, namespace


def _load_client(kubeconfig: str | None, context: str | None):
    """ApiClient as kubectl would find it. Returns (client, where the settings came from)."""
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    from kubernetes.config.config_exception import ConfigException

    path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    first = os.path.expanduser(path.split(os.pathsep)[0])
    in_cluster = os.environ.get("KUBERNETES_SERVICE_HOST") and not kubeconfig and not os.environ.get("KUBECONFIG")
    if in_cluster and not Path(first).exists():
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise UsageError(f"cannot use the in-cluster service account: {_short(exc)}") from None
        if context:
            raise UsageError("--context needs a kubeconfig; running in-cluster has none")
        return k8s_client.ApiClient(configuration), "in-cluster service account"
    import yaml

    from rbacbridge.errors import shown

    if kubeconfig and not Path(os.path.expanduser(kubeconfig)).is_file():
        raise UsageError(f"kubeconfig {shown(kubeconfig)} does not exist")
    if not any(Path(os.path.expanduser(p)).is_file() for p in path.split(os.pathsep) if p):
        raise UsageError(f"no kubeconfig found ({shown(path)}): pass --kubeconfig, set KUBECONFIG, or run inside a pod")
    try:
        api_client = k8s_config.new_client_from_config(config_file=path, context=context, persist_config=False)
    except ConfigException as exc:
        raise UsageError(f"kubeconfig {shown(path)}: {_short(exc)}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UsageError(f"kubeconfig {shown(path)} is not valid YAML{where}: {_short(problem)}") from None
    except UnicodeDecodeError:
        raise UsageError(f"kubeconfig {shown(path)} is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read kubeconfig {shown(path)}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UsageError(f"kubeconfig {shown(path)} is not usable: {_short(exc)}") from None
    return api_client, f"kubeconfig {path}" + (f", context {context}" if context else "")


def gateway(ctx) -> KubeGateway:
    return ctx.gateway("kube", lambda: KubeGateway.from_config(ctx.config))


def _note(ctx, text: str) -> None:
    notes = ctx.facts.setdefault("notes", [])
    if text not in notes:
        notes.append(text)


# --- facts other parts use --------------------------------------------------------------------


def parse_provider_id(provider_id: str | None) -> tuple[str | None, str | None]:
    """(zone, instance id) from `aws:///<zone>/<instance-id>`; anything else gives (None, None)."""
    import re

    if not provider_id:
        return None, None
    match = re.fullmatch(r"aws:///([a-z0-9-]+)/(i-[0-9a-f]{8,17})", provider_id)
    if not match:
        return None, None
    return match.group(1), match.group(2)


def node_from_object(obj: dict[str, Any]) -> ClusterNode:
    addresses = obj.get("status", {}).get("addresses") or []
    by_type: dict[str, str] = {}
    for address in addresses:
        by_type.setdefault(address.get("type"), address.get("address"))
    name = obj["metadata"]["name"]
    internal = by_type.get("InternalIP")
    if not internal:
        raise RbacbridgeError(f"node {name} has no InternalIP address in its status")
    external = by_type.get("ExternalIP")
    zone, instance_id = parse_provider_id((obj.get("spec") or {}).get("providerID"))
    return ClusterNode(name, internal, external, instance_id, zone, external or internal)


def cluster_nodes(ctx) -> list[ClusterNode]:
    """The cluster's (selected) nodes, read once per run."""
    def compute() -> list[ClusterNode]:
        objects = gateway(ctx).list("Node", label_selector=ctx.config.node_selector)
        if not objects:
            where = f" matching {ctx.config.node_selector!r}" if ctx.config.node_selector else ""
            raise RbacbridgeError(f"the cluster has no nodes{where}")
        return [node_from_object(o) for o in objects]

    return ctx.fact("cluster_nodes", compute)


def detect_interface(daemonsets: list[dict[str, Any]], pods: list[dict[str, Any]]) -> tuple[str, str]:
    names = [("DaemonSet", describe(o), o["metadata"]["name"]) for o in daemonsets]
    names += [("pod", describe(o), o["metadata"]["name"]) for o in pods]
    for prefix, interface, plugin in NETWORK_PLUGINS:
        for what, full, name in names:
            if name == prefix or name.startswith(prefix + "-"):
                return interface, f"host interface {interface}: {what} {full} found ({plugin})"
    return FALLBACK_INTERFACE, f"host interface {FALLBACK_INTERFACE}: no known network plugin found in the cluster (the article's Docker bridge)"


def host_interface(ctx) -> tuple[str, str]:
    """kube2iam's --host-interface and why: the configured one, or detected from the network plugin."""
    def compute() -> tuple[str, str]:
        configured = ctx.config.host_interface
        if configured != "auto":
            return configured, f"host interface {configured}: set in the configuration"
        gw = gateway(ctx)
        try:
            daemonsets = gw.list("DaemonSet")  # all namespaces: calico-system, kube-flannel, ...
        except KubeApiError as exc:
            if exc.status != 403:
                raise
            daemonsets = gw.list("DaemonSet", "kube-system")
        pods = [] if daemonsets else gw.list("Pod", "kube-system")
        return detect_interface(daemonsets, pods)

    interface, reason = ctx.fact("host_interface", compute)
    _note(ctx, reason)
    return interface, reason


# --- metadata interceptors in the cluster (whoever installed them), and rbacbridge's own kube2iam ----------

KUBE2IAM_DEFAULT_PORT = 8181  # kube2iam's --app-port when the flag is absent
KIAM_AGENT_DEFAULT_PORT = 3100  # kiam agent's --port when the flag is absent (uswitch/kiam cmd/kiam/agent.go)
KUBE2IAM_FLAGS = ("--base-role-arn", "--app-port")
KUBE2IAM_NAME = "kube2iam"  # rbacbridge's DaemonSet (templates/k8s/daemonset.yaml.j2), in kube2iam.namespace
NAME_LABEL = "app.kubernetes.io/name"


@dataclass(frozen=True)
class Kube2iamDaemonSet:
    """A DaemonSet that uses ports on the nodes: a metadata interceptor (kube2iam, a kiam agent), or any
    other DaemonSet whose pods declare ports on the node's network (hostNetwork containerPort, hostPort)."""

    namespace: str
    name: str
    port: int | None  # the interceptor's port (kube2iam --app-port, 8181 when absent; kiam --port, 3100); None: unreadable
    managed: bool  # rbacbridge's own: kube2iam.namespace/kube2iam labelled managed-by rbacbridge (not a label alone)
    installer: str  # "rbacbridge", "Helm release X", or the managed-by label's value, or ""
    uid: str = ""
    tool: str = "kube2iam"  # kube2iam | kiam | "" (not an interceptor, only declares host ports)
    host_ports: frozenset = frozenset()  # ports its pod template declares on the node's network

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    def uses(self, port: int) -> bool:
        """Does it use `port` on the nodes? An interceptor whose port cannot be read uses every port."""
        return (bool(self.tool) and (self.port is None or self.port == port)) or port in self.host_ports

    def describe(self) -> str:
        by = f", {self.installer}" if self.installer and not self.managed else ""
        if not self.tool:
            ports = ", ".join(str(p) for p in sorted(self.host_ports))
            return f"DaemonSet {self.where} (declares port {ports} on the node's network{by})"
        flag = "--app-port" if self.tool == "kube2iam" else "--port"
        port = f"{flag} {self.port}" if self.port is not None else f"{flag} unknown"
        what = "rbacbridge" if self.managed else ("kiam agent" if self.tool == "kiam" else "kube2iam")
        return f"{what} DaemonSet {self.where} ({port}{by})"


def _flag_value(words: list[str], flag: str) -> str | None:
    for index, word in enumerate(words):
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
        if word == flag and index + 1 < len(words):
            return words[index + 1]
    return None


def _port_value(value: str | None, default: int) -> int | None:
    if value is None:
        return default
    return int(value) if value.isdigit() and 1 <= int(value) <= 65535 else None


def host_ports(obj: dict[str, Any]) -> frozenset:
    """Ports a workload's pods declare on the node's network: every containerPort with hostNetwork, and hostPorts."""
    spec = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {})
    found = set()
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for entry in container.get("ports") or []:
            value = entry.get("hostPort") or (entry.get("containerPort") if spec.get("hostNetwork") else None)
            if isinstance(value, int) and 1 <= value <= 65535:
                found.add(value)
    return frozenset(found)


def kube2iam_daemonset(obj: dict[str, Any], own: tuple[str, str] = ("kube-system", KUBE2IAM_NAME)) -> Kube2iamDaemonSet | None:
    """A DaemonSet is kube2iam when a container's image name contains `kube2iam`, or its command/args
    carry kube2iam's own flags `--base-role-arn` or `--app-port` (port: `--app-port`, else 8181); a kiam
    agent when its image is `kiam` and it runs `agent` (port: `--port`, else 3100). Recognition by shape
    only says who may be *using* a port (conservative); it never makes anything rbacbridge's: `managed`
    needs rbacbridge's own namespace/name (`own`) as well as its label."""
    from rbacbridge.audit.kube2iam import is_kiam_agent

    meta = obj.get("metadata") or {}
    containers = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    for container in containers:
        words = [str(w) for w in (container.get("command") or []) + (container.get("args") or [])]
        image = str(container.get("image") or "")
        image_name = image.split("@", 1)[0]
        if image_name.rfind(":") > image_name.rfind("/"):
            image_name = image_name[: image_name.rfind(":")]  # the tag, not a registry's port
        flagged = any(w == f or w.startswith(f + "=") for w in words for f in KUBE2IAM_FLAGS)
        if "kube2iam" in image_name.lower() or flagged:
            tool, port = "kube2iam", _port_value(_flag_value(words, "--app-port"), KUBE2IAM_DEFAULT_PORT)
        elif is_kiam_agent(container):
            tool, port = "kiam", _port_value(_flag_value(words, "--port"), KIAM_AGENT_DEFAULT_PORT)
        else:
            continue
        return _daemonset_entry(obj, tool, port, own)
    return None


def _daemonset_entry(obj: dict[str, Any], tool: str, port: int | None, own: tuple[str, str]) -> Kube2iamDaemonSet:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    by = labels.get(MANAGED_BY) or labels.get("heritage") or ""
    release = annotations.get("meta.helm.sh/release-name") or labels.get("release")
    installer = f"Helm release {release}" if by == "Helm" and release else by
    managed = by == OWNER and (meta.get("namespace"), meta.get("name")) == tuple(own)
    return Kube2iamDaemonSet(meta.get("namespace", ""), meta.get("name", ""), port, managed, installer,
                             uid=meta.get("uid", ""), tool=tool, host_ports=host_ports(obj))


def _list_daemonsets(ctx) -> list[dict[str, Any]]:
    gw = gateway(ctx)
    try:
        return gw.list("DaemonSet")
    except KubeApiError as exc:
        if exc.status != 403:
            raise
        namespaces = sorted({"kube-system", ctx.config.kube2iam_namespace})
        _note(ctx, f"cannot list DaemonSets in all namespaces (403): kube2iam looked for in {', '.join(namespaces)} only")
        return [o for ns in namespaces for o in gw.list("DaemonSet", ns)]


def port_users(ctx) -> list[Kube2iamDaemonSet]:
    """Every DaemonSet that uses ports on the nodes: interceptors (kube2iam, kiam agents) and DaemonSets
    declaring ports on the node's network. One list request (all namespaces), read fresh on each call."""
    own = (ctx.config.kube2iam_namespace, KUBE2IAM_NAME)
    found = []
    for obj in _list_daemonsets(ctx):
        entry = kube2iam_daemonset(obj, own)
        if entry is None:
            ports = host_ports(obj)
            entry = _daemonset_entry(obj, "", None, own) if ports else None
        if entry is not None:
            found.append(entry)
    return sorted(found, key=lambda d: d.where)


def kube2iam_daemonsets(ctx) -> list[Kube2iamDaemonSet]:
    """Every metadata interceptor DaemonSet in the cluster (kube2iam, kiam agents; all namespaces)."""
    return [d for d in port_users(ctx) if d.tool]


@dataclass(frozen=True)
class OwnPod:
    namespace: str
    name: str
    node: str  # spec.nodeName
    host_ip: str | None  # status.hostIP
    container: str | None  # the container to exec in
    host_network: bool
    running: bool  # phase Running, every container running, not being deleted


@dataclass(frozen=True)
class OwnKube2iam:
    """rbacbridge's own kube2iam: the DaemonSet `kube2iam` in kube2iam.namespace with rbacbridge's labels,
    and the pods whose controller is that DaemonSet by UID (not a pod that merely looks like kube2iam)."""

    namespace: str
    name: str
    uid: str
    port: int | None  # its --app-port
    pods: tuple[OwnPod, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    def pod_on(self, node: str | None, host_ip: str | None = None) -> OwnPod | None:
        """Its running hostNetwork pod on that node (by node name, or by the node's host IP)."""
        for pod in self.pods:
            if pod.running and pod.host_network and ((node and pod.node == node) or (host_ip and pod.host_ip == host_ip)):
                return pod
        return None


def own_kube2iam(ctx) -> OwnKube2iam | None:
    """rbacbridge's kube2iam DaemonSet and its pods (None when it does not exist or is not rbacbridge's).
    Two requests: GET the DaemonSet, list the pods its selector names; a pod counts only when its
    controller owner reference is that DaemonSet's UID. Raises KubeApiError (e.g. 403)."""
    gw = gateway(ctx)
    namespace = ctx.config.kube2iam_namespace
    obj = gw.get("DaemonSet", KUBE2IAM_NAME, namespace)
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    if obj is None or labels.get(MANAGED_BY) != OWNER or labels.get(NAME_LABEL) != KUBE2IAM_NAME:
        return None
    uid = obj["metadata"].get("uid") or ""
    entry = kube2iam_daemonset(obj, (namespace, KUBE2IAM_NAME))
    selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {NAME_LABEL: KUBE2IAM_NAME}
    pods = []
    for pod in gw.list_pods(namespace, ",".join(f"{k}={v}" for k, v in sorted(selector.items()))):
        meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
        owners = meta.get("ownerReferences") or []
        if not uid or not any(o.get("kind") == "DaemonSet" and o.get("uid") == uid and o.get("controller") for o in owners):
            continue
        pod_labels = meta.get("labels") or {}
        if any(pod_labels.get(k) != v for k, v in selector.items()):
            continue
        containers = [c.get("name") for c in spec.get("containers") or []]
        statuses = status.get("containerStatuses") or []
        running = (status.get("phase") == "Running" and not meta.get("deletionTimestamp") and bool(statuses)
                   and all("running" in (s.get("state") or {}) for s in statuses))
        pods.append(OwnPod(namespace, meta.get("name", ""), spec.get("nodeName") or "", status.get("hostIP"),
                           KUBE2IAM_NAME if KUBE2IAM_NAME in containers else (containers[0] if containers else None),
                           bool(spec.get("hostNetwork")), running))
    return OwnKube2iam(namespace, KUBE2IAM_NAME, uid, entry.port if entry else None, tuple(pods))


def _plan_second_kube2iam(ctx, gw: KubeGateway) -> list[Step]:
    """A metadata interceptor rbacbridge does not manage (kube2iam, a kiam agent), anywhere but at
    rbacbridge's own name and namespace (that one is the DaemonSet step's conflict, which --adopt takes
    over): setup must not start a second interceptor next to it."""
    ours = (ctx.config.kube2iam_namespace, KUBE2IAM_NAME)
    steps = []
    for ds in kube2iam_daemonsets(ctx):
        if ds.managed or (ds.namespace, ds.name) == ours:
            continue
        what = "a kiam agent" if ds.tool == "kiam" else "another kube2iam"
        steps.append(Step(
            SYSTEM, CONFLICT, "DaemonSet", ds.where,
            f"{what} runs in the cluster: {ds.describe()}",
            reason=("two kube2iam DaemonSets would fight over the nodes' 169.254.169.254 rule; remove it first "
                    f"(e.g. `helm uninstall` it), or take it over with --adopt after setting kube2iam.namespace to "
                    f"{ds.namespace} (--adopt takes over a kube2iam named kube2iam in kube2iam.namespace)"
                    if ds.name == KUBE2IAM_NAME and ds.tool == "kube2iam" else
                    "two interceptors would fight over the nodes' 169.254.169.254 rule; remove it first "
                    "(e.g. `helm uninstall` it): --adopt takes over only a kube2iam named kube2iam in kube2iam.namespace"),
            details={"namespace": ds.namespace, "name": ds.name, "app_port": ds.port, "installer": ds.installer,
                     "tool": ds.tool}))
    return steps


# --- planning ---------------------------------------------------------------------------------


def plan_setup(ctx) -> list[Step]:
    gw = gateway(ctx)
    interface, _ = host_interface(ctx)
    steps = _plan_second_kube2iam(ctx, gw)
    for obj in desired_objects(ctx.config, interface):
        if obj["kind"] == "Namespace":
            steps.append(_plan_namespace_annotation(ctx, gw, obj))
            continue
        meta = obj["metadata"]
        live = gw.get(obj["kind"], meta["name"], meta.get("namespace"))
        name = describe(obj)
        apply = _applier(gw, obj)
        if live is None:
            steps.append(Step(SYSTEM, CREATE, obj["kind"], name, f"create {obj['kind']} {name}", run=apply))
            continue
        fields = differences(_comparable(obj), _comparable(live))
        if not is_ours(live):
            if ctx.adopt:
                steps.append(Step(SYSTEM, UPDATE, obj["kind"], name, f"take over {obj['kind']} {name} (--adopt)",
                                  reason=_fields_reason(fields) or "adds rbacbridge's label", run=apply,
                                  details={"fields": fields, "adopt": True}))
            else:
                steps.append(Step(SYSTEM, CONFLICT, obj["kind"], name, f"{obj['kind']} {name} exists and is not rbacbridge's",
                                  reason=f"no {MANAGED_BY}={OWNER} label; --adopt takes it over", details={"fields": fields}))
            continue
        if fields:
            steps.append(Step(SYSTEM, UPDATE, obj["kind"], name, f"update {obj['kind']} {name}",
                              reason=_fields_reason(fields), run=apply, details={"fields": fields}))
        else:
            steps.append(Step(SYSTEM, UNCHANGED, obj["kind"], name, f"{obj['kind']} {name} is up to date"))
    # Annotations rbacbridge set on namespaces that are no tenant's now (or restrictions turned off)
    # go before the Deployments; workloads of removed tenants go last.
    stale = _plan_stale_annotations(ctx, gw)
    at = len([s for s in steps if s.kind != "Deployment"])
    steps[at:at] = stale
    steps += _plan_stale_workloads(ctx, gw)
    from rbacbridge.exposure import plan_steps as exposure_steps

    steps += exposure_steps(ctx, gw)  # namespaces outside every tenant allowing a managed role: findings
    return steps


def _tenant_namespaces(config) -> set[str]:
    return {ns for t in config.tenants for ns in t.namespaces} if config.namespace_restrictions else set()


def _plan_stale_annotations(ctx, gw: KubeGateway, teardown: bool = False) -> list[Step]:
    """rbacbridge's allowed-roles annotation on a namespace that no tenant has (any more): removed
    (only rbacbridge's field, on the evidence of its field manager)."""
    config = ctx.config
    keep = set() if teardown else _tenant_namespaces(config)
    try:
        candidates = gw.list("Namespace")
    except KubeApiError as exc:
        if exc.status != 403:
            raise
        names = sorted(_tenant_namespaces(config) | {config.namespace})
        _note(ctx, f"cannot list namespaces (403): rbacbridge's allowed-roles annotation looked for in {', '.join(names)} only")
        candidates = [o for o in (gw.get("Namespace", n) for n in names) if o is not None]
    steps = []
    for live in candidates:
        name = live["metadata"]["name"]
        if name in keep or ALLOWED_ROLES not in (live["metadata"].get("annotations") or {}) or not owns_annotation(live):
            continue
        step = _plan_annotation_removal(ctx, gw, name, live)
        if teardown:
            step.message = f"{step.message}: no longer a tenant's namespace in the config"
        elif not config.namespace_restrictions:
            step.reason = "kube2iam.namespace_restrictions is off"
        else:
            step.reason = "no tenant in the config has this namespace any more"
        steps.append(step)
    return steps


def _plan_stale_workloads(ctx, gw: KubeGateway, teardown: bool = False) -> list[Step]:
    """Deployments rbacbridge made for a tenant (its labels) that the config no longer lists: deleted."""
    config = ctx.config
    wanted = set() if teardown else {(t.namespace, w) for t in config.tenants for w in t.workloads}
    selector = f"{MANAGED_BY}={OWNER},{TENANT_LABEL}"
    try:
        found = gw.list("Deployment", label_selector=selector)
    except KubeApiError as exc:
        if exc.status != 403:
            raise
        names = sorted({t.namespace for t in config.tenants} | {config.namespace})
        _note(ctx, f"cannot list Deployments in all namespaces (403): tenants' workloads looked for in {', '.join(names)} only")
        found = [o for ns in names for o in gw.list("Deployment", ns, label_selector=selector)]
    # the article's nginx-annotated carries no tenant label: found by name where it was made
    legacy = gw.get("Deployment", "nginx-annotated", config.namespace) if (config.namespace, "nginx-annotated") not in wanted else None
    if legacy is not None and is_ours(legacy) and TENANT_LABEL not in (legacy["metadata"].get("labels") or {}):
        found.append(legacy)
    steps = []
    for live in found:
        meta = live["metadata"]
        if (meta.get("namespace"), meta["name"]) in wanted:
            continue
        tenant = (meta.get("labels") or {}).get(TENANT_LABEL) or "nginx-annotated"
        gone = config.tenant_of_namespace(meta.get("namespace", "")) is None or tenant not in {t.name for t in config.tenants}
        why = "no longer in the config" if gone else "no longer lists this workload"
        steps.append(Step(SYSTEM, DELETE, "Deployment", describe(live), f"tenant {tenant} {why}: delete Deployment {describe(live)}",
                          run=_deleter(gw, "Deployment", meta["name"], meta.get("namespace")), details={"tenant": tenant}))
    return steps


def _fields_reason(fields: list[str]) -> str:
    return ("differs: " + ", ".join(fields)) if fields else ""


def _applier(gw: KubeGateway, obj: dict[str, Any]) -> Callable[[], Any]:
    return lambda: gw.apply(obj)


def _plan_namespace_annotation(ctx, gw: KubeGateway, obj: dict[str, Any]) -> Step:
    name = obj["metadata"]["name"]
    value = obj["metadata"]["annotations"][ALLOWED_ROLES]
    live = gw.get("Namespace", name)
    label = f"{name} annotation {ALLOWED_ROLES}"
    if live is None:
        return Step(SYSTEM, CONFLICT, "Namespace", name, f"namespace {name} does not exist",
                    reason="rbacbridge never creates or deletes namespaces: create it first (or set kubernetes.namespace)")
    current = (live["metadata"].get("annotations") or {}).get(ALLOWED_ROLES)
    apply = _applier(gw, obj)
    details = {"annotation": ALLOWED_ROLES, "value": value, "live": current}
    if current is None:
        return Step(SYSTEM, UPDATE, "Namespace", name, f"annotate namespace {name}: {ALLOWED_ROLES}={value}",
                    reason="kube2iam --namespace-restrictions allows only the roles listed here", run=apply, details=details)
    if _same_json(current, value):
        return Step(SYSTEM, UNCHANGED, "Namespace", name, f"{label} is up to date", details=details)
    if owns_annotation(live) or ctx.adopt:
        return Step(SYSTEM, UPDATE, "Namespace", name, f"set {label} to {value}", reason=f"is {current}", run=apply, details=details)
    return Step(SYSTEM, CONFLICT, "Namespace", name, f"{label} is already set to {current} by someone else",
                reason="--adopt replaces it with rbacbridge's value", details=details)


def _same_json(a: str, b: str) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return a == b


def plan_teardown(ctx) -> list[Step]:
    gw = gateway(ctx)
    config = ctx.config
    steps = []
    # Desired objects give the names; the interface does not matter for deleting.
    import dataclasses

    named = desired_objects(dataclasses.replace(config, namespace_restrictions=True, account_id=config.account_id or "000000000000"), FALLBACK_INTERFACE)
    named_keys = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in named}
    # what tenants no longer in the config left behind (rbacbridge's labels / field manager) goes first
    steps += [s for s in _plan_stale_workloads(ctx, gw, teardown=True)
              if ("Deployment", *s.name.split("/", 1)) not in named_keys]
    stale_namespaces = [s for s in _plan_stale_annotations(ctx, gw, teardown=True)
                        if ("Namespace", None, s.name) not in named_keys]
    for obj in reversed(named):
        meta = obj["metadata"]
        name = describe(obj)
        if obj["kind"] == "Namespace":
            steps.append(_plan_annotation_removal(ctx, gw, meta["name"]))
            continue
        if obj["kind"] == "DaemonSet":
            steps += stale_namespaces
        live = gw.get(obj["kind"], meta["name"], meta.get("namespace"))
        if live is None:
            steps.append(Step(SYSTEM, UNCHANGED, obj["kind"], name, f"{obj['kind']} {name} is already gone"))
        elif is_ours(live) or ctx.force:
            steps.append(Step(SYSTEM, DELETE, obj["kind"], name, f"delete {obj['kind']} {name}",
                              reason="" if is_ours(live) else "not labelled as rbacbridge's; deleting because of --force",
                              run=_deleter(gw, obj["kind"], meta["name"], meta.get("namespace"))))
        else:
            steps.append(Step(SYSTEM, LEFT_ALONE, obj["kind"], name, f"{obj['kind']} {name} is not rbacbridge's: left alone",
                              reason=f"no {MANAGED_BY}={OWNER} label (--force deletes it anyway)"))
    return steps


def _deleter(gw: KubeGateway, kind: str, name: str, namespace: str | None) -> Callable[[], Any]:
    return lambda: gw.delete(kind, name, namespace)


def _plan_annotation_removal(ctx, gw: KubeGateway, namespace: str, live: dict[str, Any] | None = None) -> Step:
    live = live if live is not None else gw.get("Namespace", namespace)
    label = f"{namespace} annotation {ALLOWED_ROLES}"
    current = ((live or {}).get("metadata", {}).get("annotations") or {}).get(ALLOWED_ROLES)
    if current is None:
        return Step(SYSTEM, UNCHANGED, "Namespace", namespace, f"{label} is not set")
    if not owns_annotation(live):
        return Step(SYSTEM, LEFT_ALONE, "Namespace", namespace, f"{label} was not set by rbacbridge: left alone",
                    details={"value": current})
    patch = {"metadata": {"annotations": {ALLOWED_ROLES: None}}}
    return Step(SYSTEM, DELETE, "Namespace", namespace, f"remove {label} (the namespace stays)", details={"value": current},
                run=lambda: gw.merge_patch("Namespace", namespace, patch))


# --- waiting ---------------------------------------------------------------------------------------


def _rollout_timeout(ctx) -> float:
    return float(getattr(ctx.config, "rollout_timeout", 300))


def _poll_interval(timeout: float) -> float:
    return max(0.05, min(2.0, timeout / 20))


def _workload_ready(obj: dict[str, Any]) -> tuple[bool, str]:
    status = obj.get("status") or {}
    meta = obj["metadata"]
    observed = status.get("observedGeneration", 0) >= meta.get("generation", 1)
    if obj["kind"] == "DaemonSet":
        want = status.get("desiredNumberScheduled", 0)
        updated, available = status.get("updatedNumberScheduled", 0), status.get("numberAvailable", 0)
        ready = observed and updated == want and available == want and want > 0
        return ready, f"DaemonSet {describe(obj)} {available}/{want} available, {updated} updated"
    want = (obj.get("spec") or {}).get("replicas", 1)
    updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
    ready = observed and updated >= want and available >= want
    return ready, f"Deployment {describe(obj)} {available}/{want} available"


def _workloads(ctx) -> list[tuple[str, str, str]]:
    config = ctx.config
    return [("DaemonSet", "kube2iam", config.kube2iam_namespace),
            ("Deployment", "nginx-vanilla", config.namespace)] + [
            ("Deployment", w, t.namespace) for t in config.tenants for w in t.workloads]


def after_setup(ctx) -> None:
    """Wait for the kube2iam DaemonSet to roll out and the Deployments to be available."""
    gw = gateway(ctx)
    timeout = _rollout_timeout(ctx)
    deadline = time.monotonic() + timeout
    interval = _poll_interval(timeout)
    last = ""
    while True:
        states, pending = [], []
        for kind, name, namespace in _workloads(ctx):
            obj = gw.get(kind, name, namespace)
            if obj is None or not is_ours(obj):
                continue  # not ours to wait for (left alone or absent after a conflict)
            ready, text = _workload_ready(obj)
            states.append(text)
            if not ready:
                pending.append(obj)
        summary = "; ".join(states)
        if not pending:
            if summary:
                ctx.reporter.progress(f"rolled out: {summary}")
            return
        if summary != last:
            ctx.reporter.progress(f"waiting for rollout: {summary}")
            last = summary
        if time.monotonic() >= deadline:
            raise RbacbridgeError(_timeout_message(gw, pending, timeout))
        time.sleep(interval)


def _timeout_message(gw: KubeGateway, pending: list[dict[str, Any]], timeout: float) -> str:
    waiting = ", ".join(_workload_ready(o)[1] for o in pending)
    reasons = []
    for obj in pending:
        namespace = obj["metadata"]["namespace"]
        labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        pods = gw.list_pods(namespace, selector)
        events = None
        for pod in pods:
            why = pod_not_ready_reason(pod)
            if why is None:
                continue
            if events is None:
                events = gw.list("Event", namespace)
            event = last_event(events, pod["metadata"]["name"])
            reasons.append(f"pod {describe(pod)} not ready: {why}" + (f" (last event: {event})" if event else ""))
        if not pods:
            reasons.append(f"{obj['kind']} {describe(obj)} has no pods")
    detail = "; ".join(reasons) if reasons else "no unready pods found"
    return f"timed out after {timeout:g}s waiting for {waiting}: {detail}"


def pod_not_ready_reason(pod: dict[str, Any]) -> str | None:
    """Why a pod is not ready (container state reason first), or None when it is ready."""
    status = pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if conditions.get("Ready", {}).get("status") == "True":
        return None
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        if container.get("ready"):
            continue
        state = container.get("state") or {}
        for key in ("waiting", "terminated"):
            if key in state:
                reason = state[key].get("reason") or key
                message = state[key].get("message")
                return f"container {container.get('name')} {reason}" + (f": {message}" if message else "")
        if "running" in state:
            return f"container {container.get('name')} running but not ready (readiness probe)"
    scheduled = conditions.get("PodScheduled", {})
    if scheduled.get("status") == "False":
        return f"{scheduled.get('reason') or 'not scheduled'}: {scheduled.get('message') or ''}".rstrip(": ")
    return f"phase {status.get('phase') or 'unknown'}"


def last_event(events: list[dict[str, Any]], pod: str) -> str | None:
    mine = [e for e in events if (e.get("involvedObject") or {}).get("name") == pod]
    if not mine:
        return None

    def stamp(event: dict[str, Any]) -> str:
        return event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or ""

    event = max(mine, key=stamp)
    return f"{event.get('reason', '')}: {' '.join((event.get('message') or '').split())}"[:300]


def after_teardown(ctx) -> None:
    """Wait until kube2iam's pods are gone, so the nodes' iptables cleanup does not race them."""
    gw = gateway(ctx)
    timeout = _rollout_timeout(ctx)
    deadline = time.monotonic() + timeout
    interval = _poll_interval(timeout)
    namespace = ctx.config.kube2iam_namespace
    announced = False
    while True:
        pods = gw.list_pods(namespace, KUBE2IAM_SELECTOR)
        if not pods:
            if announced:
                ctx.reporter.progress("kube2iam pods are gone")
            return
        if not announced:
            ctx.reporter.progress(f"waiting for {len(pods)} kube2iam pod(s) to terminate")
            announced = True
        if time.monotonic() >= deadline:
            names = ", ".join(describe(p) for p in pods)
            raise RbacbridgeError(f"timed out after {timeout:g}s waiting for kube2iam pods to terminate: {names}")
        time.sleep(interval)


# --- render -----------------------------------------------------------------------------------


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


_LINK = "rbacbridge never writes through links"


def write_manifests(target: str, documents: list[tuple[str, str]]) -> Path:
    """Write the whole set into directory `target`, or nothing.

    Never writes through a symbolic link, even one swapped in while it runs: the parent directory and the
    target are opened once (O_DIRECTORY | O_NOFOLLOW: a target that is a link is refused, exit 2), and every
    later step is relative to those descriptors (openat, mkdirat, renameat, fstatat), never to the path
    again. The files are written with O_CREAT | O_EXCL | O_NOFOLLOW into a new temporary directory made
    next to the target, then renamed into the target (a rename replaces a directory entry and never writes
    through it); a target that does not exist yet is the renamed temporary directory. A file name of the set
    that is a link in the target is refused before anything is written. If the target's path was replaced
    while it ran (by a link, say), the files are in the directory that was opened, and that is an error (1).
    """
    import secrets
    import stat

    if not target.strip():
        raise UsageError("--out-dir must name a directory (got an empty string)")
    path = Path(target)
    parent = path.absolute().parent
    leaf = path.absolute().name
    if not leaf or leaf in (".", ".."):
        raise UsageError(f"--out-dir {target} must name a directory by its own name")
    directory = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise UsageError(f"--out-dir {target}: parent directory {parent} does not exist") from None
    target_fd = staging_fd = None
    staging = ""
    try:
        try:
            target_fd = os.open(leaf, directory, dir_fd=parent_fd)
        except FileNotFoundError:
            target_fd = None
        except OSError:
            info = os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                raise UsageError(f"refusing --out-dir {target}: it is a symbolic link ({_LINK})") from None
            raise UsageError(f"--out-dir {target} exists and is not a directory") from None
        if target_fd is not None:
            for name, _ in documents:
                try:
                    info = os.stat(name, dir_fd=target_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(info.st_mode):
                    raise UsageError(f"refusing to write {path / name}: it is a symbolic link ({_LINK})")
                if not stat.S_ISREG(info.st_mode):
                    raise UsageError(f"refusing to write {path / name}: it exists and is not a regular file")
        umask = os.umask(0)
        os.umask(umask)
        staging = f".{leaf or 'manifests'}.rbacbridge-{secrets.token_hex(4)}"
        try:
            os.mkdir(staging, 0o700, dir_fd=parent_fd)
            staging_fd = os.open(staging, directory, dir_fd=parent_fd)
        except OSError as exc:
            raise UsageError(f"cannot write manifests next to {target}: {exc.strerror or exc}") from None
        for name, text in documents:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                         0o666 & ~umask, dir_fd=staging_fd)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
        if target_fd is None:
            os.chmod(staging_fd, 0o777 & ~umask)
            os.rename(staging, leaf, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)  # the whole set appears at once
            staging = ""
            return path
        for name, _ in documents:
            os.rename(name, name, src_dir_fd=staging_fd, dst_dir_fd=target_fd)  # into the opened directory only
        os.rmdir(staging, dir_fd=parent_fd)
        staging = ""
        _check_still_there(target, leaf, parent_fd, target_fd)
        return path
    except OSError as exc:
        raise UsageError(f"cannot write manifests to {target}: {exc.strerror or exc}") from None
    finally:
        if staging and staging_fd is not None:
            for name, _ in documents:
                try:
                    os.unlink(name, dir_fd=staging_fd)
                except OSError:
                    pass
        if staging:
            try:
                os.rmdir(staging, dir_fd=parent_fd)
            except OSError:
                pass
        for fd in (staging_fd, target_fd, parent_fd):
            if fd is not None:
                os.close(fd)


def _check_still_there(target: str, leaf: str, parent_fd: int, target_fd: int) -> None:
    """The path still names the directory the files went into; else say where they are."""
    opened = os.fstat(target_fd)
    try:
        now = os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
        same = (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)
    except FileNotFoundError:
        same = False
    if not same:
        raise RbacbridgeError(f"--out-dir {target} was replaced while rbacbridge wrote into it: the manifests are in the "
                              f"directory it was when opened (inode {opened.st_ino}), nothing was written through the new path")
