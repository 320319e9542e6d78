"""rbacbridge's short-lived pods on the nodes (templates/k8s/node-exec-pod.yaml.j2): their name, body,
start and wait, and the checks made once per run before any is created: pods an interrupted run left
are deleted, and the namespace must allow hostNetwork (PodSecurity)."""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from rbacbridge.errors import RbacbridgeError, UsageError
from rbacbridge.nodes.pods.session import PodSession, delete_pod, track
from rbacbridge.nodes.session import NodeError

COMPONENT_LABEL = "app.kubernetes.io/component"
NODE_EXEC = "node-exec"  # the iptables pod
HOST_PROBE = "host-probe"  # verify's host-node AWS CLI pod
NODE_ANNOTATION = "rbacbridge.io/node"
POD_SECURITY = "pod-security.kubernetes.io/enforce"
LIFETIME = 3600  # seconds: a pod a killed run left ends by itself (activeDeadlineSeconds), the next run deletes it
_BAD_WAITING = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                "CreateContainerError", "RunContainerError", "ErrImageNeverPull")


def pod_namespace(config) -> str:
    return config.node_pod_namespace or config.kube2iam_namespace


def pod_image(config) -> str:
    return config.node_pod_image or config.kube2iam_image


def selector(component: str = NODE_EXEC) -> str:
    from rbacbridge.kube import MANAGED_BY, OWNER

    return f"{MANAGED_BY}={OWNER},{COMPONENT_LABEL}={component}"


def render_pod(name: str, namespace: str, node: str, image: str, component: str = NODE_EXEC,
               capabilities: tuple[str, ...] = ("NET_ADMIN",), lifetime: int = LIFETIME) -> dict[str, Any]:
    import yaml

    from rbacbridge.templating import render_text

    return yaml.safe_load(render_text("k8s/node-exec-pod.yaml.j2", pod_name=name, namespace=namespace, node=node, image=image,
                                      component=component, capabilities=list(capabilities), lifetime=int(lifetime)))


def pod_name(node: str, component: str = NODE_EXEC) -> str:
    """rbacbridge-<component>-<8 hex of the node name>-<4 random hex>: a DNS label whatever the node's name."""
    digest = hashlib.sha256(node.encode()).hexdigest()[:8]
    return f"rbacbridge-{component}-{digest}-{secrets.token_hex(2)}"


def _get(obj: Any, path: str) -> Any:
    for key in path.split("."):
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def remove_leftovers(ctx, component: str = NODE_EXEC) -> list[str]:
    """Delete the pods an interrupted run left (both labels: ours), once per run and component."""
    done = ctx.facts.setdefault("nodes.leftovers_removed", set())
    if component in done:
        return []
    from rbacbridge import kube

    gw = kube.gateway(ctx)
    namespace = pod_namespace(ctx.config)
    removed = []
    for pod in gw.list_pods(namespace, selector(component)):
        labels = _get(pod, "metadata.labels") or {}
        if labels.get(kube.MANAGED_BY) != kube.OWNER or labels.get(COMPONENT_LABEL) != component:
            continue  # belt and braces: the selector already says so
        name = _get(pod, "metadata.name")
        delete_pod(gw, namespace, name)
        removed.append(f"{namespace}/{name}")
    done.add(component)
    if removed:
        text = f"removed {len(removed)} pod(s) an interrupted rbacbridge run left: {', '.join(removed)}"
        ctx.reporter.progress(text)
        notes = ctx.facts.setdefault("notes", [])
        if text not in notes:
            notes.append(text)
    return removed


def check_pod_security(ctx, nodes: list[str], what: str = "hostNetwork and NET_ADMIN") -> None:
    """The pod namespace must exist and not enforce PodSecurity baseline/restricted (both refuse hostNetwork)."""
    from rbacbridge import kube

    namespace = pod_namespace(ctx.config)
    key = ("nodes.pod_security", namespace)
    if ctx.facts.get(key):
        return
    try:
        obj = kube.gateway(ctx).get("Namespace", namespace)
    except kube.KubeApiError as exc:
        if exc.status != 403:
            raise
        ctx.facts.setdefault("notes", []).append(
            f"cannot read namespace {namespace} (403) to check its PodSecurity level; a refused pod is reported per node")
        ctx.facts[key] = True
        return
    if obj is None:
        raise UsageError(f"namespace {namespace} (nodes.pod_namespace) does not exist: rbacbridge's node pods go there; nothing created")
    level = (_get(obj, "metadata.labels") or {}).get(POD_SECURITY)
    if level in ("baseline", "restricted"):
        shown = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
        raise UsageError(f"namespace {namespace} enforces PodSecurity {level} ({POD_SECURITY}), which refuses the pod "
                         f"rbacbridge needs on {shown} ({what}); nothing created: set nodes.pod_namespace to a "
                         f"privileged namespace, or use --via ssh")
    ctx.facts[key] = True


def start_pod(ctx, node: str, host_ip: str | None, namespace: str, image: str, component: str,
              capabilities: tuple[str, ...], timeout: float) -> PodSession:
    """Create the pod on `node`, wait until its container runs; a pod that cannot start is deleted again."""
    from rbacbridge import kube

    gw = kube.gateway(ctx)
    name = pod_name(node, component)
    body = render_pod(name, namespace, node, image, component, capabilities)
    ctx.reporter.progress(f"{node}: starting pod {namespace}/{name} ({image})")
    from rbacbridge import cleanup

    key = ("pod", namespace, name)
    try:
        with cleanup.creating(key, lambda: delete_pod(gw, namespace, name)):  # an interruption from here on deletes it
            gw.request("POST", kube.collection_path("Pod", namespace), body=body, what=f"pod {namespace}/{name}")
    except kube.KubeApiError as exc:
        cleanup.forget(key)
        text = str(exc)
        if exc.status in (400, 403, 422) and "cannot create resource" not in text:
            raise NodeError(f"{node}: the API server refused pod {namespace}/{name} (admission): {_message(text)}") from None
        raise NodeError(f"{node}: {text}") from None
    session = PodSession(gw, node, namespace, name, component, True, host_ip, ctx.config.ssh_command_timeout)
    track(session)
    try:
        _wait_running(gw, namespace, name, node, min(ctx.config.rollout_timeout, max(timeout, 1.0) * 5))
        if session.host_ip is None:
            session.host_ip = _get(gw.get("Pod", name, namespace), "status.hostIP")
    except BaseException:
        try:
            session.close()
        except RbacbridgeError:
            pass
        raise
    return session


def _message(text: str) -> str:
    """The API server's own words from a KubeApiError line (what admission said)."""
    import re

    match = re.search(r"\(403 Forbidden: (.*)\)$|\(422\): (.*)$", text)
    found = next((g for g in match.groups() if g), None) if match else None
    return found or text


def _wait_running(gw, namespace: str, name: str, node: str, timeout: float) -> None:
    from rbacbridge import cleanup
    from rbacbridge.kube import pod_not_ready_reason

    deadline = time.monotonic() + timeout
    pause = 0.02
    while True:
        cleanup.check()  # interrupted: stop waiting (the caller deletes the pod)
        pod = gw.get("Pod", name, namespace)
        if pod is None:
            raise NodeError(f"{node}: pod {namespace}/{name} disappeared before it ran")
        phase = _get(pod, "status.phase")
        statuses = _get(pod, "status.containerStatuses") or []
        if phase == "Running" and statuses and all("running" in (s.get("state") or {}) for s in statuses):
            return
        if phase in ("Failed", "Succeeded"):
            raise NodeError(f"{node}: pod {namespace}/{name} ended ({phase}): {pod_not_ready_reason(pod) or ''}".rstrip(": "))
        for status in statuses:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _BAD_WAITING:
                raise NodeError(f"{node}: pod {namespace}/{name} cannot start: {waiting.get('reason')}"
                                + (f": {waiting['message']}" if waiting.get("message") else ""))
        if time.monotonic() > deadline:
            raise NodeError(f"{node}: pod {namespace}/{name} not running after {timeout:g}s: {pod_not_ready_reason(pod)}")
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
