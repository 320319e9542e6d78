"""rbacbridge: set up, verify and tear down kube2iam's Kubernetes-to-AWS IAM bridge."""

__version__ = "0.1.0"

MANAGED_BY_KEY = "managed-by"
MANAGED_BY_VALUE = "rbacbridge"
