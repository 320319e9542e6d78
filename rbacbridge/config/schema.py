"""The option table: every setting of rbacbridge.yaml with its Config field, default, validator and help.

One source for the loader (`loading`), the flags (`Config.with_overrides`), `rbacbridge config-reference`
and the generated configuration reference. `tenants:` is not in it (a list of mappings, read by
`tenancy.tenants`); `tenancy.TENANT_REFERENCE` documents it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from rbacbridge.config.validators import (account_id, boolean, bucket_name, default_role, endpoint_url, image, install_id,
                                          instance_ids, interface, ipv4, k8s_name, kms_key, label_selector, node_addresses,
                                          node_via, optional_image, optional_k8s_name, optional_text, parallelism,
                                          policy_arns, policy_name, port, ports, profile_name, region, role_name, seconds,
                                          ssh_user, tolerations)


@dataclass(frozen=True)
class Option:
    path: str  # dotted path in rbacbridge.yaml
    field: str  # attribute of Config
    default: Any
    check: Callable[[str, Any], Any]
    help: str


SCHEMA: tuple[Option, ...] = (
    Option("account_id", "account_id", None, account_id, "AWS account the roles live in (12 digits); setup requires it"),
    Option("aws.region", "region", "us-east-1", region, "AWS region of the worker instances (order: --region, this, AWS_REGION, AWS_DEFAULT_REGION, the profile's region, us-east-1)"),
    Option("aws.profile", "profile", None, optional_text, "AWS profile (else AWS_PROFILE / env / instance role)"),
    Option("aws.endpoint_url", "endpoint_url", None, endpoint_url, "AWS endpoint (else AWS_ENDPOINT_URL); for sandboxes"),
    Option("iam.node_policy", "node_policy", "nettech-s3-read-only", policy_name, "read-only S3 policy of the node role (article step 1)"),
    Option("iam.node_role", "node_role", "nettech-s3-read-only", role_name, "node role, trusted by EC2 (step 2)"),
    Option("iam.node_role_extra_policies", "node_role_extra_policies", (), policy_arns, "managed policy ARNs the node role may also hold (attached by you, e.g. for SSM or ECR): never detached; any other policy on a managed role is drift"),
    Option("iam.instance_profile", "instance_profile", "nettech-instance-profile", profile_name, "instance profile holding the node role (step 3)"),
    Option("iam.kube2iam_policy", "kube2iam_policy", "nettech-kube2iam-node", policy_name, "node role's sts:AssumeRole on the pod roles + ec2:DescribeRegions"),
    Option("iam.pod_policy", "pod_policy", "nettech-s3-read-write", policy_name, "read+write S3 policy of the pod role (step 4)"),
    Option("iam.pod_role", "pod_role", "nettech-s3-read-write", role_name, "pod role, trusting the node role's exact ARN (steps 4-5)"),
    Option("iam.default_role", "pod_default_role", "nettech-pod-default", role_name, "dedicated role for unannotated pods: read-only S3 policy, trusts only the node role, no sts:*"),
    Option("buckets.shared", "shared_bucket", "nettech-helm-test", bucket_name, "bucket everyone may read"),
    Option("buckets.tenant", "tenant_bucket", "lanre.k8s.dev", bucket_name, "bucket only the annotated pod may read and write"),
    Option("instances", "instance_ids", (), instance_ids, "worker instance ids (else from the nodes' spec.providerID)"),
    Option("kubernetes.kubeconfig", "kubeconfig", None, optional_text, "kubeconfig file (else KUBECONFIG / ~/.kube/config / in-cluster)"),
    Option("kubernetes.context", "context", None, optional_text, "kubeconfig context"),
    Option("kubernetes.namespace", "namespace", "default", k8s_name, "namespace of the nginx Deployments"),
    Option("kubernetes.nginx_image", "nginx_image", "nginx:1.27", image, "image of the nginx-vanilla / nginx-annotated Deployments (pinned)"),
    Option("kubernetes.rollout_timeout", "rollout_timeout", 300.0, seconds, "seconds to wait for kube2iam and nginx to roll out (or kube2iam's pods to go)"),
    Option("kubernetes.node_selector", "node_selector", None, label_selector, "label selector for the worker nodes"),
    Option("kube2iam.namespace", "kube2iam_namespace", "kube-system", k8s_name, "namespace of kube2iam"),
    Option("kube2iam.image", "kube2iam_image", "jtblin/kube2iam:0.13.0", image, "kube2iam image (pinned; 0.13.0 is the first upstream image with IMDSv2 support)"),
    Option("kube2iam.port", "kube2iam_port", 8282, port, "kube2iam --app-port (article: 8282; kube2iam's default: 8181)"),
    Option("kube2iam.host_interface", "host_interface", "auto", interface, "pods' interface; auto = from the network plugin"),
    Option("kube2iam.default_role", "default_role", "dedicated", default_role, "unannotated pods get: dedicated = iam.default_role; node / auto = the node role (escalation: warned); or a role name"),
    Option("kube2iam.namespace_restrictions", "namespace_restrictions", True, boolean, "grant roles per namespace (iam.amazonaws.com/allowed-roles)"),
    Option("kube2iam.tolerations", "kube2iam_tolerations", ({"operator": "Exists"},), tolerations, "kube2iam's tolerations (default: every taint, so no node is left without it)"),
    Option("kube2iam.debug", "kube2iam_debug", False, boolean, "kube2iam --debug (serves /debug/store, the role map, on its port; article step 13)"),
    Option("nodes.hosts", "node_hosts", (), node_addresses, "SSH addresses of the nodes (else from the cluster)"),
    Option("nodes.ssh_user", "ssh_user", None, ssh_user, "SSH user (else ~/.ssh/config, else the local user)"),
    Option("nodes.ssh_key", "ssh_key", None, optional_text, "SSH private key file"),
    Option("nodes.ssh_port", "ssh_port", None, port, "SSH port (else ~/.ssh/config, else 22)"),
    Option("nodes.known_hosts", "known_hosts", None, optional_text, "known_hosts file (else ~/.ssh/known_hosts)"),
    Option("nodes.ssh_config", "ssh_config", None, optional_text, "ssh config file (else ~/.ssh/config; 'none' to ignore)"),
    Option("nodes.accept_new_host_keys", "accept_new_host_keys", False, boolean, "record unknown host keys (OpenSSH accept-new); changed keys are always refused"),
    Option("nodes.host_ip", "host_ip", None, ipv4, "kube2iam --host-ip in the rule (else the node's InternalIP, else its SSH address)"),
    Option("nodes.add_missing", "add_missing", False, boolean, "add the rule where it is missing (else kube2iam adds it once running)"),
    Option("nodes.stale_ports", "node_stale_ports", (), ports, "old kube2iam ports whose rules to the node are rbacbridge's left-overs: deleted when nothing uses the port (rules to other ports are never touched)"),
    Option("nodes.connect_timeout", "ssh_connect_timeout", 10.0, seconds, "SSH connect timeout, seconds"),
    Option("nodes.command_timeout", "ssh_command_timeout", 60.0, seconds, "timeout of one command on a node, seconds"),
    Option("nodes.parallel", "node_parallelism", 64, parallelism, "nodes handled at once (one thread and one SSH connection each)"),
    Option("nodes.via", "node_via", "auto", node_via, "how rbacbridge reaches the nodes: ssh, kubernetes (exec in kube2iam's pod, else a short-lived pod per node), auto = ssh when nodes.hosts or SSH options are given, else kubernetes"),
    Option("nodes.pod_image", "node_pod_image", None, optional_image, "image of the short-lived node pod (--via kubernetes, nodes without a kube2iam pod); needs sh and iptables (else kube2iam.image)"),
    Option("nodes.pod_namespace", "node_pod_namespace", None, optional_k8s_name, "namespace of the short-lived node pods (else kube2iam.namespace); must allow hostNetwork and NET_ADMIN (PodSecurity privileged)"),
    Option("verify.probe_image", "probe_image", "amazon/aws-cli:2.22.0", image, "AWS CLI image of `verify --probe ephemeral` (pinned)"),
    Option("record.install_id", "install_id", None, install_id, "this install's id: KMS alias alias/rbacbridge/<id>, tag rbacbridge:install=<id> (default: from iam.instance_profile)"),
    Option("record.kms_key", "record_kms_key", None, kms_key, "KMS key (ARN, id or alias) that signs the record, pinned: never created or deleted by rbacbridge (default: setup creates alias/rbacbridge/<install id>)"),
)

_BY_PATH = {o.path: o for o in SCHEMA}
_BY_FIELD = {o.field: o for o in SCHEMA}
_SECTIONS = {o.path.rsplit(".", 1)[0] for o in SCHEMA if "." in o.path}
