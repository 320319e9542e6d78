"""verify's vocabulary: checks, error categories, blame layers, and the dataclasses of a run
(principals, expected rows, call results, observations, cells, findings, the result). No work here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rbacbridge.policy_eval import Documents  # noqa: F401 - trust and identity policies per role, re-exported

HOST = "host"
VANILLA = "nginx-vanilla"
ANNOTATED = "nginx-annotated"
STAGES = ("before", "after")
IDENTITY, READ, WRITE, CHAIN = "identity", "read", "write", "chain"
# A pod of one tenant asks kube2iam for ANOTHER tenant's role (as if annotated with it): must get nothing.
ANNOTATION = "annotation"
CHECKS = (IDENTITY, READ, WRITE, CHAIN, ANNOTATION)
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
MIGRATION = "migration"  # verify --baseline: a cell whose answer differs from the baseline's (gained or lost access)
LAYERS = (INTERCEPTION, KUBE2IAM, TRUST, PERMISSIONS, NETWORK_LAYER, BUCKET, PROBE, ESCALATION, DRIFT, MIGRATION)

# Kinds of finding (not cells: facts that fail verify on their own)
DRIFT_FINDING = "drift"
HOST_NETWORK_FINDING = "hostNetwork"
OUTSIDER_FINDING = "outsiderNamespace"  # a namespace of no tenant whose allowed-roles match a managed role
CHAIN_SESSION = "rbacbridge-verify-chain"  # session name of a chain probe's sts:AssumeRole

# Where a cell's AWS call was made (--probe-from): inside the principal, or by rbacbridge with its credentials
PROBED_FROM_POD = "pod"
PROBED_FROM_RBACBRIDGE = "rbacbridge"
PROBE_FROM = (PROBED_FROM_RBACBRIDGE, PROBED_FROM_POD)
DEFAULT_PROBE_FROM = PROBED_FROM_RBACBRIDGE


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
    tenant: str | None = None  # the tenant whose workload it is (from the configuration); None: host, default-role pod
    workload: str | None = None  # the Deployment (pods); the principal's name without @node
    probe_pod: bool = False  # a short-lived pod verify started for a tenant (or the default role) with no pod there
    # The credential variables the pod's spec gives its container (verify.credential_source), as admitted; None:
    # not read (a host node, the sandbox)
    credential_env: tuple[tuple[str, str], ...] | None = None


@dataclass
class Expected:
    principal: Principal
    role: str | None  # role name it should get; None = kube2iam must refuse (no credentials)
    why: str
    access: dict[tuple[str, str], bool | None]  # (bucket, read|write) -> allowed; None = unknown
    # target role -> does the configuration let this principal assume it itself? (policy evaluator over
    # the documents setup wants; None = a role rbacbridge does not manage). The cell wants "no" always.
    chains: dict[str, bool | None] = field(default_factory=dict)
    # other tenants' roles -> would kube2iam hand this pod that role if it asked for it (annotated with it)?
    # From the configuration (namespace restrictions, allowed-roles setup writes). The cell wants "no" always.
    annotations: dict[str, bool | None] = field(default_factory=dict)


@dataclass
class CallResult:
    ok: bool
    category: str | None = None  # None when ok
    detail: str = ""
    value: Any = None  # e.g. the caller ARN



@dataclass
class Observation:
    allowed: bool | None  # None: could not tell (error)
    result: CallResult
    key: str | None = None
    left_behind: bool = False  # a probe object we could not delete
    probed_by: str | None = None  # another principal observed it for this one: same workload, same observed role
    # Who made the call: "pod" (inside the principal: its pod, or the host node, as the article does by hand) or
    # "rbacbridge" (rbacbridge itself, with the credentials the pod received: --probe-from rbacbridge, verify.inprocess)
    probed_from: str = "pod"
    credentials_of: str | None = None  # probed_from rbacbridge: the principal whose credentials it used

    @property
    def shared_note(self) -> str:
        if self.probed_from == PROBED_FROM_RBACBRIDGE:
            return f" (called by rbacbridge with the credentials {self.credentials_of} received)"
        return f" (probed by {self.probed_by}: same workload, same role)" if self.probed_by else ""



@dataclass
class Observed:
    principal: Principal
    identity: CallResult
    arn: str | None
    role: str | None
    cells: dict[tuple[str, str], Observation]
    chains: dict[str, Observation] = field(default_factory=dict)  # target role -> did sts:AssumeRole succeed?
    annotations: dict[str, Observation] = field(default_factory=dict)  # other tenant's role -> did kube2iam hand it out?



# Who explained a blamed cell's policy decision (verify.explain): AWS's simulator with the bucket policy, or
# rbacbridge's own evaluator (rbacbridge.policy_eval) over the live identity policies
EXPLAINED_BY_SIMULATOR = "iam:SimulatePrincipalPolicy"
EXPLAINED_BY_EVALUATOR = "rbacbridge evaluator"
EXPLAINERS = (EXPLAINED_BY_SIMULATOR, EXPLAINED_BY_EVALUATOR)


@dataclass
class Blame:
    layer: str
    message: str
    explained_by: str | None = None  # EXPLAINERS; None: no policy decision quoted (network, bucket, interception...)


@dataclass
class Cell:
    principal: str
    check: str  # identity | read | write | chain | annotation
    bucket: str | None
    expected: Any  # role name (identity) or bool; None = denied identity / unknown access
    observed: Any
    match: bool
    error: str | None = None
    detail: str = ""
    blame: Blame | None = None
    target: str | None = None  # chain / annotation cells: the role the principal tried to obtain
    predicted: bool | None = None  # chain / annotation cells: does the configuration grant it?
    owners: tuple[str, ...] = ()  # the tenants whose bucket grant or role the cell is about (none: shared, node, default)
    tenant: str | None = None  # the principal's tenant (None: host, default-role pod)
    probed_from: str = PROBED_FROM_POD  # who made the AWS call: inside the principal, or rbacbridge with its credentials
    settle: "Settled | None" = None  # retried within the settle window (verify.settle); None: observed once
    source: str | None = None  # identity cells: the path that served the credentials (verify.credential_source)

    @property
    def cross_tenant(self) -> bool:
        """About a bucket grant or role of other tenants only (not of the principal's own)."""
        return bool(self.owners) and self.tenant not in self.owners


@dataclass(frozen=True)
class Settled:
    """A cell that disagreed with its expectation within the settle window and was observed again (verify.settle)."""

    attempts: int  # observations in all, the first included
    settled: bool  # True: it came to agree; False: it still disagreed when the window ended
    after_seconds: float  # from the first observation that disagreed to the last observation


@dataclass(frozen=True)
class SettleWindow:
    """When verify retries cells that disagree (IAM changes take seconds to reach every endpoint)."""

    source: str  # "record" (setup's record: its last trust or policy change), "--settle", or "none"
    seconds: float  # the window's length (0: no retries)
    until: Any = None  # datetime (UTC) the window ends; None: no window
    changed_at: Any = None  # source "record": when setup last changed a trust or policy (datetime, UTC)
    why: str = ""  # in words, for the notes

    @property
    def open(self) -> bool:
        from datetime import datetime, timezone

        return self.until is not None and datetime.now(timezone.utc) < self.until


@dataclass
class Finding:
    """A fact that fails verify on its own, whatever the cells say."""

    kind: str  # DRIFT_FINDING | HOST_NETWORK_FINDING | OUTSIDER_FINDING
    subject: str  # e.g. "aws iam-role nettech-s3-read-write", "pod kube-system/debug-shell"
    message: str  # the plan's sentence (drift) or what is wrong
    reason: str  # the plan's reason text (drift) or why it matters
    layer: str
    node: str | None = None


@dataclass(frozen=True)
class Unverified:
    """A tenant (None: the default role) that has no principal on a node, because its probe pod could not run."""

    tenant: str | None
    namespace: str
    node: str | None  # None: the scheduler's choice (no node known)
    reason: str

    @property
    def subject(self) -> str:
        return f"tenant {self.tenant}" if self.tenant is not None else "the default role"


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
    roles: dict[str, str] = field(default_factory=dict)  # short label -> role name: node, default, tenant name (legacy: pod)
    tenants: tuple = ()  # the configuration's tenants in this run (rbacbridge.config.Tenant; --tenant: that one)
    drift_checked: bool = False  # False: --no-drift-check (or a run without a cluster, e.g. the sandbox)
    drift_steps: int = 0  # planned steps compared (aws + kube parts)
    unverified: list[Unverified] = field(default_factory=list)  # tenants (or the default role) with no evidence on a node
    accept_unverified: bool = False  # --allow-unverified: they are reported, and do not fail the run
    settle: SettleWindow | None = None  # the settle window verify ran in (None: not asked, e.g. the sandbox)
    baseline: dict[str, int] | None = None  # --baseline: counts of the comparison (verify.migration)

    @property
    def all_cells(self) -> list[Cell]:
        return [c for p in self.principals for c in [p.identity, *p.cells]]

    @property
    def mismatches(self) -> list[Cell]:
        return [c for c in self.all_cells if not c.match]

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.findings and (self.accept_unverified or not self.unverified_tenants)

    def tenant_cells(self, name: str) -> list[Cell]:
        return [c for p in self.principals if p.principal.tenant == name for c in [p.identity, *p.cells]]

    @property
    def unverified_tenants(self) -> list[str | None]:
        """Tenants of the run (None: the default role) not verified on every node (see `unverified`)."""
        return list(dict.fromkeys(u.tenant for u in self.unverified))

    def require_evidence(self) -> None:
        """A tenant is never verified with zero cells: each tenant of the run without one, and not yet reported,
        becomes an Unverified entry (the live run and the sandbox call this once the matrix is done)."""
        seen = set(self.unverified_tenants)
        self.unverified += [Unverified(t.name, t.namespaces[0], None, "no cell: no pod of this tenant was probed")
                            for t in self.tenants if t.name not in seen and not self.tenant_cells(t.name)]

    @property
    def exit_code(self) -> int:
        """0 all match; 1 a cell mismatched or a finding; 3 nothing definite failed, but some cells could
        not be checked because AWS could not be reached, or a tenant could not be verified (no verdict;
        --allow-unverified accepts the latter)."""
        from rbacbridge.errors import EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK

        if self.ok:
            return EXIT_OK
        if self.findings or any(c.error != NETWORK for c in self.mismatches):
            return EXIT_FAILED
        return EXIT_INCOMPLETE

    @property
    def breaches(self) -> list[Cell]:
        """Read/write cells where a pod was observed reaching a bucket grant of another tenant (the article's
        breach: pods A and B reading C's bucket). An observation, whatever the expectation said."""
        return [c for p in self.principals if p.principal.kind == "pod" for c in p.cells
                if c.check in ("read", "write") and c.observed is True and c.cross_tenant]

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
    # verify.explain.Simulator: iam:SimulatePrincipalPolicy for blamed cells (None: rbacbridge's evaluator explains)
    simulator: Any = None


