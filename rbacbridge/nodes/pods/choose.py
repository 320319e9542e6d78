"""Which pod carries a node's scripts: rbacbridge's own kube2iam pod on that node (found by the
DaemonSet's UID, never by image or args), else a short-lived pod rbacbridge starts there; read-only
commands never start one."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from rbacbridge.nodes.pods.lifecycle import (NODE_EXEC, check_pod_security, pod_image, pod_namespace, remove_leftovers,
                                             start_pod)
from rbacbridge.nodes.pods.session import PodSession
from rbacbridge.nodes.session import NodeError

_lock = threading.Lock()  # the node threads record where each node's scripts run (nodes.via_pods)


@dataclass(frozen=True)
class Kube2iamPod:
    namespace: str
    name: str
    container: str | None
    host_ip: str | None


def kube2iam_pods(ctx) -> dict[str, Kube2iamPod]:
    """node name -> a running hostNetwork pod of rbacbridge's own kube2iam DaemonSet there (read once per run).

    Only rbacbridge's own: the DaemonSet `kube2iam` in kube2iam.namespace with rbacbridge's labels, and
    pods whose controller owner reference carries that DaemonSet's UID (`kube.own_kube2iam`). Never a pod
    found by image or args: any tenant can run a DaemonSet that looks like kube2iam, with its own `iptables`
    inside, and the node's rules would be read (and changed) through whatever that binary does."""
    def compute() -> dict[str, Kube2iamPod]:
        from rbacbridge import kube

        try:
            own = kube.own_kube2iam(ctx)
        except kube.KubeApiError as exc:
            if exc.status != 403:
                raise
            notes = ctx.facts.setdefault("notes", [])
            text = (f"cannot read rbacbridge's kube2iam DaemonSet and pods in {ctx.config.kube2iam_namespace} (403): "
                    "no kube2iam pod is used, short-lived pods instead")
            if text not in notes:
                notes.append(text)
            return {}
        found: dict[str, Kube2iamPod] = {}
        for pod in own.pods if own is not None else ():
            if pod.node and pod.node not in found and pod.running and pod.host_network:
                found[pod.node] = Kube2iamPod(pod.namespace, pod.name, pod.container, pod.host_ip)
        return found

    return ctx.fact("nodes.kube2iam_pods", compute)


def prepare(ctx, refs: list, read_only: bool = False) -> None:
    """Before the first node is contacted: leftovers gone, kube2iam's pods found, and if some node needs
    a short-lived pod, its namespace checked (bad input before anything is created)."""
    use_kube2iam = not ctx.facts.get("nodes.kube2iam_changing")
    pods = kube2iam_pods(ctx) if use_kube2iam else {}
    without = [ref.name for ref in refs if ref.name not in pods]
    if read_only:
        return
    remove_leftovers(ctx)
    if without:
        check_pod_security(ctx, without)


def open_session(ctx, ref) -> PodSession:
    """The node's kube2iam pod, else a new short-lived pod there (read-only runs: never a new pod)."""
    from rbacbridge import kube

    gw = kube.gateway(ctx)
    timeout = ctx.config.ssh_command_timeout
    if not ctx.facts.get("nodes.kube2iam_changing"):
        found = kube2iam_pods(ctx).get(ref.name)
        if found is not None:
            ctx.reporter.progress(f"{ref.name}: exec in kube2iam pod {found.namespace}/{found.name}")
            session = PodSession(gw, ref.name, found.namespace, found.name, found.container, False,
                                 ref.internal_ip or found.host_ip, timeout)
            _remember(ctx, ref.name, session.where)
            return session
    if ctx.facts.get("nodes.read_only"):
        raise NodeError(f"{ref.name}: no pod of rbacbridge's kube2iam DaemonSet "
                        f"{ctx.config.kube2iam_namespace}/kube2iam runs there, and this command only reads "
                        "(it creates no pod): use --via ssh for this node")
    namespace, image = pod_namespace(ctx.config), pod_image(ctx.config)
    session = start_pod(ctx, ref.name, ref.internal_ip, namespace, image, NODE_EXEC, ("NET_ADMIN",), timeout)
    _remember(ctx, ref.name, session.where)
    return session


def _remember(ctx, node: str, where: str) -> None:
    with _lock:
        ctx.facts.setdefault("nodes.via_pods", {})[node] = where
