"""--probe-from rbacbridge (issue 25): verify that grows with pods, not with tenants².

What kube2iam decides (which role a pod receives) is observed live, in the pod: ONE exec per pod runs the
pod's own `aws sts get-caller-identity` through its metadata path, as before, and in the same exec fetches the
temporary credentials that path hands the pod (IMDSv1 paths kube2iam serves, with curl or wget, else
`aws configure export-credentials`). What that role may do follows from the role, not from the pod: the
bucket and chain cells are AWS calls rbacbridge makes itself with those credentials, one per distinct
(role, location, action), shared by every pod holding the role, 16 at a time, throttling retried.

A spot check keeps it honest: for each (role, node) one cell is also probed inside the pod the old way; if the
answers differ (a bucket policy on aws:SourceIp / aws:SourceVpce, a VPC endpoint policy, an egress proxy)
verify says so and probes every cell of that role on that node in the pod.

The credentials live in this process's memory only (PodCredentials hides them from repr), are never printed,
logged, written or put in a report or an error text, are not kept past `observe_from_rbacbridge`, and are not
used within EXPIRY_MARGIN of their expiry (the cell is then probed in the pod)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from rbacbridge import policy_eval as pe
from rbacbridge.config import grant_bucket
from rbacbridge.verify.expected import probe_key
from rbacbridge.verify.credential_source import KUBE2IAM, credential_source
from rbacbridge.verify.model import (CHAIN, ERROR, NETWORK, NO_CREDENTIALS, PROBED_FROM_POD, PROBED_FROM_RBACBRIDGE, READ,
                                     WRITE, CallResult, Observation, Observed, Principal)
from rbacbridge.verify.probes import (AwsCliBackend, KubeExecRunner, ProbeBackend, _outcome, can_request_roles, classify,
                                      observe, probe_annotation, probe_chain, probe_read, probe_write)

CREDENTIALS_MARK = "--rbacbridge-verify-credentials--"
EXPIRY_MARGIN = timedelta(seconds=60)
METADATA_CREDENTIALS = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
# The one exec: "$@" is the pod's identity call (AwsCliBackend.argv); its output and exit code are today's.
# Then the credentials the same metadata path hands out (kube2iam serves the IMDSv1 paths). A fixed script:
# nothing from the configuration or the cluster is interpolated into it.
CREDENTIALS_SCRIPT = (
    '"$@" || exit $?; '
    f"echo; echo '{CREDENTIALS_MARK}'; "
    f"u={METADATA_CREDENTIALS}; "
    'get() { if command -v curl >/dev/null 2>&1; then curl -sf --max-time 10 "$1"; '
    'elif command -v wget >/dev/null 2>&1; then wget -q -T 10 -O - "$1"; else return 127; fi; }; '
    'role=$(get "$u") && [ -n "$role" ] && get "$u$role" && exit 0; '
    "AWS_PAGER= aws configure export-credentials --format process 2>/dev/null || "
    "{ echo 'no curl, wget or aws configure export-credentials could read the credentials' >&2; exit 3; }"
)


@dataclass(frozen=True)
class PodCredentials:
    """Temporary credentials a pod received. repr/str never show them (an exception or log line cannot leak them)."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    expiration: datetime | None = None

    def usable(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(timezone.utc)
        return self.expiration is None or self.expiration - EXPIRY_MARGIN > now

    def for_boto3(self) -> dict[str, str]:
        out = {"aws_access_key_id": self.access_key, "aws_secret_access_key": self.secret_key}
        if self.token:
            out["aws_session_token"] = self.token
        return out


def parse_credentials(text: str) -> PodCredentials | None:
    """The metadata service's document (Token) or `aws configure export-credentials --format process`'s
    (SessionToken); None if it is neither (never quoted: it may hold a secret)."""
    try:
        doc = json.loads(text)
        access, secret = doc["AccessKeyId"], doc["SecretAccessKey"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(access, str) or not isinstance(secret, str) or not access or not secret:
        return None
    expiration = None
    if doc.get("Expiration"):
        try:
            expiration = datetime.fromisoformat(str(doc["Expiration"]).replace("Z", "+00:00"))
            if expiration.tzinfo is None:
                expiration = expiration.replace(tzinfo=timezone.utc)
        except ValueError:
            return None
    return PodCredentials(access, secret, doc.get("Token") or doc.get("SessionToken"), expiration)


def fetch_from_pod(backend: ProbeBackend) -> tuple[CallResult, PodCredentials | None, str | None] | None:
    """The pod's identity (as AwsCliBackend.identity observes it) and the credentials it received, in one exec;
    the third item says why there are none. None: this principal is not a pod (the host node: probed there)."""
    own = getattr(backend, "pod_credentials", None)  # the sandbox's pods
    if callable(own):
        return own()
    if not isinstance(backend, AwsCliBackend) or not isinstance(backend.runner, KubeExecRunner):
        return None
    argv = ["sh", "-c", CREDENTIALS_SCRIPT, "rbacbridge-verify", *backend.argv("sts", "get-caller-identity")]
    try:
        rc, stdout, stderr = backend.runner.run(argv, backend.timeout)
    except Exception as exc:  # noqa: BLE001 - a broken transport is an observation (never the output: it may hold a secret)
        return CallResult(False, NETWORK if "timeout" in str(exc).lower() else ERROR, f"{type(exc).__name__}"), None, None
    if CREDENTIALS_MARK not in (stdout or ""):
        return _identity(classify(rc, stdout, stderr)), None, None
    identity_text, credentials_text = stdout.split(CREDENTIALS_MARK, 1)
    ident = _identity(CallResult(True, detail="ok", value=identity_text))
    creds = parse_credentials(credentials_text.strip()) if rc == 0 else None
    if creds is None:
        first = next((ln.strip() for ln in (stderr or "").splitlines() if ln.strip()), "")
        why = first[:160] if rc != 0 and "Secret" not in first and "Token" not in first else "no credentials document"
        return ident, None, f"could not read the credentials through the metadata path ({why})"
    return ident, creds, None


def _identity(result: CallResult) -> CallResult:
    if result.ok:
        try:
            result.value = json.loads(result.value)["Arn"]
        except (ValueError, KeyError, TypeError):
            return CallResult(False, ERROR, "get-caller-identity printed no Arn")
    return result


class Boto3Backend:
    """The probes through boto3 with one principal's credentials (the sandbox's principals; rbacbridge's own calls
    with a pod's credentials). `retries`: throttling and transient errors retried (botocore's standard mode)."""

    def __init__(self, endpoint_url: str | None, region: str, credentials: dict[str, str], retries: bool = False):
        import boto3
        from botocore.config import Config as BotoConfig

        session = boto3.session.Session(region_name=region, **credentials)
        self.credentials = credentials  # the sandbox's pods hand them to --probe-from rbacbridge (PodBackend)
        cfg = BotoConfig(retries={"mode": "standard", "max_attempts": 5} if retries else {"max_attempts": 1},
                         connect_timeout=5, read_timeout=30, max_pool_connections=16)
        self.sts = session.client("sts", endpoint_url=endpoint_url, config=cfg)
        self.s3 = session.client("s3", endpoint_url=endpoint_url, config=cfg)

    def _call(self, fn, **kwargs) -> CallResult:
        from botocore.exceptions import (ClientError, ConnectTimeoutError, EndpointConnectionError, NoCredentialsError,
                                         ReadTimeoutError)

        try:
            return CallResult(True, detail="ok", value=fn(**kwargs))
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = error.get("Code", "?"), error.get("Message", "")
            text = f"An error occurred ({code}) when calling the {exc.operation_name} operation: {message}"
            return classify(254, "", text)
        except NoCredentialsError as exc:
            return CallResult(False, NO_CREDENTIALS, str(exc))
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
            return CallResult(False, NETWORK, str(exc))

    def identity(self) -> CallResult:
        result = self._call(self.sts.get_caller_identity)
        if result.ok:
            result.value = result.value["Arn"]
        return result

    def list_bucket(self, bucket: str) -> CallResult:
        return self._call(self.s3.list_objects_v2, Bucket=bucket, MaxKeys=1)

    def put_object(self, bucket: str, key: str) -> CallResult:
        return self._call(self.s3.put_object, Bucket=bucket, Key=key, Body=b"rbacbridge verify probe\n")

    def delete_object(self, bucket: str, key: str) -> CallResult:
        return self._call(self.s3.delete_object, Bucket=bucket, Key=key)

    def assume_role(self, role_arn: str) -> CallResult:
        """The principal's credentials call sts:AssumeRole (a chain cell); only the assumed-role ARN is kept."""
        from rbacbridge.verify.model import CHAIN_SESSION

        result = self._call(self.sts.assume_role, RoleArn=role_arn, RoleSessionName=CHAIN_SESSION)
        if result.ok:
            result.value = result.value["AssumedRoleUser"]["Arn"]  # the credentials go no further
        return result


@dataclass
class _Holder:
    """A pod whose credentials rbacbridge calls with: its principal, its own backend (the pod), rbacbridge's."""

    principal: Principal
    pod: ProbeBackend
    creds: PodCredentials
    calls: Boto3Backend


def observe_from_rbacbridge(targets: list[tuple[Principal, ProbeBackend]], buckets: list[str], region: str,
                            endpoint_url: str | None, max_workers: int = 16,
                            chains: dict[str, list[tuple[str, str]]] | None = None,
                            annotations: dict[str, list[tuple[str, str]]] | None = None, share: bool = True,
                            notes: list[str] | None = None) -> list[Observed]:
    """observe()'s result, with the bucket and chain cells of pods made by rbacbridge with their credentials.

    Principals that are not pods (the host node), pods whose credentials could not be read or did not prove to
    be the role they observed, and every pod of a (role, node) whose spot check differed are observed as
    before (verify.probes.observe: in the pod). `share` False (--every-node): one call per pod instead of per role."""
    chains, annotations = chains or {}, annotations or {}
    notes = notes if notes is not None else []
    fetched: dict[str, Any] = {}
    asked: dict[tuple[str, str], Any] = {}
    elsewhere = {principal.name: source for principal, _ in targets
                 if (source := _sdk_source(principal)) not in (None, KUBE2IAM)}
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rbv-fetch") as pool:
        for principal, backend in targets:
            if principal.name not in elsewhere:
                fetched[principal.name] = pool.submit(fetch_from_pod, backend)
            if can_request_roles(backend):
                for target, arn in annotations.get(principal.name, []):
                    asked[(principal.name, target)] = pool.submit(probe_annotation, backend, target, arn)
    identities: dict[str, CallResult] = {}
    holders: list[_Holder] = []
    in_pod: list[tuple[Principal, ProbeBackend]] = []
    for principal, backend in targets:
        if principal.name in elsewhere:
            # The metadata path is not where this pod's SDK gets its credentials: what kube2iam would hand out
            # there proves nothing about the pod's own calls.
            notes.append(f"{principal.name}: its SDK takes credentials from {elsewhere[principal.name]}, not the "
                         f"metadata path: its cells probed in the pod")
            in_pod.append((principal, backend))
            continue
        got = _outcome_of(fetched[principal.name])
        if got is None or got[1] is None:
            in_pod.append((principal, backend))
            if got is not None and got[2]:
                notes.append(f"{principal.name}: {got[2]}: its cells probed in the pod")
            continue
        ident, creds, _ = got
        identities[principal.name] = ident
        holders.append(_Holder(principal, backend, creds, Boto3Backend(endpoint_url, region, creds.for_boto3(), retries=True)))
    holders, mismatched = _proven(holders, identities, max_workers)
    for holder, why in mismatched:
        notes.append(f"{holder.principal.name}: {why}: its cells probed in the pod")
        in_pod.append((holder.principal, holder.pod))

    groups: dict[Any, list[_Holder]] = {}
    for holder in holders:
        role = pe.role_name_of(identities[holder.principal.name].value)
        groups.setdefault(role if share else holder.principal.name, []).append(holder)
    cells = _group_cells(groups, buckets, chains, max_workers)
    spot_differs = _spot_check(groups, cells, buckets, identities, max_workers, notes)
    for holder in (h for h in holders if h.principal.name in spot_differs):
        in_pod.append((holder.principal, holder.pod))
    from_pod = {o.principal.name: o for o in observe(in_pod, buckets, max_workers=max_workers, chains=chains, share=share)} \
        if in_pod else {}

    out = []
    for principal, _ in targets:
        if principal.name in from_pod:
            obs = from_pod[principal.name]
        else:
            key = next(k for k, members in groups.items() if any(h.principal.name == principal.name for h in members))
            ident = identities[principal.name]
            first = groups[key][0].principal.name
            seen = {(loc, op): _for(cells[(key, op, loc)], first, principal.name) for loc in buckets for op in (READ, WRITE)}
            spot = cells.get(("spot", principal.name))
            if spot is not None:
                seen[spot[0]] = spot[1]
            chained = {t: _for(cells[(key, CHAIN, t)], first, principal.name) for t, _ in chains.get(principal.name, [])}
            obs = Observed(principal, ident, ident.value, pe.role_name_of(ident.value), seen, chained, {})
        obs.annotations.update({t: _outcome(f) for (name, t), f in asked.items() if name == principal.name})
        out.append(obs)
    return out


def _sdk_source(principal: Principal) -> str | None:
    """Where the pod's SDK looks first for credentials, from its admitted environment (None: not known)."""
    if principal.credential_env is None:
        return None
    return credential_source(dict(principal.credential_env), "?", None)


def _outcome_of(future: Any) -> Any:
    exc = future.exception()
    if exc is not None:  # the type only: an exception's text is never trusted not to hold the exec's output
        return CallResult(False, ERROR, f"{type(exc).__name__}"), None, None
    return future.result()


def _proven(holders: list[_Holder], identities: dict[str, CallResult],
            max_workers: int) -> tuple[list[_Holder], list[tuple[_Holder, str]]]:
    """Each pod's credentials ask sts:GetCallerIdentity from rbacbridge: they are used only if they are the role the
    pod observed (the credentials document and the CLI's call could come from different answers of the path)."""
    if not holders:
        return [], []
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rbv-proof") as pool:
        asked = [pool.submit(h.calls.identity) for h in holders]
    good, bad = [], []
    for holder, future in zip(holders, asked):
        exc = future.exception()
        result = future.result() if exc is None else CallResult(False, ERROR, type(exc).__name__)
        observed_role = pe.role_name_of(identities[holder.principal.name].value or "")
        if result.ok and pe.role_name_of(result.value or "") == observed_role:
            good.append(holder)
        else:
            seen = pe.role_name_of(result.value or "") if result.ok else f"{result.category}: {result.detail[:120]}"
            bad.append((holder, f"the credentials read through its metadata path are not role {observed_role} ({seen})"))
    return good, bad


def _group_cells(groups: dict[Any, list[_Holder]], buckets: list[str], chains: dict[str, list[tuple[str, str]]],
                 max_workers: int) -> dict[Any, Any]:
    jobs: dict[Any, Any] = {}
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rbv-inproc") as pool:
        for key, members in groups.items():
            first = members[0].principal.name
            for location in buckets:
                bucket = grant_bucket(location)
                jobs[(key, READ, location)] = pool.submit(_with_credentials, members, lambda b, bk=bucket: probe_read(b, bk))
                jobs[(key, WRITE, location)] = pool.submit(
                    _with_credentials, members, lambda b, bk=bucket, k=probe_key(first, location): probe_write(b, bk, k))
            targets = dict(item for h in members for item in chains.get(h.principal.name, []))
            for target, arn in targets.items():
                jobs[(key, CHAIN, target)] = pool.submit(_with_credentials, members, lambda b, a=arn: probe_chain(b, a))
    return {k: _outcome(f) for k, f in jobs.items()}


def _with_credentials(members: list[_Holder], probe: Callable[[Any], Observation]) -> Observation:
    """The probe made by rbacbridge with the first member's credentials that are not about to expire; all about
    to expire: made in the first member's pod, as before."""
    holder = next((h for h in members if h.creds.usable()), None)
    if holder is None:
        seen = probe(members[0].pod)
        seen.credentials_of = None
        return seen
    seen = probe(holder.calls)
    seen.probed_from, seen.credentials_of = PROBED_FROM_RBACBRIDGE, holder.principal.name
    return seen


def _for(seen: Observation, first: str, name: str) -> Observation:
    """The observation as `name` reports it (a probe object left behind counted once, for the group's first)."""
    return Observation(seen.allowed, seen.result, seen.key, left_behind=seen.left_behind and name == first,
                       probed_from=seen.probed_from, credentials_of=seen.credentials_of)


def _spot_check(groups: dict[Any, list[_Holder]], cells: dict[Any, Any], buckets: list[str],
                identities: dict[str, CallResult], max_workers: int, notes: list[str]) -> set[str]:
    """For each (role, node) one read cell also probed in the pod (the first pod of that role on that node): a
    location rbacbridge was allowed to list, rotated by node, so that a path that denies it shows (else the
    first location). Its answer stands in the report (probed_from pod). Returns the principals of every
    (role, node) whose answers differed: all their cells are then probed in the pod."""
    if not buckets:
        return set()
    by_node: dict[tuple[Any, Any], list[tuple[Any, _Holder]]] = {}
    for key, members in groups.items():
        for holder in members:
            role = pe.role_name_of(identities[holder.principal.name].value)
            by_node.setdefault((role, holder.principal.node), []).append((key, holder))
    nodes = sorted({str(node) for _, node in by_node})
    picks = []
    for (role, node), members in by_node.items():
        key, holder = members[0]
        allowed = [loc for loc in buckets if cells[(key, READ, loc)].allowed]
        choices = allowed or buckets
        location = choices[nodes.index(str(node)) % len(choices)]
        picks.append((role, node, key, holder, location, [h for _, h in members]))
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rbv-spot") as pool:
        asked = [pool.submit(probe_read, holder.pod, grant_bucket(location)) for _, _, _, holder, location, _ in picks]
    differs: set[str] = set()
    for (role, node, key, holder, location, members), future in zip(picks, asked):
        in_pod = _outcome(future)
        ours = cells[(key, READ, location)]
        if in_pod.allowed == ours.allowed:
            cells[("spot", holder.principal.name)] = ((location, READ), in_pod)
            continue
        differs.update(h.principal.name for h in members)
        notes.append(f"spot check on node {node or '?'}: read on {location} answered {_said(in_pod)} in pod "
                     f"{holder.principal.name} but {_said(ours)} to rbacbridge with that pod's credentials (role {role}); "
                     f"every cell of role {role} on node {node or '?'} was probed in the pod")
    return differs


def _said(seen: Observation) -> str:
    return "allowed" if seen.allowed else "denied" if seen.allowed is False else f"could not tell ({seen.result.category})"


__all__ = ["Boto3Backend", "PodCredentials", "fetch_from_pod", "observe_from_rbacbridge", "parse_credentials",
           "CREDENTIALS_SCRIPT", "PROBED_FROM_POD"]
