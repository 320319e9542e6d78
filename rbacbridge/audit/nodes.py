"""The audit's node part: each node's nat PREROUTING and listening ports over SSH (one read-only exec,
the same `nodes.look` that `rbacbridge iptables status` uses), classified exactly as it classifies them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rbacbridge.audit.findings import Finding
from rbacbridge.errors import RbacbridgeError, UsageError
from rbacbridge.nodes.rules import Desired, Kube2iamRule, ListedRule, check_interface
from rbacbridge.nodes.verdicts import CONFLICT, DUPLICATE, FOREIGN, STALE, Classification, classify


DEAD_PORT = "a dead port (`iptables fix` deletes it only when named: --stale-port {port})"


def classify_rules(rules: list[ListedRule], desired: Desired, in_use: dict[int, str] | None = None) -> Classification:
    """The one place the audit classifies a node's rules: iptables ownership, as `iptables status`, except
    that the audit (which changes nothing) reports every rule to a dead port of this node as stale: a
    finding to look at, not a deletion (`iptables fix` deletes it only when the user names the port)."""
    dead = {r.kube2iam.port: DEAD_PORT.format(port=r.kube2iam.port) for r in rules
            if r.kube2iam is not None and r.kube2iam.host_ip == desired.host_ip and r.kube2iam.port != desired.port}
    return classify(rules, desired, in_use=in_use, stale_ports=dead)


@dataclass
class NodeRules:
    node: str
    desired: Desired | None = None
    rules: list[ListedRule] | None = None
    error: str | None = None
    in_use: dict[int, str] | None = None  # port -> who uses it (listener, kube2iam DaemonSet); None: unknown


def ports_in_use(rules: list[ListedRule], desired: Desired, listeners: dict[int, str] | None,
                 interceptors: list[Any]) -> dict[int, str] | None:
    """Who uses each other port a rule to this node points at: an interceptor DaemonSet's port (kube2iam's
    --app-port, a kiam agent's --port) or a listening process. None when the listeners could not be read
    and a port is left unexplained."""
    ports = {r.kube2iam.port for r in rules
             if r.kube2iam is not None and r.kube2iam.host_ip == desired.host_ip and r.kube2iam.port != desired.port}
    in_use: dict[int, str] = {}
    for port in ports:
        users = [f"{k.tool} {k.ref}" for k in interceptors if k.port == port]
        if listeners is not None and port in listeners:
            users.append(listeners[port])
        if users:
            in_use[port] = " and ".join(users)
    if listeners is None and any(p not in in_use for p in ports):
        return None
    return in_use


def desired_settings(config, kube2iams: list[Any], kube_state: Any = None) -> tuple[str | None, int, str]:
    """(interface or None for the config's, port, where they came from): kube2iam's own flags first,
    else the configuration (`auto`: the network plugin in the DaemonSets already read, if any)."""
    if kube2iams:
        first = kube2iams[0]
        check_interface(first.interface)  # UsageError: judged by the caller, not the user's input
        return first.interface, first.port, f"{first.ref} (--host-interface={first.interface}, --app-port={first.port})"
    interface = None if config.host_interface == "auto" else config.host_interface
    if interface is None and kube_state is not None:
        from rbacbridge.kube import detect_interface

        interface, _ = detect_interface(kube_state.daemonsets, [p for p in kube_state.pods
                                                                 if (p.get("metadata") or {}).get("namespace") == "kube-system"])
    return interface, config.kube2iam_port, "the configuration (no kube2iam DaemonSet seen)"


def read_nodes(ctx, interface: str | None, port: int, interceptors: list[Any] = ()) -> list[NodeRules]:
    from rbacbridge import nodes

    refs = nodes.node_refs(ctx)
    if not refs:
        raise UsageError("no nodes to audit: give --node HOST[:PORT] (or nodes.hosts), or a cluster with nodes")
    iface = interface or nodes.desired_interface(ctx)

    def one(ref) -> NodeRules:
        result = NodeRules(ref.name)
        try:
            session = nodes.session_for(ctx, ref)
            host_ip = ctx.config.host_ip or ref.internal_ip or session.peer_address()
            result.desired = Desired(iface, host_ip, port)
            _, result.rules, listeners, _ = nodes.look(session)
            result.in_use = ports_in_use(result.rules, result.desired, listeners, list(interceptors))
        except UsageError:
            raise
        except RbacbridgeError as exc:
            result.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one node's surprise must not stop the others
            result.error = f"{ref.name}: {type(exc).__name__}: {exc}"
        return result

    workers = max(1, min(ctx.config.node_parallelism, len(refs)))
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audit-node") as pool:
            return list(pool.map(one, refs))
    finally:
        nodes.close_sessions(ctx)


def check_node(state: NodeRules, source: str) -> list[Finding]:
    if state.rules is None or state.desired is None:
        return []
    c = classify_rules(state.rules, state.desired, state.in_use)
    node = f"Node {state.node}"
    want = Kube2iamRule.of(state.desired).text()
    out: list[Finding] = []
    duplicates = c.of(DUPLICATE)
    if duplicates:
        out.append(Finding("iptables-duplicate", [node], f"{len(duplicates) + 1} copies of: {duplicates[0].rule.text}",
                           f"{state.node}: {len(duplicates)} duplicate kube2iam rule(s)"))
    for item in c.of(STALE):
        out.append(Finding("iptables-stale", [node], f"rule {item.rule.position}: {item.rule.text} ({item.reason})",
                           f"{state.node}: {item.reason}"))
    for item in c.of(CONFLICT):
        out.append(Finding("iptables-conflict", [node], f"rule {item.rule.position}: {item.rule.text} ({item.reason})",
                           f"{state.node}: {item.reason}"))
    for item in c.of(FOREIGN):
        out.append(Finding("iptables-foreign", [node], f"rule {item.rule.position}: {item.rule.text}",
                           f"{state.node}: {item.reason}"))
    if c.missing:
        out.append(Finding("iptables-missing", [node], f"no rule {want} (settings from {source})",
                           f"{state.node}: kube2iam's rule is missing"))
    kept = c.kept
    if kept is not None:
        before = [r for r in state.rules if r.metadata and r.position < kept.rule.position]
        if before:
            out.append(Finding("iptables-order", [node], f"rule {before[0].position}: {before[0].text} comes before rule "
                               f"{kept.rule.position}: {kept.rule.text}", f"{state.node}: the first rule for 169.254.169.254 is not kube2iam's"))
    return out
