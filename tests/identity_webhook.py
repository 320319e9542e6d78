"""The injecting webhooks of EKS, played by the test API server's admission (tests/kube_apiserver.py): what
amazon-eks-pod-identity-webhook does to a pod at creation, for IRSA and for EKS Pod Identity.

    api.store.webhook = IdentityWebhook(region="us-east-1", pod_identity=associations_in(eks.url, "lab"))
    # every pod then created (POST, the store's controllers, or store.admit_pod(pod) before a direct put) is mutated

- IRSA: the pod's ServiceAccount carries `eks.amazonaws.com/role-arn`. Each container (and init container) gets
  AWS_STS_REGIONAL_ENDPOINTS=regional, AWS_DEFAULT_REGION / AWS_REGION (if a region is configured), AWS_ROLE_ARN,
  AWS_WEB_IDENTITY_TOKEN_FILE=/var/run/secrets/eks.amazonaws.com/serviceaccount/token and a read-only mount of the
  projected volume `aws-iam-token` (serviceAccountToken, audience sts.amazonaws.com, expirationSeconds 86400,
  path `token`). The ServiceAccount annotations eks.amazonaws.com/audience, /token-expiration and
  /sts-regional-endpoints are honoured as the webhook does.
- Pod Identity: an association exists for the pod's (namespace, ServiceAccount) — asked through `pod_identity`.
  Containers get AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.23/v1/credentials,
  AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token
  and the projected volume `eks-pod-identity-token` (audience pods.eks.amazonaws.com). As in the webhook, container
  credentials take precedence: such a pod gets no AWS_ROLE_ARN even if its ServiceAccount is annotated.

Like the webhook: a variable a container already sets is left alone; containers named in the pod annotation
`eks.amazonaws.com/skip-containers` are skipped; a pod that already has the volume is not mutated again.
Names learnt from aws/amazon-eks-pod-identity-webhook's test data and EKS's documentation; no code from them.
"""

from __future__ import annotations

import copy
import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

ROLE_ARN_ANNOTATION = "eks.amazonaws.com/role-arn"
AUDIENCE_ANNOTATION = "eks.amazonaws.com/audience"
EXPIRATION_ANNOTATION = "eks.amazonaws.com/token-expiration"
REGIONAL_ANNOTATION = "eks.amazonaws.com/sts-regional-endpoints"
SKIP_CONTAINERS_ANNOTATION = "eks.amazonaws.com/skip-containers"

IRSA_VOLUME = "aws-iam-token"
IRSA_MOUNT = "/var/run/secrets/eks.amazonaws.com/serviceaccount"
IRSA_TOKEN_FILE = IRSA_MOUNT + "/token"
POD_IDENTITY_VOLUME = "eks-pod-identity-token"
POD_IDENTITY_MOUNT = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"
POD_IDENTITY_TOKEN_FILE = POD_IDENTITY_MOUNT + "/eks-pod-identity-token"
POD_IDENTITY_URI = "http://169.254.170.23/v1/credentials"
STS_AUDIENCE = "sts.amazonaws.com"
POD_IDENTITY_AUDIENCE = "pods.eks.amazonaws.com"
MIN_EXPIRATION = 600


def associations_in(eks_url: str, cluster: str) -> Callable[[str, str], bool]:
    """Ask the EKS stand-in (tests/eks_standin.py) whether (namespace, service account) has an association."""
    def has(namespace: str, service_account: str) -> bool:
        query = urllib.parse.urlencode({"namespace": namespace, "serviceAccount": service_account})
        url = f"{eks_url.rstrip('/')}/clusters/{urllib.parse.quote(cluster)}/pod-identity-associations?{query}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(json.loads(response.read()).get("associations"))
    return has


@dataclass
class IdentityWebhook:
    region: str | None = None
    sts_regional: bool = True  # EKS runs the webhook so; a ServiceAccount annotation can say otherwise
    token_expiration: int = 86400
    pod_identity: Callable[[str, str], bool] | None = None  # (namespace, service account) -> association exists

    def mutate(self, pod: dict[str, Any], service_account: dict[str, Any] | None) -> dict[str, Any]:
        """The pod as the webhook returns it (a new dict; unchanged if nothing applies)."""
        spec = pod.get("spec") or {}
        meta = pod.get("metadata") or {}
        if any(v.get("name") in (IRSA_VOLUME, POD_IDENTITY_VOLUME) for v in spec.get("volumes") or []):
            return pod
        account_name = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        annotations = ((service_account or {}).get("metadata") or {}).get("annotations") or {}
        if self.pod_identity and self.pod_identity(meta.get("namespace", "default"), account_name):
            env = [("AWS_CONTAINER_CREDENTIALS_FULL_URI", POD_IDENTITY_URI),
                   ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", POD_IDENTITY_TOKEN_FILE)]
            volume = _projected(POD_IDENTITY_VOLUME, POD_IDENTITY_AUDIENCE, self.token_expiration, "eks-pod-identity-token")
            mount = POD_IDENTITY_MOUNT
        elif annotations.get(ROLE_ARN_ANNOTATION):
            env = [("AWS_ROLE_ARN", annotations[ROLE_ARN_ANNOTATION]), ("AWS_WEB_IDENTITY_TOKEN_FILE", IRSA_TOKEN_FILE)]
            expiration = self.token_expiration
            if annotations.get(EXPIRATION_ANNOTATION, "").isdigit():
                expiration = max(MIN_EXPIRATION, int(annotations[EXPIRATION_ANNOTATION]))
            volume = _projected(IRSA_VOLUME, annotations.get(AUDIENCE_ANNOTATION) or STS_AUDIENCE, expiration, "token")
            mount = IRSA_MOUNT
        else:
            return pod
        regional = annotations.get(REGIONAL_ANNOTATION, "true" if self.sts_regional else "false") == "true"
        common = [("AWS_STS_REGIONAL_ENDPOINTS", "regional")] if regional else []
        if self.region:
            common += [("AWS_DEFAULT_REGION", self.region), ("AWS_REGION", self.region)]
        skipped = {s.strip() for s in (meta.get("annotations") or {}).get(SKIP_CONTAINERS_ANNOTATION, "").split(",") if s.strip()}
        mutated = copy.deepcopy(pod)
        new_spec = mutated.setdefault("spec", {})
        for group in ("initContainers", "containers"):
            for container in new_spec.get(group) or []:
                if container.get("name") in skipped:
                    continue
                have = {e.get("name") for e in container.get("env") or []}
                additions = [{"name": k, "value": v} for k, v in common + env if k not in have]
                if additions:
                    container["env"] = list(container.get("env") or []) + additions
                container["volumeMounts"] = list(container.get("volumeMounts") or []) + [
                    {"name": volume["name"], "mountPath": mount, "readOnly": True}]
        new_spec["volumes"] = list(new_spec.get("volumes") or []) + [volume]
        return mutated


def _projected(name: str, audience: str, expiration: int, path: str) -> dict[str, Any]:
    return {"name": name, "projected": {"sources": [{"serviceAccountToken": {
        "audience": audience, "expirationSeconds": expiration, "path": path}}]}}


def projected_tokens(pod: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(file path in the container, audience, volume name) for each projected service-account token the pod's
    first container mounts: what a kubelet (the lab) must write."""
    spec = pod.get("spec") or {}
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    containers = spec.get("containers") or []
    found = []
    for mount in (containers[0].get("volumeMounts") or []) if containers else []:
        volume = volumes.get(mount.get("name")) or {}
        for source in (volume.get("projected") or {}).get("sources") or []:
            token = source.get("serviceAccountToken")
            if token:
                found.append((f"{mount['mountPath'].rstrip('/')}/{token['path']}", token.get("audience", ""), volume["name"]))
    return found
