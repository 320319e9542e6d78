"""Waiting after the steps ran: setup waits for the kube2iam DaemonSet and the Deployments to be
available, teardown until kube2iam's pods are gone (so the nodes' iptables cleanup does not race them).
A timeout names each unready pod's reason and its last event."""

from __future__ import annotations

import time
from typing import Any

from rbacbridge.errors import RbacbridgeError
from rbacbridge.kube.api import KubeGateway, gateway
from rbacbridge.kube.objects import KUBE2IAM_SELECTOR, describe, is_ours


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
