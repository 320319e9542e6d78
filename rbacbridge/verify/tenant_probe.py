"""A tenant (or kube2iam's default role) with no running, ready pod on a node verify covers: a short-lived probe
pod there (issue 28). Without it such a tenant had no principal, no cell, and still counted as `ok`.

The pod is the annotation probe's (verify.annotation_probe: the same AWS CLI image that sleeps, the same
lifetime, cleanup registered before it is created), but annotated with the tenant's OWN role, in the tenant's
first namespace, pinned to the node (`nodeName`), labelled app.kubernetes.io/name=rbacbridge-tenant-probe. It
is one more principal: identity, every location, chain and annotation cells, probed like a workload's pod, and
deleted when the run closes its runners (an interruption: rbacbridge.cleanup; a killed run: the next run
deletes it by label, and it ends by itself after PROBE_LIFETIME). When it cannot run (admission such as Pod
Security, no permission, an image that cannot be pulled, not running in time, no schedulable node) there is no
evidence: the tenant is reported "not verified" with the reason (verify.model.Unverified)."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rbacbridge.config import Config
from rbacbridge.verify.annotation_probe import PROBE_START, _wait_running, clean_leftovers, pod_body
from rbacbridge.verify.probes import KubeExecRunner

TENANT_PROBE_NAME = "rbacbridge-tenant-probe"
TENANT_PROBE_PREFIX = TENANT_PROBE_NAME + "-"


@dataclass(frozen=True)
class ProbeNeed:
    tenant: str | None  # None: kube2iam's default role (an unannotated pod in kubernetes.namespace)
    namespace: str
    annotation: str | None  # what setup annotates the tenant's workloads with (role name, or an existing role's ARN)
    node: str | None  # None: no node known (the scheduler places it)


def need_for(config: Config, tenant: str | None, node: str | None) -> ProbeNeed:
    from rbacbridge.kube import role_reference

    if tenant is None:
        return ProbeNeed(None, config.namespace, None, node)
    item = config.tenant(tenant)
    return ProbeNeed(item.name, item.namespaces[0], role_reference(item), node)


class ProbePodRunner(KubeExecRunner):
    """Runs the probes in a probe pod verify created; close() deletes it (run_live closes every runner)."""

    def __init__(self, gateway: Any, namespace: str, pod: str, node: str | None):
        super().__init__(gateway, namespace, pod)
        self.node = node
        self._closed = False

    def close(self) -> None:
        from rbacbridge import cleanup

        if self._closed:
            return
        self._closed = True
        try:
            self.gateway.delete("Pod", self.pod, self.namespace)
            cleanup.forget(("pod", self.namespace, self.pod))
        except Exception:  # noqa: BLE001 - left to the exit (rbacbridge.cleanup) and the next run (by label)
            pass


def _refusal(exc: Exception, namespace: str, name: str) -> str:
    """Why the API server refused the pod, in its own words."""
    text = str(exc)
    status = getattr(exc, "status", None)
    found = re.search(r"\(403 Forbidden: (.*)\)$|\(422\): (.*)$", text)
    words = next((g for g in found.groups() if g), text) if found else text
    if status == 403 and "cannot create resource" in text:
        return f"no permission to create pods in namespace {namespace} ({words})"
    if status in (400, 403, 422):
        return f"the API server refused probe pod {namespace}/{name} (admission): {words}"
    return f"probe pod {namespace}/{name}: {type(exc).__name__}: {text}"


def start_one(gateway: Any, config: Config, need: ProbeNeed, timeout: float = PROBE_START,
              poll: float = 0.5) -> ProbePodRunner | str:
    """Create the probe pod and wait until it runs: its runner, or why it could not run (the pod deleted again)."""
    from rbacbridge import cleanup, kube

    name = TENANT_PROBE_PREFIX + uuid.uuid4().hex[:8]
    key = ("pod", need.namespace, name)
    body = pod_body(name, need.namespace, config.probe_image, need.annotation, TENANT_PROBE_NAME, need.node)
    try:
        # registered before it exists: an interruption (Ctrl-C, SIGTERM) deletes it (rbacbridge.cleanup)
        with cleanup.creating(key, lambda: gateway.delete("Pod", name, need.namespace)):
            gateway.request("POST", kube.collection_path("Pod", need.namespace), body=body)
    except cleanup.Stopped:
        cleanup.forget(key)
        raise
    except Exception as exc:  # noqa: BLE001 - a refused pod is the reason the tenant is not verified
        cleanup.forget(key)
        return _refusal(exc, need.namespace, name)
    runner = ProbePodRunner(gateway, need.namespace, name, need.node)
    try:
        node, why = _wait_running(gateway, need.namespace, name, timeout, poll)
    except BaseException:
        runner.close()
        raise
    if why:
        runner.close()
        return why + ("" if "not running after" not in why else " (image pull, no room on the node?)")
    runner.node = node or need.node
    return runner


def start_probe_pods(gateway: Any, config: Config, needs: list[ProbeNeed], timeout: float = PROBE_START,
                     poll: float = 0.5) -> dict[ProbeNeed, ProbePodRunner | str]:
    """Every probe pod at once; all started pods are deleted again if this is interrupted (leftovers of earlier
    runs: `clean_leftovers`, first)."""
    if not needs:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(needs)), thread_name_prefix="rbv-tenant-probe") as pool:
        futures = {need: pool.submit(start_one, gateway, config, need, timeout, poll) for need in needs}
    out: dict[ProbeNeed, ProbePodRunner | str] = {}
    failure: BaseException | None = None
    for need, future in futures.items():
        exc = future.exception()
        if exc is None:
            out[need] = future.result()
        elif failure is None:
            failure = exc
    if failure is not None:
        close_all(out)
        raise failure
    return out


def remove_leftovers(gateway: Any, namespaces: list[str]) -> list[str]:
    """Probe pods a killed run left in these namespaces, deleted by rbacbridge's label (every run, probe pods or not)."""
    return clean_leftovers(gateway, namespaces, TENANT_PROBE_NAME, TENANT_PROBE_PREFIX)


def close_all(started: dict[ProbeNeed, ProbePodRunner | str]) -> None:
    for runner in started.values():
        if isinstance(runner, ProbePodRunner):
            runner.close()


def schedulable_node(nodes: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """For a run where no configured pod runs anywhere: the first node (by name) a pod could be scheduled on
    (not cordoned, Ready, no NoSchedule/NoExecute taint), or (None, why)."""
    def usable(node: dict[str, Any]) -> bool:
        spec, status = node.get("spec") or {}, node.get("status") or {}
        ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        tainted = any(t.get("effect") in ("NoSchedule", "NoExecute") for t in spec.get("taints") or [])
        return not spec.get("unschedulable") and ready != "False" and not tainted

    names = sorted((n.get("metadata") or {}).get("name") for n in nodes if usable(n))
    if names:
        return names[0], None
    if not nodes:
        return None, "no schedulable node: the cluster has no nodes"
    return None, f"no schedulable node: every one of the {len(nodes)} node(s) is cordoned, not Ready or tainted"
