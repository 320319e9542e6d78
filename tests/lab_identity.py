"""The lab's side of IRSA and EKS Pod Identity (tests/lab.py), started on demand by `lab.start_identity()`:

    ident = lab.start_identity(cluster="lab")   # issuer, STS proxy, EKS stand-in, agents, injecting webhook
    ident.issuer.url / ident.eks.url / ident.sts_url
    lab.add_pod("node-a", "team-a", "web", {...}, service_account="app")   # admitted: the webhook's env
    lab.pod_exec("team-a", "web", ["aws", "sts", "get-caller-identity"])   # the CLI picks its source itself

- A test OIDC issuer (tests/oidc_issuer.TestIssuer) on 127.0.0.1: the cluster's service-account issuer.
- The STS proxy (tests/oidc_issuer.StsProxy) listening in the lab's "aws" namespace beside moto (port 5002):
  pods get AWS_ENDPOINT_URL_STS pointing there, so AssumeRoleWithWebIdentity is checked against the role's trust.
- The EKS stand-in (tests/eks_standin.EksStandin) on 127.0.0.1 with the cluster, its issuer and the agent add-on.
- The Pod Identity agent (`AgentHandler`) on 169.254.170.23:80 in each node namespace (an address on the node's
  lo, as the agent's link-local interface): it passes the Authorization header (the pod's token file content) to
  EKS Auth AssumeRoleForPodIdentity and answers container-credentials JSON.
- The test API server's admission plays the injecting webhook (tests/identity_webhook.IdentityWebhook), asking the
  EKS stand-in for associations.
- Projected token files: before each exec into a pod the lab mints the tokens its spec projects (the kubelet's
  job) into a directory of the pod's own, bound over /run (= /var/run) in the exec's private mount namespace
  (`ip netns exec` makes one), so the injected paths /var/run/secrets/... exist for that process only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.eks_standin import EksStandin
from tests.identity_webhook import IdentityWebhook, associations_in, projected_tokens
from tests.oidc_issuer import StsProxy, TestIssuer

AGENT_IP = "169.254.170.23"
STS_PROXY_PORT = 5002


class AgentHandler(BaseHTTPRequestHandler):
    """The eks-pod-identity-agent's credentials endpoint for the pods of one node."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, code: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        from botocore.exceptions import ClientError

        identity: LabIdentity = self.server.identity
        identity.agent_requests.append((self.server.node_name, self.client_address[0], self.path))
        if self.path.split("?")[0] != "/v1/credentials":
            self._answer(404, {"message": "not found"})
            return
        token = (self.headers.get("Authorization") or "").strip()
        if not token:
            self._answer(400, {"message": "Service account token cannot be empty"})
            return
        try:
            answer = identity.eks_auth().assume_role_for_pod_identity(clusterName=identity.cluster, token=token)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = 403 if error.get("Code") == "AccessDeniedException" else 400
            self._answer(status, {"message": f"{error.get('Code')}: {error.get('Message')}"})
            return
        creds = answer["credentials"]
        self._answer(200, {"AccessKeyId": creds["accessKeyId"], "SecretAccessKey": creds["secretAccessKey"],
                           "Token": creds["sessionToken"], "AccountId": answer["assumedRoleUser"]["arn"].split(":")[4],
                           "Expiration": creds["expiration"].astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})


@dataclass
class LabIdentity:
    lab: Any  # tests.lab.Lab
    cluster: str
    issuer: TestIssuer
    eks: EksStandin
    sts: StsProxy
    agents: list[Any] = field(default_factory=list)
    agent_requests: list[tuple[str, str, str]] = field(default_factory=list)
    _eks_auth: Any = None

    @classmethod
    def start(cls, lab: Any, cluster: str = "lab") -> "LabIdentity":
        from tests.lab import REGION, _sh, in_namespace, serve_in_namespace

        issuer = TestIssuer().start()
        eks = EksStandin(lab.endpoint_url, region=REGION, credentials=lab.admin, assume=_control_assume(lab)).start()
        sts = None
        identity = None
        try:
            eks.add_cluster(cluster, issuer.url)
            sts = in_namespace(lab.aws.namespace, lambda: StsProxy(
                lab.endpoint_url, credentials=lab.admin, address=(lab.aws.address, STS_PROXY_PORT))).start()
            identity = cls(lab, cluster, issuer, eks, sts)
            for lab_node in lab.nodes:
                ns = lab_node.node.namespace
                if AGENT_IP not in _sh(["ip", "-n", ns, "addr", "show", "dev", "lo"]).stdout:
                    _sh(["ip", "-n", ns, "addr", "add", f"{AGENT_IP}/32", "dev", "lo"])
                identity.agents.append(serve_in_namespace(ns, AGENT_IP, 80, AgentHandler, identity=identity,
                                                          node_name=lab_node.name))
            lab.api.store.webhook = IdentityWebhook(region=REGION, pod_identity=associations_in(eks.url, cluster))
        except BaseException:
            for server in ([*identity.agents] if identity else []) + [s for s in (sts, eks, issuer) if s is not None]:
                server.shutdown()
                server.server_close()
            raise
        return identity

    @property
    def sts_url(self) -> str:
        return f"http://{self.lab.aws.address}:{STS_PROXY_PORT}"

    def eks_auth(self):
        import boto3

        if self._eks_auth is None:
            self._eks_auth = boto3.client("eks-auth", endpoint_url=self.eks.url, region_name=self.eks.region, **self.lab.admin)
        return self._eks_auth

    def pod_run_dir(self, pod: dict[str, Any]) -> Path | None:
        """Mint the projected tokens `pod` mounts into its own directory (what is bound over /run); None if none."""
        tokens = projected_tokens(pod)
        if not tokens:
            return None
        meta, spec = pod["metadata"], pod.get("spec") or {}
        run_dir = self.lab.workdir / "pods" / f"{meta['namespace']}.{meta['name']}" / "run"
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for path, audience, volume in tokens:
            relative = path.removeprefix("/var/run/").removeprefix("/run/")
            if relative == path:
                continue  # only /var/run paths are played (the webhook's are)
            source = volumes[volume]["projected"]["sources"][0]["serviceAccountToken"]
            token = self.issuer.mint(meta["namespace"], spec.get("serviceAccountName") or "default", audience,
                                     lifetime=int(source.get("expirationSeconds", 3600)), pod=meta["name"],
                                     pod_uid=meta.get("uid"))
            target = run_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(token)
            os.chmod(target, 0o644)
        return run_dir

    def close(self) -> None:
        self.lab.api.store.webhook = None
        for server in [*self.agents, self.sts, self.eks, self.issuer]:
            try:
                server.shutdown()
                server.server_close()
            except OSError:
                pass
        self.agents.clear()


def _control_assume(lab: Any):
    """Credentials through the lab moto's control endpoint (tests/lab_moto.py), as the lab's other stand-ins get
    them: moto with IAM enforcement on would refuse the stand-in's own key (the role trusts the EKS service, not it).
    The EKS stand-in has checked the trust already; moto does not keep session tags anyway."""
    def assume(role_arn: str, session_name: str, tags: dict[str, str]) -> dict[str, Any]:
        got = lab._assume(role_arn, session_name)
        expiration = datetime.strptime(got["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        return {"AccessKeyId": got["AccessKeyId"], "SecretAccessKey": got["SecretAccessKey"], "SessionToken": got["Token"],
                "Expiration": expiration.timestamp(), "AssumedRoleId": f"AROA{session_name[:8].upper()}:{session_name}",
                "Arn": f"arn:aws:sts::{role_arn.split(':')[4]}:assumed-role/{role_arn.rsplit('/', 1)[-1]}/{session_name}"}
    return assume


def pod_environment(pod: dict[str, Any]) -> dict[str, str]:
    """The literal env of the pod's first container (what the webhook injected, among others)."""
    containers = (pod.get("spec") or {}).get("containers") or []
    return {e["name"]: e["value"] for e in (containers[0].get("env") or []) if "value" in e} if containers else {}
