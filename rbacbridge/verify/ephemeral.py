"""--probe ephemeral: an AWS CLI container added to the pod (shares its network identity)."""

from __future__ import annotations

import uuid
from typing import Any

from rbacbridge.config import Config

EPHEMERAL_PREFIX = "rbacbridge-probe-"
EPHEMERAL_LIFETIME = 900  # seconds; Kubernetes cannot remove an ephemeral container, so it exits by itself


def _api_client(gateway: Any, config: Config) -> Any:
    client = getattr(gateway, "api_client", None)
    if client is not None:
        return client
    from kubernetes import config as kube_config

    return kube_config.new_client_from_config(config_file=config.kubeconfig, context=config.context)


def ensure_ephemeral_probe(api_client: Any, namespace: str, pod: str, image: str, timeout: float = 120, poll: float = 1.0) -> str:
    """Add (or reuse) a running ephemeral AWS CLI container in the pod; return its name.

    It goes through the pods/ephemeralcontainers subresource. kube2iam tells pods apart by IP, and
    an ephemeral container shares the pod's network namespace, so it gets the pod's role.
    """
    import time

    from kubernetes import client

    from rbacbridge.errors import RbacbridgeError

    core = client.CoreV1Api(api_client)
    current = core.read_namespaced_pod(pod, namespace)
    specs = {c.name: c for c in (current.spec.ephemeral_containers or [])}
    for status in current.status.ephemeral_container_statuses or []:
        spec = specs.get(status.name)
        if status.name.startswith(EPHEMERAL_PREFIX) and status.state and status.state.running and spec and spec.image == image:
            return status.name
    name = EPHEMERAL_PREFIX + uuid.uuid4().hex[:6]
    body = {"spec": {"ephemeralContainers": [{
        "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["sleep", str(EPHEMERAL_LIFETIME)],
    }]}}
    core.patch_namespaced_pod_ephemeralcontainers(pod, namespace, body)
    deadline = time.monotonic() + timeout
    while True:
        current = core.read_namespaced_pod(pod, namespace)
        for status in current.status.ephemeral_container_statuses or []:
            if status.name != name or not status.state:
                continue
            if status.state.running:
                return name
            if status.state.terminated:
                raise RbacbridgeError(f"ephemeral probe container in {namespace}/{pod} exited: {status.state.terminated.reason}")
            waiting = status.state.waiting
            if waiting and waiting.reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
                raise RbacbridgeError(f"ephemeral probe container in {namespace}/{pod}: {waiting.reason} for {image}")
        if time.monotonic() > deadline:
            raise RbacbridgeError(f"ephemeral probe container in {namespace}/{pod} not running after {timeout:g}s")
        time.sleep(poll)
