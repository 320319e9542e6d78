"""After cutover's restarts: wait for the workloads to roll out (bounded, with progress), then check their new pods
run as the ServiceAccount the plan gave them and were given the new path's environment. Also which path a pod is
on, for `migrate status`."""

from __future__ import annotations

import time
from typing import Any

from rbacbridge.errors import RbacbridgeError

IRSA_ENV = ("AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")
POD_IDENTITY_ENV = ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")


def _rollout_state(obj: dict[str, Any]) -> tuple[bool, str]:
    from rbacbridge.kube.rollout import _workload_ready

    if obj["kind"] != "StatefulSet":
        return _workload_ready(obj)
    status, meta = obj.get("status") or {}, obj["metadata"]
    want = (obj.get("spec") or {}).get("replicas", 1)
    ready = (status.get("observedGeneration", 0) >= meta.get("generation", 1) and status.get("updatedReplicas", 0) >= want
             and status.get("readyReplicas", 0) >= want)
    return ready, f"StatefulSet {meta.get('namespace')}/{meta.get('name')} {status.get('readyReplicas', 0)}/{want} ready"


def wait_for_rollouts(kube_gw, keys: list[tuple[str, str, str]], timeout: float, reporter) -> None:
    """Until every restarted workload has rolled out (bounded by `timeout`, progress on each change)."""
    deadline, last = time.monotonic() + timeout, ""
    while keys:
        states, pending = [], []
        for kind, namespace, name in keys:
            obj = kube_gw.get(kind, name, namespace)
            if obj is None:
                continue
            ready, text = _rollout_state(obj)
            states.append(text)
            if not ready:
                pending.append(text)
        summary = "; ".join(states)
        if not pending:
            reporter.progress(f"rolled out: {summary}")
            return
        if summary != last:
            reporter.progress(f"waiting for rollout: {summary}")
            last = summary
        if time.monotonic() >= deadline:
            raise RbacbridgeError(f"not rolled out after {timeout:g}s: {'; '.join(pending)} (re-run the phase to wait again)")
        time.sleep(max(0.05, min(2.0, timeout / 20)))


def workload_pods(kube_gw, kind: str, namespace: str, name: str) -> list[dict[str, Any]]:
    obj = kube_gw.get(kind, name, namespace) or {}
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not labels:
        return []
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return [p for p in kube_gw.list_pods(namespace, selector) if not (p.get("metadata") or {}).get("deletionTimestamp")]


def pod_path(pod: dict[str, Any]) -> str:
    """Which credential path a pod's containers were given: irsa, pod-identity, or kube2iam (neither injected)."""
    names = {e.get("name") for c in (pod.get("spec") or {}).get("containers") or [] for e in c.get("env") or []}
    if all(n in names for n in POD_IDENTITY_ENV):
        return "pod-identity"
    if all(n in names for n in IRSA_ENV):
        return "irsa"
    return "kube2iam"


def _env(pod: dict[str, Any], name: str) -> str | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == name:
                return env.get("value")
    return None


def check_new_path(kube_gw, wanted: dict, record, target: str, reporter) -> None:
    """Each restarted workload's pods run as their ServiceAccount and were given the new path's environment
    (by the EKS pod identity webhook, or the Pod Identity agent's): the SDK in them then prefers it."""
    from rbacbridge.migrate.record import parse_stamp

    problems = []
    for (kind, namespace, name), (account, role) in sorted(wanted.items()):
        ref = f"{kind} {namespace}/{name}"
        pods = workload_pods(kube_gw, kind, namespace, name)
        since = (record.workloads.get(ref) or {}).get("restarted_at")
        if not pods:
            problems.append(f"{ref} has no pods")
            continue
        for pod in pods:
            meta = pod.get("metadata") or {}
            created = meta.get("creationTimestamp")
            if since and created and parse_stamp(created) < parse_stamp(since):
                problems.append(f"pod {namespace}/{meta.get('name')} of {ref} is from before the restart")
            elif ((pod.get("spec") or {}).get("serviceAccountName") or "default") != account:
                problems.append(f"pod {namespace}/{meta.get('name')} of {ref} runs as "
                                f"{(pod.get('spec') or {}).get('serviceAccountName') or 'default'}, not {account}")
            elif pod_path(pod) != target:
                problems.append(f"pod {namespace}/{meta.get('name')} of {ref} was not given the {target} environment "
                                f"({', '.join(IRSA_ENV if target == 'irsa' else POD_IDENTITY_ENV)}): is the "
                                + ("EKS pod identity webhook" if target == "irsa" else "Pod Identity agent add-on") + " running?")
            elif target == "irsa" and _env(pod, "AWS_ROLE_ARN") != role:
                problems.append(f"pod {namespace}/{meta.get('name')} of {ref} was given AWS_ROLE_ARN {_env(pod, 'AWS_ROLE_ARN')}, not {role}")
        if not any(ref in p for p in problems):
            reporter.progress(f"{ref}: {len(pods)} pod(s) on the {target} path as {account}")
    if problems:
        raise RbacbridgeError(f"{len(problems)} problem(s) after the restart: {problems[0]}"
                              + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
