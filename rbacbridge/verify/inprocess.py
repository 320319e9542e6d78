"""--probe-from rbacbridge (issue 25): verify that grows with pods, not with tenants².

What kube2iam decides (which role a pod receives) is observed live, in the pod: ONE exec per pod
(verify.one_exec) asks the pod's metadata path which role it names and for that role's temporary credentials,
and probes one cell with the pod's own AWS CLI (the spot check) — two processes in the pod. rbacbridge asks STS
who those credentials are (GetCallerIdentity: the pod's identity ARN; credentials that are not the role the path
named are not used). What that role may do follows from the role, not from the pod: the bucket and chain cells
are AWS calls rbacbridge makes itself with those credentials, one per distinct (role, location, action), shared
by every pod holding the role, `max_workers` at a time, throttling retried (botocore's standard mode), through
one set of clients per distinct credentials (one boto3 session: the service models load once).

The spot check keeps it honest: for each (role, node) one read cell — chosen before the exec, from the locations
the configuration lets the role read, rotated by node — is also probed inside the pod; if the pod's answer and
rbacbridge's differ (a bucket policy on aws:SourceIp / aws:SourceVpce, a VPC endpoint policy, an egress proxy)
verify says so and probes every cell of that role on that node in the pod.

Pods whose path handed out no credentials, or credentials that did not prove to be the role it named, are probed
as before (verify.probes.observe: in the pod; the AWS CLI checked first), as is the host node.

The credentials live in this process's memory only, are never printed, logged, written or put in a report or
an error text, are not kept past `observe_from_rbacbridge`, and are not used within EXPIRY_MARGIN of their expiry
(the cell is then probed in the pod)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from rbacbridge import policy_eval as pe
from rbacbridge.config import grant_bucket
from rbacbridge.verify.expected import probe_key
from rbacbridge.verify.credential_source import KUBE2IAM, credential_source
from rbacbridge.verify.model import (CHAIN, ERROR, NETWORK, NO_CREDENTIALS, PROBED_FROM_POD, PROBED_FROM_RBACBRIDGE, READ, WRITE,
                                     CallResult, Observation, Observed, Principal)
from rbacbridge.verify.one_exec import Fetched, PodCredentials, one_exec, parse_credentials
from rbacbridge.verify.probes import (ProbeBackend, _outcome, can_request_roles, classify, ensure_cli, observe,
                                      probe_annotation, probe_chain, probe_read, probe_write)


_SESSION_LOCK = threading.Lock()


class Boto3Backend:
    """The probes through boto3 with one principal's credentials (the sandbox's principals; rbacbridge's own calls
    with a pod's credentials). `retries`: throttling and transient errors retried (botocore's standard mode)."""

    def __init__(self, endpoint_url: str | None, region: str, credentials: dict[str, str], retries: bool = False,
                 session: Any = None):
        import boto3
        from botocore.config import Config as BotoConfig

        # `session` (verify.inprocess's callers): one boto3 session whose loaded service models every client shares;
        # the credentials are the client's own
        session = session or boto3.session.Session(region_name=region)
        self.credentials = credentials  # the sandbox's pods hand them to --probe-from rbacbridge (PodBackend)
        cfg = BotoConfig(retries={"mode": "standard", "max_attempts": 5} if retries else {"max_attempts": 1},
                         connect_timeout=5, read_timeout=30, max_pool_connections=16)
        self.sts = session.client("sts", endpoint_url=endpoint_url, config=cfg, region_name=region, **credentials)
        # the S3 client when first used: a pod whose role another pod's calls cover only proves its credentials (STS)
        self._s3_args = (session, dict(endpoint_url=endpoint_url, config=cfg, region_name=region, **credentials))
        self._s3: Any = None
        self._s3_lock = threading.Lock()

    @property
    def s3(self) -> Any:
        with self._s3_lock:
            if self._s3 is None:
                session, kwargs = self._s3_args
                with _SESSION_LOCK:  # a boto3 session is not thread-safe; its clients are
                    self._s3 = session.client("s3", **kwargs)
            return self._s3

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


class Callers:
    """rbacbridge's AWS clients for the pods' credentials: one boto3 session (its loaded service models shared by
    every client), one Boto3Backend per distinct credentials (pods of one role on one node get the same from
    kube2iam), created once, under a lock (a boto3 session is not thread-safe; its clients are)."""

    def __init__(self, endpoint_url: str | None, region: str):
        import boto3

        self.endpoint_url, self.region = endpoint_url, region
        self.session = boto3.session.Session(region_name=region)
        self._by_key: dict[str, Boto3Backend] = {}
        self._lock = threading.Lock()

    def of(self, creds: PodCredentials) -> Boto3Backend:
        with self._lock, _SESSION_LOCK:
            found = self._by_key.get(creds.access_key)
            if found is None:
                found = self._by_key[creds.access_key] = Boto3Backend(self.endpoint_url, self.region, creds.for_boto3(),
                                                                      retries=True, session=self.session)
            return found


@dataclass
class _Holder:
    """A pod whose credentials rbacbridge calls with: its principal, its own backend (the pod), rbacbridge's."""

    principal: Principal
    pod: ProbeBackend
    creds: PodCredentials
    calls: Boto3Backend
    spot: Observation | None = None  # the spot-checked cell, as the pod saw it in the one exec
    spot_location: str | None = None


def spot_plan(targets: list[tuple[Principal, ProbeBackend]], buckets: list[str], hints: dict[str, str | None],
              readable: dict[str, list[str]]) -> dict[str, str]:
    """Before the exec: which principal probes which read cell itself — the first of each (expected role, node), a
    location the configuration lets that role read (else any), rotated by node so the nodes check different ones."""
    if not buckets:
        return {}
    nodes = sorted({str(p.node) for p, _ in targets})
    plan: dict[str, str] = {}
    seen: set[tuple[Any, Any]] = set()
    for principal, _ in targets:
        if (hints.get(principal.name), principal.node) in seen:
            continue
        seen.add((hints.get(principal.name), principal.node))
        plan[principal.name] = _rotated(readable.get(principal.name) or buckets, nodes, principal.node)
    return plan


def _rotated(choices: list[str], nodes: list[str], node: Any) -> str:
    return choices[nodes.index(str(node)) % len(choices)] if str(node) in nodes else choices[0]


def observe_from_rbacbridge(targets: list[tuple[Principal, ProbeBackend]], buckets: list[str], region: str,
                            endpoint_url: str | None, max_workers: int = 16,
                            chains: dict[str, list[tuple[str, str]]] | None = None,
                            annotations: dict[str, list[tuple[str, str]]] | None = None, share: bool = True,
                            notes: list[str] | None = None, hints: dict[str, str | None] | None = None,
                            readable: dict[str, list[str]] | None = None) -> list[Observed]:
    """observe()'s result, with the bucket and chain cells of pods made by rbacbridge with their credentials.

    `hints`: principal name -> the role the configuration gives it (asked of the metadata path; the answer is
    what the path hands out). `readable`: principal name -> locations it should read (the spot check's choices).
    Principals that are not pods (the host node), pods whose credentials could not be read or did not prove to
    be the role their path named, and every pod of a (role, node) whose spot check differed are observed as
    before (verify.probes.observe: in the pod). `share` False (--every-node): one call per pod instead of per role."""
    chains, annotations, hints, readable = chains or {}, annotations or {}, hints or {}, readable or {}
    notes = notes if notes is not None else []
    plan = spot_plan(targets, buckets, hints, readable)
    fetched: dict[str, Any] = {}
    asked: dict[tuple[str, str], Any] = {}
    elsewhere = {principal.name: source for principal, _ in targets
                 if (source := _sdk_source(principal)) not in (None, KUBE2IAM)}
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rbv-fetch") as pool:
        for principal, backend in targets:
            if principal.name not in elsewhere:
                fetched[principal.name] = pool.submit(one_exec, backend, hints.get(principal.name), plan.get(principal.name),
                                                      principal.kind == "host" or principal.host_network)
            if can_request_roles(backend):
                for target, arn in annotations.get(principal.name, []):
                    asked[(principal.name, target)] = pool.submit(probe_annotation, backend, target, arn)
    callers = Callers(endpoint_url, region)
    identities: dict[str, CallResult] = {}
    pending: list[tuple[_Holder, str | None]] = []  # with the role its metadata path named
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
        if got is not None and got.cli_missing:
            _check_cli(backend)  # no CLI for the spot check: --install-cli installs it (then probed the old way), else exit 2
        if got is None or got.creds is None:
            in_pod.append((principal, backend))
            if got is not None and got.why:
                notes.append(f"{principal.name}: {got.why}: its cells probed in the pod")
            continue
        holder = _Holder(principal, backend, got.creds, callers.of(got.creds), got.spot, plan.get(principal.name))
        if got.identity is not None:
            identities[principal.name] = got.identity
        pending.append((holder, got.listed))
    holders, mismatched = _proven(pending, identities, max_workers)
    for holder, why in mismatched:
        notes.append(f"{holder.principal.name}: {why}: its cells probed in the pod")
        in_pod.append((holder.principal, holder.pod))

    groups: dict[Any, list[_Holder]] = {}
    for holder in holders:
        role = pe.role_name_of(identities[holder.principal.name].value)
        groups.setdefault(role if share else holder.principal.name, []).append(holder)
    cells = _group_cells(groups, buckets, chains, max_workers)
    spot_differs = _spot_check(groups, cells, buckets, identities, readable, max_workers, notes)
    for holder in (h for h in holders if h.principal.name in spot_differs):
        in_pod.append((holder.principal, holder.pod))
    for _, backend in in_pod:
        _check_cli(backend)
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


def _check_cli(backend: ProbeBackend) -> None:
    """The AWS CLI check live.py deferred to where the CLI is needed (backend.cli_check: install?, where)."""
    check = getattr(backend, "cli_check", None)
    if check is not None:
        backend.cli_check = None  # type: ignore[attr-defined]
        ensure_cli(backend.runner, *check)  # type: ignore[attr-defined]


def _outcome_of(future: Any) -> Fetched | None:
    exc = future.exception()
    if exc is not None:  # the type only: an exception's text is never trusted not to hold the exec's output
        return Fetched(why=f"the exec failed ({type(exc).__name__})")
    return future.result()


def _proven(holders: list[tuple[_Holder, str | None]], identities: dict[str, CallResult],
            max_workers: int) -> tuple[list[_Holder], list[tuple[_Holder, str]]]:
    """rbacbridge asks STS who each distinct set of credentials is (GetCallerIdentity, one call per credentials): that
    is the pod's identity. They are used only if they are the role the pod's metadata path named (the sandbox's pods:
    the role their own identity call observed)."""
    if not holders:
        return [], []
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rbv-proof") as pool:
        asked = {id(h.calls): pool.submit(h.calls.identity) for h, _ in holders}
    good, bad = [], []
    for holder, listed in holders:
        future = asked[id(holder.calls)]
        exc = future.exception()
        result = future.result() if exc is None else CallResult(False, ERROR, type(exc).__name__)
        own = identities.get(holder.principal.name)
        named = pe.role_name_of(own.value or "") if own is not None else listed
        got = pe.role_name_of(result.value or "") if result.ok else None
        if result.ok and (named is None or got == named):
            identities.setdefault(holder.principal.name, CallResult(True, detail="ok", value=result.value))
            good.append(holder)
        else:
            seen = got if result.ok else f"{result.category}: {result.detail[:120]}"
            bad.append((holder, f"the credentials its metadata path handed out are not role {named} ({seen})"))
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
        _check_cli(members[0].pod)
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
                identities: dict[str, CallResult], readable: dict[str, list[str]], max_workers: int,
                notes: list[str]) -> set[str]:
    """For each (role, node), the read cell one of its pods probed itself in the one exec, against rbacbridge's answer
    for that role; a (role, node) none of whose pods did (the sandbox's pods, a pod whose role was not the one the
    configuration gives) gets one the old way (a read in its first pod). The pod's answer stands in the report
    (probed_from pod). Returns the principals of every (role, node) whose answers differed: all their cells are then
    probed in the pod."""
    if not buckets:
        return set()
    by_node: dict[tuple[Any, Any], list[tuple[Any, _Holder]]] = {}
    for key, members in groups.items():
        for holder in members:
            role = pe.role_name_of(identities[holder.principal.name].value)
            by_node.setdefault((role, holder.principal.node), []).append((key, holder))
    nodes = sorted({str(node) for _, node in by_node})
    picks: list[tuple[Any, Any, Any, _Holder, str, list[_Holder], Any]] = []
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rbv-spot") as pool:
        for (role, node), members in by_node.items():
            done = next(((k, h) for k, h in members if h.spot is not None and h.spot_location in buckets), None)
            if done is not None:
                key, holder = done
                picks.append((role, node, key, holder, holder.spot_location, [h for _, h in members], holder.spot))
                continue
            key, holder = members[0]
            location = _rotated(readable.get(holder.principal.name) or buckets, nodes, node)
            _check_cli(holder.pod)
            picks.append((role, node, key, holder, location, [h for _, h in members],
                          pool.submit(probe_read, holder.pod, grant_bucket(location))))
    differs: set[str] = set()
    for role, node, key, holder, location, members, seen in picks:
        in_pod = seen if isinstance(seen, Observation) else _outcome(seen)
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


__all__ = ["Boto3Backend", "Callers", "PodCredentials", "observe_from_rbacbridge", "parse_credentials", "spot_plan",
           "PROBED_FROM_POD"]
