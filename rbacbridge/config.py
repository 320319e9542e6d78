"""Configuration: the article's values as defaults, `rbacbridge.yaml` over them, flags over that.

Everything is validated here, before any outside system is called.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from rbacbridge.errors import UsageError, shown

# --- validators: each returns the cleaned value or raises UsageError(one line) ---------------
# Every pattern is ASCII-only (no \w or \d: they match the letters and digits of every script).

_IAM_NAME = re.compile(r"[A-Za-z0-9_+=,.@-]+")
_REGION = re.compile(r"[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]{1,2}")
_ACCOUNT_ID = re.compile(r"[0-9]{12}")
_INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_IFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}\+?")
_IMAGE = re.compile(r"[a-z0-9]+([._/:@-][A-Za-z0-9_.-]+)*")
_LABEL_SELECTOR = re.compile(r"[A-Za-z0-9_./=!,() -]*")
_SSH_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_ENDPOINT = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(/[!-~]*)?")
_WHOLE = re.compile(r"0|[1-9][0-9]*")  # decimal, no sign, no leading zero (YAML 1.1 reads 017 as octal)
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")


class Text(str):
    """A scalar of rbacbridge.yaml as written, plus what YAML 1.1 would have read it as
    (`yaml_type`: str, int, float, bool, null, timestamp) and whether it was quoted."""

    yaml_type = "str"
    quoted = True


def _fail(key: str, value: Any, why: str) -> UsageError:
    return UsageError(f"invalid {key} {shown(value)}: {why}")


def _text(key: str, value: Any) -> str:
    """The value as text; refuses what is not text, and unquoted YAML that YAML 1.1 reads as
    something else than it looks (yes/no/on/off, octal, 1_000, 1e3, .inf)."""
    if isinstance(value, Text):
        if not value.quoted and value.yaml_type == "bool":
            raise _fail(key, value, "YAML reads an unquoted true/false/yes/no/on/off as a boolean; quote it if you mean the text")
        if not value.quoted and value.yaml_type in ("int", "float") and not _DECIMAL.fullmatch(value):
            raise _fail(key, value, "YAML 1.1 reads this as a number in another form (octal, 1_000, 1e3); quote it")
        return str.__str__(value)
    if isinstance(value, bool):
        raise _fail(key, value, "expected text, not a boolean")
    if isinstance(value, (dict, list, tuple, set)):
        raise UsageError(f"invalid {key}: expected a single value, not {_kind(value)}")
    if not isinstance(value, (str, int, float)):
        raise _fail(key, type(value).__name__, "expected text")
    return str(value)


def _whole(key: str, value: Any, why: str) -> int:
    if isinstance(value, bool) or (isinstance(value, Text) and value.yaml_type == "bool" and not value.quoted):
        raise _fail(key, value, why)
    if isinstance(value, int):
        return value
    if isinstance(value, (str, float)) and _WHOLE.fullmatch(str(value)):
        return int(str(value))
    raise _fail(key, value, why)


def _number(key: str, value: Any, why: str) -> float:
    if isinstance(value, bool) or (isinstance(value, Text) and value.yaml_type == "bool" and not value.quoted):
        raise _fail(key, value, why)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        return float(str(value))
    raise _fail(key, value, why)


def account_id(key: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = _text(key, value)
    if not _ACCOUNT_ID.fullmatch(text):
        raise _fail(key, value, "an AWS account id is exactly 12 digits 0-9")
    return text


def region(key: str, value: Any) -> str:
    text = _text(key, value)
    if not _REGION.fullmatch(text):
        raise _fail(key, value, "not an AWS region name (like us-east-1)")
    return text


def _iam_name(limit: int) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        text = _text(key, value)
        if not 1 <= len(text) <= limit:
            raise _fail(key, value, f"IAM names are 1-{limit} characters")
        if not _IAM_NAME.fullmatch(text):
            raise _fail(key, value, "IAM names allow ASCII letters, digits and +=,.@_- only")
        return text

    return check


role_name = _iam_name(64)
policy_name = _iam_name(128)
profile_name = _iam_name(128)


def bucket_name(key: str, value: Any) -> str:
    text = _text(key, value)
    why = None
    if not 3 <= len(text) <= 63:
        why = "bucket names are 3-63 characters"
    elif not re.fullmatch(r"[a-z0-9.-]+", text):
        why = "bucket names allow lowercase letters, digits, dots and hyphens only"
    elif not (text[0].isalnum() and text[-1].isalnum()):
        why = "bucket names begin and end with a letter or digit"
    elif ".." in text or ".-" in text or "-." in text:
        why = "bucket names have no '..', '.-' or '-.'"
    elif re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+", text):
        why = "bucket names are not IP addresses"
    elif text.startswith(("xn--", "sthree-")) or text.endswith(("-s3alias", "--ol-s3")):
        why = "that prefix or suffix is reserved by S3"
    if why:
        raise _fail(key, value, why)
    return text


def instance_ids(key: str, value: Any) -> tuple[str, ...]:
    items = [_text(key, item) for item in _as_list(key, value)]
    for item in items:
        if not _INSTANCE_ID.fullmatch(item):
            raise _fail(key, item, "an EC2 instance id looks like i-0123456789abcdef0")
    return tuple(items)


def k8s_name(key: str, value: Any) -> str:
    text = _text(key, value)
    if len(text) > 63 or not _DNS_LABEL.fullmatch(text):
        raise _fail(key, value, "Kubernetes names are lowercase letters, digits and '-', at most 63")
    return text


def port(key: str, value: Any) -> int:
    number = _whole(key, value, "a port is a whole number 1-65535")
    if not 1 <= number <= 65535:
        raise _fail(key, value, "a port is 1-65535")
    return number


def interface(key: str, value: Any) -> str:
    text = _text(key, value)
    if text != "auto" and not _IFACE.fullmatch(text):
        raise _fail(key, value, "an interface name is at most 15 of [A-Za-z0-9_.-], optionally ending in '+'")
    return text


# kube2iam.default_role: what unannotated pods get.
DEDICATED = "dedicated"  # the dedicated default role iam.default_role (read-only S3, no sts:*)
NODE = "node"  # the node role, by name (--default-role=<node role>); lets every pod chain into the pod roles
AUTO = "auto"  # --auto-discover-default-role: kube2iam finds the node role itself (same escalation as node)
DEFAULT_ROLE_MODES = (DEDICATED, NODE, AUTO)


def default_role(key: str, value: Any) -> str:
    text = _text(key, value)
    if text in DEFAULT_ROLE_MODES:
        return text
    return role_name(key, text)


def tolerations(key: str, value: Any) -> tuple[dict[str, Any], ...]:
    """Kubernetes tolerations (a list of mappings with the core/v1 Toleration fields only)."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise _fail(key, value, "expected a list of tolerations like [{operator: Exists}]")
    allowed = {"key": str, "operator": str, "value": str, "effect": str, "tolerationSeconds": int}
    out = []
    for raw in value:
        if not isinstance(raw, dict) or not raw:
            raise _fail(key, raw, "a toleration is a mapping such as {key: dedicated, operator: Exists}")
        item: dict[str, Any] = {}
        for name, field_value in raw.items():
            name = str.__str__(str(name))
            kind = allowed.get(name)
            if kind is None:
                raise _fail(key, dict(raw), f"unknown toleration field {shown(name)} (key, operator, value, effect, tolerationSeconds)")
            if kind is int:
                item[name] = _whole(f"{key} {name}", field_value, "toleration field tolerationSeconds must be a whole number")
            elif isinstance(field_value, str) and not isinstance(field_value, bool):
                item[name] = _text(f"{key} {name}", field_value)
            else:
                raise _fail(key, name, f"toleration field {name} must be a str")
        if item.get("operator", "Equal") not in ("Exists", "Equal"):
            raise _fail(key, item, "toleration operator is Exists or Equal")
        if item.get("effect", "") not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise _fail(key, item, "toleration effect is NoSchedule, PreferNoSchedule or NoExecute")
        if item.get("operator") == "Exists" and "value" in item:
            raise _fail(key, item, "a toleration with operator Exists takes no value")
        if "key" not in item and item.get("operator") != "Exists":
            raise _fail(key, item, "a toleration without a key needs operator Exists")
        out.append({k: item[k] for k in ("key", "operator", "value", "effect", "tolerationSeconds") if k in item})
    return tuple(out)


def image(key: str, value: Any) -> str:
    text = _text(key, value)
    if len(text) > 255 or not _IMAGE.fullmatch(text):
        raise _fail(key, value, "not a container image reference")
    return text


def seconds(key: str, value: Any) -> float:
    number = _number(key, value, "expected a number of seconds (like 300 or 2.5)")
    if not 0 < number <= 86400:
        raise _fail(key, value, "expected more than 0 and at most 86400 seconds")
    return number


def endpoint_url(key: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    text = _text(key, value)
    if not _ENDPOINT.fullmatch(text):
        raise _fail(key, value, "an endpoint URL is http:// or https:// followed by a host (ASCII)")
    return text


def optional_text(key: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    text = _text(key, value)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise _fail(key, value, "must be one line without control characters")
    if len(text) > 4096:
        raise _fail(key, value, "longer than 4096 characters")
    return text


def label_selector(key: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    text = _text(key, value)
    if not _LABEL_SELECTOR.fullmatch(text) or len(text) > 1024:
        raise _fail(key, value, "not a Kubernetes label selector")
    return text


def boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, Text) and value.yaml_type == "bool" and not value.quoted:
        return value.lower() in ("true", "yes", "on", "y")
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    raise _fail(key, value, "expected true or false")


def ssh_user(key: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    text = _text(key, value)
    if not _SSH_USER.fullmatch(text):
        raise _fail(key, value, "not a valid user name")
    return text


def ipv4(key: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    text = _text(key, value)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise _fail(key, value, "not an IP address") from None
    if address.version != 4:
        raise _fail(key, value, "kube2iam's iptables rule takes an IPv4 address")
    return str(address)


def parallelism(key: str, value: Any) -> int:
    number = _whole(key, value, "a whole number 1-256")
    if not 1 <= number <= 256:
        raise _fail(key, value, "between 1 and 256")
    return number


NODE_VIA = ("auto", "ssh", "kubernetes")


def node_via(key: str, value: Any) -> str:
    text = _text(key, value)
    if text not in NODE_VIA:
        raise _fail(key, value, "choose from " + ", ".join(NODE_VIA))
    return text


def optional_image(key: str, value: Any) -> str | None:
    return None if value in (None, "") else image(key, value)


def optional_k8s_name(key: str, value: Any) -> str | None:
    return None if value in (None, "") else k8s_name(key, value)


def node_addresses(key: str, value: Any) -> tuple[str, ...]:
    """HOST or HOST:PORT or [IPv6]:PORT; host is an IP address or a DNS name."""
    out = []
    for item in _as_list(key, value):
        text = _text(key, item)
        host, _, port_text = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
        if text.startswith("["):
            host, _, port_text = text[1:].partition("]")
            port_text = port_text.lstrip(":")
        host = host or text
        if port_text:
            port(key, port_text)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not _HOST.fullmatch(host):
                raise _fail(key, item, "not a host name or IP address") from None
        out.append(text)
    return tuple(out)


def _as_list(key: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        text = _text(key, value)
        return [v for v in re.split(r"[,\s]+", text) if v]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise _fail(key, type(value).__name__, "expected a list")


# --- the schema: YAML path, field, default, validator, help ----------------------------------


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
    Option("nodes.connect_timeout", "ssh_connect_timeout", 10.0, seconds, "SSH connect timeout, seconds"),
    Option("nodes.command_timeout", "ssh_command_timeout", 60.0, seconds, "timeout of one command on a node, seconds"),
    Option("nodes.parallel", "node_parallelism", 64, parallelism, "nodes handled at once (one thread and one SSH connection each)"),
    Option("nodes.via", "node_via", "auto", node_via, "how rbacbridge reaches the nodes: ssh, kubernetes (exec in kube2iam's pod, else a short-lived pod per node), auto = ssh when nodes.hosts or SSH options are given, else kubernetes"),
    Option("nodes.pod_image", "node_pod_image", None, optional_image, "image of the short-lived node pod (--via kubernetes, nodes without a kube2iam pod); needs sh and iptables (else kube2iam.image)"),
    Option("nodes.pod_namespace", "node_pod_namespace", None, optional_k8s_name, "namespace of the short-lived node pods (else kube2iam.namespace); must allow hostNetwork and NET_ADMIN (PodSecurity privileged)"),
    Option("verify.probe_image", "probe_image", "amazon/aws-cli:2.22.0", image, "AWS CLI image of `verify --probe ephemeral` (pinned)"),
)

_BY_PATH = {o.path: o for o in SCHEMA}
_BY_FIELD = {o.field: o for o in SCHEMA}


@dataclass(frozen=True)
class Config:
    account_id: str | None = None
    region: str = "us-east-1"
    profile: str | None = None
    endpoint_url: str | None = None
    node_policy: str = "nettech-s3-read-only"
    node_role: str = "nettech-s3-read-only"
    instance_profile: str = "nettech-instance-profile"
    kube2iam_policy: str = "nettech-kube2iam-node"
    pod_policy: str = "nettech-s3-read-write"
    pod_role: str = "nettech-s3-read-write"
    pod_default_role: str = "nettech-pod-default"
    shared_bucket: str = "nettech-helm-test"
    tenant_bucket: str = "lanre.k8s.dev"
    instance_ids: tuple[str, ...] = ()
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str = "default"
    nginx_image: str = "nginx:1.27"
    rollout_timeout: float = 300.0
    node_selector: str | None = None
    kube2iam_namespace: str = "kube-system"
    kube2iam_image: str = "jtblin/kube2iam:0.13.0"
    kube2iam_port: int = 8282
    host_interface: str = "auto"
    default_role: str = DEDICATED
    namespace_restrictions: bool = True
    kube2iam_tolerations: tuple[dict[str, Any], ...] = ({"operator": "Exists"},)
    kube2iam_debug: bool = False
    node_hosts: tuple[str, ...] = ()
    ssh_user: str | None = None
    ssh_key: str | None = None
    ssh_port: int | None = None
    known_hosts: str | None = None
    ssh_config: str | None = None
    accept_new_host_keys: bool = False
    host_ip: str | None = None
    add_missing: bool = False
    ssh_connect_timeout: float = 10.0
    ssh_command_timeout: float = 60.0
    node_parallelism: int = 64
    node_via: str = "auto"
    node_pod_image: str | None = None
    node_pod_namespace: str | None = None
    probe_image: str = "amazon/aws-cli:2.22.0"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # Fields set by the config file or a flag (not defaults): the region falls back to the
    # environment and the AWS profile only when it is not set here.
    explicit: frozenset = field(default=frozenset(), compare=False)

    @property
    def effective_default_role(self) -> str:
        """The role name kube2iam hands unannotated pods (auto-discovery finds the node role)."""
        if self.default_role == DEDICATED:
            return self.pod_default_role
        if self.default_role in (NODE, AUTO):
            return self.node_role
        return self.default_role

    @property
    def default_is_node_role(self) -> bool:
        """Unannotated pods get the node role: it may assume the pod roles, so every pod can chain into them."""
        return self.effective_default_role == self.node_role

    @property
    def manages_default_role(self) -> bool:
        """Setup creates (and teardown removes) the dedicated default role iam.default_role."""
        return self.default_role == DEDICATED

    def default_role_warning(self) -> str | None:
        """The escalation path of handing pods the node role, in one line (None when pods do not get it)."""
        if not self.default_is_node_role:
            return None
        return (f"kube2iam.default_role={self.default_role} hands every unannotated pod the node role {self.node_role}, "
                f"which may sts:AssumeRole {self.pod_role}: any pod can chain into it "
                f"(the default, kube2iam.default_role=dedicated, gives them {self.pod_default_role} instead)")

    def role_arn(self, account: str, name: str) -> str:
        return f"arn:aws:iam::{account}:role/{name}"

    def policy_arn(self, account: str, name: str) -> str:
        return f"arn:aws:iam::{account}:policy/{name}"

    def with_overrides(self, flags: dict[str, str] | None = None, **values: Any) -> "Config":
        """`values` by Config field; `flags` names the option each came from (for messages)."""
        cleaned = {}
        for name, value in values.items():
            if value is None or value == ():
                continue
            option = _BY_FIELD[name]
            label = (flags or {}).get(name) or option.path
            cleaned[name] = option.check(label, value)
        config = replace(self, explicit=self.explicit | frozenset(cleaned), **cleaned)
        config.check_consistency()
        return config

    def check_consistency(self) -> None:
        if self.node_role == self.pod_role:
            raise UsageError(f"invalid iam.pod_role {shown(self.pod_role)}: the pod role must differ from the node role")
        if self.pod_default_role in (self.node_role, self.pod_role):
            raise UsageError(f"invalid iam.default_role {shown(self.pod_default_role)}: the pods' default role must differ "
                             "from the node role and the pod role (kube2iam.default_role: node hands pods the node role)")
        if self.default_role == self.pod_role:
            raise UsageError(f"invalid kube2iam.default_role {shown(self.default_role)}: every unannotated pod would get "
                             "the pod role; use dedicated (iam.default_role) or another role")
        if self.shared_bucket == self.tenant_bucket:
            raise UsageError("invalid buckets: buckets.shared and buckets.tenant must differ")
        names = [self.node_policy, self.kube2iam_policy, self.pod_policy]
        if len(set(names)) != len(names):
            raise UsageError("invalid iam policies: node_policy, kube2iam_policy and pod_policy must differ")


_SECTIONS = {o.path.rsplit(".", 1)[0] for o in SCHEMA if "." in o.path}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path in _SECTIONS:
            if _is_null(value):
                continue
            if not isinstance(value, dict):
                children = ", ".join(o.path.rsplit(".", 1)[1] for o in SCHEMA if o.path.startswith(path + "."))
                raise UsageError(f"invalid {path}: expected a mapping of settings ({children}), "
                                 f"not {_kind(value)}")
            out.update(_flatten(value, path + "."))
        elif path in _BY_PATH or not isinstance(value, dict) or not value:
            out[path] = value
        else:
            out.update(_flatten(value, path + "."))
    return out


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, Text) and value.yaml_type == "null" and not value.quoted)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"the value {shown(value)}"


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int):
        super().__init__(key)
        self.key, self.line = key, line


def _strict_loader():
    """yaml.SafeLoader that keeps every scalar as the text written (a `Text` that remembers what
    YAML 1.1 would have made of it) and refuses duplicate keys."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    def scalar(loader, node):
        text = Text(node.value)
        text.yaml_type = node.tag.rsplit(":", 1)[-1]
        text.quoted = node.style is not None
        return text

    for tag in ("str", "int", "float", "bool", "null", "timestamp"):
        Loader.add_constructor(f"tag:yaml.org,2002:{tag}", scalar)
    return Loader


def load(path: str | Path | None) -> Config:
    """Read rbacbridge.yaml (if given) over the defaults."""
    if path is None:
        config = Config()
        config.check_consistency()
        return config
    import yaml

    file = Path(path)
    where = shown(str(path))
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read config {where}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"config {where} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        data = yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise UsageError(f"config {where}: duplicate key {shown(exc.key)} at line {exc.line} (each setting once)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        raise UsageError(f"config {where} is not valid YAML{line}" + (f": {problem}" if problem else "")) from None
    if _is_null(data):
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"config {where} must be a mapping of settings, not {_kind(data)}")
    values: dict[str, Any] = {}
    for key, value in _flatten(data).items():
        option = _BY_PATH.get(key)
        if option is None:
            raise UsageError(f"unknown setting {shown(key)} in config {where} (see `rbacbridge config-reference`)")
        if _is_null(value):
            if option.default in (None, ()):
                continue
            raise UsageError(f"invalid {key}: empty (remove the line to use the default, {option.default})")
        values[option.field] = option.check(key, value)
    config = Config(**values, explicit=frozenset(values))
    config.check_consistency()
    return config
