"""kube2iam's metadata DNAT rule: its shape, parsing `iptables -S`, and the exact commands. Pure, no I/O.

kube2iam appends to `nat PREROUTING` a rule that `iptables -t nat -S PREROUTING` prints as

    -A PREROUTING -d 169.254.169.254/32 -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.43.0.1:8282

and never removes it. Only three things vary (interface, host IP, port: `Kube2iamRule`); every other rule
for 169.254.169.254 is listed as a `ListedRule` with `metadata` set and no shape. Whose a rule is and
what happens to it: rbacbridge.nodes.verdicts.

Deletion always names the rule by its spec (`-D PREROUTING <spec>`), never by position.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass

from rbacbridge.errors import RbacbridgeError, UsageError


METADATA_IP = "169.254.169.254"
TABLE = "nat"
CHAIN = "PREROUTING"
# -w: wait for the xtables lock (kube2iam itself may be writing rules at the same moment).
IPTABLES = ("iptables", "-w", "5")

_IFACE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\+?$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.:/+=,!@%-]*$")


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
