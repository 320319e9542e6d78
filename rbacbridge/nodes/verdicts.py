"""Whose each rule for 169.254.169.254 is, and what happens to it. Pure, no I/O.

A rule is rbacbridge's to touch only on evidence: its DNAT destination is *this node's* host IP, and no
running interceptor other than rbacbridge's own kube2iam uses its port (listeners first: whatever port is
configured). Against the desired (interface, host IP, port) every rule for 169.254.169.254 is:

- keep       the first rule to this node's IP and the configured port on the desired interface
- duplicate  a later identical copy of the kept rule
- stale      to this node's IP and the configured port on another interface (an older setting); to
             this node's IP on a port rbacbridge's own DaemonSet moves off in this setup, or on a port
             the user names stale (nodes.stale_ports, --stale-port) that nothing uses; in teardown every
             rule to this node's IP and the configured port
- conflict   to this node's IP on a port a running interceptor uses (a DaemonSet declaring the port, a
             listener not proven to be rbacbridge's pod) — the configured port included: setup/fix leave
             the whole node unchanged until the user resolves it; `--force` deletes the rule anyway
             (teardown/remove: left alone)
- foreign    anything else: kube2iam-shaped but to another address or to another port nobody named
             stale (another interceptor's, e.g. a kiam agent's, or a left-over), a REDIRECT, another
             dport, a comment or source match, another target. Reported, never touched.
- missing    (no rule matches at all)

Who uses which port comes from rbacbridge.nodes.evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from rbacbridge.nodes.rules import Desired, Kube2iamRule, ListedRule


KEEP = "keep"
DUPLICATE = "duplicate"
STALE = "stale"
FOREIGN = "foreign"
CONFLICT = "conflict"


@dataclass
class Classified:
    rule: ListedRule
    verdict: str  # keep | duplicate | stale | conflict | foreign
    reason: str = ""
    forced: bool = False  # a rule a running interceptor uses, deleted only because of --force
    used_by: str = ""  # who uses the rule's port (conflict, forced, or left alone in teardown)


@dataclass
class Classification:
    desired: Desired | None
    rules: list[Classified] = field(default_factory=list)
    port_conflict: str = ""  # setup/fix: who (not rbacbridge's kube2iam) uses the configured port on this node

    def of(self, verdict: str) -> list[Classified]:
        return [c for c in self.rules if c.verdict == verdict]

    @property
    def kept(self) -> Classified | None:
        found = self.of(KEEP)
        return found[0] if found else None

    @property
    def missing(self) -> bool:
        return self.desired is not None and self.kept is None

    @property
    def to_delete(self) -> list[Classified]:
        return [c for c in self.rules if c.verdict in (DUPLICATE, STALE)]

    @property
    def conflicts(self) -> list[Classified]:
        return self.of(CONFLICT)


def classify(
    rules: list[ListedRule],
    desired: Desired,
    teardown: bool = False,
    in_use: Mapping[int, str] | None = None,
    moving: Mapping[int, str] | None = None,
    force: bool = False,
    stale_ports: Mapping[int, str] | None = None,
    unproven: Mapping[int, str] | None = None,
) -> Classification:
    """Sort every metadata rule into keep / duplicate / stale / conflict / foreign. Listeners first:
    a rule to a port a running interceptor uses is never rbacbridge's, whatever port is configured.

    desired: this node's host IP and the configured port (and, outside teardown, interface).
    in_use: port -> who uses it on this node and is not rbacbridge's own kube2iam (a DaemonSet that
            declares the port, a listening process not proven to be rbacbridge's pod); it may name the
            configured port too. None when the listeners could not be read: then a port named stale
            cannot be proven dead either (a conflict), and other ports are foreign as always.
    unproven: port -> a listener on the configured port that cannot be told apart from a foreign one
            (no cluster access to find rbacbridge's own pod there): duplicates still go (a copy stays),
            every other rule to that port is left alone unless `force`.
    moving: port -> why it is rbacbridge's own earlier port (its own DaemonSet moves off it in this
            setup): such rules are stale even while the old kube2iam still listens.
    stale_ports: port -> why the user names it stale (nodes.stale_ports, --stale-port): a rule to this
            node on that port is deleted when nothing uses it. Any other port's rule is foreign.
    teardown: every rule to this node's host IP and the configured port goes, whatever the interface;
            rules a running interceptor uses are left alone (no fight to resolve when rbacbridge leaves).
    force: rules a running interceptor uses are deleted anyway (stated in the reason).
    """
    result = Classification(None if teardown else desired)
    moving, stale_ports, unproven = moving or {}, stale_ports or {}, unproven or {}
    port_user = (in_use or {}).get(desired.port)
    if port_user and not teardown and not force:
        result.port_conflict = port_user
    kept: Kube2iamRule | None = None
    for rule in rules:
        shape = rule.kube2iam
        if shape is None:
            if rule.metadata:
                result.rules.append(Classified(rule, FOREIGN, _not_shaped_reason(rule.tokens)))
            continue
        if shape.host_ip != desired.host_ip:
            result.rules.append(Classified(
                rule, FOREIGN, f"points at {shape.host_ip}:{shape.port}, not this node ({desired.host_ip}): another tool's rule"))
            continue
        where = f"{desired.host_ip}:{shape.port}"
        if shape.port == desired.port:
            if port_user:
                result.rules.append(_in_use_verdict(rule, shape.port, port_user, teardown, force, configured=True))
                continue
            doubt = unproven.get(shape.port)
            left = (f"{doubt} listens on {where}, and without the cluster rbacbridge cannot tell whether it is its own "
                    "kube2iam: left alone (--kubeconfig lets rbacbridge check; --force deletes it)")
            if teardown:
                if doubt and not force:
                    result.rules.append(Classified(rule, FOREIGN, left, used_by=doubt))
                else:
                    result.rules.append(Classified(rule, STALE, f"rbacbridge's rule (this node's {desired.host_ip}, port {desired.port}): teardown removes every copy"))
            elif shape.interface != desired.interface:
                if doubt and not force:
                    result.rules.append(Classified(rule, FOREIGN, f"interface {shape.interface} (want {desired.interface}); " + left,
                                                   used_by=doubt))
                else:
                    result.rules.append(Classified(rule, STALE, f"stale: interface {shape.interface} (want {desired.interface})"))
            elif kept is None:
                kept = shape
                result.rules.append(Classified(rule, KEEP, "matches the current kube2iam settings"))
            else:
                result.rules.append(Classified(rule, DUPLICATE, "an identical copy of the kept rule"))
            continue
        # this node, another port: never rbacbridge's unless it moves off it now, or the user names it stale
        if shape.port in moving:
            result.rules.append(Classified(rule, STALE, f"stale: port {shape.port} (want {desired.port}); {moving[shape.port]}"))
            continue
        named = stale_ports.get(shape.port)
        user = in_use.get(shape.port) if in_use is not None else (
            f"cannot tell whether anything listens on {where}" if named else None)
        if user:
            result.rules.append(_in_use_verdict(rule, shape.port, user, teardown, force, configured=False))
        elif named:
            result.rules.append(Classified(
                rule, STALE, f"stale: port {shape.port} (want {desired.port}), {named}; nothing listens on {where} "
                             "and no DaemonSet uses it"))
        else:
            result.rules.append(Classified(
                rule, FOREIGN, f"to this node on port {shape.port}, not rbacbridge's port {desired.port}: another "
                               f"interceptor's rule or a left-over (nothing listens on {where} now); if it is "
                               f"rbacbridge's own left-over, name it stale: --stale-port {shape.port} (nodes.stale_ports)"))
    return result


def _in_use_verdict(rule: ListedRule, port: int, user: str, teardown: bool, force: bool, configured: bool) -> Classified:
    """A rule to a port a running interceptor (not rbacbridge's kube2iam) uses."""
    mine = " (kube2iam.port), not rbacbridge's kube2iam" if configured else ""
    if force:
        return Classified(rule, STALE, f"port {port}{mine} is used by {user}; deleted because of --force",
                          forced=True, used_by=user)
    if teardown:
        return Classified(rule, FOREIGN, f"port {port}{mine} is used by {user} (a running interceptor): "
                                         "left alone; --force deletes it", used_by=user)
    return Classified(rule, CONFLICT, f"port {port}{mine} is used by {user}: two interceptors would fight over "
                                      "169.254.169.254 (the first rule wins); nothing on this node changes until it "
                                      "is resolved (stop it, or --force deletes this rule)", used_by=user)


def _not_shaped_reason(spec: tuple[str, ...]) -> str:
    words = set(spec)
    if "REDIRECT" in words:
        return "a REDIRECT rule, not kube2iam's DNAT: another tool's rule"
    for flag, value in zip(spec, spec[1:]):
        if flag == "--dport" and value != "80":
            return f"destination port {value}, not kube2iam's 80: another tool's rule"
    return "not kube2iam's exact shape: another tool's rule"
