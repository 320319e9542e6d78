"""An EKS stand-in over HTTP on 127.0.0.1: the part of the EKS and EKS Auth REST APIs a migration to Pod Identity
needs, which moto lacks. Written from botocore's service models (`eks`, `eks-auth`) and AWS's docs, not from
rbacbridge's code.

    eks = EksStandin(moto_url).start()
    eks.add_cluster("lab", issuer_url=issuer.url)               # agent add-on ACTIVE; agent=None: absent
    env = {"AWS_ENDPOINT_URL_EKS": eks.url, "AWS_ENDPOINT_URL_EKS_AUTH": eks.url}   # or endpoint_url=eks.url
    boto3.client("eks").create_pod_identity_association(clusterName="lab", namespace=..., serviceAccount=..., roleArn=...)
    boto3.client("eks-auth").assume_role_for_pod_identity(clusterName="lab", token=<projected token>)
    eks.stop()

EKS (service id "EKS", rest-json): CreatePodIdentityAssociation, ListPodIdentityAssociations (namespace /
serviceAccount filters, maxResults/nextToken), DescribePodIdentityAssociation, DeletePodIdentityAssociation,
DescribeCluster (identity.oidc.issuer), ListAddons, DescribeAddon. Errors as EKS answers them
(x-amzn-ErrorType + {"message"}): ResourceNotFoundException 404, ResourceInUseException 409 (a second
association for one namespace/service account), InvalidParameterException 400, ResourceLimitExceededException 400
(`max_associations`, 5,000 as EKS's quota). A retried create with the same clientRequestToken gets the same
association (botocore fills the token in itself: an unchanged retry is idempotent, a new call is not).

EKS Auth (service id "EKS Auth"): AssumeRoleForPodIdentity, the Pod Identity agent's call. It checks the token
(RS256 by the cluster issuer's JWKS, audience pods.eks.amazonaws.com; tests/oidc_issuer.verify_token), finds
the association for the token's namespace/service account, checks the role's trust (Service
pods.eks.amazonaws.com allowed both sts:AssumeRole and sts:TagSession, conditions on aws:RequestTag/... read by
tests/trust_eval.py, since moto's AssumeRole does not evaluate trust), then gets credentials from moto's STS
AssumeRole with the session tags AWS documents (eks-cluster-arn, eks-cluster-name, kubernetes-namespace,
kubernetes-service-account, kubernetes-pod-name, kubernetes-pod-uid). Session name: eks-CLUSTER-POD-UID, cut to
64 characters. Not played: request signatures and the caller's eks-auth permission (any signed request is
accepted), targetRoleArn chaining, disableSessionTags.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.oidc_issuer import POD_IDENTITY_AUDIENCE, TokenRefused, _Server, verify_token
from tests.trust_eval import trust_allows

POD_IDENTITY_AGENT = "eks-pod-identity-agent"
POD_IDENTITY_SERVICE = "pods.eks.amazonaws.com"
_ROLE_ARN = re.compile(r"^arn:aws[\w-]*:iam::\d{12}:role/(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}$")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class EksError(Exception):
    def __init__(self, code: str, status: int, message: str, **fields: str):
        super().__init__(message)
        self.code, self.status, self.message, self.fields = code, status, message, fields


def _not_found(message: str, **fields: str) -> EksError:
    return EksError("ResourceNotFoundException", 404, message, **fields)


def _invalid(message: str, **fields: str) -> EksError:
    return EksError("InvalidParameterException", 400, message, **fields)


@dataclass
class Cluster:
    name: str
    arn: str
    issuer: str
    addons: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "EksStandin"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: Any, error: str | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if error:
            self.send_header("x-amzn-ErrorType", error)
        self.send_header("x-amzn-RequestId", secrets.token_hex(16))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            self._send(400, {"message": "request body is not JSON"}, "InvalidParameterException")
            return
        segments = [unquote(s) for s in parts.path.split("/") if s]
        self.server.requests.append((self.command, parts.path))
        try:
            status, payload = self.server.route(self.command, segments, parse_qs(parts.query), body)
        except EksError as err:
            self.server.errors.append((err.code, err.message))
            self._send(err.status, {"message": err.message, **err.fields}, err.code)
            return
        except Exception as exc:  # noqa: BLE001 - a fault of the stand-in (or of moto behind it): EKS's 500 shape
            self.server.errors.append(("InternalServerException", f"{type(exc).__name__}: {exc}"))
            self._send(500, {"message": f"{type(exc).__name__}: {exc}"}, "InternalServerException")
            return
        self._send(status, payload)

    do_GET = do_POST = do_DELETE = _dispatch


class EksStandin(_Server):
    """See the module docstring. `credentials`: the keys it calls moto with (IAM read, STS AssumeRole). `assume`:
    (role ARN, session name, session tags) -> {AccessKeyId, SecretAccessKey, SessionToken, Expiration (epoch),
    Arn, AssumedRoleId}, called once the trust is checked, instead of moto's STS AssumeRole."""

    def __init__(self, moto_url: str, region: str = "us-east-1", account: str = "123456789012",
                 credentials: dict[str, str] | None = None, assume: Any = None):
        super().__init__(_Handler)
        self.moto_url, self.region, self.account = moto_url.rstrip("/"), region, account
        self.credentials = credentials or {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        self.clusters: dict[str, Cluster] = {}
        self.associations: dict[str, dict[str, Any]] = {}  # id -> association (as DescribePodIdentityAssociation)
        self.errors: list[tuple[str, str]] = []
        self.assume = assume
        self.max_associations = 5000  # EKS's quota per cluster
        self.request_tokens: dict[tuple[str, str], str] = {}  # (cluster, clientRequestToken) -> association id
        self.lock = threading.RLock()

    # -- what tests set up --

    def add_cluster(self, name: str, issuer_url: str, agent: str | None = "ACTIVE") -> Cluster:
        """A cluster whose service-account issuer is `issuer_url`; `agent` is the eks-pod-identity-agent add-on's
        status (ACTIVE, CREATING, DEGRADED, ...) or None for no add-on."""
        cluster = Cluster(name, f"arn:aws:eks:{self.region}:{self.account}:cluster/{name}", issuer_url)
        with self.lock:
            self.clusters[name] = cluster
        self.set_agent(name, agent)
        return cluster

    def set_agent(self, cluster: str, status: str | None) -> None:
        with self.lock:
            addons = self.clusters[cluster].addons
            if status is None:
                addons.pop(POD_IDENTITY_AGENT, None)
            else:
                now = time.time()
                addons[POD_IDENTITY_AGENT] = {
                    "addonName": POD_IDENTITY_AGENT, "clusterName": cluster, "status": status,
                    "addonVersion": "v1.3.4-eksbuild.1", "health": {"issues": []},
                    "addonArn": f"arn:aws:eks:{self.region}:{self.account}:addon/{cluster}/{POD_IDENTITY_AGENT}/{secrets.token_hex(8)}",
                    "createdAt": now, "modifiedAt": now, "tags": {}, "publisher": "eks", "owner": "aws"}

    def association_for(self, cluster: str, namespace: str, service_account: str) -> dict[str, Any] | None:
        with self.lock:
            return next((dict(a) for a in self.associations.values() if a["clusterName"] == cluster
                         and a["namespace"] == namespace and a["serviceAccount"] == service_account), None)

    # -- the API --

    def _cluster(self, name: str) -> Cluster:
        cluster = self.clusters.get(name)
        if cluster is None:
            raise _not_found(f"No cluster found for name: {name}.", clusterName=name)
        return cluster

    def route(self, method: str, seg: list[str], query: dict[str, list[str]], body: dict[str, Any]) -> tuple[int, Any]:
        with self.lock:
            if len(seg) < 2 or seg[0] != "clusters":
                raise EksError("UnknownOperationException", 404, f"no such operation: {method} /{'/'.join(seg)}")
            cluster = self._cluster(seg[1])
            rest = seg[2:]
            if method == "GET" and not rest:
                return 200, {"cluster": self._describe_cluster(cluster)}
            if rest == ["assume-role-for-pod-identity"] and method == "POST":
                return 200, self._assume_role_for_pod_identity(cluster, body)
            if rest[:1] == ["addons"] and method == "GET":
                if len(rest) == 1:
                    return 200, {"addons": sorted(cluster.addons)}
                addon = cluster.addons.get(rest[1])
                if addon is None:
                    raise _not_found(f"No addon: {rest[1]} found in cluster: {cluster.name}", clusterName=cluster.name, addonName=rest[1])
                return 200, {"addon": addon}
            if rest[:1] == ["pod-identity-associations"]:
                if len(rest) == 1 and method == "POST":
                    return 200, {"association": self._create(cluster, body)}
                if len(rest) == 1 and method == "GET":
                    return 200, self._list(cluster, query)
                if len(rest) == 2 and method in ("GET", "DELETE"):
                    association = self.associations.get(rest[1])
                    if association is None or association["clusterName"] != cluster.name:
                        raise _not_found(f"Pod identity association {rest[1]} not found", clusterName=cluster.name)
                    if method == "DELETE":
                        del self.associations[rest[1]]
                    return 200, {"association": dict(association)}
            raise EksError("UnknownOperationException", 404, f"no such operation: {method} /{'/'.join(seg)}")

    def _describe_cluster(self, cluster: Cluster) -> dict[str, Any]:
        return {"name": cluster.name, "arn": cluster.arn, "status": "ACTIVE", "version": "1.31",
                "endpoint": f"https://{cluster.name}.eks.stand-in.invalid", "identity": {"oidc": {"issuer": cluster.issuer}},
                "accessConfig": {"authenticationMode": "API_AND_CONFIG_MAP"}, "tags": {}}

    def _create(self, cluster: Cluster, body: dict[str, Any]) -> dict[str, Any]:
        for required in ("namespace", "serviceAccount", "roleArn"):
            if not isinstance(body.get(required), str) or not body[required]:
                raise _invalid(f"{required} is required", clusterName=cluster.name)
        namespace, service_account, role_arn = body["namespace"], body["serviceAccount"], body["roleArn"]
        if not _K8S_NAME.match(namespace) or len(namespace) > 63:
            raise _invalid(f"Invalid namespace: {namespace}", clusterName=cluster.name)
        if not _K8S_NAME.match(service_account) or len(service_account) > 253:
            raise _invalid(f"Invalid service account: {service_account}", clusterName=cluster.name)
        if not _ROLE_ARN.match(role_arn):
            raise _invalid(f"Invalid role ARN: {role_arn}", clusterName=cluster.name)
        tags = body.get("tags") or {}
        if not isinstance(tags, dict) or len(tags) > 50:
            raise _invalid("tags must be a map of at most 50 entries", clusterName=cluster.name)
        token = body.get("clientRequestToken")
        if token and (cluster.name, token) in self.request_tokens:  # a retried request: the same answer
            earlier = self.associations.get(self.request_tokens[(cluster.name, token)])
            if earlier and (earlier["namespace"], earlier["serviceAccount"], earlier["roleArn"]) == (namespace, service_account, role_arn):
                return dict(earlier)
        existing = self.association_for(cluster.name, namespace, service_account)
        if existing:
            raise EksError("ResourceInUseException", 409,
                           f"Association already exists: {existing['associationId']}", clusterName=cluster.name)
        if sum(1 for a in self.associations.values() if a["clusterName"] == cluster.name) >= self.max_associations:
            raise EksError("ResourceLimitExceededException", 400,
                           f"Pod identity associations per cluster limit of {self.max_associations} reached", clusterName=cluster.name)
        association_id = "a-" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(17))
        now = time.time()
        association = {
            "clusterName": cluster.name, "namespace": namespace, "serviceAccount": service_account, "roleArn": role_arn,
            "associationArn": f"arn:aws:eks:{self.region}:{self.account}:podidentityassociation/{cluster.name}/{association_id}",
            "associationId": association_id, "tags": dict(tags), "createdAt": now, "modifiedAt": now,
            "disableSessionTags": bool(body.get("disableSessionTags", False))}
        self.associations[association_id] = association
        if token:
            self.request_tokens[(cluster.name, token)] = association_id
        return dict(association)

    def _list(self, cluster: Cluster, query: dict[str, list[str]]) -> dict[str, Any]:
        namespace = (query.get("namespace") or [None])[0]
        service_account = (query.get("serviceAccount") or [None])[0]
        matches = [a for a in sorted(self.associations.values(), key=lambda a: a["createdAt"])
                   if a["clusterName"] == cluster.name and (namespace is None or a["namespace"] == namespace)
                   and (service_account is None or a["serviceAccount"] == service_account)]
        limit = int((query.get("maxResults") or ["100"])[0])
        if not 1 <= limit <= 100:
            raise _invalid("maxResults must be between 1 and 100", clusterName=cluster.name)
        start = int((query.get("nextToken") or ["0"])[0])
        page = matches[start:start + limit]
        answer: dict[str, Any] = {"associations": [
            {k: a[k] for k in ("clusterName", "namespace", "serviceAccount", "associationArn", "associationId")}
            for a in page]}
        if start + limit < len(matches):
            answer["nextToken"] = str(start + limit)
        return answer

    # -- EKS Auth --

    def _assume_role_for_pod_identity(self, cluster: Cluster, body: dict[str, Any]) -> dict[str, Any]:
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise EksError("InvalidParameterException", 400, "token is required")
        try:
            claims = verify_token(token, cluster.issuer, POD_IDENTITY_AUDIENCE)
        except TokenRefused as refusal:
            code = "ExpiredTokenException" if refusal.code == "ExpiredTokenException" else "InvalidTokenException"
            raise EksError(code, 400, refusal.message) from None
        _, _, namespace, service_account = str(claims["sub"]).split(":", 3)
        association = self.association_for(cluster.name, namespace, service_account)
        if association is None:
            raise EksError("ResourceNotFoundException", 404,
                           f"No Pod Identity Association found for namespace {namespace} and service account {service_account}")
        pod = (claims.get("kubernetes.io") or {}).get("pod") or {}
        tags = {"eks-cluster-arn": cluster.arn, "eks-cluster-name": cluster.name, "kubernetes-namespace": namespace,
                "kubernetes-service-account": service_account, "kubernetes-pod-name": pod.get("name", ""),
                "kubernetes-pod-uid": pod.get("uid", "")}
        tags = {k: v for k, v in tags.items() if v}
        role_arn = association["roleArn"]
        self._check_trust(role_arn, tags)
        session_name = re.sub(r"[^\w+=,.@-]", "-", f"eks-{cluster.name}-{pod.get('name', service_account)}-{pod.get('uid', secrets.token_hex(8))}")[:64]
        got = (self.assume or self._sts_assume)(role_arn, session_name, tags)
        return {"subject": {"namespace": namespace, "serviceAccount": service_account},
                "audience": POD_IDENTITY_AUDIENCE,
                "podIdentityAssociation": {"associationArn": association["associationArn"],
                                           "associationId": association["associationId"]},
                "assumedRoleUser": {"arn": got["Arn"], "assumeRoleId": got["AssumedRoleId"]},
                "credentials": {"accessKeyId": got["AccessKeyId"], "secretAccessKey": got["SecretAccessKey"],
                                "sessionToken": got["SessionToken"], "expiration": got["Expiration"]}}

    def _sts_assume(self, role_arn: str, session_name: str, tags: dict[str, str]) -> dict[str, Any]:
        """moto's STS AssumeRole with the session tags, as the stand-in's `credentials` (with IAM enforcement on,
        moto matches the role's trust against that caller: pass `assume` to get credentials another way)."""
        answer = self._client("sts").assume_role(RoleArn=role_arn, RoleSessionName=session_name, DurationSeconds=21600,
                                                 Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        credentials = answer["Credentials"]
        return {"AccessKeyId": credentials["AccessKeyId"], "SecretAccessKey": credentials["SecretAccessKey"],
                "SessionToken": credentials["SessionToken"], "Expiration": credentials["Expiration"].timestamp(),
                "Arn": answer["AssumedRoleUser"]["Arn"], "AssumedRoleId": answer["AssumedRoleUser"]["AssumedRoleId"]}

    def _client(self, service: str):
        import boto3

        return boto3.client(service, endpoint_url=self.moto_url, region_name=self.region, **self.credentials)

    def _check_trust(self, role_arn: str, tags: dict[str, str]) -> None:
        iam = self._client("iam")
        try:
            document = iam.get_role(RoleName=role_arn.rsplit("/", 1)[-1])["Role"]["AssumeRolePolicyDocument"]
        except iam.exceptions.NoSuchEntityException:
            raise EksError("AccessDeniedException", 400, f"Role {role_arn} does not exist") from None
        context = {f"aws:RequestTag/{k}": v for k, v in tags.items()}
        for action in ("sts:AssumeRole", "sts:TagSession"):
            allowed, why = trust_allows(document, ("Service", POD_IDENTITY_SERVICE), action, context)
            if not allowed:
                raise EksError("AccessDeniedException", 400,
                               f"The role {role_arn} does not trust {POD_IDENTITY_SERVICE} for {action}: {why}")
