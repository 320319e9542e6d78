"""kube2iam's metadata DNAT rule: parse, classify, and build the exact commands. Pure, no I/O.

kube2iam appends to `nat PREROUTING` a rule that `iptables -t nat -S PREROUTING` prints as

    -A PREROUTING -d 169.254.169.254/32 -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.43.0.1:8282

and never removes it. A rule is rbacbridge's to touch only on evidence: its DNAT destination is *this
node's* host IP, and no running interceptor other than rbacbridge's own kube2iam uses its port (listeners
first: whatever port is configured). Against the desired (interface, host IP, port) every rule for
169.254.169.254 is:

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

Deletion always names the rule by its spec (`-D PREROUTING <spec>`), never by position.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from typing import Mapping

from rbacbridge.errors import RbacbridgeError, UsageError

METADATA_IP = "169.254.169.254"
TABLE = "nat"
CHAIN = "PREROUTING"
# -w: wait for the xtables lock (kube2iam itself may be writing rules at the same moment).
IPTABLES = ("iptables", "-w", "5")

_IFACE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\+?$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.:/+=,!@%-]*$")

KEEP = "keep"
DUPLICATE = "duplicate"
STALE = "stale"
FOREIGN = "foreign"
CONFLICT = "conflict"


class IptablesOutputError(RbacbridgeError):
    """The node answered something that is not `iptables -S` output: nothing is deleted."""


@dataclass(frozen=True)
class Desired:
    """What rbacbridge's rule looks like on one node. interface None: any (teardown removes every copy)."""

    interface: str | None
    host_ip: str
    port: int

    def __post_init__(self) -> None:
        if self.interface is not None:
            check_interface(self.interface)
        check_host_ip(self.host_ip)
        if not 1 <= int(self.port) <= 65535:
            raise UsageError(f"invalid kube2iam port {self.port!r}: a port is 1-65535")

    @property
    def destination(self) -> str:
        return f"{self.host_ip}:{self.port}"


@dataclass(frozen=True)
class Kube2iamRule:
    """A kube2iam-shaped rule: the three things that vary."""

    interface: str
    host_ip: str
    port: int

    @property
    def spec(self) -> tuple[str, ...]:
        """The rule spec exactly as `iptables -S` prints it (and as `-D` needs it)."""
        return (
            "-d", f"{METADATA_IP}/32", "-i", self.interface, "-p", "tcp", "-m", "tcp",
            "--dport", "80", "-j", "DNAT", "--to-destination", f"{self.host_ip}:{self.port}",
        )

    def matches(self, desired: Desired) -> bool:
        return (self.interface, self.host_ip, self.port) == (desired.interface, desired.host_ip, desired.port)

    def text(self) -> str:
        return " ".join(("-A", CHAIN) + self.spec)

    @classmethod
    def of(cls, desired: Desired) -> "Kube2iamRule":
        return cls(desired.interface, desired.host_ip, int(desired.port))


@dataclass(frozen=True)
class ListedRule:
    position: int  # 1-based, for humans only; never used to delete
    text: str  # the line as printed
    tokens: tuple[str, ...]  # after "-A CHAIN"
    kube2iam: Kube2iamRule | None  # set when the rule is kube2iam-shaped
    metadata: bool  # a DNAT (or other) rule aimed at 169.254.169.254


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


def check_interface(value: str) -> str:
    if not isinstance(value, str) or not _IFACE.fullmatch(value):
        raise UsageError(f"invalid interface {value!r}: at most 15 of [A-Za-z0-9_.-], optionally ending in '+'")
    return value


def check_host_ip(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise UsageError(f"invalid host IP {value!r}: not an IP address") from None
    if address.version != 4:
        raise UsageError(f"invalid host IP {value!r}: kube2iam's rule is IPv4 (iptables, not ip6tables)")
    return str(address)


def parse(output: str, chain: str = CHAIN) -> list[ListedRule]:
    """Parse `iptables -t nat -S <chain>`. Raises IptablesOutputError on anything unexpected."""
    rules: list[ListedRule] = []
    saw_policy = False
    for number, raw in enumerate(output.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            tokens = shlex.split(line)
        except ValueError:
            raise IptablesOutputError(f"unexpected iptables output, line {number}: {_shorten(line)}") from None
        if tokens[:2] == ["-P", chain] and len(tokens) == 3:
            saw_policy = True
            continue
        if tokens[:2] == ["-N", chain] and len(tokens) == 2:  # a user-defined chain listed on its own
            saw_policy = True
            continue
        if tokens[:2] != ["-A", chain] or len(tokens) < 3:
            raise IptablesOutputError(f"unexpected iptables output, line {number}: {_shorten(line)}")
        spec = tuple(tokens[2:])
        rules.append(ListedRule(len(rules) + 1, line, spec, _kube2iam_shape(spec), _aims_at_metadata(spec)))
    if not saw_policy:
        raise IptablesOutputError(
            f"unexpected iptables output: no '-P {chain}' line"
            + (f" (got: {_shorten(output.strip())})" if output.strip() else " (empty output)")
        )
    return rules


def _shorten(text: str, limit: int = 80) -> str:
    text = text.replace("\n", " | ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _aims_at_metadata(spec: tuple[str, ...]) -> bool:
    for flag, value in zip(spec, spec[1:]):
        if flag in ("-d", "--destination") and value.split("/")[0] == METADATA_IP:
            return True
    return False


def _kube2iam_shape(spec: tuple[str, ...]) -> Kube2iamRule | None:
    if len(spec) != 14:
        return None
    fixed = {0: "-d", 1: f"{METADATA_IP}/32", 2: "-i", 4: "-p", 5: "tcp", 6: "-m", 7: "tcp",
             8: "--dport", 9: "80", 10: "-j", 11: "DNAT", 12: "--to-destination"}
    if any(spec[i] != v for i, v in fixed.items()) or not _IFACE.fullmatch(spec[3]):
        return None
    return _destination_rule(spec[3], spec[13])


def _destination_rule(interface: str, destination: str) -> Kube2iamRule | None:
    host, sep, port_text = destination.rpartition(":")
    if not sep or not port_text.isdigit():
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    port = int(port_text)
    if address.version != 4 or not 1 <= port <= 65535:
        return None
    return Kube2iamRule(interface, str(address), port)


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


def backend_of(version_output: str) -> str:
    """`iptables -V` -> "nf_tables" or "legacy" (1.8+ says so; older ones are legacy), else "unknown"."""
    match = re.search(r"iptables v(\d+)\.(\d+)\S*(?:\s+\((nf_tables|legacy)\))?", version_output)
    if not match:
        return "unknown"
    if match.group(3):
        return match.group(3)
    return "legacy" if (int(match.group(1)), int(match.group(2))) < (1, 8) else "unknown"


def parse_listeners(output: str) -> dict[int, str]:
    """`ss -Htlnp` -> {port: "process NAME (pid N)" or "a listening socket"}; any local address counts."""
    found: dict[int, str] = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] != "LISTEN":
            continue
        local = fields[3]
        _, sep, port_text = local.rpartition(":")
        if not sep or not port_text.isdigit():
            continue
        port = int(port_text)
        process = re.search(r'users:\(\("([^"]{1,64})",pid=(\d+)', line)
        who = f"process {process.group(1)} (pid {process.group(2)}) listening on {local}" if process else f"a process listening on {local}"
        if port not in found or (process and not found[port].startswith("process ")):
            found[port] = who
    return found


# --- the commands sent to a node (argv lists; the SSH layer quotes them) ---------------------


def list_argv(chain: str = CHAIN) -> list[str]:
    return [*IPTABLES, "-t", TABLE, "-S", chain]


def delete_argv(rule: Kube2iamRule) -> list[str]:
    return [*IPTABLES, "-t", TABLE, "-D", CHAIN, *_checked(rule.spec)]


def append_argv(rule: Kube2iamRule) -> list[str]:
    return [*IPTABLES, "-t", TABLE, "-A", CHAIN, *_checked(rule.spec)]


def _checked(spec: tuple[str, ...]) -> tuple[str, ...]:
    for token in spec:
        if not _TOKEN.fullmatch(token):  # cannot happen for a parsed kube2iam rule; belt and braces
            raise UsageError(f"refusing to send iptables argument {token!r}")
    return spec


def count(rules: list[ListedRule], rule: Kube2iamRule) -> int:
    return sum(1 for r in rules if r.kube2iam == rule)
