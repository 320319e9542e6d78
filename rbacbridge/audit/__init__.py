"""`rbacbridge audit`: a read-only health check of any kube2iam installation.

    collect (reads only) -> checks (pure rules) -> findings -> render (table, JSON, JUnit)

Nothing here writes: Kubernetes is listed once per kind, AWS is read through describe/get/list
calls, nodes are asked for `iptables -t nat -S PREROUTING`. A part that cannot be read makes the
audit incomplete (exit 3, unless a finding already reaches --fail-on: exit 1).
"""

from __future__ import annotations

from rbacbridge.audit.findings import FAIL_ON, AuditResult, Finding  # noqa: F401
from rbacbridge.errors import EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK, RbacbridgeError, UsageError

SCHEMA_ID = "rbacbridge.audit/v1"


def ssh_options_given(config) -> bool:
    return bool(config.node_hosts or config.ssh_user or config.ssh_key or config.known_hosts or config.ssh_config)


def run_audit(ctx, config_given: bool = False, explicit_parts: bool = False, allow_absent: bool = False) -> AuditResult:
    from rbacbridge.audit import checks
    from rbacbridge.audit.collect import read_aws, read_kube

    cfg = ctx.config
    parts = ctx.parts
    result = AuditResult(parts=tuple(parts))
    inputs = checks.Inputs(config=cfg, config_given=config_given, allow_absent=allow_absent)
    out = checks.Outcome()
    interceptors = []
    if "kube" in parts:
        from rbacbridge import kube

        try:
            inputs.kube = read_kube(kube.gateway(ctx))
        except UsageError:
            raise
        except RbacbridgeError as exc:
            result.errors.append(f"kube: {exc}")
        if inputs.kube is not None:
            _share_nodes(ctx, inputs.kube.nodes, result)
            interceptors = checks.check_kube(inputs, out)
    kube2iams = [i for i in interceptors if i.tool == "kube2iam"]
    if "aws" in parts:
        if "kube" not in parts and not config_given:
            raise UsageError("audit --only aws needs a config (-c) naming the roles, or the kube part to find them")
        from rbacbridge import aws

        ids = set(cfg.instance_ids)
        if inputs.kube is not None:
            ids |= {i for i in (checks._instance_of(n) for n in inputs.kube.nodes) if i}
        try:
            inputs.aws = read_aws(aws.gateway(ctx), sorted(ids), cfg.partition.name)
        except UsageError as exc:
            if "kube" in parts and not explicit_parts:
                raise UsageError(f"{exc} (or audit the cluster alone: --only kube,nodes)") from None
            raise
        except RbacbridgeError as exc:
            result.errors.append(f"aws: {exc}")
        if inputs.aws is not None:
            try:
                if inputs.kube is not None:
                    checks.check_imdsv2(inputs, kube2iams, out)
                checks.check_iam(inputs, kube2iams, out)
            except UsageError:
                raise
            except RbacbridgeError as exc:  # an AWS managed policy read on the way
                result.errors.append(f"aws: {exc}")
    elif inputs.kube is not None or config_given:
        checks.check_escalation_offline(inputs, kube2iams, out)
    if "nodes" in parts:
        from rbacbridge.nodes.targets import KUBERNETES, SSH, resolve_via

        via = resolve_via(cfg, ssh_given=ssh_options_given(cfg))
        ctx.facts["nodes.via"] = via
        if via == KUBERNETES:
            # through kube2iam's own pods only: audit reads, it never creates a pod (rbacbridge.nodes.pods)
            ctx.facts["nodes.read_only"] = True
            _audit_nodes(ctx, kube2iams, inputs.kube, result, out, interceptors)
        elif ssh_options_given(cfg):
            _audit_nodes(ctx, kube2iams, inputs.kube, result, out, interceptors)
        elif explicit_parts:  # --via ssh without a node or an SSH option
            raise UsageError(f"audit --only nodes --via {SSH} needs --node HOST[:PORT] or SSH options (--ssh-user, --ssh-key, --known-hosts)")
        else:
            out.notes.append(f"nodes not audited (iptables rules): --via {SSH} without --node or SSH options "
                             "(--ssh-user, --ssh-key, --known-hosts)")
    ctx.facts["audit.inputs"] = inputs  # audit --who-can joins the same reads (rbacbridge.audit.who_can)
    result.findings = out.findings
    result.notes = out.notes + [n for n in ctx.facts.get("notes", []) if n not in out.notes]
    result.checked = list(dict.fromkeys(out.checked))
    if inputs.kube is not None:
        result.counts.update(daemonsets=len(inputs.kube.daemonsets), pods=len(inputs.kube.pods),
                             namespaces=len(inputs.kube.namespaces), nodes=len(inputs.kube.nodes))
    if inputs.aws is not None:
        result.counts.update(roles=len(inputs.aws.roles), instances=len(inputs.aws.instances))
    return result


def _share_nodes(ctx, objects, result: AuditResult) -> None:
    """The node list already read serves the nodes part too (no second list request)."""
    from rbacbridge.kube import node_from_object

    try:
        ctx.facts.setdefault("cluster_nodes", [node_from_object(o) for o in objects])
    except RbacbridgeError as exc:
        result.notes.append(f"cluster nodes not usable as SSH targets: {exc}")


def _audit_nodes(ctx, kube2iams, kube_state, result: AuditResult, out, interceptors=()) -> None:
    from rbacbridge.audit.nodes import check_node, desired_settings, read_nodes

    try:
        interface, port, source = desired_settings(ctx.config, kube2iams, kube_state)
    except UsageError as exc:  # kube2iam's own --host-interface is not an interface name
        result.errors.append(f"nodes: rules not judged: {kube2iams[0].ref} has {exc}")
        return
    if len(kube2iams) > 1:
        out.notes.append(f"node rules judged against {source}, the first of {len(kube2iams)} kube2iam DaemonSets")
    out.checked += ["iptables-duplicate", "iptables-stale", "iptables-conflict", "iptables-foreign", "iptables-missing",
                    "iptables-order"]
    try:
        states = read_nodes(ctx, interface, port, list(interceptors) or kube2iams)  # kiam agents use ports too
    except UsageError:
        raise
    except RbacbridgeError as exc:
        result.errors.append(f"nodes: {exc}")
        return
    for state in states:
        if state.error:
            result.errors.append(f"nodes: {state.error}")
        out.findings.extend(check_node(state, source))
    key = "nodes_via_kubernetes" if ctx.facts.get("nodes.via") == "kubernetes" else "nodes_over_ssh"
    result.counts[key] = sum(1 for s in states if not s.error)
    for node, where in sorted((ctx.facts.get("nodes.via_pods") or {}).items()):
        out.notes.append(f"{node}: rules read through Kubernetes, exec in {where}")


def exit_code(result: AuditResult, fail_on: str) -> int:
    if result.failing(fail_on):
        return EXIT_FAILED
    if not result.complete:
        return EXIT_INCOMPLETE
    return EXIT_OK
