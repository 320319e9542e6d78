"""Moved to rbacbridge.nodes.rules (kube2iam's rule: shape, parsing, commands) and rbacbridge.nodes.verdicts
(whose each rule is); this import path stays for audit, verify and the tests. Pure, no I/O."""

from rbacbridge.nodes.rules import (CHAIN, IPTABLES, METADATA_IP, TABLE, Desired, IptablesOutputError, Kube2iamRule,
                                    ListedRule, append_argv, backend_of, check_host_ip, check_interface, count,
                                    delete_argv, list_argv, parse, parse_listeners)
from rbacbridge.nodes.verdicts import (CONFLICT, DUPLICATE, FOREIGN, KEEP, STALE, Classification, Classified,
                                       classify)

__all__ = ["CHAIN", "IPTABLES", "METADATA_IP", "TABLE", "Desired", "IptablesOutputError", "Kube2iamRule", "ListedRule",
           "append_argv", "backend_of", "check_host_ip", "check_interface", "count", "delete_argv", "list_argv", "parse",
           "parse_listeners", "CONFLICT", "DUPLICATE", "FOREIGN", "KEEP", "STALE", "Classification", "Classified",
           "classify"]
