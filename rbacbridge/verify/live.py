"""The live run: principals found in the cluster, probed where they run (pods through Kubernetes exec,
the host node over SSH), compared with the expected matrix; drift and findings added."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from rbacbridge.config import Config
from rbacbridge.errors import UsageError
from rbacbridge.verify.blame import compare, run_matrix
from rbacbridge.verify.diagnose import (_get, drift_findings, host_network_findings, interception_problems,
                                        kube2iam_missing, live_diagnostics)
from rbacbridge.verify.ephemeral import _api_client, ensure_ephemeral_probe
from rbacbridge.verify.expected import configured_principals
from rbacbridge.verify.model import DEFAULT_PROBE_FROM, HOST, PROBED_FROM_RBACBRIDGE, ROLE_ANNOTATION, Finding, Principal, VerifyResult
from rbacbridge.verify.probes import (AwsCliBackend, CommandRunner, KubeExecRunner, ProbeBackend, SshRunner,
                                      ensure_cli_all)


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
    share: bool = True  # bucket and chain cells once per workload and observed role (--every-node: on every node)
    tenant: str | None = None  # --tenant: that tenant's pods only (no host, no default-role pod)
    annotation_probe: bool = True  # probe pods annotated with another tenant's role (--no-annotation-probe: skip)
    allow_unverified: bool = False  # --allow-unverified: a tenant whose probe pod could not run does not fail the run
    probe_from: str = DEFAULT_PROBE_FROM  # --probe-from: pods' bucket and chain cells made by rbacbridge with their credentials, or in the pod
    settle: float | None = None  # --settle SECONDS (verify.settle); None: setup's record decides, on real AWS
    explain: bool = True  # blamed cells explained by iam:SimulatePrincipalPolicy where the operator may call it


def configured_annotation(config: Config, workload: str) -> str | None:
    """The iam.amazonaws.com/role setup puts on a workload's pods (templates/k8s): from the configuration."""
    return next((p.role_annotation for p in configured_principals(config) if p.workload == workload), None)


def live_targets(ctx: Any, options: LiveOptions) -> list[tuple[Principal, ProbeBackend]]:
    """The host node over SSH, every configured workload's pods (one per node) through Kubernetes exec, and a
    probe pod for every tenant (and the default role) with no running, ready pod on a node verify covers
    (verify.tenant_probe; those that cannot run are noted in ctx.facts["verify.unverified"])."""
    config: Config = ctx.config
    from rbacbridge import kube
    from rbacbridge.verify.tenant_probe import close_all

    gateway = kube.gateway(ctx)
    configured = configured_principals(config, options.tenant)
    notes = ctx.facts.setdefault("notes", [])
    chosen: list[tuple[Principal, Any]] = []
    labels = []
    for want in (w for w in configured if w.kind == "pod"):
        pods, label = _pods_of(gateway, want.namespace, want.workload)
        ready = pods_per_node(pods, label)
        labels.append(label)
        if not ready:
            owner = f"tenant {want.tenant}" if want.tenant else "the default role"
            notes.append(f"workload {want.namespace}/{want.workload} ({owner}) has no running, ready pod ({label}): "
                         "not probed")
        chosen += [(want, pod) for pod in ready]
    pod_nodes = list(dict.fromkeys(_get(pod, "spec.nodeName") for _, pod in chosen))
    probe_nodes, no_node = pod_nodes, None
    if not pod_nodes:  # nothing runs: probe pods on one schedulable node (its host cells there too)
        from rbacbridge.verify.tenant_probe import schedulable_node

        found, no_node = schedulable_node(list(gateway.list("Node", label_selector=config.node_selector)))
        probe_nodes = [found] if found else []
        if found is None and options.node is None and options.tenant is None:  # nor a node for the host cells
            from rbacbridge.errors import IncompleteError

            raise IncompleteError(f"could not verify: no running pod with label {labels[0] if labels else '(none configured)'} "
                                  f"nor of any other configured workload, and {no_node} for a probe pod "
                                  "(run `rbacbridge setup` first)")
    several = len(probe_nodes) > 1  # kube2iam and its rule are per node: probe the pods on every node
    started = _probe_pods(ctx, gateway, options, chosen, probe_nodes, no_node)
    try:
        return _targets(ctx, options, gateway, configured, chosen, started, probe_nodes, several)
    except BaseException:
        close_all(started)  # the probe pods go now: run_live never gets these targets to close
        raise


def _probe_pods(ctx: Any, gateway: Any, options: LiveOptions, chosen: list[tuple[Principal, Any]], nodes: list[Any],
                no_node: str | None) -> dict[Any, Any]:
    """Probe pods for every tenant of the run (and the default role, without --tenant) with no chosen pod on a
    node; those that cannot run, and every group when there is no node at all, become Unverified entries."""
    from rbacbridge.verify.model import Unverified
    from rbacbridge.verify.tenant_probe import need_for, remove_leftovers, start_probe_pods

    config: Config = ctx.config
    groups: list[str | None] = [t.name for t in ((config.tenant(options.tenant),) if options.tenant else config.tenants)]
    if options.tenant is None:
        groups.append(None)
    covered = {(want.tenant, _get(pod, "spec.nodeName")) for want, pod in chosen}
    gone = remove_leftovers(gateway, [need_for(config, g, None).namespace for g in groups])
    if gone:
        ctx.facts.setdefault("notes", []).append(f"removed probe pod(s) an earlier run left: {', '.join(gone)}")
    unverified = ctx.facts.setdefault("verify.unverified", [])
    if not nodes:
        unverified += [Unverified(g, need_for(config, g, None).namespace, None, no_node or "no node") for g in groups]
        return {}
    needs = [need_for(config, g, node) for g in groups for node in nodes if (g, node) not in covered]
    started = start_probe_pods(gateway, config, needs)
    for need, runner in started.items():
        if isinstance(runner, str):
            unverified.append(Unverified(need.tenant, need.namespace, need.node, runner))
    return started


def _targets(ctx: Any, options: LiveOptions, gateway: Any, configured: list[Principal], chosen: list[tuple[Principal, Any]],
             started: dict[Any, Any], pod_nodes: list[Any], several: bool) -> list[tuple[Principal, ProbeBackend]]:
    config: Config = ctx.config
    from rbacbridge import kube
    from rbacbridge.verify.expected import probe_principal

    principals: list[tuple[Principal, ProbeBackend]] = []
    checks: list[tuple[CommandRunner, bool, str]] = []
    notes = ctx.facts.setdefault("notes", [])
    for want, pod in chosen:
        namespace = want.namespace
        pod_name = _get(pod, "metadata.name")
        annotations = _get(pod, "metadata.annotations") or {}
        labels = _get(pod, "metadata.labels") or {}
        node_name = _get(pod, "spec.nodeName")
        managed = labels.get(kube.MANAGED_BY) == kube.OWNER
        if not managed:
            notes.append(
                f"pod {namespace}/{pod_name} is not rbacbridge's (no {kube.MANAGED_BY}={kube.OWNER} label): reported, "
                f"not trusted; its expected role still comes from the configuration")
        principal = replace(want, name=f"{want.name}@{node_name}" if several else want.name, pod=pod_name,
                            host_network=bool(_get(pod, "spec.hostNetwork")), node=node_name,
                            annotation_seen=True, live_annotation=annotations.get(ROLE_ANNOTATION), managed=managed,
                            credential_env=_credential_env(pod))
        if options.probe == "ephemeral":
            container = ensure_ephemeral_probe(_api_client(gateway, config), namespace, pod_name, config.probe_image)
            runner = KubeExecRunner(gateway, namespace, pod_name, container=container)
        else:
            runner = KubeExecRunner(gateway, namespace, pod_name)
            checks.append((runner, options.install_cli, f"pod {namespace}/{pod_name}"))
        principals.append((principal, AwsCliBackend(runner, config.region, config.endpoint_url)))
        defer_cli_check(options, checks, principals[-1][1])
    for need, runner in started.items():
        if isinstance(runner, str):
            continue
        base = probe_principal(config, need.tenant, runner.node)
        principal = replace(base, name=f"{base.name}@{runner.node}" if several else base.name, pod=runner.pod)
        owner = f"tenant {need.tenant}" if need.tenant else "the default role"
        notes.append(f"{owner} has no running, ready pod on node {need.node or runner.node}: checked from probe pod "
                     f"{need.namespace}/{runner.pod} there ({ROLE_ANNOTATION}: {need.annotation or '(none)'}; deleted afterwards)")
        checks.append((runner, False, f"probe pod {need.namespace}/{runner.pod}"))
        principals.append((principal, AwsCliBackend(runner, config.region, config.endpoint_url)))
        defer_cli_check(options, checks, principals[-1][1])
    if not any(p.kind == "host" for p in configured):  # --tenant: that tenant's pods only
        ensure_cli_all(checks)
        return principals
    from rbacbridge.nodes import NodeRef, ssh_target
    from rbacbridge.nodes.pods import start_host_probes
    from rbacbridge.nodes.ssh import parse_host_port
    from rbacbridge.nodes.targets import KUBERNETES, resolve_via

    hosts: list[tuple[str, str]] = []  # (label, SSH address)
    internal: dict[str, str] = {}
    if options.node is not None:
        hosts.append((options.node, options.node))
    else:
        nodes = {n.name: n for n in kube.cluster_nodes(ctx)}
        for pod_node in pod_nodes or [None]:  # the nodes of the pods (and probe pods); nothing runs: any node
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
        defer_cli_check(options, checks, out[-1][1])
    try:
        ensure_cli_all(checks)
    except BaseException:
        for runner in pods.values():  # the probe pods go now: run_live never gets these targets to close
            runner.close()
        raise
    return out + principals


def _credential_env(pod: Any) -> tuple[tuple[str, str], ...]:
    """The credential variables of the pod's first container (the one verify execs into), as admitted."""
    from rbacbridge.verify.credential_source import credential_variables

    containers = _get(pod, "spec.containers") or []
    env = _get(containers[0], "env") or [] if containers else []
    return credential_variables((_get(e, "name"), _get(e, "value")) for e in env)


def defer_cli_check(options: LiveOptions, checks: list[tuple[CommandRunner, bool, str]], backend: Any) -> None:
    """--probe-from rbacbridge: the AWS CLI of a pod or host node is checked where it is needed (verify.inprocess: the
    one exec's spot check tells, and a principal probed the old way is checked first), not by an exec of its own."""
    if options.probe_from == PROBED_FROM_RBACBRIDGE and checks and checks[-1][0] is backend.runner:
        backend.cli_check = checks.pop()[1:]


def _pods_of(gateway: Any, namespace: str, name: str) -> tuple[list[Any], str]:
    """The Deployment's pods by setup's label (app.kubernetes.io/name), else the article's `app=` label."""
    for selector in (f"app.kubernetes.io/name={name}", f"app={name}"):
        pods = list(gateway.list_pods(namespace, selector))
        if pods:
            return pods, selector
    return [], f"app.kubernetes.io/name={name}"


def _ready(pod: Any) -> bool:
    """Running, not being deleted, and not reported unready (a Ready condition that is False)."""
    ready = next((c.get("status") for c in _get(pod, "status.conditions") or [] if c.get("type") == "Ready"), None)
    return _get(pod, "status.phase") == "Running" and not _get(pod, "metadata.deletionTimestamp") and ready != "False"


def pods_per_node(pods: list[Any], label: str) -> list[Any]:
    """The first running, ready pod (by name) on each node, nodes in name order (none: an empty list; the
    tenant is then checked from a probe pod)."""
    running = sorted((p for p in pods if _ready(p)), key=lambda p: (str(_get(p, "spec.nodeName")), _get(p, "metadata.name")))
    chosen: dict[Any, Any] = {}
    for pod in running:
        chosen.setdefault(_get(pod, "spec.nodeName"), pod)
    return list(chosen.values())


def _kube_step(what: str, call: Callable[[], Any]) -> Any:
    """A step verify cannot do without: if the cluster or AWS cannot answer, there is no verdict (exit 3)."""
    from rbacbridge.errors import IncompleteError, RbacbridgeError

    try:
        return call()
    except (UsageError, IncompleteError):
        raise
    except RbacbridgeError as exc:
        raise IncompleteError(f"could not verify ({what}): {exc}") from None

def run_live(ctx: Any, options: LiveOptions) -> VerifyResult:
    config: Config = ctx.config
    account = config.account_id or _caller_account(config)
    window = _settle_window(ctx, options, account)  # --settle counts from the start of verify
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
        if options.explain:
            diagnostics.simulator = _simulator(ctx, account)
        pod_nodes = {p.node for p, _ in targets if p.kind == "pod" and p.node}
        if options.stage == "after" and pod_nodes:
            try:
                diagnostics.kube2iam_missing = kube2iam_missing(gateway, config, pod_nodes)
            except Exception as exc:  # noqa: BLE001 - diagnostics only sharpen the blame
                ctx.facts.setdefault("notes", []).append(f"could not list kube2iam's pods for diagnosis: {exc}")
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rbv-annot-run") as pool:  # probe pods start now
            annotation = pool.submit(_annotation_cells, gateway, config, options, targets)
            result = run_matrix(config, account, options.stage, targets, diagnostics=diagnostics, share=options.share,
                                asked=lambda: annotation.result()[0], probe_from=options.probe_from, settle_window=window,
                                progress=getattr(getattr(ctx, "reporter", None), "progress", None))
        result.notes.extend(annotation.result()[1])
        if not result.ok and pod_nodes and options.node is None:
            try:
                diagnostics.interception = interception_problems(ctx, pod_nodes)
            except Exception as exc:  # noqa: BLE001 - diagnostics only sharpen the blame
                result.notes.append(f"could not read the nodes' iptables rules for diagnosis: {exc}")
            if diagnostics.interception:
                before = result
                result = compare(config, account, options.stage, [p.expected for p in result.principals],
                                 [p.observed for p in result.principals], diagnostics)
                result.notes, result.settle = before.notes, before.settle
                carry_settled(before, result)
    finally:
        for _, backend in targets:
            close = getattr(getattr(backend, "runner", None), "close", None)
            if close:
                close()
    result.findings, result.drift_checked, result.drift_steps = findings, options.drift_check, drift_steps
    result.unverified = list(ctx.facts.get("verify.unverified", []))
    result.tenants = (config.tenant(options.tenant),) if options.tenant is not None else tuple(config.tenants)
    result.require_evidence()
    result.accept_unverified = options.allow_unverified
    if not options.drift_check:
        result.notes.append("drift check skipped (--no-drift-check)")
    if options.tenant is not None:
        result.notes.append(f"--tenant {options.tenant}: only that tenant's pods were probed (against every location and "
                            "every other tenant's role); the drift check covers the whole configuration")
    if options.host_ip:
        result.notes.append(f"kube2iam's DNAT rule should send 169.254.169.254:80 to {options.host_ip}:{config.kube2iam_port}")
    result.notes.extend(n for n in dict.fromkeys(ctx.facts.get("notes", [])) if n not in result.notes)
    return result


def _settle_window(ctx: Any, options: LiveOptions, account: str) -> Any:
    """--settle, else (real AWS only) DEFAULT_WINDOW after the last change setup's record notes (verify.settle)."""
    from rbacbridge.verify.settle import real_aws, settle_window

    config: Config = ctx.config
    aws = real_aws(config.endpoint_url)
    if options.settle is not None or not aws:
        return settle_window(options.settle, aws=aws)
    try:
        from rbacbridge.aws import gateway as aws_gateway
        from rbacbridge.aws.record import changed_at
        from rbacbridge.aws.record_store import RecordKey

        record = RecordKey(aws_gateway(ctx), config, account).load().record
    except Exception as exc:  # noqa: BLE001 - no record to read: no window, and the report says why
        return settle_window(None, aws=True, unknown=f"could not read setup's record ({type(exc).__name__}): no cell is "
                                                     "retried (--settle SECONDS asks for a window)")
    return settle_window(None, changed_at(record), aws=True)


def _simulator(ctx: Any, account: str) -> Any:
    """iam:SimulatePrincipalPolicy with the operator's credentials (verify.explain); None: the evaluator explains."""
    try:
        from rbacbridge.aws import gateway as aws_gateway
        from rbacbridge.verify.explain import Simulator

        return Simulator.for_gateway(aws_gateway(ctx), account, ctx.config.partition.name)
    except Exception as exc:  # noqa: BLE001 - explanations only sharpen the blame
        ctx.facts.setdefault("notes", []).append(f"iam:SimulatePrincipalPolicy not used ({type(exc).__name__}): blamed "
                                                 "cells explained by rbacbridge's evaluator")
        return None


def carry_settled(before: VerifyResult, after: VerifyResult) -> None:
    """A comparison made again (sharper diagnostics) keeps what the settle window observed of each cell."""
    marks = {(p.principal.name, c.check, c.bucket, c.target): c.settle
             for p in before.principals for c in [p.identity, *p.cells] if c.settle}
    for p in after.principals:
        for c in [p.identity, *p.cells]:
            c.settle = marks.get((p.principal.name, c.check, c.bucket, c.target), c.settle)


def _annotation_cells(gateway: Any, config: Config, options: LiveOptions,
                      targets: list[tuple[Principal, ProbeBackend]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Annotation cells from probe pods (verify.annotation_probe): one per tenant namespace, annotated with the
    next tenant's role. Each observation goes to a principal of the probing tenant (one in that namespace if
    verify probes one there); two probes of one tenant asking the same role keep the worse outcome."""
    from rbacbridge.verify.annotation_probe import rotation, run_asks

    asks = rotation(config, options.tenant) if options.stage == "after" else []
    if not asks:
        return {}, []
    if not options.annotation_probe:
        return {}, [f"annotation cells NOT run (--no-annotation-probe): no probe pod asked kube2iam for another tenant's "
                    f"role in {len(asks)} tenant namespace(s); only the drift check covers allowed-roles"]
    pods = [p for p, _ in targets if p.kind == "pod" and not p.host_network and p.tenant]
    observed = _kube_step("annotation probe pods", lambda: run_asks(gateway, config, asks,
                                                                     from_metadata=options.probe_from == PROBED_FROM_RBACBRIDGE))
    asked: dict[str, dict[str, Any]] = {}
    notes = []
    for ask, seen in observed.items():
        home = next((p for p in pods if p.tenant == ask.tenant and p.namespace == ask.namespace), None) \
            or next((p for p in pods if p.tenant == ask.tenant), None)
        if home is None:
            notes.append(f"annotation probe in namespace {ask.namespace} (tenant {ask.tenant}, role {ask.target_role}): "
                         f"no verified pod of tenant {ask.tenant} to report it with; observed: {seen.result.detail}")
            continue
        cells = asked.setdefault(home.name, {})
        before = cells.get(ask.target_role)
        if before is None or (before.allowed is False and seen.allowed is not False):
            cells[ask.target_role] = seen
    return asked, notes


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

