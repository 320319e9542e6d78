"""The pure rule logic: parsing `iptables -S`, classifying, and the exact -D/-A argv."""

import shlex
import shutil
import subprocess

import pytest

from rbacbridge.nodes import rules
from rbacbridge.nodes.verdicts import classify
from rbacbridge.errors import UsageError

RULE = "-A PREROUTING -d 169.254.169.254/32 -i {iface} -p tcp -m tcp --dport 80 -j DNAT --to-destination {dest}"
WANT = rules.Desired("docker0", "10.43.0.1", 8282)


def listing(*rules: str) -> str:
    return "\n".join(["-P PREROUTING ACCEPT", *rules]) + "\n"


def rule(iface="docker0", dest="10.43.0.1:8282") -> str:
    return RULE.format(iface=iface, dest=dest)


def verdicts(text: str, desired=WANT) -> list[str]:
    return [c.verdict for c in classify(rules.parse(text), desired).rules]


def test_three_identical_copies_are_one_keep_and_two_duplicates():
    assert verdicts(listing(rule(), rule(), rule())) == ["keep", "duplicate", "duplicate"]


NAMED = {8181: "named stale (nodes.stale_ports / --stale-port)"}


def test_stale_rule_first_does_not_win_over_the_matching_one():
    text = listing(rule(iface="cni0"), rule(dest="10.43.0.1:8181"), rule())
    result = classify(rules.parse(text), WANT, in_use={}, stale_ports=NAMED)
    assert [c.verdict for c in result.rules] == ["stale", "stale", "keep"]
    assert result.kept.rule.position == 3
    assert "interface cni0 (want docker0)" in result.rules[0].reason
    assert "port 8181 (want 8282)" in result.rules[1].reason and "--stale-port" in result.rules[1].reason


def test_a_rule_to_another_port_is_foreign_unless_named_stale():
    """Issue 22 (attack 3): no dead-port heuristic. A kiam agent's rule (cali+ -> this node:8183) and a
    metadata proxy's (weave -> this node:8775), nothing listening: foreign, in fix and teardown alike."""
    text = listing(rule(iface="cali+", dest="10.43.0.1:8183"), rule(iface="weave", dest="10.43.0.1:8775"), rule())
    for teardown in (False, True):
        result = classify(rules.parse(text), WANT, teardown=teardown, in_use={})
        assert [c.verdict for c in result.rules][:2] == ["foreign", "foreign"]
        assert "--stale-port 8183" in result.rules[0].reason and "--stale-port 8775" in result.rules[1].reason
    named = classify(rules.parse(text), WANT, in_use={}, stale_ports={8183: "named stale (--stale-port)"})
    assert [c.verdict for c in named.rules] == ["stale", "foreign", "keep"]


def test_listeners_first_a_foreign_interceptor_on_the_configured_port_owns_its_rules():
    """Issue 22 (attack 2): kube2iam.port 8181 and a Helm kube2iam on 8181: its rule is never rbacbridge's."""
    helm = "kube2iam DaemonSet kube2iam/kube2iam (--app-port 8181, Helm release kube2iam)"
    want = rules.Desired("cali+", "10.43.0.1", 8181)
    text = listing(HELM_8181, HELM_8181)
    fix = classify(rules.parse(text), want, in_use={8181: helm})
    assert [c.verdict for c in fix.rules] == ["conflict", "conflict"] and fix.port_conflict == helm
    assert "kube2iam.port" in fix.rules[0].reason and not fix.to_delete
    down = classify(rules.parse(text), want, teardown=True, in_use={8181: helm})
    assert [c.verdict for c in down.rules] == ["foreign", "foreign"] and not down.to_delete
    assert not classify(rules.parse(listing()), want, in_use={8181: helm}).kept
    assert classify(rules.parse(listing()), want, in_use={8181: helm}).port_conflict == helm
    forced = classify(rules.parse(text), want, teardown=True, in_use={8181: helm}, force=True)
    assert [c.verdict for c in forced.rules] == ["stale", "stale"] and all(c.forced for c in forced.rules)


def test_an_unproven_listener_on_the_configured_port_keeps_all_but_duplicates():
    """Without the cluster a listener on kube2iam.port cannot be told apart from another interceptor's."""
    who = "process kube2iam (pid 7) listening on *:8282"
    text = listing(rule(iface="cali+"), rule(), rule())
    fix = classify(rules.parse(text), WANT, in_use={}, unproven={8282: who})
    assert [c.verdict for c in fix.rules] == ["foreign", "keep", "duplicate"]
    assert "cannot tell whether it is its own" in fix.rules[0].reason
    down = classify(rules.parse(text), WANT, teardown=True, in_use={}, unproven={8282: who})
    assert [c.verdict for c in down.rules] == ["foreign", "foreign", "foreign"]
    forced = classify(rules.parse(text), WANT, teardown=True, in_use={}, unproven={8282: who}, force=True)
    assert [c.verdict for c in forced.rules] == ["stale", "stale", "stale"]


def test_missing_when_nothing_matches():
    result = classify(rules.parse(listing(rule(dest="10.43.0.1:8181"))), WANT, in_use={}, stale_ports=NAMED)
    assert result.missing and [c.verdict for c in result.to_delete] == ["stale"]
    assert classify(rules.parse(listing()), WANT).missing


def test_other_tools_rules_are_foreign_and_other_rules_ignored():
    text = listing(
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        '-A PREROUTING -d 169.254.169.254/32 -i docker0 -p tcp -m comment --comment "other tool" -m tcp --dport 80 -j DNAT --to-destination 10.0.0.9:80',
        "-A PREROUTING -s 10.0.0.0/8 -d 169.254.169.254/32 -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.43.0.1:8282",
        "-A PREROUTING -d 169.254.169.254/32 -i docker0 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 8282",
        "-A PREROUTING -d 169.254.169.254/32 -i docker0 -p tcp -m tcp --dport 443 -j DNAT --to-destination 10.43.0.1:8443",
        rule(),
    )
    result = classify(rules.parse(text), WANT, in_use={})
    assert [c.verdict for c in result.rules] == ["foreign", "foreign", "foreign", "foreign", "keep"]
    assert "REDIRECT" in result.rules[2].reason and "destination port 443" in result.rules[3].reason


# --- whose rule is it: ownership by this node's address and the configured port ---------------


OTHER_HOST = rule(iface="eth1", dest="10.0.0.5:9999")
HELM_8181 = rule(iface="cali+", dest="10.43.0.1:8181")


@pytest.mark.parametrize("teardown", [False, True])
def test_a_rule_to_another_address_is_never_ours(teardown):
    result = classify(rules.parse(listing(OTHER_HOST, rule(iface="eth1", dest="10.43.0.9:8282"))), WANT,
                               teardown=teardown, in_use={}, force=True)
    assert [c.verdict for c in result.rules] == ["foreign", "foreign"]
    assert "not this node (10.43.0.1)" in result.rules[0].reason and not result.to_delete


def test_this_node_on_another_port_in_use_is_a_conflict_naming_the_user():
    daemonset = "kube2iam DaemonSet kube2iam/kube2iam (--app-port 8181, Helm release kube2iam)"
    result = classify(rules.parse(listing(HELM_8181, rule(), rule())), WANT, in_use={8181: daemonset})
    assert [c.verdict for c in result.rules] == ["conflict", "keep", "duplicate"]
    assert daemonset in result.conflicts[0].reason and "--force" in result.conflicts[0].reason
    assert result.conflicts[0].used_by == daemonset


def test_force_deletes_a_rule_in_use_and_says_so():
    result = classify(rules.parse(listing(HELM_8181)), WANT, in_use={8181: "process nginx (pid 7)"}, force=True)
    [item] = result.to_delete
    assert item.verdict == "stale" and item.forced and "because of --force" in item.reason and "nginx" in item.reason


def test_unknown_listeners_never_make_a_rule_stale():
    named = classify(rules.parse(listing(HELM_8181)), WANT, in_use=None, stale_ports=NAMED)
    assert [c.verdict for c in named.rules] == ["conflict"] and "cannot tell" in named.rules[0].reason
    unnamed = classify(rules.parse(listing(HELM_8181)), WANT, in_use=None)
    assert [c.verdict for c in unnamed.rules] == ["foreign"]


def test_rbacbridges_own_old_port_is_stale_while_setup_moves_its_daemonset():
    result = classify(rules.parse(listing(HELM_8181)), WANT, in_use={8181: "x"},
                               moving={8181: "rbacbridge's kube2iam DaemonSet moves"})
    assert [c.verdict for c in result.rules] == ["stale"] and "moves" in result.rules[0].reason


def test_teardown_removes_ours_on_any_interface_and_named_ports_and_leaves_interceptors_alone():
    text = listing(rule(), rule(iface="cali+"), rule(dest="10.43.0.1:7000"), HELM_8181, OTHER_HOST,
                   rule(dest="10.43.0.1:7001"), "-A PREROUTING -j DOCKER")
    named = {7000: "named stale (--stale-port)"}
    result = classify(rules.parse(text), WANT, teardown=True, in_use={8181: "kube2iam DaemonSet x/y"},
                               stale_ports=named)
    assert [c.verdict for c in result.rules] == ["stale", "stale", "stale", "foreign", "foreign", "foreign"]
    assert "left alone; --force deletes it" in result.rules[3].reason
    assert not result.missing and not result.conflicts
    forced = classify(rules.parse(text), WANT, teardown=True, in_use={8181: "kube2iam DaemonSet x/y"}, force=True,
                               stale_ports=named)
    assert [c.verdict for c in forced.rules] == ["stale", "stale", "stale", "stale", "foreign", "foreign"]


def test_listeners_from_ss():
    out = ("LISTEN 0      128      10.231.0.2:22        0.0.0.0:*    users:((\"sshd\",pid=123,fd=3))\n"
           "LISTEN 0 5 *:8181 *:*\n"
           "LISTEN 0 5 [::]:9000 [::]:*\n"
           "garbage\n")
    found = rules.parse_listeners(out)
    assert found == {22: "process sshd (pid 123) listening on 10.231.0.2:22",
                     8181: "a process listening on *:8181", 9000: "a process listening on [::]:9000"}


@pytest.mark.parametrize("text,backend", [
    ("iptables v1.8.9 (nf_tables)\n", "nf_tables"),
    ("iptables v1.8.7 (legacy)\n", "legacy"),
    ("iptables v1.6.1\n", "legacy"),
    ("sudo: a password is required\n", "unknown"),
])
def test_backend_from_version(text, backend):
    assert rules.backend_of(text) == backend


@pytest.mark.parametrize("garbage", [
    "",
    "Permission denied\n",
    "<html>502 Bad Gateway</html>\n",
    "-P PREROUTING ACCEPT\nwhatever this is\n",
    "-P PREROUTING ACCEPT\n-A OUTPUT -j ACCEPT\n",
    '-P PREROUTING ACCEPT\n-A PREROUTING -m comment --comment "unterminated\n',
])
def test_garbage_output_is_an_error(garbage):
    with pytest.raises(rules.IptablesOutputError, match="unexpected iptables output"):
        rules.parse(garbage)


def test_delete_and_append_argv_are_the_spec_not_a_position():
    shape = rules.parse(listing(rule(iface="cali+", dest="10.1.2.3:8181")))[0].kube2iam
    assert rules.delete_argv(shape) == [
        "iptables", "-w", "5", "-t", "nat", "-D", "PREROUTING", "-d", "169.254.169.254/32", "-i", "cali+",
        "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "10.1.2.3:8181",
    ]
    assert rules.append_argv(rules.Kube2iamRule.of(WANT))[5:7] == ["-A", "PREROUTING"]
    assert rules.Kube2iamRule.of(WANT).text() == rule()


@pytest.mark.parametrize("iface", ["eth0;reboot", "$(id)", "a b", "x" * 16, ""])
def test_interfaces_with_shell_metacharacters_are_rejected(iface):
    with pytest.raises(UsageError):
        rules.Desired(iface, "10.0.0.1", 8282)


def test_host_ip_must_be_ipv4():
    with pytest.raises(UsageError):
        rules.Desired("docker0", "fe80::1", 8282)
    with pytest.raises(UsageError):
        rules.Desired("docker0", "10.0.0.1;id", 8282)


# --- the guarded script sent to a node (rbacbridge.nodes): quoted parts, sudo -n, order ------


class _Session:
    def __init__(self, user: str):
        self.user, self.name, self.lines = user, "n1", []

    def run(self, argv, sudo=False, timeout=None):
        self.lines.append(argv)
        return 0, "", ""


def test_change_script_is_one_exec_of_quoted_parts_with_sudo_for_iptables_only():
    from rbacbridge import nodes

    stale = rules.Kube2iamRule("cali+", "10.43.0.1", 7000)
    dup = rules.Kube2iamRule.of(WANT)
    session = _Session("deploy")
    try:
        nodes.run_ops(session, [nodes.Op(stale, 1, dead_port=7000), nodes.Op(dup, 2)])
    except nodes.NodeError:
        pass  # the fake session prints no markers
    [[sh, dash_c, script]] = session.lines
    assert (sh, dash_c) == ("sh", "-c")
    assert script.count("sudo -n -- iptables -w 5 -t nat -S PREROUTING") == 2
    assert script.index("-D PREROUTING -d 169.254.169.254/32 -i cali+ ") < script.index("-D PREROUTING -d 169.254.169.254/32 -i docker0")
    assert "ss -Htln 'sport = :7000'" in script and "sudo -n -- ss" not in script
    assert "rbb_count '-A PREROUTING -d 169.254.169.254/32 -i cali+ -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.43.0.1:7000'" in script
    assert script.startswith(nodes._COUNT_FN) and script.count("rbb_count()") == 1
    assert '[ "$N" -ge 1 ]' in script and '[ "$N" -ge 2 ]' in script
    root = _Session("root")
    with pytest.raises(nodes.NodeError):
        nodes.run_ops(root, [nodes.Op(dup, 2)])
    assert "sudo" not in root.lines[0][2]


@pytest.mark.parametrize("shell", [s for s in ("sh", "dash", "bash") if shutil.which(s)])
def test_copies_are_counted_by_the_shell_as_whole_lines(shell, tmp_path):
    """The change script counts a rule's copies in the listing without a process (rbb_count): whole
    lines only, adjacent copies each counted, a longer line that starts with the rule not counted,
    glob characters literal."""
    from rbacbridge import nodes

    rule = "-A PREROUTING -d 169.254.169.254/32 -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:8282"
    listing = tmp_path / "listing"
    listing.write_text("\n".join(["-P PREROUTING ACCEPT", rule + "0", rule, rule, "x" + rule, rule,
                                   "-A PREROUTING -i cali* -j [A]", ""]))
    cases = {rule: 3, rule + "0": 1, rule[:-1]: 0, "-A PREROUTING -i cali* -j [A]": 1, "-A PREROUTING -i caliX -j A": 0,
             "-P PREROUTING ACCEPT": 1, "": 0}
    for wanted, count in cases.items():
        script = f"{nodes._COUNT_FN}; L=$(cat {shlex.quote(str(listing))}); rbb_count {shlex.quote(wanted)}; echo \"$N\""
        out = subprocess.run([shell, "-c", script], capture_output=True, text=True, check=True).stdout
        assert out.strip() == str(count), (wanted, out)
