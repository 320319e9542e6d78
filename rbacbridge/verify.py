"""verify: the S3 access matrix, expected (from the configuration) vs observed (from real calls).

Work only; rendering lives in `rbacbridge.report`.

Principals: the host node, the vanilla pod and the annotated pod. Checks per principal: its
identity (`sts get-caller-identity`: which role it really got), per bucket read
(`s3:ListBucket` on the bucket) and write (`s3:PutObject` + `s3:DeleteObject` on a probe object),
and (after kube2iam, pods only) one chain cell per managed role: can the principal obtain that role
by calling `sts:AssumeRole` itself? A pod must only ever get what kube2iam hands it, so the answer
must be no. Each mismatch is blamed on a layer (see LAYERS).

Besides the cells, verify reports findings that fail the run even when every cell matches: drift
(live IAM / Kubernetes state differs from what setup wants, found by the one planner) and hostNetwork
pods in namespaces that restrict roles (kube2iam never sees them).
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from rbacbridge import policy_eval as pe
from rbacbridge.config import Config
from rbacbridge.errors import UsageError

HOST = "host"
VANILLA = "nginx-vanilla"
ANNOTATED = "nginx-annotated"
STAGES = ("before", "after")
IDENTITY, READ, WRITE, CHAIN = "identity", "read", "write", "chain"
PROBE_PREFIX = "rbacbridge-verify-probe/"
ROLE_ANNOTATION = "iam.amazonaws.com/role"
ALLOWED_ROLES_ANNOTATION = "iam.amazonaws.com/allowed-roles"

# Error categories of one AWS call
ACCESS_DENIED = "AccessDenied"
NO_SUCH_BUCKET = "NoSuchBucket"
NO_CREDENTIALS = "NoCredentials"
ASSUME_DENIED = "AssumeRoleDenied"
INVALID_CREDENTIALS = "InvalidCredentials"
NETWORK = "Network"
CLI_MISSING = "CliMissing"
ERROR = "Error"

# Layers a mismatch is blamed on
INTERCEPTION = "interception"  # credentials came from the node role: iptables rule / kube2iam pod missing
KUBE2IAM = "kube2iam"  # kube2iam gave no credentials, or the wrong role (namespace restrictions, annotation)
TRUST = "trust"  # AssumeRole denied by the role's trust policy
PERMISSIONS = "permissions"  # identity policies allow what should be denied, or deny what should be allowed
NETWORK_LAYER = "network"  # endpoint unreachable / timeout
BUCKET = "bucket"  # the bucket does not exist
PROBE = "probe"  # the probe itself could not run (no AWS CLI in the pod, unexpected output)
ESCALATION = "escalation"  # a principal can obtain a managed role by calling sts:AssumeRole itself
DRIFT = "drift"  # live state differs from what setup wants, in a part no other layer names (profile, RBAC)
LAYERS = (INTERCEPTION, KUBE2IAM, TRUST, PERMISSIONS, NETWORK_LAYER, BUCKET, PROBE, ESCALATION, DRIFT)

# Kinds of finding (not cells: facts that fail verify on their own)
DRIFT_FINDING = "drift"
HOST_NETWORK_FINDING = "hostNetwork"


# --- principals and the expected matrix ---------------------------------------------------------

@dataclass(frozen=True)
class Principal:
    name: str
    kind: str  # "host" | "pod"
    namespace: str | None = None
    pod: str | None = None
    role_annotation: str | None = None  # the iam.amazonaws.com/role setup gives it (from the configuration)
    host_network: bool = False
    node: str | None = None  # node it runs on / SSH address, for messages
    # What the cluster shows (live pods only): observations, never expectations.
    annotation_seen: bool = False  # live_annotation below was read from the pod
    live_annotation: str | None = None  # the pod's iam.amazonaws.com/role as it is
    managed: bool = True  # labelled app.kubernetes.io/managed-by=rbacbridge (else reported, not trusted)


def default_principals(config: Config) -> list[Principal]:
    """The article's three principals, as setup deploys them."""
    return [
        Principal(HOST, "host"),
        Principal(VANILLA, "pod", namespace=config.namespace),
        Principal(ANNOTATED, "pod", namespace=config.namespace, role_annotation=config.pod_role),
    ]


@dataclass
class Documents:
    """Trust and identity policy documents per role name."""

    trust: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def managed_documents(config: Config, account: str) -> Documents:
    """The documents setup wants: trust and attached policies of every role the AWS part creates
    (`rbacbridge.aws.desired_resources`, the same models `plan` and `setup` use)."""
    from rbacbridge import aws

    resources = aws.desired_resources(config, account, [])
    policies = {r.name: r.document for r in resources if isinstance(r, aws.ManagedPolicy)}
    docs = Documents()
    for role in (r for r in resources if isinstance(r, aws.Role)):
        docs.trust[role.name] = role.trust
        docs.policies[role.name] = [policies[name] for name in role.policies if name in policies]
    return docs


def intended_allowed_roles(config: Config) -> dict[str, list[str]]:
    """What setup grants per namespace under namespace restrictions: the pod role in config.namespace."""
    return {config.namespace: [config.pod_role]}


@dataclass
class Expected:
    principal: Principal
    role: str | None  # role name it should get; None = kube2iam must refuse (no credentials)
    why: str
    access: dict[tuple[str, str], bool | None]  # (bucket, read|write) -> allowed; None = unknown
    # target role -> does the configuration let this principal assume it itself? (policy evaluator over
    # the documents setup wants; None = a role rbacbridge does not manage). The cell wants "no" always.
    chains: dict[str, bool | None] = field(default_factory=dict)


def _role_name(value: str) -> str:
    return pe.role_name_of(value) or value.rsplit("/", 1)[-1]


def role_allowed_in_namespace(role: str, account: str, patterns: list[str] | None) -> bool:
    """kube2iam's glob namespace restriction: role name or ARN matched against the annotation's list."""
    if patterns is None:
        return False
    arn = f"arn:aws:iam::{account}:role/{role}"
    return any(pe.wildcard_match(p, role) or pe.wildcard_match(p, arn) for p in patterns)


def probe_key(principal: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", principal)  # e.g. nginx-vanilla@node-a: '@' is signed differently by some S3s
    return f"{PROBE_PREFIX}{safe}-{uuid.uuid4().hex[:12]}"


def buckets_of(config: Config) -> list[str]:
    return [config.shared_bucket, config.tenant_bucket]


def expected_role(config: Config, account: str, stage: str, principal: Principal,
                  allowed_roles: dict[str, list[str]] | None, documents: Documents) -> tuple[str | None, str]:
    node = config.node_role
    if stage == "before":
        return node, "before kube2iam every principal has the node role (instance profile)"
    if principal.kind == "host":
        return node, "the host node uses its instance profile; kube2iam never intercepts host traffic"
    if principal.host_network:
        return node, "a hostNetwork pod shares the node's network: kube2iam never intercepts it"
    if not principal.role_annotation:
        return config.effective_default_role, "no role annotation: kube2iam's default role"
    role = _role_name(principal.role_annotation)
    if role == config.effective_default_role:
        return role, "annotated with kube2iam's default role"
    if config.namespace_restrictions:
        patterns = (allowed_roles if allowed_roles is not None else intended_allowed_roles(config)).get(principal.namespace or "")
        if not role_allowed_in_namespace(role, account, patterns):
            return None, f"namespace {principal.namespace} does not allow role {role} ({ALLOWED_ROLES_ANNOTATION})"
    node_arn = config.role_arn(account, node)
    trust = documents.trust.get(role)
    if trust is not None and not pe.trust_allows(trust, node_arn):
        return None, f"role {role} does not trust the node role {node_arn}"
    node_policies = documents.policies.get(node)
    if node_policies is not None and not pe.is_allowed(node_policies, "sts:AssumeRole", config.role_arn(account, role)):
        return None, f"the node role's policies do not allow sts:AssumeRole on {role}"
    return role, f"annotated {ROLE_ANNOTATION}: {role}"


def chain_targets(config: Config) -> list[str]:
    """The managed roles a chain cell asks about: the pod role, kube2iam's default role, the node role."""
    return list(dict.fromkeys([config.pod_role, config.effective_default_role, config.node_role]))


def chain_prediction(config: Config, account: str, held: str | None, target: str, documents: Documents) -> bool | None:
    """Would a session of role `held` be allowed to assume `target` under these documents?

    Both sides, as AWS decides: the caller's identity policies must allow sts:AssumeRole on the
    target, and the target's trust policy must trust the caller (a trusted role ARN covers its sessions).
    """
    if held is None:
        return False  # kube2iam refuses it: no credentials to call anything with
    policies, trust = documents.policies.get(held), documents.trust.get(target)
    if policies is None or trust is None:
        return None
    session = f"arn:aws:sts::{account}:assumed-role/{held}/{CHAIN_SESSION}"
    return pe.is_allowed(policies, "sts:AssumeRole", config.role_arn(account, target)) and pe.trust_allows(trust, session)


def chain_path(principal: str, held: str | None, target: str) -> str:
    return f"{principal} → {held or '?'} → sts:AssumeRole → {target}"


def has_chain_cells(stage: str, principal: Principal) -> bool:
    """Every principal except the host, once kube2iam runs (before it, every pod has the node role by design)."""
    return stage == "after" and principal.kind != "host"


def expected_matrix(config: Config, account: str, stage: str = "after", principals: list[Principal] | None = None,
                    allowed_roles: dict[str, list[str]] | None = None, documents: Documents | None = None) -> list[Expected]:
    if stage not in STAGES:
        raise UsageError(f"invalid --stage {stage!r}: choose from {', '.join(STAGES)}")
    documents = documents or managed_documents(config, account)
    out = []
    for principal in principals or default_principals(config):
        role, why = expected_role(config, account, stage, principal, allowed_roles, documents)
        access: dict[tuple[str, str], bool | None] = {}
        policies = documents.policies.get(role) if role else []
        for bucket in buckets_of(config):
            if policies is None:  # a role rbacbridge does not manage: no expectation
                access[(bucket, READ)] = access[(bucket, WRITE)] = None
                continue
            access[(bucket, READ)] = pe.can_read(policies, bucket)
            access[(bucket, WRITE)] = pe.can_write(policies, bucket, probe_key(principal.name))
        chains = {}
        if has_chain_cells(stage, principal):
            chains = {target: chain_prediction(config, account, role, target, documents) for target in chain_targets(config)}
        out.append(Expected(principal, role, why, access, chains))
    return out


# --- running probes -----------------------------------------------------------------------------

class CommandRunner(Protocol):
    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]: ...


class LocalRunner:
    """Runs argv here (optionally behind a prefix such as `ip netns exec NS`)."""

    def __init__(self, prefix: list[str] | None = None, env: dict[str, str] | None = None):
        self.prefix = list(prefix or [])
        self.env = env

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        try:
            done = subprocess.run(self.prefix + list(argv), capture_output=True, text=True, timeout=timeout, env=self.env)
        except subprocess.TimeoutExpired:
            return 124, "", f"timed out after {timeout:g}s"
        except FileNotFoundError as exc:
            return 127, "", f"{exc.filename}: not found"
        return done.returncode, done.stdout, done.stderr


class SshRunner:
    """The host node over SSH (rbacbridge.ssh, imported lazily); one session shared by the probes."""

    def __init__(self, target: Any):
        from rbacbridge.ssh import preflight

        preflight(target)  # a bad key or known_hosts is bad input (exit 2), found before any contact
        self.target = target
        self._session = None

    def _connect(self):
        if self._session is None:
            from rbacbridge.ssh import connect

            self._session = connect(self.target)
        return self._session

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        rc, out, err = self._connect().run(argv, sudo=False, timeout=timeout)
        return rc, out, err

    def close(self) -> None:
        if self._session is not None and hasattr(self._session, "close"):
            self._session.close()


class KubeExecRunner:
    """Inside a pod through the Kubernetes exec API (rbacbridge.kube.KubeGateway.exec)."""

    def __init__(self, gateway: Any, namespace: str, pod: str, container: str | None = None):
        self.gateway, self.namespace, self.pod, self.container = gateway, namespace, pod, container

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        result = self.gateway.exec(self.namespace, self.pod, list(argv), container=self.container, timeout=int(timeout))
        return result.rc, result.stdout, result.stderr


@dataclass
class CallResult:
    ok: bool
    category: str | None = None  # None when ok
    detail: str = ""
    value: Any = None  # e.g. the caller ARN


_ERROR_CODE = re.compile(r"An error occurred \(([\w.]+)\) when calling the (\w+) operation")
_NETWORK_TEXT = ("Could not connect to the endpoint URL", "Connect timeout on endpoint URL", "Read timeout on endpoint URL",
                 "Connection was closed", "timed out", "EndpointConnectionError", "Name or service not known",
                 "Temporary failure in name resolution", "Connection refused")
_INVALID_CODES = {"InvalidClientTokenId", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
                  "UnrecognizedClientException", "InvalidToken"}


def classify(rc: int, stdout: str, stderr: str) -> CallResult:
    """One AWS CLI call's outcome: ok, or an error category with the CLI's own message."""
    if rc == 0:
        return CallResult(True, detail="ok", value=stdout)
    text = (stderr or stdout or "").strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), f"exit {rc}")
    match = _ERROR_CODE.search(text)
    if match:
        code, operation = match.groups()
        if code in ("AccessDenied", "AccessDeniedException", "Forbidden"):
            return CallResult(False, ASSUME_DENIED if operation == "AssumeRole" else ACCESS_DENIED, line)
        if code == "NoSuchBucket":
            return CallResult(False, NO_SUCH_BUCKET, line)
        if code in _INVALID_CODES:
            return CallResult(False, INVALID_CREDENTIALS, line)
        return CallResult(False, ERROR, line)
    if "Unable to locate credentials" in text or "NoCredentialsError" in text:
        return CallResult(False, NO_CREDENTIALS, line)
    if any(t in text for t in _NETWORK_TEXT) or rc == 124:
        return CallResult(False, NETWORK, line)
    if rc == 127 or re.search(r"\baws\b.*(not found|No such file)", text):
        return CallResult(False, CLI_MISSING, "the AWS CLI is not installed here (--install-cli installs it in pods)")
    return CallResult(False, ERROR, line)


class ProbeBackend(Protocol):
    def identity(self) -> CallResult: ...
    def list_bucket(self, bucket: str) -> CallResult: ...
    def put_object(self, bucket: str, key: str) -> CallResult: ...
    def delete_object(self, bucket: str, key: str) -> CallResult: ...
    def assume_role(self, role_arn: str) -> CallResult: ...  # value: the assumed-role ARN, never the credentials


CHAIN_SESSION = "rbacbridge-verify-chain"


class AwsCliBackend:
    """The AWS CLI where the principal runs (node shell, pod), the way the article checks by hand."""

    def __init__(self, runner: CommandRunner, region: str, endpoint_url: str | None = None, timeout: float = 60):
        self.runner, self.region, self.endpoint_url, self.timeout = runner, region, endpoint_url, timeout

    def argv(self, *args: str) -> list[str]:
        # AWS_PAGER= keeps CLI v2 from starting a pager; `env` exists wherever a shell does.
        out = ["env", "AWS_PAGER=", "aws", *args, "--region", self.region, "--output", "json"]
        if self.endpoint_url:
            out += ["--endpoint-url", self.endpoint_url]
        return out

    def _call(self, *args: str) -> CallResult:
        try:
            rc, stdout, stderr = self.runner.run(self.argv(*args), self.timeout)
        except TimeoutError as exc:
            return CallResult(False, NETWORK, f"timed out: {exc}")
        except Exception as exc:  # noqa: BLE001 - a broken transport is an observation, not a crash
            return CallResult(False, NETWORK if "timeout" in str(exc).lower() else ERROR, f"{type(exc).__name__}: {exc}")
        return classify(rc, stdout, stderr)

    def identity(self) -> CallResult:
        result = self._call("sts", "get-caller-identity")
        if result.ok:
            try:
                result.value = json.loads(result.value)["Arn"]
            except (ValueError, KeyError, TypeError):
                return CallResult(False, ERROR, "get-caller-identity printed no Arn")
        return result

    def list_bucket(self, bucket: str) -> CallResult:
        return self._call("s3api", "list-objects-v2", "--bucket", bucket, "--max-items", "1")

    def put_object(self, bucket: str, key: str) -> CallResult:
        return self._call("s3api", "put-object", "--bucket", bucket, "--key", key)

    def delete_object(self, bucket: str, key: str) -> CallResult:
        return self._call("s3api", "delete-object", "--bucket", bucket, "--key", key)

    def assume_role(self, role_arn: str) -> CallResult:
        # --query keeps the credentials inside the principal: only the assumed-role ARN crosses the
        # exec channel (no secret is ever printed or logged).
        result = self._call("sts", "assume-role", "--role-arn", role_arn, "--role-session-name", CHAIN_SESSION,
                            "--query", "AssumedRoleUser.Arn")
        if result.ok:
            try:
                result.value = json.loads(result.value)
            except (ValueError, TypeError):
                return CallResult(True, detail="ok", value=None)
        return result


class UnavailableBackend:
    """A principal that has no credentials at all: every call answers the same error."""

    def __init__(self, category: str, detail: str):
        self.result = CallResult(False, category, detail)

    def identity(self) -> CallResult:
        return self.result

    def list_bucket(self, bucket: str) -> CallResult:
        return self.result

    def put_object(self, bucket: str, key: str) -> CallResult:
        return self.result

    def delete_object(self, bucket: str, key: str) -> CallResult:
        return self.result

    def assume_role(self, role_arn: str) -> CallResult:
        return self.result


# An object cannot exist after a put that failed for these reasons; any other failure (a timeout,
# a dropped connection) may have written it, so the delete runs.
_NOT_WRITTEN = (ACCESS_DENIED, NO_SUCH_BUCKET, NO_CREDENTIALS, ASSUME_DENIED, INVALID_CREDENTIALS, CLI_MISSING)


@dataclass
class Observation:
    allowed: bool | None  # None: could not tell (error)
    result: CallResult
    key: str | None = None
    left_behind: bool = False  # a probe object we could not delete


def probe_read(backend: ProbeBackend, bucket: str) -> Observation:
    result = backend.list_bucket(bucket)
    return Observation(_allowed(result), result)


def probe_write(backend: ProbeBackend, bucket: str, key: str) -> Observation:
    put: CallResult | None = None
    delete: CallResult | None = None
    try:
        put = backend.put_object(bucket, key)
    finally:
        if put is None or put.ok or put.category not in _NOT_WRITTEN:
            delete = backend.delete_object(bucket, key)
    if not put.ok:
        return Observation(_allowed(put), put, key, left_behind=bool(delete and not delete.ok and put.category not in _NOT_WRITTEN))
    if delete is not None and not delete.ok:
        detail = f"put allowed but delete failed ({delete.detail}); probe object s3://{bucket}/{key} left behind"
        return Observation(None, CallResult(False, delete.category, detail), key, left_behind=True)
    return Observation(True, put, key)


def _allowed(result: CallResult) -> bool | None:
    if result.ok:
        return True
    if result.category in (ACCESS_DENIED, NO_CREDENTIALS, ASSUME_DENIED, INVALID_CREDENTIALS):
        return False
    return None


@dataclass
class Observed:
    principal: Principal
    identity: CallResult
    arn: str | None
    role: str | None
    cells: dict[tuple[str, str], Observation]
    chains: dict[str, Observation] = field(default_factory=dict)  # target role -> did sts:AssumeRole succeed?


def probe_chain(backend: ProbeBackend, role_arn: str) -> Observation:
    """The principal itself calls sts:AssumeRole on the role (granted = an escalation path)."""
    assume = getattr(backend, "assume_role", None)
    if assume is None:
        return Observation(None, CallResult(False, ERROR, "this probe cannot call sts:AssumeRole"))
    result = assume(role_arn)
    return Observation(_allowed(result), result)


def observe(targets: list[tuple[Principal, ProbeBackend]], buckets: list[str], max_workers: int = 16,
            chains: dict[str, list[tuple[str, str]]] | None = None) -> list[Observed]:
    """Every identity, read, write and chain probe of every principal, concurrently.

    `chains`: principal name -> [(target role, its ARN)] to try sts:AssumeRole on."""
    jobs: dict[tuple[str, str, str | None], Any] = {}
    chains = chains or {}
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rbv-probe") as pool:
        for principal, backend in targets:
            jobs[(principal.name, IDENTITY, None)] = pool.submit(_guard, backend.identity)
            for bucket in buckets:
                jobs[(principal.name, READ, bucket)] = pool.submit(probe_read, backend, bucket)
                jobs[(principal.name, WRITE, bucket)] = pool.submit(probe_write, backend, bucket, probe_key(principal.name))
            for target, arn in chains.get(principal.name, []):
                jobs[(principal.name, CHAIN, target)] = pool.submit(probe_chain, backend, arn)
    out = []
    for principal, _ in targets:
        ident = jobs[(principal.name, IDENTITY, None)].result()
        cells = {}
        for bucket in buckets:
            for op in (READ, WRITE):
                future = jobs[(principal.name, op, bucket)]
                exc = future.exception()
                cells[(bucket, op)] = future.result() if exc is None else Observation(None, CallResult(False, ERROR, f"{type(exc).__name__}: {exc}"))
        chained = {}
        for target, _ in chains.get(principal.name, []):
            future = jobs[(principal.name, CHAIN, target)]
            exc = future.exception()
            chained[target] = future.result() if exc is None else Observation(None, CallResult(False, ERROR, f"{type(exc).__name__}: {exc}"))
        arn = ident.value if ident.ok else None
        out.append(Observed(principal, ident, arn, pe.role_name_of(arn) if arn else None, cells, chained))
    return out


def _guard(call: Callable[[], CallResult]) -> CallResult:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001
        return CallResult(False, ERROR, f"{type(exc).__name__}: {exc}")


# --- comparing and blaming ----------------------------------------------------------------------

@dataclass
class Blame:
    layer: str
    message: str


@dataclass
class Cell:
    principal: str
    check: str  # identity | read | write | chain
    bucket: str | None
    expected: Any  # role name (identity) or bool; None = denied identity / unknown access
    observed: Any
    match: bool
    error: str | None = None
    detail: str = ""
    blame: Blame | None = None
    target: str | None = None  # chain cells: the role the principal tried to assume
    predicted: bool | None = None  # chain cells: does the configuration grant it (policy evaluator)?


@dataclass
class Finding:
    """A fact that fails verify on its own, whatever the cells say."""

    kind: str  # DRIFT_FINDING | HOST_NETWORK_FINDING
    subject: str  # e.g. "aws iam-role nettech-s3-read-write", "pod kube-system/debug-shell"
    message: str  # the plan's sentence (drift) or what is wrong
    reason: str  # the plan's reason text (drift) or why it matters
    layer: str
    node: str | None = None


@dataclass
class PrincipalResult:
    principal: Principal
    expected: Expected
    observed: Observed
    identity: Cell
    cells: list[Cell]


@dataclass
class VerifyResult:
    stage: str
    account: str
    region: str
    node_role: str
    buckets: list[str]
    principals: list[PrincipalResult]
    notes: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)  # short label -> role name: pod, default, node
    drift_checked: bool = False  # False: --no-drift-check (or a run without a cluster, e.g. the sandbox)
    drift_steps: int = 0  # planned steps compared (aws + kube parts)

    @property
    def all_cells(self) -> list[Cell]:
        return [c for p in self.principals for c in [p.identity, *p.cells]]

    @property
    def mismatches(self) -> list[Cell]:
        return [c for c in self.all_cells if not c.match]

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.findings

    @property
    def exit_code(self) -> int:
        """0 all match; 1 a cell mismatched or a finding; 3 nothing definite failed, but some cells could
        not be checked because AWS could not be reached (no verdict)."""
        from rbacbridge.errors import EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK

        if self.ok:
            return EXIT_OK
        if self.findings or any(c.error != NETWORK for c in self.mismatches):
            return EXIT_FAILED
        return EXIT_INCOMPLETE

    @property
    def left_behind(self) -> list[str]:
        return [f"s3://{b}/{o.key}" for p in self.principals for (b, _), o in p.observed.cells.items() if o.left_behind]


@dataclass
class Diagnostics:
    """Live facts that explain a mismatch (any may be empty when they could not be read)."""

    documents: Documents = field(default_factory=Documents)  # live trust and policies per role
    allowed_roles: dict[str, list[str] | None] = field(default_factory=dict)  # live namespace annotations
    # node name -> (rule missing?, what is wrong with its DNAT rules for 169.254.169.254), read over SSH
    interception: dict[str, tuple[bool, str]] = field(default_factory=dict)
    # node name -> why no kube2iam pod runs there (e.g. a taint it does not tolerate), from the API server
    kube2iam_missing: dict[str, str] = field(default_factory=dict)


def compare(config: Config, account: str, stage: str, expected: list[Expected], observed: list[Observed],
            diagnostics: Diagnostics | None = None) -> VerifyResult:
    diagnostics = diagnostics or Diagnostics()
    by_name = {o.principal.name: o for o in observed}
    results = []
    for exp in expected:
        obs = by_name[exp.principal.name]
        ident = _identity_cell(config, account, exp, obs, diagnostics)
        cells = []
        for (bucket, op), want in exp.access.items():
            seen = obs.cells[(bucket, op)]
            match = want is None or seen.allowed == want
            cell = Cell(exp.principal.name, op, bucket, want, seen.allowed, match, seen.result.category if not seen.result.ok else None,
                        seen.result.detail)
            if not match:
                cell.blame = ident.blame or _cell_blame(config, account, exp, obs, bucket, op, seen, diagnostics)
            cells.append(cell)
        for target, predicted in exp.chains.items():
            cells.append(_chain_cell(config, account, exp, obs, target, predicted, diagnostics))
        results.append(PrincipalResult(exp.principal, exp, obs, ident, cells))
    roles = {"pod": config.pod_role, "default": config.effective_default_role, "node": config.node_role}
    return VerifyResult(stage, account, config.region, config.node_role, buckets_of(config), results, roles=roles)


def _identity_cell(config: Config, account: str, exp: Expected, obs: Observed, diag: Diagnostics) -> Cell:
    ident = obs.identity
    refused = not ident.ok and ident.category in (NO_CREDENTIALS, ASSUME_DENIED)
    match = (obs.role == exp.role) if exp.role else refused
    cell = Cell(exp.principal.name, IDENTITY, None, exp.role, obs.role if ident.ok else None, match,
                None if ident.ok else ident.category, obs.arn or ident.detail)
    drifted = annotation_drift(exp.principal)
    if drifted and exp.principal.kind == "pod" and not exp.principal.host_network:
        # The expectation comes from the configuration: a live annotation that differs is a mismatch
        # even when kube2iam still hands out the configured role (a pod not yet rolled out, a cache).
        cell.match = False
        cell.blame = Blame(KUBE2IAM, f"{drifted}; got {obs.role or 'no credentials'}")
    elif not match:
        cell.blame = _identity_blame(config, account, exp, obs, diag)
    return cell


def annotation_drift(principal: Principal) -> str | None:
    """The live iam.amazonaws.com/role differs from the configured one: both values, in words."""
    if not principal.annotation_seen:
        return None
    want = _role_name(principal.role_annotation) if principal.role_annotation else None
    got = _role_name(principal.live_annotation) if principal.live_annotation else None
    if want == got:
        return None
    where = f"pod {principal.namespace}/{principal.pod}" if principal.pod else principal.name
    return (f"{where} has {ROLE_ANNOTATION}: {principal.live_annotation or '(none)'} but the configuration gives it "
            f"{principal.role_annotation or '(none: kube2iam default role)'}")


# A note on the chain cells in the stand-ins: moto, with IAM enforcement on, evaluates the CALLER's identity
# policies for sts:AssumeRole, but NOT the target role's trust policy (and where it compares trust principals
# it matches the exact session ARN, where AWS lets a trusted role ARN cover its sessions). So a chain that
# moto grants has only passed the identity side; the trust side is evaluated here with rbacbridge.policy_eval
# over the live trust policy and reported with the cell (real AWS checks both sides itself).
def _chain_cell(config: Config, account: str, exp: Expected, obs: Observed, target: str, predicted: bool | None,
                diag: Diagnostics) -> Cell:
    principal = exp.principal
    seen = obs.chains.get(target) or Observation(None, CallResult(False, ERROR, "not probed"))
    held = obs.role or exp.role
    path = chain_path(principal.name, held, target)
    result = seen.result
    match = seen.allowed is False and not predicted
    detail = path + (": denied" if seen.allowed is False else ": GRANTED" if seen.allowed else f": {result.detail}")
    cell = Cell(principal.name, CHAIN, None, False, seen.allowed, match, None if result.ok else result.category, detail,
                target=target, predicted=predicted)
    if match:
        return cell
    trust = diag.documents.trust.get(target)
    trust_note = ""
    if held and trust is not None:
        session = f"arn:aws:sts::{account}:assumed-role/{held}/{CHAIN_SESSION}"
        trust_note = f"; live trust policy of {target}: {pe.trust_decision(trust, principal_arn=session)}"
    if seen.allowed:
        cell.blame = Blame(ESCALATION, f"{path} was granted: a pod must only get the role kube2iam hands it{trust_note}")
    elif predicted:
        cell.blame = Blame(ESCALATION, f"{path}: the configuration grants it ({held}'s policies allow sts:AssumeRole on "
                                       f"{target} and {target} trusts {held}); observed: {result.detail or 'denied'}")
    elif result.category == NETWORK:
        cell.blame = Blame(NETWORK_LAYER, f"could not reach STS: {result.detail}")
    else:
        cell.blame = Blame(PROBE, f"{path}: could not tell ({result.detail})")
    return cell


def _where(principal: Principal) -> str:
    return f" on node {principal.node}" if principal.node else ""


def _identity_blame(config: Config, account: str, exp: Expected, obs: Observed, diag: Diagnostics) -> Blame:
    ident, want, got = obs.identity, exp.role, obs.role
    node_arn = config.role_arn(account, config.node_role)
    principal = exp.principal
    problem = diag.interception.get(principal.node or "") if principal.kind == "pod" and not principal.host_network else None
    missing = diag.kube2iam_missing.get(principal.node or "") if principal.kind == "pod" and not principal.host_network else None
    if missing and want != config.node_role and (got == config.node_role or not ident.ok):
        what = f"got {got}" if ident.ok else f"no credentials ({ident.detail})"
        extra = f"; {problem[1]}" if problem else ""
        return Blame(INTERCEPTION, f"{what} where {want or 'none'} was expected: {missing}{extra}")
    if problem and (not problem[0] or want != config.node_role):
        what = f"got {got}" if ident.ok else f"no credentials ({ident.detail})"
        return Blame(INTERCEPTION, f"{what} where {want or 'none'} was expected: on node {principal.node} {problem[1]}")
    if not ident.ok:
        if ident.category == NETWORK:
            return Blame(NETWORK_LAYER, f"could not reach AWS: {ident.detail}")
        if ident.category in (CLI_MISSING, ERROR):
            return Blame(PROBE, ident.detail)
        if ident.category == INVALID_CREDENTIALS:
            return Blame(KUBE2IAM, f"credentials were handed out but AWS rejects them: {ident.detail}")
        # No credentials / AssumeRole denied, where role `want` was expected.
        trust = diag.documents.trust.get(want or "")
        if trust is not None and not pe.trust_allows(trust, node_arn):
            named = ", ".join(pe.trusted_principals(trust)) or "no AWS principal"
            return Blame(TRUST, f"AssumeRole denied: role {want}'s trust policy does not trust the node role {node_arn} (it trusts {named})")
        if ident.category == ASSUME_DENIED:
            return Blame(TRUST, f"AssumeRole of {want} denied: {ident.detail}")
        ns = exp.principal.namespace
        if exp.principal.kind == "pod" and ns in diag.allowed_roles and want and config.namespace_restrictions \
                and want != config.effective_default_role \
                and not role_allowed_in_namespace(want, account, diag.allowed_roles[ns]):
            return Blame(KUBE2IAM, f"kube2iam gave no credentials: namespace {ns} does not allow role {want} "
                                   f"({ALLOWED_ROLES_ANNOTATION}: {json.dumps(diag.allowed_roles[ns])})")
        node_policies = diag.documents.policies.get(config.node_role)
        if want and node_policies is not None and not pe.is_allowed(node_policies, "sts:AssumeRole", config.role_arn(account, want)):
            return Blame(PERMISSIONS, f"kube2iam gave no credentials: the node role's policies do not allow sts:AssumeRole on {want}")
        return Blame(KUBE2IAM, f"kube2iam gave no credentials{_where(exp.principal)} ({ident.detail}); check its pod and --debug log")
    if got == config.node_role and want != config.node_role:
        return Blame(INTERCEPTION, f"credentials came from the node role {config.node_role} where "
                                   f"{want or 'none (kube2iam must refuse)'} was expected: metadata calls are not intercepted"
                                   f"{_where(exp.principal)} (iptables DNAT rule for 169.254.169.254 or kube2iam pod missing)")
    if want is None:
        return Blame(KUBE2IAM, f"kube2iam handed out {got} although {exp.why}")
    if want == config.node_role:
        return Blame(INTERCEPTION, f"got role {got} where the node role was expected ({exp.why})")
    return Blame(KUBE2IAM, f"kube2iam handed out role {got} where {want} was expected ({exp.why})")


def _cell_blame(config: Config, account: str, exp: Expected, obs: Observed, bucket: str, op: str,
                seen: Observation, diag: Diagnostics) -> Blame:
    result = seen.result
    if result.category == NETWORK:
        return Blame(NETWORK_LAYER, f"could not reach S3: {result.detail}")
    if result.category == NO_SUCH_BUCKET:
        return Blame(BUCKET, f"bucket {bucket} does not exist")
    if result.category in (CLI_MISSING, ERROR):
        return Blame(PROBE, result.detail)
    if result.category in (NO_CREDENTIALS, INVALID_CREDENTIALS):
        return Blame(KUBE2IAM, f"no usable credentials for this call: {result.detail}")
    role = obs.role or exp.role
    if op == READ:
        actions, resource = pe.READ_ACTIONS, pe.bucket_arn(bucket)
    else:
        actions, resource = pe.WRITE_ACTIONS, pe.object_arn(bucket, seen.key or PROBE_PREFIX + "x")
    live = diag.documents.policies.get(role or "")
    verdicts = ""
    if live is not None:
        verdicts = "; live policies: " + ", ".join(f"{a} {pe.evaluate(live, a, resource)}" for a in actions)
    if exp.access.get((bucket, op)):
        return Blame(PERMISSIONS, f"role {role} was denied {'/'.join(actions)} on {resource} that it should have{verdicts}")
    return Blame(PERMISSIONS, f"role {role} was allowed {'/'.join(actions)} on {resource} that it should not have{verdicts}")


def run_matrix(config: Config, account: str, stage: str, targets: list[tuple[Principal, ProbeBackend]],
               allowed_roles: dict[str, list[str]] | None = None, documents: Documents | None = None,
               diagnostics: Diagnostics | None = None) -> VerifyResult:
    """Expected from the configuration, observed from the targets, compared and blamed."""
    principals = [p for p, _ in targets]
    expected = expected_matrix(config, account, stage, principals, allowed_roles, documents)
    chains = {e.principal.name: [(t, config.role_arn(account, t)) for t in e.chains] for e in expected if e.chains}
    observed = observe(targets, buckets_of(config), chains=chains)
    result = compare(config, account, stage, expected, observed, diagnostics)
    if result.left_behind:
        result.notes.append("probe objects left behind: " + ", ".join(result.left_behind))
    return result


# --- the live run: principals found in the cluster, probed where they run -----------------------

# Article step 9, replayed by --install-cli in a pod without the AWS CLI (a fixed script: no input).
INSTALL_CLI_SCRIPT = (
    "set -e; command -v aws >/dev/null 2>&1 && exit 0; "
    "apt-get update -qq && apt-get install -y -qq curl unzip >/dev/null; "
    "cd /tmp && curl -sSfL https://awscli.amazonaws.com/awscli-exe-linux-x86_64.zip -o awscliv2.zip "
    "&& unzip -q -o awscliv2.zip && ./aws/install --update"
)


CLI_CHECK = ["sh", "-c", "command -v aws"]  # a shell builtin: milliseconds, where `aws --version` starts Python


def ensure_cli(runner: CommandRunner, install: bool, where: str, timeout: float = 600) -> None:
    rc, _, err = runner.run(CLI_CHECK, 30)
    if rc != 0 and rc != 1:  # no `sh` (distroless image): ask the CLI itself
        rc, _, err = runner.run(["aws", "--version"], 30)
    if rc == 0:
        return
    if not install:
        raise UsageError(f"no AWS CLI in {where} ({(err or '').strip()[:80] or f'exit {rc}'}); "
                         "re-run with --install-cli (article step 9) or --probe ephemeral")
    rc, _, err = runner.run(["sh", "-c", INSTALL_CLI_SCRIPT], timeout)
    if rc != 0:
        from rbacbridge.errors import RbacbridgeError

        raise RbacbridgeError(f"installing the AWS CLI in {where} failed: {(err or '').strip().splitlines()[-1:] or rc}")


def ensure_cli_all(checks: list[tuple[CommandRunner, bool, str]], max_workers: int = 16) -> None:
    """ensure_cli for every principal at once (one cheap check each, concurrently); the first failure wins."""
    if not checks:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(checks))), thread_name_prefix="rbv-cli") as pool:
        futures = [pool.submit(ensure_cli, runner, install, where) for runner, install, where in checks]
    for future in futures:
        future.result()


def _get(obj: Any, path: str) -> Any:
    """A field of a Kubernetes object given as a dict (camelCase) or a client model (snake_case)."""
    for part in path.split("."):
        if obj is None:
            return None
        if isinstance(obj, dict):
            obj = obj.get(part)
        else:
            obj = getattr(obj, re.sub(r"(?<!^)(?=[A-Z])", "_", part).lower(), None)
    return obj


def pick_pod(pods: list[Any], label: str) -> Any:
    running = [p for p in pods if _get(p, "status.phase") == "Running" and not _get(p, "metadata.deletionTimestamp")]
    if not running:
        from rbacbridge.errors import IncompleteError

        raise IncompleteError(f"could not verify: no running pod with label {label} (run `rbacbridge setup` first)")
    return sorted(running, key=lambda p: _get(p, "metadata.name"))[0]


@dataclass
class LiveOptions:
    stage: str = "after"
    probe: str = "exec"
    install_cli: bool = False
    node: str | None = None  # SSH address of the host node (else the node the pods run on)
    host_ip: str | None = None  # the node IP kube2iam's DNAT rule should point at (messages)
    drift_check: bool = True  # compare live IAM / Kubernetes state with what setup wants (--no-drift-check: skip)


def configured_annotation(config: Config, workload: str) -> str | None:
    """The iam.amazonaws.com/role setup puts on a workload's pods (templates/k8s): from the configuration."""
    return config.pod_role if workload == ANNOTATED else None


def live_targets(ctx: Any, options: LiveOptions) -> list[tuple[Principal, ProbeBackend]]:
    """The host node over SSH, the two nginx pods through Kubernetes exec."""
    config: Config = ctx.config
    from rbacbridge import kube

    gateway = kube.gateway(ctx)
    principals: list[tuple[Principal, ProbeBackend]] = []
    checks: list[tuple[CommandRunner, bool, str]] = []
    chosen = [(name, pod) for name in (VANILLA, ANNOTATED) for pod in pods_per_node(*_pods_of(gateway, config.namespace, name))]
    pod_nodes = list(dict.fromkeys(_get(pod, "spec.nodeName") for _, pod in chosen))
    several = len(pod_nodes) > 1  # kube2iam and its rule are per node: probe the pods on every node
    for name, pod in chosen:
        pod_name = _get(pod, "metadata.name")
        annotations = _get(pod, "metadata.annotations") or {}
        labels = _get(pod, "metadata.labels") or {}
        node_name = _get(pod, "spec.nodeName")
        managed = labels.get(kube.MANAGED_BY) == kube.OWNER
        if not managed:
            ctx.facts.setdefault("notes", []).append(
                f"pod {config.namespace}/{pod_name} is not rbacbridge's (no {kube.MANAGED_BY}={kube.OWNER} label): reported, "
                f"not trusted; its expected role still comes from the configuration")
        principal = Principal(f"{name}@{node_name}" if several else name, "pod", namespace=config.namespace, pod=pod_name,
                              role_annotation=configured_annotation(config, name),
                              host_network=bool(_get(pod, "spec.hostNetwork")), node=node_name,
                              annotation_seen=True, live_annotation=annotations.get(ROLE_ANNOTATION), managed=managed)
        if options.probe == "ephemeral":
            container = ensure_ephemeral_probe(_api_client(gateway, config), config.namespace, pod_name, config.probe_image)
            runner = KubeExecRunner(gateway, config.namespace, pod_name, container=container)
        else:
            runner = KubeExecRunner(gateway, config.namespace, pod_name)
            checks.append((runner, options.install_cli, f"pod {config.namespace}/{pod_name}"))
        principals.append((principal, AwsCliBackend(runner, config.region, config.endpoint_url)))
    from rbacbridge.nodes import NodeRef, ssh_target
    from rbacbridge.ssh import parse_host_port

    from rbacbridge.node_pods import KUBERNETES, resolve_via, start_host_probes

    hosts: list[tuple[str, str]] = []  # (label, SSH address)
    internal: dict[str, str] = {}
    if options.node is not None:
        hosts.append((options.node, options.node))
    else:
        nodes = {n.name: n for n in kube.cluster_nodes(ctx)}
        for pod_node in pod_nodes or [None]:
            node = nodes.get(pod_node) or (next(iter(nodes.values()), None) if not several else None)
            if node is None:
                raise UsageError(f"no cluster node {pod_node or ''} found for the host probe; give --node HOST")
            hosts.append((node.name, node.ssh_host or node.internal_ip))
            internal[node.name] = node.internal_ip
    # --node is an SSH address; else --via (auto: SSH when an SSH option is given, else Kubernetes)
    pods = {} if options.node is not None or resolve_via(config) != KUBERNETES else \
        start_host_probes(ctx, [(label, internal.get(label)) for label, _ in hosts])
    out: list[tuple[Principal, ProbeBackend]] = []
    notes = ctx.facts.setdefault("notes", [])
    for label, address in hosts:
        name = f"{HOST}@{label}" if len(hosts) > 1 else HOST
        if label in pods:
            runner: Any = pods[label]
            notes.append(f"{name}: host cells probed through Kubernetes, in hostNetwork pod {runner.where} on node {label} "
                         f"({config.probe_image}; deleted afterwards)")
            host = Principal(name, "host", namespace=runner.session.namespace, pod=runner.session.pod, node=label)
        else:
            host_name, port = parse_host_port(address)
            runner = SshRunner(ssh_target(ctx, NodeRef(name=label, ssh_host=host_name, ssh_port=port)))
            notes.append(f"{name}: host cells probed over SSH ({address})")
            host = Principal(name, "host", node=label)
        checks.append((runner, False, f"host node {label}"))
        out.append((host, AwsCliBackend(runner, config.region, config.endpoint_url)))
    try:
        ensure_cli_all(checks)
    except BaseException:
        for runner in pods.values():  # the probe pods go now: run_live never gets these targets to close
            runner.close()
        raise
    return out + principals


def _pods_of(gateway: Any, namespace: str, name: str) -> tuple[list[Any], str]:
    """The Deployment's pods by setup's label (app.kubernetes.io/name), else the article's `app=` label."""
    for selector in (f"app.kubernetes.io/name={name}", f"app={name}"):
        pods = list(gateway.list_pods(namespace, selector))
        if pods:
            return pods, selector
    return [], f"app.kubernetes.io/name={name}"


def pods_per_node(pods: list[Any], label: str) -> list[Any]:
    """The first running pod (by name) on each node, nodes in name order."""
    pick_pod(pods, label)  # raises when none runs
    running = sorted((p for p in pods if _get(p, "status.phase") == "Running" and not _get(p, "metadata.deletionTimestamp")),
                     key=lambda p: (str(_get(p, "spec.nodeName")), _get(p, "metadata.name")))
    chosen: dict[Any, Any] = {}
    for pod in running:
        chosen.setdefault(_get(pod, "spec.nodeName"), pod)
    return list(chosen.values())


def interception_problems(ctx: Any, node_names: set[str]) -> dict[str, tuple[bool, str]]:
    """Per node: what is wrong with its DNAT rules for 169.254.169.254 (read over SSH), if anything."""
    from rbacbridge import iptables, nodes

    problems: dict[str, tuple[bool, str]] = {}
    try:
        states = nodes.inspect_all(ctx, teardown=False)
    finally:
        nodes.close_sessions(ctx)
    for state in states:
        if state.ref.name not in node_names or state.classification is None:
            continue
        rules, desired = state.classification.rules, state.classification.desired
        want = f"{desired.host_ip}:{desired.port}" if desired else "kube2iam"
        first = rules[0] if rules else None
        if first is not None and first.verdict in (iptables.STALE, iptables.FOREIGN, iptables.CONFLICT):
            problems[state.ref.name] = (False, f"the first DNAT rule for 169.254.169.254 is not kube2iam's at {want} "
                                               f"({first.reason}) and wins: `{first.rule.text}` (rbacbridge iptables fix)")
        elif state.classification.missing:
            problems[state.ref.name] = (True, f"kube2iam's DNAT rule for 169.254.169.254 to {want} is missing: "
                                              "metadata calls reach the instance profile (kube2iam not running?)")
    return problems


def live_diagnostics(ctx: Any) -> Diagnostics:
    """Best effort: the live IAM documents and the namespace's allowed-roles annotation."""
    config: Config = ctx.config
    diag = Diagnostics()
    try:
        from rbacbridge.aws import gateway as aws_gateway
        from rbacbridge.sandbox import live_documents

        iam = aws_gateway(ctx).client("iam")
        diag.documents = live_documents(iam, list(dict.fromkeys([config.node_role, config.pod_role, config.effective_default_role])))
    except Exception as exc:  # noqa: BLE001 - diagnostics only sharpen the blame
        ctx.facts.setdefault("notes", []).append(f"could not read the IAM documents for diagnosis: {type(exc).__name__}")
    gateway = ctx.gateways.get("kube")
    read_namespace = getattr(gateway, "read_namespace", None)
    if read_namespace is None and hasattr(gateway, "get"):  # rbacbridge.kube.KubeGateway
        read_namespace = lambda name: gateway.get("Namespace", name)  # noqa: E731
    if read_namespace is not None:
        try:
            namespace = read_namespace(config.namespace)
            raw = (_get(namespace, "metadata.annotations") or {}).get(ALLOWED_ROLES_ANNOTATION)
            diag.allowed_roles[config.namespace] = json.loads(raw) if raw else None
            if raw is not None and isinstance(namespace, dict):
                from rbacbridge.kube import owns_annotation

                if not owns_annotation(namespace):
                    ctx.facts.setdefault("notes", []).append(
                        f"namespace {config.namespace}'s {ALLOWED_ROLES_ANNOTATION} is not rbacbridge's (another field manager "
                        f"owns it): reported, not trusted; the expected matrix uses the configuration")
        except Exception:  # noqa: BLE001
            pass
    return diag


def _kube_step(what: str, call: Callable[[], Any]) -> Any:
    """A step verify cannot do without: if the cluster or AWS cannot answer, there is no verdict (exit 3)."""
    from rbacbridge.errors import IncompleteError, RbacbridgeError

    try:
        return call()
    except (UsageError, IncompleteError):
        raise
    except RbacbridgeError as exc:
        raise IncompleteError(f"could not verify ({what}): {exc}") from None


DRIFT_LAYERS = {("aws", "iam-role"): TRUST, ("aws", "iam-policy"): PERMISSIONS, ("aws", "iam-attachment"): PERMISSIONS}


def drift_findings(ctx: Any) -> tuple[list[Finding], int]:
    """Live state vs what setup wants, from the one planner (aws and kube parts): every planned step whose
    action is not `unchanged` is drift, worded exactly as `rbacbridge plan` words it. Returns (findings, steps compared)."""
    from rbacbridge import planner
    from rbacbridge.plan import UNCHANGED

    plan = planner.plan_setup(ctx, parts=("aws", "kube"))
    findings = []
    for step in plan.steps:
        if step.action == UNCHANGED:
            continue
        layer = KUBE2IAM if step.system == "kube" else DRIFT_LAYERS.get((step.system, step.kind), DRIFT)
        findings.append(Finding(DRIFT_FINDING, f"{step.system} {step.kind} {step.name}", f"{step.action}: {step.message}",
                                step.reason, layer))
    return findings, len(plan.steps)


def _is_kube2iam_pod(pod: Any) -> bool:
    from rbacbridge import kube

    labels = _get(pod, "metadata.labels") or {}
    return labels.get("app.kubernetes.io/name") == "kube2iam" and labels.get(kube.MANAGED_BY) == kube.OWNER


def host_network_findings(gateway: Any, config: Config) -> list[Finding]:
    """hostNetwork pods in namespaces that restrict roles (allowed-roles): kube2iam never sees their metadata
    calls, so they hold the node role whatever the namespace allows."""
    out = []
    for namespace in gateway.list("Namespace"):
        allowed = (_get(namespace, "metadata.annotations") or {}).get(ALLOWED_ROLES_ANNOTATION)
        if allowed is None:
            continue
        name = _get(namespace, "metadata.name")
        for pod in gateway.list_pods(name):
            if not _get(pod, "spec.hostNetwork") or _is_kube2iam_pod(pod) or _get(pod, "status.phase") not in ("Running", "Pending"):
                continue
            pod_name, node = _get(pod, "metadata.name"), _get(pod, "spec.nodeName")
            out.append(Finding(HOST_NETWORK_FINDING, f"pod {name}/{pod_name}",
                               f"hostNetwork pod {name}/{pod_name} on node {node or '?'} bypasses kube2iam",
                               f"namespace {name} restricts roles ({ALLOWED_ROLES_ANNOTATION}: {allowed}), but a hostNetwork pod's "
                               f"metadata calls never pass kube2iam: it holds the node role {config.node_role}",
                               INTERCEPTION, node))
    return out


def kube2iam_missing(gateway: Any, config: Config, node_names: set[str]) -> dict[str, str]:
    """Nodes (among node_names) where no kube2iam pod runs, and what the Node says about why (taints)."""
    from rbacbridge import kube

    running = {_get(p, "spec.nodeName") for p in gateway.list_pods(config.kube2iam_namespace, kube.KUBE2IAM_SELECTOR)
               if _get(p, "status.phase") == "Running"}
    out = {}
    for name in sorted(n for n in node_names if n not in running):
        node = gateway.get("Node", name) or {}
        taints = [f"{t.get('key')}{'=' + t['value'] if t.get('value') else ''}:{t.get('effect')}"
                  for t in (_get(node, "spec.taints") or [])]
        why = f" (node taints: {', '.join(taints)}; does the DaemonSet tolerate them?)" if taints else ""
        out[name] = (f"no kube2iam pod runs on node {name}{why}: its pods' metadata calls reach the instance profile "
                     f"(node role {config.node_role})")
    return out


def run_live(ctx: Any, options: LiveOptions) -> VerifyResult:
    config: Config = ctx.config
    account = config.account_id or _caller_account(config)
    findings: list[Finding] = []
    drift_steps = 0
    if options.drift_check:  # before probing: cached credentials can hide drift from the cells
        findings, drift_steps = _kube_step("drift check, planning as `rbacbridge plan --only aws,kube`", lambda: drift_findings(ctx))
    targets = _kube_step("finding the principals", lambda: live_targets(ctx, options))
    try:
        from rbacbridge import kube

        gateway = kube.gateway(ctx)
        if options.stage == "after":
            try:
                findings += host_network_findings(gateway, config)
            except Exception as exc:  # noqa: BLE001 - e.g. no permission to list namespaces: say so
                ctx.facts.setdefault("notes", []).append(f"could not look for hostNetwork pods in restricted namespaces: {exc}")
        diagnostics = live_diagnostics(ctx)
        pod_nodes = {p.node for p, _ in targets if p.kind == "pod" and p.node}
        if options.stage == "after" and pod_nodes:
            try:
                diagnostics.kube2iam_missing = kube2iam_missing(gateway, config, pod_nodes)
            except Exception as exc:  # noqa: BLE001 - diagnostics only sharpen the blame
                ctx.facts.setdefault("notes", []).append(f"could not list kube2iam's pods for diagnosis: {exc}")
        result = run_matrix(config, account, options.stage, targets, diagnostics=diagnostics)
        if not result.ok and pod_nodes and options.node is None:
            try:
                diagnostics.interception = interception_problems(ctx, pod_nodes)
            except Exception as exc:  # noqa: BLE001 - diagnostics only sharpen the blame
                result.notes.append(f"could not read the nodes' iptables rules for diagnosis: {exc}")
            if diagnostics.interception:
                notes = result.notes
                result = compare(config, account, options.stage, [p.expected for p in result.principals],
                                 [p.observed for p in result.principals], diagnostics)
                result.notes = notes
    finally:
        for _, backend in targets:
            close = getattr(getattr(backend, "runner", None), "close", None)
            if close:
                close()
    result.findings, result.drift_checked, result.drift_steps = findings, options.drift_check, drift_steps
    if not options.drift_check:
        result.notes.append("drift check skipped (--no-drift-check)")
    if options.host_ip:
        result.notes.append(f"kube2iam's DNAT rule should send 169.254.169.254:80 to {options.host_ip}:{config.kube2iam_port}")
    result.notes.extend(n for n in dict.fromkeys(ctx.facts.get("notes", [])) if n not in result.notes)
    return result


def _caller_account(config: Config) -> str:
    try:
        import boto3

        session = boto3.session.Session(profile_name=config.profile, region_name=config.region)
        return session.client("sts", endpoint_url=config.endpoint_url).get_caller_identity()["Account"]
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"):
            from rbacbridge.errors import IncompleteError

            raise IncompleteError(f"could not verify: AWS is unreachable ({exc})") from None
        raise UsageError(f"verify needs --account-id (could not read it from the local credentials: {type(exc).__name__})") from None


# --- --probe ephemeral: an AWS CLI container added to the pod (shares its network identity) -------

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
