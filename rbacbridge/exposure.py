"""Moved to rbacbridge.kube.namespaces (namespaces outside every tenant that may ask kube2iam for a
managed role); this import path stays for audit and verify."""

from rbacbridge.kube.namespaces import (ALLOWED_ROLES, ROLE_ANNOTATION, SHOWN, Exposure, ManagedRole, add_pod_evidence,
                                        allowed_patterns, find, managed_roles, shorten)
from rbacbridge.kube.namespaces import plan_outsider_findings as plan_steps

__all__ = ["ALLOWED_ROLES", "ROLE_ANNOTATION", "SHOWN", "Exposure", "ManagedRole", "add_pod_evidence", "allowed_patterns",
           "find", "managed_roles", "shorten", "plan_steps"]
