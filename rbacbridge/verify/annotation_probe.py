"""Annotation cells, live: a short-lived probe Pod in each tenant namespace, annotated with ANOTHER tenant's
role, asks kube2iam for credentials (`aws sts get-caller-identity`: only the ARN leaves the pod). It must get
none. This is the attack of issue 12 (a tenant annotates its own pod with a neighbour's role); kube2iam can
only refuse it through --namespace-restrictions and the namespace's allowed-roles annotation.

Cost: one pod per tenant namespace, not one per tenant pair. The rotation (tenant i's namespaces ask for
tenant i+1's role, the last tenant's for the first's) probes every namespace once and every tenant's role at
least once; together with the drift check, which compares every namespace's allowed-roles with the
configuration, that covers the pairs (docs/verify.md, "annotation cells")."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rbacbridge.config import Config
from rbacbridge.verify.model import ERROR, ROLE_ANNOTATION, CallResult, Observation

PROBE_POD_PREFIX = "rbacbridge-annotation-probe-"
PROBE_NAME_LABEL = "app.kubernetes.io/name"
PROBE_NAME = "rbacbridge-annotation-probe"
PROBE_START = 60  # seconds a probe pod may take to run (image pull included) before its cell is a `probe` error
PROBE_LIFETIME = 600  # seconds: the pod ends by itself (activeDeadlineSeconds) should verify die before deleting it


@dataclass(frozen=True)
class AnnotationAsk:
    tenant: str  # the tenant whose namespace the probe pod runs in
    namespace: str
    target_tenant: str  # the tenant whose role the pod is annotated with
    target_role: str  # role name (the cell's target)
    annotation: str  # the iam.amazonaws.com/role value (a role name, or an existing role's ARN)


def rotation(config: Config, tenant: str | None = None) -> list[AnnotationAsk]:
    """One ask per tenant namespace, from the configuration only: tenant i's namespaces are annotated with
    tenant (i+1)'s role, wrapping around, skipping a tenant that shares i's role. Fewer than two distinct
    roles: nothing to ask. `tenant` (--tenant): only that tenant's namespaces."""
    tenants = list(config.tenants)
    out = []
    for i, own in enumerate(tenants):
        if tenant is not None and own.name != tenant:
            continue
        target = next((tenants[(i + k) % len(tenants)] for k in range(1, len(tenants))
                       if tenants[(i + k) % len(tenants)].role != own.role), None)
        if target is None:
            continue
        annotation = target.existing_role_arn or target.role
        out.extend(AnnotationAsk(own.name, ns, target.name, target.role, annotation) for ns in own.namespaces)
    return out


def probe_pod(ask: AnnotationAsk, image: str, name: str) -> dict[str, Any]:
    """The probe Pod: rbacbridge's label, the other tenant's role annotation, an AWS CLI image that sleeps."""
    return pod_body(name, ask.namespace, image, ask.annotation, PROBE_NAME)


def pod_body(name: str, namespace: str, image: str, annotation: str | None, label: str,
             node: str | None = None) -> dict[str, Any]:
    """A short-lived AWS CLI pod of verify's: rbacbridge's labels (`label`: which kind of probe), the role
    annotation (None: none, kube2iam's default role), pinned to `node` if given; it sleeps, then ends by itself."""
    from rbacbridge import kube

    metadata: dict[str, Any] = {"name": name, "namespace": namespace,
                                "labels": {kube.MANAGED_BY: kube.OWNER, PROBE_NAME_LABEL: label}}
    if annotation:
        metadata["annotations"] = {ROLE_ANNOTATION: annotation}
    spec: dict[str, Any] = {
        "restartPolicy": "Never", "activeDeadlineSeconds": PROBE_LIFETIME, "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "probe", "image": image, "imagePullPolicy": "IfNotPresent",
                        "command": ["sleep", str(PROBE_LIFETIME)],
                        # kube2iam may need a moment for a new pod: botocore's 1 s default is short
                        "env": [{"name": "AWS_METADATA_SERVICE_TIMEOUT", "value": "5"},
                                {"name": "AWS_METADATA_SERVICE_NUM_ATTEMPTS", "value": "3"}]}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def selector(label: str = PROBE_NAME) -> str:
    from rbacbridge import kube

    return f"{kube.MANAGED_BY}={kube.OWNER},{PROBE_NAME_LABEL}={label}"


def clean_leftovers(gateway: Any, namespaces: list[str], label: str = PROBE_NAME, prefix: str = PROBE_POD_PREFIX) -> list[str]:
    """Delete probe pods an earlier run left behind (by rbacbridge's label only); returns their names."""
    from rbacbridge import kube

    gone = []
    for namespace in dict.fromkeys(namespaces):
        for pod in gateway.list_pods(namespace, selector(label)):
            meta = pod.get("metadata") or {}
            if kube.is_ours(pod) and meta.get("name", "").startswith(prefix):
                gateway.delete("Pod", meta["name"], namespace)
                gone.append(f"{namespace}/{meta['name']}")
    return gone


def _wait_running(gateway: Any, namespace: str, name: str, timeout: float, poll: float) -> tuple[str | None, str | None]:
    """(node, None) once the pod runs, else (None, why)."""
    from rbacbridge import cleanup

    deadline = time.monotonic() + timeout
    while True:
        if cleanup.stopping():
            return None, f"probe pod {namespace}/{name}: interrupted"
        pod = gateway.get("Pod", name, namespace) or {}
        status = pod.get("status") or {}
        if status.get("phase") == "Running" and status.get("podIP"):
            return (pod.get("spec") or {}).get("nodeName"), None
        if status.get("phase") in ("Failed", "Succeeded"):
            return None, f"probe pod {namespace}/{name} ended ({status.get('phase')})"
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
                return None, f"probe pod {namespace}/{name}: {waiting['reason']}"
        if time.monotonic() > deadline:
            return None, f"probe pod {namespace}/{name} not running after {timeout:g}s"
        time.sleep(poll)


def ask_one(gateway: Any, config: Config, ask: AnnotationAsk, timeout: float = PROBE_START, poll: float = 0.5,
            from_metadata: bool = False) -> Observation:
    """Create the probe pod, ask for credentials in it, delete it (always). allowed: True = credentials handed
    out, False = none, None = could not tell. `from_metadata` (--probe-from rbacbridge): the pod's metadata path is
    asked for the role directly (verify.one_exec: sh and one curl, no AWS CLI); credentials it hands out are
    named by STS from rbacbridge and dropped. Else the pod's `aws sts get-caller-identity`: only the caller ARN
    crosses the exec channel."""
    from rbacbridge import kube
    from rbacbridge.verify.probes import AwsCliBackend, KubeExecRunner

    from rbacbridge import cleanup

    name = PROBE_POD_PREFIX + uuid.uuid4().hex[:8]
    where = f"probe pod {ask.namespace}/{name} annotated {ROLE_ANNOTATION}: {ask.annotation}"
    created = False
    key = ("pod", ask.namespace, name)
    try:
        # registered before it exists: an interruption (Ctrl-C, SIGTERM) deletes it (rbacbridge.cleanup)
        with cleanup.creating(key, lambda: gateway.delete("Pod", name, ask.namespace)):
            gateway.request("POST", kube.collection_path("Pod", ask.namespace), body=probe_pod(ask, config.probe_image, name))
        created = True
        node, why = _wait_running(gateway, ask.namespace, name, timeout, poll)
        if why:
            return Observation(None, CallResult(False, ERROR, why))
        backend = AwsCliBackend(KubeExecRunner(gateway, ask.namespace, name), config.region, config.endpoint_url)
        result = _from_metadata(backend, config, ask) if from_metadata else backend.identity()
        where += f" on node {node}" if node else ""
        if result.ok:
            return Observation(True, CallResult(True, detail=f"{where}: got credentials of {result.value}", value=result.value))
        from rbacbridge.verify.probes import _allowed

        allowed = _allowed(result)
        return Observation(allowed, CallResult(False, result.category, f"{where}: {result.detail}"))
    except Exception as exc:  # noqa: BLE001 - e.g. no RBAC to create pods: an observation, with the reason
        return Observation(None, CallResult(False, ERROR, f"{where}: {type(exc).__name__}: {exc} (verify needs create/get/"
                                                          "delete on pods and create on pods/exec in tenant namespaces; "
                                                          "--no-annotation-probe skips these cells)"))
    finally:
        if created:
            try:
                gateway.delete("Pod", name, ask.namespace)
                cleanup.forget(key)
            except Exception:  # noqa: BLE001 - the next run's clean_leftovers deletes it by label (or the exit, cleanup)
                pass
        else:
            cleanup.forget(key)


def run_asks(gateway: Any, config: Config, asks: list[AnnotationAsk], timeout: float = PROBE_START,
             poll: float = 0.5, from_metadata: bool = False) -> dict[AnnotationAsk, Observation]:
    """Leftovers of earlier runs deleted, then every probe pod at once."""
    if not asks:
        return {}
    clean_leftovers(gateway, [a.namespace for a in asks])
    with ThreadPoolExecutor(max_workers=min(16, len(asks)), thread_name_prefix="rbv-annot") as pool:
        futures = {ask: pool.submit(ask_one, gateway, config, ask, timeout, poll, from_metadata) for ask in asks}
    return {ask: f.result() for ask, f in futures.items()}


def _from_metadata(backend: Any, config: Config, ask: AnnotationAsk) -> CallResult:
    """The probe pod's metadata path asked for the annotated role (one exec, no spot check). Handed out: STS names
    the credentials (from rbacbridge; they go no further); refused or no answer: no credentials, as the AWS CLI
    would find none."""
    from rbacbridge.verify.model import NO_CREDENTIALS
    from rbacbridge.verify.one_exec import one_exec

    role = ask.annotation.rsplit("/", 1)[-1]
    got = one_exec(backend, role, None)
    if got is None or got.creds is None:
        return CallResult(False, NO_CREDENTIALS, f"kube2iam handed out no credentials ({got.why if got else 'no exec'})")
    from rbacbridge.verify.inprocess import Boto3Backend

    caller = Boto3Backend(config.endpoint_url, config.region, got.creds.for_boto3(), retries=True)
    named = caller.identity()
    return named if named.ok else CallResult(True, detail="ok", value=f"role {got.listed} (credentials STS could not name: "
                                                                        f"{named.category})")
