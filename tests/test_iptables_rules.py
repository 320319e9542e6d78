"""The pure rule logic: parsing `iptables -S`, classifying, and the exact -D/-A argv."""

import pytest

from rbacbridge import iptables
from rbacbridge.errors import UsageError

RULE = "-A PREROUTING -d 169.254.169.254/32 -i {iface} -p tcp -m tcp --dport 80 -j DNAT --to-destination {dest}"
WANT = iptables.Desired("docker0", "10.43.0.1", 8282)


def listing(*rules: str) -> str:
    return "\n".join(["-P PREROUTING ACCEPT", *rules]) + "\n"


def rule(iface="docker0", dest="10.43.0.1:8282") -> str:
    return RULE.format(iface=iface, dest=dest)


def verdicts(text: str, desired=WANT) -> list[str]:
    return [c.verdict for c in iptables.classify(iptables.parse(text), desired).rules]


def test_three_identical_copies_are_one_keep_and_two_duplicates():
    assert verdicts(listing(rule(), rule(), rule())) == ["keep", "duplicate", "duplicate"]


def test_stale_rule_first_does_not_win_over_the_matching_one():
    text = listing(rule(iface="cni0"), rule(dest="10.43.0.1:8181"), rule(dest="10.43.0.9:8282"), rule())
    result = iptables.classify(iptables.parse(text), WANT)
    assert [c.verdict for c in result.rules] == ["stale", "stale", "stale", "keep"]
    assert result.kept.rule.position == 4
    assert "interface cni0 (want docker0)" in result.rules[0].reason
    assert "port 8181" in result.rules[1].reason and "host IP 10.43.0.9" in result.rules[2].reason


def test_missing_when_nothing_matches():
    result = iptables.classify(iptables.parse(listing(rule(dest="10.43.0.1:8181"))), WANT)
    assert result.missing and [c.verdict for c in result.to_delete] == ["stale"]
    assert iptables.classify(iptables.parse(listing()), WANT).missing


def test_other_tools_rules_are_foreign_and_other_rules_ignored():
    text = listing(
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        '-A PREROUTING -d 169.254.169.254/32 -i docker0 -p tcp -m comment --comment "other tool" -m tcp --dport 80 -j DNAT --to-destination 10.0.0.9:80',
        "-A PREROUTING -s 10.0.0.0/8 -d 169.254.169.254/32 -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.43.0.1:8282",
        "-A PREROUTING -d 169.254.169.254/32 -i docker0 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 8282",
        rule(),
    )
    assert verdicts(text) == ["foreign", "foreign", "foreign", "keep"]


def test_teardown_classifies_every_kube2iam_rule_stale():
    text = listing(rule(), rule(iface="cali+", dest="10.0.0.1:8181"), "-A PREROUTING -j DOCKER")
    assert verdicts(text, desired=None) == ["stale", "stale"]


@pytest.mark.parametrize("garbage", [
    "",
    "Permission denied\n",
    "<html>502 Bad Gateway</html>\n",
    "-P PREROUTING ACCEPT\nwhatever this is\n",
    "-P PREROUTING ACCEPT\n-A OUTPUT -j ACCEPT\n",
    '-P PREROUTING ACCEPT\n-A PREROUTING -m comment --comment "unterminated\n',
])
def test_garbage_output_is_an_error(garbage):
    with pytest.raises(iptables.IptablesOutputError, match="unexpected iptables output"):
        iptables.parse(garbage)


def test_delete_and_append_argv_are_the_spec_not_a_position():
    shape = iptables.parse(listing(rule(iface="cali+", dest="10.1.2.3:8181")))[0].kube2iam
    assert iptables.delete_argv(shape) == [
        "iptables", "-w", "5", "-t", "nat", "-D", "PREROUTING", "-d", "169.254.169.254/32", "-i", "cali+",
        "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "10.1.2.3:8181",
    ]
    assert iptables.append_argv(iptables.Kube2iamRule.of(WANT))[5:7] == ["-A", "PREROUTING"]
    assert iptables.Kube2iamRule.of(WANT).text() == rule()


@pytest.mark.parametrize("iface", ["eth0;reboot", "$(id)", "a b", "x" * 16, ""])
def test_interfaces_with_shell_metacharacters_are_rejected(iface):
    with pytest.raises(UsageError):
        iptables.Desired(iface, "10.0.0.1", 8282)


def test_host_ip_must_be_ipv4():
    with pytest.raises(UsageError):
        iptables.Desired("docker0", "fe80::1", 8282)
    with pytest.raises(UsageError):
        iptables.Desired("docker0", "10.0.0.1;id", 8282)
