"""Metadata interceptors in the cluster, whoever installed them, and rbacbridge's own kube2iam.

A DaemonSet is recognised by its shape (image, kube2iam's flags, a kiam agent), which only says who may
be *using* a port on the nodes; it is rbacbridge's own only at rbacbridge's namespace/name with its
label, and a pod is its pod only by the DaemonSet's UID in the pod's controller reference. The nodes
part asks `port_users` and `own_kube2iam`; the planning here asks `kube2iam_daemonsets` (a second
kube2iam is a conflict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rbacbridge.kube.api import KubeApiError, gateway, note
from rbacbridge.kube.objects import KUBE2IAM_NAME, MANAGED_BY, NAME_LABEL, OWNER


KUBE2IAM_DEFAULT_PORT = 8181  # kube2iam's --app-port when the flag is absent
KIAM_AGENT_DEFAULT_PORT = 3100  # kiam agent's --port when the flag is absent (uswitch/kiam cmd/kiam/agent.go)
KUBE2IAM_FLAGS = ("--base-role-arn", "--app-port")


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
        note(ctx, f"cannot list DaemonSets in all namespaces (403): kube2iam looked for in {', '.join(namespaces)} only")
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
