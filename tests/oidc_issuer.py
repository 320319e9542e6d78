"""A test service-account issuer (what a cluster's OIDC issuer plays for IRSA and EKS Pod Identity), a token
check of our own, and an STS proxy that makes moto's AssumeRoleWithWebIdentity honour what the role trusts.

    issuer = TestIssuer().start()             # discovery + JWKS on http://127.0.0.1:PORT
    token = issuer.mint("team-a", "app", audience="sts.amazonaws.com")   # a real RS256 JWT
    claims = verify_token(token, issuer.url, "sts.amazonaws.com")        # TokenRefused if not good
    proxy = StsProxy(moto_url).start()        # point boto3's STS endpoint at proxy.url
    ...; proxy.stop(); issuer.stop()

Tokens look like kube-apiserver's projected service-account tokens: `sub` = system:serviceaccount:NS:SA,
`aud`, `iss`, `exp`/`iat`/`nbf`, and the `kubernetes.io` claim (namespace, service account, pod).

Why the proxy: moto 5.2.5's AssumeRoleWithWebIdentity ignores the token (any string gets credentials for any
role). StsProxy forwards every STS request to moto unchanged, except AssumeRoleWithWebIdentity, which it first
checks as AWS documents: an IAM OIDC provider in moto for the token's `iss`; signature by the issuer's JWKS
(fetched over HTTP from its discovery document); exp/nbf; `aud` in the provider's client ids; and the role's
trust policy (Federated = the provider's ARN, action sts:AssumeRoleWithWebIdentity, conditions on
`<provider>:sub` / `:aud`, read by tests/trust_eval.py). A refusal is STS's own error shape (InvalidIdentityToken,
ExpiredTokenException, AccessDenied), so boto3 and the AWS CLI raise what they would against AWS.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

from tests.trust_eval import trust_allows

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"
STS_AUDIENCE = "sts.amazonaws.com"
POD_IDENTITY_AUDIENCE = "pods.eks.amazonaws.com"
LEEWAY = 5  # seconds of clock skew tolerated on exp/nbf/iat


class TokenRefused(Exception):
    """A token that AWS would refuse; `code` is the error code AWS answers with."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type, address: tuple[str, int] = ("127.0.0.1", 0)):
        super().__init__(address, handler)
        self._thread: threading.Thread | None = None
        self.requests: list[tuple[str, str]] = []

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN: a 5 s DNS timeout inside a lab namespace
        import socketserver

        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self):
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread:
            self._thread.join(timeout=5)


def _send_json(handler: BaseHTTPRequestHandler, code: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


# --- the issuer -------------------------------------------------------------------------------------------


class _IssuerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "TestIssuer"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        self.server.requests.append(("GET", path))
        if path == DISCOVERY_PATH:
            _send_json(self, 200, {"issuer": self.server.issuer, "jwks_uri": self.server.issuer + JWKS_PATH,
                                   "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                                   "id_token_signing_alg_values_supported": ["RS256"]})
        elif path == JWKS_PATH:
            _send_json(self, 200, {"keys": [self.server.key.as_dict(private=False)]})
        else:
            _send_json(self, 404, {"message": "not found"})


class TestIssuer(_Server):
    """An OIDC issuer on 127.0.0.1 with one RSA key. Its identifier (`issuer`, the tokens' `iss`) is its own URL
    http://127.0.0.1:PORT, or a public-looking https URL given here (as EKS's https://oidc.eks.REGION.amazonaws.com/
    id/...; IAM and rbacbridge want https and a public name): fetches by this module (verify_token) of that URL are
    then served by this server — the test's DNS and TLS, in this process only."""

    __test__ = False  # not a pytest class

    def __init__(self, issuer: str | None = None) -> None:
        from joserfc.jwk import RSAKey

        super().__init__(_IssuerHandler)
        self.issuer = (issuer or self.url).rstrip("/")
        self.kid = uuid.uuid4().hex[:16]
        self.key = RSAKey.generate_key(2048, parameters={"kid": self.kid, "use": "sig", "alg": "RS256"})

    def start(self):
        SERVED[self.issuer] = self.url
        return super().start()

    def stop(self) -> None:
        if SERVED.get(self.issuer) == self.url:
            del SERVED[self.issuer]
        super().stop()

    def mint(self, namespace: str, service_account: str, audience: str = STS_AUDIENCE, *, lifetime: int = 3600,
             issued_at: float | None = None, pod: str | None = None, pod_uid: str | None = None,
             key: Any = None, issuer: str | None = None) -> str:
        """A projected service-account token for system:serviceaccount:NAMESPACE:SERVICE_ACCOUNT. `key` signs
        with another key (a forged token), `issuer` sets another `iss`."""
        from joserfc import jwt

        now = int(issued_at if issued_at is not None else time.time())
        kubernetes = {"namespace": namespace, "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())}}
        if pod:
            kubernetes["pod"] = {"name": pod, "uid": pod_uid or str(uuid.uuid4())}
        claims = {"iss": issuer or self.issuer, "sub": f"system:serviceaccount:{namespace}:{service_account}",
                  "aud": [audience], "iat": now, "nbf": now, "exp": now + lifetime, "kubernetes.io": kubernetes}
        signing_key = key or self.key
        return jwt.encode({"alg": "RS256", "kid": signing_key.kid or self.kid}, claims, signing_key)


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, not checked (to learn its `iss` before fetching the keys to check it)."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise TokenRefused("InvalidIdentityToken", "The ID Token provided is not a valid JWT") from exc


SERVED: dict[str, str] = {}  # issuer identifier -> the local URL of the TestIssuer serving it


def _fetch_json(url: str) -> Any:
    """GET a JSON document of an issuer: a started TestIssuer's identifier maps to its local URL; anything else
    must be on loopback (never an address outside the test)."""
    for issuer, local in SERVED.items():
        if url == issuer or url.startswith(issuer + "/"):
            url = local + url[len(issuer):]
            break
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise OSError(f"{url} is not served by a test issuer (nothing outside loopback is fetched)")
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def verify_token(token: str, issuer: str, audience: str | list[str] | None, now: float | None = None) -> dict[str, Any]:
    """Check a service-account token as AWS does for web identity / EKS Auth: RS256 signature by a key of
    `issuer`'s JWKS (found through its discovery document), `iss` = issuer, not expired / not yet valid, and
    an `aud` among `audience` (None: any). Returns the claims; raises TokenRefused."""
    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    claims = unverified_claims(token)
    if claims.get("iss") != issuer:
        raise TokenRefused("InvalidIdentityToken", f"Token issuer {claims.get('iss')!r} is not {issuer!r}")
    try:
        discovery = _fetch_json(issuer.rstrip("/") + DISCOVERY_PATH)
        keys = KeySet.import_key_set(_fetch_json(discovery["jwks_uri"]))
    except (OSError, ValueError, KeyError) as exc:
        raise TokenRefused("IDPCommunicationError", f"Couldn't retrieve verification key from your identity provider: {exc}") from exc
    try:
        verified = jwt.decode(token, keys, algorithms=["RS256"])
    except (JoseError, ValueError) as exc:
        raise TokenRefused("InvalidIdentityToken", f"The web identity token's signature could not be verified ({exc})") from exc
    claims = verified.claims
    moment = time.time() if now is None else now
    if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] + LEEWAY < moment:
        raise TokenRefused("ExpiredTokenException", "Token is expired")
    if isinstance(claims.get("nbf"), (int, float)) and claims["nbf"] - LEEWAY > moment:
        raise TokenRefused("InvalidIdentityToken", "Token is not valid yet (nbf)")
    if isinstance(claims.get("iat"), (int, float)) and claims["iat"] - LEEWAY > moment:
        raise TokenRefused("InvalidIdentityToken", "Token was issued in the future (iat)")
    if audience is not None:
        wanted = [audience] if isinstance(audience, str) else list(audience)
        given = claims.get("aud")
        given = given if isinstance(given, list) else [given]
        if not any(a in wanted for a in given):
            raise TokenRefused("InvalidIdentityToken", "Incorrect token audience")
    if not str(claims.get("sub", "")).startswith("system:serviceaccount:"):
        raise TokenRefused("InvalidIdentityToken", "Token subject is not a service account")
    return claims


# --- the STS proxy in front of moto ----------------------------------------------------------------------


def _host_path(url: str) -> str:
    parts = urlsplit(url if "://" in url else "https://" + url)
    return parts.netloc + parts.path.rstrip("/")


def check_web_identity(moto_url: str, role_arn: str, token: str, credentials: dict[str, str] | None = None) -> dict[str, Any]:
    """What AWS checks before AssumeRoleWithWebIdentity hands out credentials, against the IAM state in moto.
    Returns the token's claims; raises TokenRefused (code InvalidIdentityToken, ExpiredTokenException,
    IDPCommunicationError or AccessDenied)."""
    import boto3

    claims = unverified_claims(token)
    issuer = str(claims.get("iss", ""))
    iam = boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1",
                       **(credentials or {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}))
    provider = None
    for entry in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]:
        described = iam.get_open_id_connect_provider(OpenIDConnectProviderArn=entry["Arn"])
        if _host_path(described["Url"]) == _host_path(issuer):
            provider = (entry["Arn"], described.get("ClientIDList", []))
            break
    if provider is None:
        raise TokenRefused("InvalidIdentityToken", f"No OpenIDConnect provider found in your account for {issuer}")
    provider_arn, client_ids = provider
    claims = verify_token(token, issuer, client_ids)
    role_name = role_arn.rsplit("/", 1)[-1]
    try:
        document = iam.get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"]
    except iam.exceptions.NoSuchEntityException as exc:
        raise TokenRefused("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity") from exc
    given = claims.get("aud")
    audience = next(a for a in (given if isinstance(given, list) else [given]) if a in client_ids)
    host = _host_path(issuer)
    context = {f"{host}:sub": str(claims["sub"]), f"{host}:aud": audience, f"{host}:oaud": audience}
    allowed, _why = trust_allows(document, ("Federated", provider_arn), "sts:AssumeRoleWithWebIdentity", context)
    if not allowed:
        raise TokenRefused("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
    return claims


_STATUS = {"AccessDenied": 403, "InvalidIdentityToken": 400, "ExpiredTokenException": 400, "IDPCommunicationError": 400}


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "StsProxy"

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self, body: bytes, sign: bool = False) -> None:
        target = urlsplit(self.server.moto_url)
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        if sign:
            headers = self._signed(body, headers)
        try:
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        finally:
            connection.close()

    def _signed(self, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        """AssumeRoleWithWebIdentity is unsigned, but moto with IAM enforcement on wants every request signed: once
        the proxy has checked the token, it signs the call with its own (moto-issued) key."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        keys = self.server.credentials or {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        request = AWSRequest(method="POST", url=self.server.moto_url + self.path, data=body,
                             headers={"Content-Type": headers.get("Content-Type", "application/x-www-form-urlencoded")})
        SigV4Auth(Credentials(keys["aws_access_key_id"], keys["aws_secret_access_key"]), "sts", "us-east-1").add_auth(request)
        return {**{k: v for k, v in headers.items() if k.lower() not in ("authorization", "x-amz-date", "host")},
                **dict(request.headers.items())}

    def _refuse(self, refusal: TokenRefused) -> None:
        data = ('<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
                f"<Code>{escape(refusal.code)}</Code><Message>{escape(refusal.message)}</Message></Error>"
                f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>").encode()
        self.send_response(_STATUS.get(refusal.code, 400))
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        params = parse_qs(body.decode(errors="replace")) if self.command == "POST" else {}
        params.update(parse_qs(urlsplit(self.path).query))
        action = (params.get("Action") or [""])[0]
        self.server.requests.append((self.command, action))
        if action == "AssumeRoleWithWebIdentity":
            try:
                check_web_identity(self.server.moto_url, (params.get("RoleArn") or [""])[0],
                                   (params.get("WebIdentityToken") or [""])[0], self.server.credentials)
            except TokenRefused as refusal:
                self.server.refusals.append((refusal.code, refusal.message))
                self._refuse(refusal)
                return
        self._forward(body, sign=action == "AssumeRoleWithWebIdentity" and "Authorization" not in self.headers)

    do_GET = do_POST = _dispatch


class StsProxy(_Server):
    """Forwards every request to moto; checks AssumeRoleWithWebIdentity first (see the module docstring).
    `credentials` are the keys it reads IAM with (moto-issued keys when IAM enforcement is on)."""

    def __init__(self, moto_url: str, credentials: dict[str, str] | None = None,
                 address: tuple[str, int] = ("127.0.0.1", 0)):
        super().__init__(_ProxyHandler, address)
        self.moto_url = moto_url.rstrip("/")
        self.credentials = credentials
        self.refusals: list[tuple[str, str]] = []
