"""The nodes part: exactly one kube2iam iptables rule per node (article step 14), none after teardown.

Modules, each importing only those listed before it (the transports only `session`, and rbacbridge.kube):

    rules              kube2iam's rule: its shape, parsing `iptables -S`, the exact commands (pure)
    verdicts           whose each rule is: keep / duplicate / stale / conflict / foreign (pure)
    session            the interface to a node: Session (run, close, ...), NodeError, command_line
    ssh/               transport: paramiko, ~/.ssh/config, known_hosts, ProxyJump/ProxyCommand
    pods/              transport: exec in a hostNetwork pod through the Kubernetes API
    targets            which nodes (NodeRef), over ssh or kubernetes (resolve_via)
    transport          the factory: one session per node (session_for), preflight, close_sessions
    scripts            what goes to a node: one exec to look, one guarded exec to change
    evidence           who uses each port (cluster DaemonSets, listeners), stale ports, the interface
    planning           inspect every node, plan its steps; the planner's part interface
    iptables_commands  the engine behind `rbacbridge iptables status|fix|remove`

Other parts import from this package (the names below), and from these modules only: rbacbridge.nodes.rules
and rbacbridge.nodes.verdicts (pure), rbacbridge.nodes.targets (resolve_via), and the transports'
packages rbacbridge.nodes.ssh and rbacbridge.nodes.pods (their `__init__` names).
"""

from rbacbridge.nodes.evidence import desired_interface
from rbacbridge.nodes.iptables_commands import IptablesResult, NodeReport, run_iptables
from rbacbridge.nodes.planning import (after_setup, after_teardown, execute, inspect_all, node_plan, plan_setup,
                                       plan_teardown)
from rbacbridge.nodes.scripts import _COUNT_FN, Op, look, run_ops  # noqa: F401 - tests read _COUNT_FN
from rbacbridge.nodes.session import NodeError, Session
from rbacbridge.nodes.targets import NodeRef, node_refs, ssh_target
from rbacbridge.nodes.transport import close_sessions, preflight, session_for

__all__ = [
    # the planner's part interface
    "preflight", "plan_setup", "plan_teardown", "execute", "after_setup", "after_teardown",
    # `rbacbridge iptables`
    "run_iptables", "IptablesResult", "NodeReport",
    # what audit and verify use
    "NodeError", "NodeRef", "Op", "Session", "close_sessions", "desired_interface", "inspect_all", "look", "node_plan",
    "node_refs", "run_ops", "session_for", "ssh_target",
]
