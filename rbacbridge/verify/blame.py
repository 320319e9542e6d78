"""Comparing expected with observed, cell by cell, and blaming each mismatch on a layer (see LAYERS)."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Callable

from rbacbridge import policy_eval as pe
from rbacbridge.config import Config
from rbacbridge.config import grant_bucket
from rbacbridge.verify.expected import (_role_name, buckets_of, chain_path, expected_matrix, location_owners, probe_key,
                                        role_allowed_in_namespace, role_arns, role_owners)
from rbacbridge.verify.model import (ALLOWED_ROLES_ANNOTATION, ANNOTATION, ASSUME_DENIED, CHAIN, CHAIN_SESSION, CLI_MISSING, ERROR,
                                     EXPLAINED_BY_EVALUATOR, EXPLAINED_BY_SIMULATOR,
                                     ESCALATION, IDENTITY, INTERCEPTION, INVALID_CREDENTIALS, KUBE2IAM, NETWORK,
                                     NETWORK_LAYER, NO_CREDENTIALS, NO_SUCH_BUCKET, PERMISSIONS, PROBE, PROBED_FROM_POD, PROBED_FROM_RBACBRIDGE,
                                     READ, ROLE_ANNOTATION, TRUST, WRITE, BUCKET, Blame, CallResult, Cell, Diagnostics, Documents, SettleWindow,
                                     Expected, Observation, Observed, Principal, PrincipalResult, VerifyResult)
from rbacbridge.verify.credential_source import credential_source
from rbacbridge.verify.probes import ProbeBackend, can_request_roles, observe


def explained_note(result: VerifyResult) -> list[str]:
    """Which explained the blamed cells' policy decisions (verify.explain), when any was."""
    counts = Counter(c.blame.explained_by for c in result.mismatches if c.blame and c.blame.explained_by)
    if not counts:
        return []
    return ["blamed cells' policy decisions explained by " + ", ".join(f"{by} ({n})" for by, n in sorted(counts.items()))]


def compare(config: Config, account: str, stage: str, expected: list[Expected], observed: list[Observed],
            diagnostics: Diagnostics | None = None) -> VerifyResult:
    diagnostics = diagnostics or Diagnostics()
    by_name = {o.principal.name: o for o in observed}
    locations, roles_of = location_owners(config), role_owners(config)
    results = []
    for exp in expected:
        obs = by_name[exp.principal.name]
        tenant = exp.principal.tenant
        ident = _identity_cell(config, account, exp, obs, diagnostics)
        cells = []
        for (bucket, op), want in exp.access.items():
            seen = obs.cells[(bucket, op)]
            match = want is None or seen.allowed == want
            cell = Cell(exp.principal.name, op, bucket, want, seen.allowed, match, seen.result.category if not seen.result.ok else None,
                        seen.result.detail + seen.shared_note, owners=locations.get(bucket, ()), tenant=tenant,
                        probed_from=seen.probed_from)
            if not match:
                cell.blame = ident.blame or _cell_blame(config, account, exp, obs, bucket, op, seen, diagnostics)
            cells.append(cell)
        for target, predicted in exp.chains.items():
            cell = _chain_cell(config, account, exp, obs, target, predicted, diagnostics)
            cell.owners, cell.tenant = tuple(filter(None, [roles_of.get(target)])), tenant
            cells.append(cell)
        for target, predicted in exp.annotations.items():
            if target in obs.annotations:  # else the backend cannot ask kube2iam for a role (run_matrix notes it)
                cell = _annotation_cell(config, exp, obs.annotations[target], target, predicted)
                cell.owners, cell.tenant = tuple(filter(None, [roles_of.get(target)])), tenant
                cells.append(cell)
        results.append(PrincipalResult(exp.principal, exp, obs, ident, cells))
    roles = {("pod" if t.legacy else t.name): t.role for t in config.tenants}
    roles.update(default=config.effective_default_role, node=config.node_role)
    in_run = {p.tenant for p in (e.principal for e in expected)}
    tenants = tuple(t for t in config.tenants if t.name in in_run or None in in_run)
    return VerifyResult(stage, account, config.region, config.node_role, buckets_of(config), results, roles=roles,
                        tenants=tenants)


def _must_be_no(principal: Principal, check: str, target: str, seen: Observation, predicted: bool | None, what: str,
                refused: str, granted: str) -> Cell:
    """A chain or annotation cell: it matches only if the call was refused and the configuration does not grant it."""
    result = seen.result
    match = seen.allowed is False and not predicted
    detail = what + (f": {refused}" if seen.allowed is False else f": {granted}" if seen.allowed else f": {result.detail}") \
        + seen.shared_note
    return Cell(principal.name, check, None, False, seen.allowed, match, None if result.ok else result.category, detail,
                target=target, predicted=predicted, probed_from=seen.probed_from)


def _annotation_cell(config: Config, exp: Expected, seen: Observation, target: str, predicted: bool | None) -> Cell:
    """A pod of one tenant annotated with (or asking for) another tenant's role: it must get no credentials."""
    principal = exp.principal
    result = seen.result
    owner = role_owners(config).get(target)
    of_target = f"{target} (tenant {owner})" if owner else target
    what = f"pod of tenant {principal.tenant} annotated with {of_target}"
    refused = "refused, no credentials" + (f" ({result.detail})" if result.detail and not result.ok else "")
    cell = _must_be_no(principal, ANNOTATION, target, seen, predicted, what, refused, "CREDENTIALS HANDED OUT")
    if cell.match:
        return cell
    if seen.allowed:
        why = ("kube2iam.namespace_restrictions is off" if not config.namespace_restrictions else
               f"its namespace must allow only tenant {principal.tenant}'s role ({ALLOWED_ROLES_ANNOTATION}); "
               "is kube2iam running with --namespace-restrictions?")
        cell.blame = Blame(KUBE2IAM, f"kube2iam handed tenant {owner or '?'}'s role {target} to a pod of tenant "
                                     f"{principal.tenant} ({result.detail}): {why}")
    elif predicted:
        cell.blame = Blame(KUBE2IAM, f"the configuration lets tenant {principal.tenant}'s namespace {principal.namespace} "
                                     f"take tenant {owner or '?'}'s role {target}"
                                     + ("" if config.namespace_restrictions else " (kube2iam.namespace_restrictions is off)"))
    elif result.category == NETWORK:
        cell.blame = Blame(NETWORK_LAYER, f"could not reach kube2iam: {result.detail}")
    else:
        cell.blame = Blame(PROBE, f"{what}: could not tell ({result.detail})")
    return cell


def _identity_cell(config: Config, account: str, exp: Expected, obs: Observed, diag: Diagnostics) -> Cell:
    ident = obs.identity
    refused = not ident.ok and ident.category in (NO_CREDENTIALS, ASSUME_DENIED)
    match = (obs.role == exp.role) if exp.role else refused
    cell = Cell(exp.principal.name, IDENTITY, None, exp.role, obs.role if ident.ok else None, match,
                None if ident.ok else ident.category, obs.arn or ident.detail)
    env = dict(exp.principal.credential_env) if exp.principal.credential_env is not None else None
    cell.source = credential_source(env, obs.role if ident.ok else None, config.node_role)
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
    cell = _must_be_no(principal, CHAIN, target, seen, predicted, path, "denied", "GRANTED")
    if cell.match:
        return cell
    trust = diag.documents.trust.get(target)
    trust_note = ""
    if held and trust is not None:
        session = f"arn:{config.partition.name}:sts::{account}:assumed-role/{held}/{CHAIN_SESSION}"
        trust_note = f"; live trust policy of {target}: {pe.trust_decision(trust, principal_arn=session)}"
    if seen.allowed:
        cell.blame = Blame(ESCALATION, f"{path} was granted: a pod must only get the role kube2iam hands it{trust_note}",
                           EXPLAINED_BY_EVALUATOR if trust_note else None)
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
                and not role_allowed_in_namespace(want, account, diag.allowed_roles[ns],
                                               partition=config.partition.name):
            of = f" (tenant {exp.principal.tenant})" if exp.principal.tenant else ""
            return Blame(KUBE2IAM, f"kube2iam gave no credentials: namespace {ns}{of} does not allow role {want} "
                                   f"({ALLOWED_ROLES_ANNOTATION}: {json.dumps(diag.allowed_roles[ns])})")
        node_policies = diag.documents.policies.get(config.node_role)
        want_arn = role_arns(config, account).get(want or "") or config.role_arn(account, want or "")
        if want and node_policies is not None and not pe.is_allowed(node_policies, "sts:AssumeRole", want_arn):
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
        return Blame(BUCKET, f"bucket {grant_bucket(bucket)} does not exist")
    if result.category in (CLI_MISSING, ERROR):
        return Blame(PROBE, result.detail)
    if result.category in (NO_CREDENTIALS, INVALID_CREDENTIALS):
        return Blame(KUBE2IAM, f"no usable credentials for this call: {result.detail}")
    role = obs.role or exp.role
    if op == READ:
        actions, resource = pe.READ_ACTIONS, pe.bucket_arn(grant_bucket(bucket), config.partition.name)
    else:
        actions, resource = pe.WRITE_ACTIONS, pe.object_arn(grant_bucket(bucket), seen.key or probe_key(exp.principal.name, bucket),
                                                           config.partition.name)
    verdicts, explained_by = _explained(config, account, diag, role, actions, resource, grant_bucket(bucket))
    if exp.access.get((bucket, op)):
        return Blame(PERMISSIONS, f"role {role} was denied {'/'.join(actions)} on {resource} that it should have{verdicts}",
                     explained_by)
    return Blame(PERMISSIONS, f"role {role} was allowed {'/'.join(actions)} on {resource} that it should not have{verdicts}",
                 explained_by)


def _explained(config: Config, account: str, diag: Diagnostics, role: str | None, actions: tuple[str, ...], resource: str,
               bucket: str) -> tuple[str, str | None]:
    """How the role's policies decide the actions: AWS's simulator when the run has one that answers (verify.explain),
    else rbacbridge's evaluator over the live identity policies; and which explained it (None: neither could)."""
    if diag.simulator is not None and role:
        arn = role_arns(config, account).get(role) or config.role_arn(account, role)
        said = diag.simulator.explain(arn, tuple(actions), resource, bucket)
        if said is not None:
            return f"; {said}", EXPLAINED_BY_SIMULATOR
    live = diag.documents.policies.get(role or "")
    if live is None:
        return "", None
    return "; live policies: " + ", ".join(f"{a} {pe.evaluate(live, a, resource)}" for a in actions), EXPLAINED_BY_EVALUATOR


def run_matrix(config: Config, account: str, stage: str, targets: list[tuple[Principal, ProbeBackend]],
               allowed_roles: dict[str, list[str]] | None = None, documents: Documents | None = None,
               diagnostics: Diagnostics | None = None, share: bool = True,
               asked: "dict[str, dict[str, Observation]] | Callable[[], dict[str, dict[str, Observation]]] | None" = None,
               probe_from: str = PROBED_FROM_POD, endpoint_url: str | None = None,
               settle_window: SettleWindow | None = None, progress: Callable[[str], None] | None = None) -> VerifyResult:
    """Expected from the configuration, observed from the targets, compared and blamed (`share`: see observe).

    `asked` (the live runner): annotation cells already observed elsewhere (probe pods annotated with another
    tenant's role, verify.annotation_probe), principal name -> target role -> observation; only those cells
    are reported; a callable is called after the other cells are observed (the probe pods run meanwhile).
    Without it, backends that implement request_role (the sandbox) are asked.

    `probe_from` rbacbridge (verify.inprocess): pods' bucket and chain cells are calls rbacbridge makes with the
    credentials each pod received, at `endpoint_url` (default: the configuration's), spot-checked in the pods.

    `settle_window` open (verify.settle): cells that disagree are observed again with backoff until they agree or it
    ends; `diagnostics.simulator` (verify.explain): blamed cells explained by AWS's policy simulator."""
    principals = [p for p, _ in targets]
    expected = expected_matrix(config, account, stage, principals, allowed_roles, documents)
    arns = role_arns(config, account)
    chains = {e.principal.name: [(t, arns.get(t) or config.role_arn(account, t)) for t in e.chains] for e in expected if e.chains}
    asks = {e.principal.name: [(t, arns[t]) for t in e.annotations] for e in expected if e.annotations} if asked is None else {}
    notes: list[str] = []

    def observe_all(which: list[tuple[Principal, ProbeBackend]], annotations: dict, said: list[str]) -> list[Observed]:
        if probe_from == PROBED_FROM_RBACBRIDGE:
            from rbacbridge.verify.inprocess import observe_from_rbacbridge

            buckets = buckets_of(config)
            return observe_from_rbacbridge(which, buckets, config.region, endpoint_url or config.endpoint_url,
                                           chains=chains, annotations=annotations, share=share, notes=said,
                                           hints={e.principal.name: e.role for e in expected},
                                           readable={e.principal.name: [b for b in buckets if e.access.get((b, READ))]
                                                     for e in expected})
        return observe(which, buckets_of(config), chains=chains, annotations=annotations, share=share)

    observed = observe_all(targets, asks, notes)
    first_seen = time.monotonic()
    if asked is not None:
        asked = asked() if callable(asked) else asked
        for obs in observed:
            obs.annotations.update(asked.get(obs.principal.name, {}))
    result = compare(config, account, stage, expected, observed, diagnostics)
    if settle_window is not None:
        from rbacbridge.verify.settle import settle, settle_notes

        def again(names: list[str]) -> list[Observed]:
            before = {o.principal.name: o for o in (p.observed for p in result.principals)}
            said: list[str] = []
            fresh = observe_all([(p, b) for p, b in targets if p.name in names], {}, said)
            for obs in fresh:  # annotation cells are kube2iam's answers: observed once
                obs.annotations = before[obs.principal.name].annotations
            notes.extend(n for n in said if n not in notes)
            return fresh

        settle(result, settle_window, again, lambda exp, obs: compare(config, account, stage, exp, obs, diagnostics),
               first_seen=first_seen, progress=progress)
        notes.extend(settle_notes(result))
    simulator = diagnostics.simulator if diagnostics is not None else None
    if simulator is not None:
        notes.extend(n for n in simulator.notes if n not in notes)
    notes.extend(explained_note(result))
    if probe_from == PROBED_FROM_RBACBRIDGE:
        made = [c for c in result.all_cells if c.check in (READ, WRITE, CHAIN)]
        ours = sum(c.probed_from == PROBED_FROM_RBACBRIDGE for c in made)
        notes.insert(0, f"--probe-from rbacbridge: {ours} of {len(made)} bucket and chain cells called by rbacbridge with the "
                        "credentials the pod received (one exec per pod); the others in the pod or on the host node")
    result.notes.extend(notes)
    unasked = sorted(p.name for p, backend in targets if asks.get(p.name) and not can_request_roles(backend))
    if unasked:
        result.notes.append("annotation cells (another tenant's role asked of kube2iam) not probed for "
                            + ", ".join(unasked) + ": this probe cannot ask kube2iam for a role")
    if result.left_behind:
        result.notes.append("probe objects left behind: " + ", ".join(result.left_behind))
    return result

