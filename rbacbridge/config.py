"""Configuration: the article's values as defaults, `rbacbridge.yaml` over them, flags over that.

Everything is validated here, before any outside system is called.
"""

from __future__ import annotations

import ipaddress
import re
from contextvars import ContextVar
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
    (`yaml_type`: str, int, float, bool, null, timestamp), whether it was quoted and its line."""

    yaml_type = "str"
    quoted = True
    line = 0


# True while a config file's text is read and checked: its values are never quoted back in an error line
# (`-c .env` must not print `AWS_ACCESS_KEY_ID=AKIA...`); the setting and the line say where to look.
_READING_FILE: ContextVar[bool] = ContextVar("rbacbridge_reading_config_file", default=False)
_SETTING_NAME = re.compile(r"[a-z][a-z0-9_]{0,40}(\[[0-9]{1,4}\])?(\.[a-z][a-z0-9_]{0,40}(\[[0-9]{1,4}\])?){0,3}")


def _quote(value: Any) -> str:
    """How an error line names a bad value: quoted (shortened) when it came from a flag; from a config file
    only its line, never the value."""
    line = getattr(value, "line", 0) if isinstance(value, Text) else 0
    if line:
        return f"(line {line})"
    if isinstance(value, Text) or _READING_FILE.get():
        return "(in the config file)"
    return shown(value)


def _key(text: Any) -> str:
    """A key of the config file, quoted only when it looks like a setting's name (a typo worth showing)."""
    return shown(str(text)) if _SETTING_NAME.fullmatch(str(text)) else "(a key that is no setting name, not shown)"


def _piece(whole: Any, part: str) -> Any:
    """A part of a file's scalar (a bucket of `bucket/prefix/*`, an item of `a, b`), keeping its line."""
    if not isinstance(whole, Text):
        return part
    text = Text(part)
    text.line = whole.line
    return text


def _fail(key: str, value: Any, why: str) -> UsageError:
    return UsageError(f"invalid {key} {_quote(value)}: {why}")


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


def iam_key(name: str) -> str:
    """An IAM name (role, policy, instance profile) as IAM compares it: names are not distinguished by case."""
    return name.casefold()


# The install id names the KMS alias alias/rbacbridge/<id> and the tag rbacbridge:install=<id>.
_INSTALL_ID = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?")


def install_id(key: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    text = _text(key, value)
    if not _INSTALL_ID.fullmatch(text):
        raise _fail(key, value, "an install id is 1-64 of a-z 0-9 _ - (starting and ending with a letter or digit)")
    return text


def derived_install_id(profile: str) -> str:
    """The default install id: the instance profile's name (one install owns one profile), lower-cased
    (IAM names are unique regardless of case); a name with other characters gets a hash suffix so
    that two profile names never map to one id."""
    lowered = profile.lower()
    if _INSTALL_ID.fullmatch(lowered):
        return lowered
    import hashlib

    base = re.sub(r"[^a-z0-9_-]+", "-", lowered).strip("-_")[:55].strip("-_") or "install"
    return f"{base}-{hashlib.sha256(lowered.encode()).hexdigest()[:8]}"


_KMS_KEY = re.compile(r"(?:arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:)?(?:key/(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
                      r"|mrk-[0-9a-f]{32})|alias/[A-Za-z0-9/_-]{1,250})")
_KMS_KEY_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32}")


def kms_key(key: str, value: Any) -> str | None:
    """A KMS key by ARN, key id, alias name (alias/...) or alias ARN."""
    if value in (None, ""):
        return None
    text = _text(key, value)
    if _KMS_KEY_ID.fullmatch(text):
        return text
    if not _KMS_KEY.fullmatch(text) or (not text.startswith("arn:") and text.startswith("key/")):
        raise _fail(key, value, "expected a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID), a key id, or an alias (alias/NAME or its ARN)")
    if text.startswith("alias/aws/") or ":alias/aws/" in text:
        raise _fail(key, value, "alias/aws/... names an AWS managed key, which cannot sign")
    return text


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


_POLICY_ARN = re.compile(r"arn:aws[a-z-]*:iam::(aws|[0-9]{12}):policy/(?:[A-Za-z0-9_+=,.@-]+/)*[A-Za-z0-9_+=,.@-]{1,128}")


def policy_arns(key: str, value: Any) -> tuple[str, ...]:
    items = [_text(key, item) for item in _as_list(key, value)]
    for item in items:
        if not _POLICY_ARN.fullmatch(item):
            raise _fail(key, item, "a managed policy ARN looks like arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore")
    return tuple(dict.fromkeys(items))


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


def ports(key: str, value: Any) -> tuple[int, ...]:
    return tuple(dict.fromkeys(port(key, item) for item in _as_list(key, value)))


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
                raise _fail(key, dict(raw), f"unknown toleration field {_key(name)} (key, operator, value, effect, tolerationSeconds)")
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
    if "@" in text.split("://", 1)[-1].split("/", 1)[0]:
        # requests are signed with the AWS credentials; a user:password here would only be sent in clear
        # (and echoed): refused, and never quoted (shown() drops the user-info)
        raise _fail(key, value, "remove the user:password@ part: AWS requests are signed with your credentials, "
                                "an endpoint URL carries none")
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
        return [_piece(value, v) for v in re.split(r"[,\s]+", text) if v]
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


# --- tenants ----------------------------------------------------------------------------------
#
# `tenants:` is a list of mappings, not dotted settings: it is read by `tenants()` below. Without
# the key the article's single tenant is built from the legacy keys (iam.pod_role, iam.pod_policy,
# buckets.tenant, kubernetes.namespace), producing exactly the resources of earlier versions.

# For `rbacbridge config-reference`: (path, default, help), after SCHEMA.
TENANT_REFERENCE: tuple[tuple[str, str, str], ...] = (
    ("tenants", "(the article's one)", "list of tenants; without it: one tenant nginx-annotated from iam.pod_role, iam.pod_policy, buckets.tenant, kubernetes.namespace"),
    ("tenants[].name", "required", "tenant name (Kubernetes name rules), unique; in messages, tags rbacbridge:tenant, labels"),
    ("tenants[].namespaces", "required", "its namespaces (one or more); a namespace belongs to one tenant (allowed-roles is per namespace)"),
    ("tenants[].role", "required", "role NAME rbacbridge creates, or {existing: ARN}: a role rbacbridge only links, never changes"),
    ("tenants[].policy", "the role name", "name of the created role's S3 policy (only with read or write)"),
    ("tenants[].read", "-", "buckets (bucket or bucket/prefix/*) it may list and read"),
    ("tenants[].write", "-", "buckets (bucket or bucket/prefix/*) it may list, read, write and delete in"),
    ("tenants[].workloads", "-", "nginx Deployments setup creates in its first namespace, annotated with its role (for verify)"),
)
LEGACY_TENANT = "nginx-annotated"
LEGACY_KEYS = ("iam.pod_role", "iam.pod_policy", "buckets.tenant")
TENANT_KEYS = ("name", "namespaces", "role", "policy", "read", "write", "workloads")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::([0-9]{12}):role/(?:[A-Za-z0-9_+=,.@-]+/)*([A-Za-z0-9_+=,.@-]{1,64})")
_S3_KEY_PART = re.compile(r"[A-Za-z0-9!_.'()-]+")


@dataclass(frozen=True)
class Tenant:
    """One tenant: its namespaces, the role kube2iam hands its pods, what that role may do in S3."""

    name: str  # DNS label, unique among tenants; used in messages, tags, JSON keys
    namespaces: tuple[str, ...]  # >= 1; a namespace belongs to at most one tenant
    role: str  # IAM role name kube2iam hands this tenant's pods
    existing_role_arn: str | None = None  # `role: {existing: ARN}`: linked only, never created/changed/deleted
    policy: str | None = None  # policy of a created role (default: the role name); None: existing role or no grants
    read: tuple[str, ...] = ()  # "bucket" or "bucket/prefix/*"
    write: tuple[str, ...] = ()  # same forms; write includes read
    workloads: tuple[str, ...] = ()  # nginx Deployments setup creates in namespaces[0], annotated with the role
    legacy: bool = field(default=False, compare=False)  # built from the legacy keys (no `tenants:` in the file)

    @property
    def managed(self) -> bool:
        """rbacbridge creates, updates and deletes this tenant's role (and policy)."""
        return self.existing_role_arn is None

    @property
    def namespace(self) -> str:
        """Where the tenant's workloads run."""
        return self.namespaces[0]

    def role_arn(self, account: str) -> str:
        return self.existing_role_arn or f"arn:aws:iam::{account}:role/{self.role}"


def bucket_grant(key: str, value: Any) -> str:
    """"bucket" or "bucket/prefix/*" (object keys under the prefix); "bucket/*" is the bucket."""
    text = _text(key, value)
    bucket, slash, rest = text.partition("/")
    bucket_name(key, _piece(value, bucket))
    if not slash or rest == "*":
        return bucket
    if not rest.endswith("/*") or not all(_S3_KEY_PART.fullmatch(p) for p in rest[:-2].split("/")):
        raise _fail(key, value, "expected a bucket name or bucket/prefix/* (prefix parts of letters, digits and !_.'()-)")
    return text


def grant_bucket(grant: str) -> str:
    return grant.split("/", 1)[0]


def grant_objects_arn(grant: str) -> str:
    """The object ARN a grant covers: arn:aws:s3:::bucket/* or arn:aws:s3:::bucket/prefix/*."""
    return f"arn:aws:s3:::{grant}" if "/" in grant else f"arn:aws:s3:::{grant}/*"


def _tenant_list(key: str, value: Any, check: Callable[[str, Any], Any], minimum: int = 0) -> tuple:
    if _is_null(value):
        value = []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise UsageError(f"invalid {key}: expected a list, not {_kind(value)}")
    items = tuple(check(key, item) for item in value)
    if len(items) < minimum:
        raise UsageError(f"invalid {key}: at least one entry")
    seen: set = set()
    for item in items:
        if item in seen:
            raise _fail(key, item, "listed twice")
        seen.add(item)
    return items


def _tenant_role(key: str, value: Any) -> tuple[str, str | None]:
    """`role: NAME` (rbacbridge's) or `role: {existing: ARN}` (linked only)."""
    if isinstance(value, dict):
        if set(map(str, value)) != {"existing"}:
            raise UsageError(f"invalid {key}: a mapping here is {{existing: ARN}} only, not {', '.join(map(_key, value))}")
        arn = _text(f"{key}.existing", value["existing"])
        match = _ROLE_ARN.fullmatch(arn)
        if not match:
            raise _fail(f"{key}.existing", arn, "an IAM role ARN looks like arn:aws:iam::111122223333:role/NAME")
        return match.group(2), arn
    return role_name(key, value), None


def tenant(index: int, raw: Any) -> Tenant:
    """One entry of `tenants:`, validated on its own (checks across tenants are in check_tenants)."""
    where = f"tenants[{index}]"
    if not isinstance(raw, dict):
        raise UsageError(f"invalid {where}: expected a mapping ({', '.join(TENANT_KEYS)}), not {_kind(raw)}")
    for key in raw:
        if str(key) not in TENANT_KEYS:
            raise UsageError(f"unknown setting {_key(f'{where}.{key}')} (a tenant has {', '.join(TENANT_KEYS)})")
    values = {str(k): v for k, v in raw.items() if not _is_null(v) or str(k) in ("read", "write", "workloads")}
    for required in ("name", "namespaces", "role"):
        if required not in values:
            raise UsageError(f"invalid {where}: {required} is required")
    name = k8s_name(f"{where}.name", values["name"])
    namespaces = _tenant_list(f"{where}.namespaces", values["namespaces"], k8s_name, minimum=1)
    role, existing = _tenant_role(f"{where}.role", values["role"])
    read = _tenant_list(f"{where}.read", values.get("read"), bucket_grant)
    write = _tenant_list(f"{where}.write", values.get("write"), bucket_grant)
    for grant in read:
        if grant in write:
            raise _fail(f"{where}.read", grant, "also under write, which includes read: list it once, under write")
    workloads = _tenant_list(f"{where}.workloads", values.get("workloads"), k8s_name)
    policy = None
    if "policy" in values:
        policy = policy_name(f"{where}.policy", values["policy"])
        if existing:
            raise _fail(f"{where}.policy", policy, "an existing role is never changed: rbacbridge attaches no policy to it")
        if not (read or write):
            raise _fail(f"{where}.policy", policy, "the tenant has no read or write grants, so there is no policy")
    elif not existing and (read or write):
        policy = role
    for label, text in ((f"{where}.role", role if not existing else ""), (f"{where}.policy", policy or "")):
        if "," in text:
            raise _fail(label, text, "rbacbridge records the names it creates in IAM tags, which cannot hold ','")
    return Tenant(name, namespaces, role, existing, policy, read, write, workloads)


def tenants(value: Any) -> tuple[Tenant, ...]:
    if _is_null(value):
        raise UsageError("invalid tenants: empty (write `tenants: []` for no tenants, or remove the key for the article's one)")
    if not isinstance(value, (list, tuple)):
        raise UsageError(f"invalid tenants: expected a list of tenants, not {_kind(value)}")
    return tuple(tenant(i, raw) for i, raw in enumerate(value))


def legacy_tenant(config: "Config") -> Tenant:
    """The article's one tenant, from iam.pod_role / iam.pod_policy / buckets / kubernetes.namespace."""
    return Tenant(LEGACY_TENANT, (config.namespace,), config.pod_role, None, config.pod_policy,
                  (config.shared_bucket,), (config.tenant_bucket,), (LEGACY_TENANT,), legacy=True)


@dataclass(frozen=True)
class Config:
    account_id: str | None = None
    region: str = "us-east-1"
    profile: str | None = None
    endpoint_url: str | None = None
    node_policy: str = "nettech-s3-read-only"
    node_role: str = "nettech-s3-read-only"
    instance_profile: str = "nettech-instance-profile"
    node_role_extra_policies: tuple[str, ...] = ()
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
    node_stale_ports: tuple[int, ...] = ()
    ssh_connect_timeout: float = 10.0
    ssh_command_timeout: float = 60.0
    node_parallelism: int = 64
    node_via: str = "auto"
    node_pod_image: str | None = None
    node_pod_namespace: str | None = None
    probe_image: str = "amazon/aws-cli:2.22.0"
    install_id: str | None = None  # None: derived from instance_profile (see effective_install_id)
    record_kms_key: str | None = None  # None: setup creates the key behind alias/rbacbridge/<install id>
    # None: no `tenants:` in the file, the article's one tenant from the legacy keys (recomputed on
    # every replace(), so --namespace and friends reach it).
    tenants: tuple[Tenant, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # Fields set by the config file or a flag (not defaults): the region falls back to the
    # environment and the AWS profile only when it is not set here.
    explicit: frozenset = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        if self.tenants is None or (len(self.tenants) == 1 and self.tenants[0].legacy):
            object.__setattr__(self, "tenants", (legacy_tenant(self),))
        else:
            object.__setattr__(self, "tenants", tuple(self.tenants))

    @property
    def legacy_tenants(self) -> bool:
        """No `tenants:` in the file: the one tenant comes from iam.pod_role, iam.pod_policy, buckets.tenant."""
        return len(self.tenants) == 1 and self.tenants[0].legacy

    def tenant(self, name: str) -> Tenant:
        for candidate in self.tenants:
            if candidate.name == name:
                return candidate
        known = ", ".join(t.name for t in self.tenants) or "none"
        raise UsageError(f"unknown tenant {shown(name)} (tenants: {known})")

    def tenant_of_namespace(self, namespace: str) -> Tenant | None:
        for candidate in self.tenants:
            if namespace in candidate.namespaces:
                return candidate
        return None

    @property
    def effective_install_id(self) -> str:
        return self.install_id or derived_install_id(self.instance_profile)

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
        roles = ", ".join(t.role for t in self.tenants) or "no tenant role"
        return (f"kube2iam.default_role={self.default_role} hands every unannotated pod the node role {self.node_role}, "
                f"which may sts:AssumeRole {roles}: any pod can chain into it "
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
        if not self.legacy_tenants:
            for name in cleaned:
                if _BY_FIELD[name].path in LEGACY_KEYS:
                    label = (flags or {}).get(name) or _BY_FIELD[name].path
                    raise UsageError(f"{label} is a legacy setting and the config has tenants: set the tenant's role, "
                                     "policy or write in tenants: instead")
        config = replace(self, explicit=self.explicit | frozenset(cleaned), **cleaned)
        config.check_consistency()
        return config

    def check_consistency(self) -> None:
        # IAM names are compared as IAM does (not distinguished by case): Client-C-S3 is client-c-s3.
        if self.legacy_tenants:
            self._check_legacy()
            return
        if iam_key(self.pod_default_role) == iam_key(self.node_role):
            raise UsageError(f"invalid iam.default_role {_quote(self.pod_default_role)}: the pods' default role must differ "
                             "from the node role (kube2iam.default_role: node hands pods the node role; IAM names ignore case)")
        if iam_key(self.node_policy) == iam_key(self.kube2iam_policy):
            raise UsageError("invalid iam policies: node_policy and kube2iam_policy must differ (IAM names ignore case)")
        check_tenants(self)

    def _check_legacy(self) -> None:
        node, pod = iam_key(self.node_role), iam_key(self.pod_role)
        if node == pod:
            raise UsageError(f"invalid iam.pod_role {_quote(self.pod_role)}: the pod role must differ from the node role "
                             "(IAM names ignore case)")
        if iam_key(self.pod_default_role) in (node, pod):
            raise UsageError(f"invalid iam.default_role {_quote(self.pod_default_role)}: the pods' default role must differ "
                             "from the node role and the pod role (kube2iam.default_role: node hands pods the node role; "
                             "IAM names ignore case)")
        if iam_key(self.default_role) == pod:
            raise UsageError(f"invalid kube2iam.default_role {_quote(self.default_role)}: every unannotated pod would get "
                             "the pod role; use dedicated (iam.default_role) or another role")
        if self.shared_bucket == self.tenant_bucket:
            raise UsageError("invalid buckets: buckets.shared and buckets.tenant must differ")
        names = [iam_key(n) for n in (self.node_policy, self.kube2iam_policy, self.pod_policy)]
        if len(set(names)) != len(names):
            raise UsageError("invalid iam policies: node_policy, kube2iam_policy and pod_policy must differ (IAM names ignore case)")


def check_tenants(config: Config) -> None:
    """What no single tenant entry shows: names, namespaces, roles, policies and workloads that collide."""
    names: dict[str, int] = {}
    namespaces: dict[str, str] = {}
    roles: dict[str, str] = {}
    policies: dict[str, str] = {}
    workloads: dict[tuple[str, str], str] = {("nginx-vanilla", config.namespace): "rbacbridge's nginx-vanilla"}
    # Keyed by iam_key: IAM does not distinguish names by case (NetTech-Pod-Default is nettech-pod-default).
    reserved_roles = {iam_key(config.node_role): "the node role (iam.node_role)"}
    if config.manages_default_role:
        reserved_roles[iam_key(config.pod_default_role)] = "the pods' default role (iam.default_role)"
    elif config.default_role not in (NODE, AUTO):
        reserved_roles[iam_key(config.default_role)] = "the role unannotated pods get (kube2iam.default_role)"
    reserved_policies = {iam_key(config.node_policy): "iam.node_policy", iam_key(config.kube2iam_policy): "iam.kube2iam_policy"}
    for index, item in enumerate(config.tenants):
        where = f"tenants[{index}]"
        if item.name in names:
            raise _fail(f"{where}.name", item.name, f"tenants[{names[item.name]}] has the same name (names are unique)")
        names[item.name] = index
        for namespace in item.namespaces:
            if namespace in namespaces:
                raise _fail(f"{where}.namespaces", namespace, f"already a namespace of tenant {namespaces[namespace]}: kube2iam's "
                            "iam.amazonaws.com/allowed-roles is per namespace, so two tenants there could take each other's roles")
            namespaces[namespace] = item.name
        same_account = item.existing_role_arn is None or config.account_id in (None, item.existing_role_arn.split(":")[4])
        role = iam_key(item.role)
        if same_account and role in reserved_roles:
            raise _fail(f"{where}.role", item.existing_role_arn or item.role,
                        f"that is {reserved_roles[role]} (IAM names ignore case); a tenant needs a role of its own")
        if role in roles:
            raise _fail(f"{where}.role", item.role, f"already the role of tenant {roles[role]} (a role serves one tenant; "
                        "IAM names ignore case)")
        roles[role] = item.name
        if item.policy is not None:
            policy = iam_key(item.policy)
            if policy in reserved_policies:
                raise _fail(f"{where}.policy", item.policy, f"that is {reserved_policies[policy]} (IAM names ignore case)")
            if policy in policies:
                raise _fail(f"{where}.policy", item.policy, f"already the policy of tenant {policies[policy]} (IAM names ignore case)")
            policies[policy] = item.name
        for workload in item.workloads:
            key = (workload, item.namespace)
            if key in workloads:
                raise _fail(f"{where}.workloads", workload, f"{workloads[key]} has that name in namespace {item.namespace}")
            workloads[key] = f"tenant {item.name}"


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
    if isinstance(value, Text) or _READING_FILE.get():
        return f"a single value {_quote(value)}"
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
        text.line = node.start_mark.line + 1
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
        raise UsageError(f"config {where} is not UTF-8 text (offset {exc.start})") from None
    return load_text(text, where)


def load_text(text: str, where: str) -> Config:
    """rbacbridge.yaml's text over the defaults; `where` names it in messages (already quoted). An error line
    names the setting and the line, never a value or a text from the file (it may not be a config at all)."""
    token = _READING_FILE.set(True)
    try:
        return _load_text(text, where)
    finally:
        _READING_FILE.reset(token)


def _yaml_problem(problem: str) -> str:
    """PyYAML's problem text without what it quotes from the file (a character, an alias name)."""
    return re.sub(r"'[^']*'|\"[^\"]*\"", "…", problem)


def _load_text(text: str, where: str) -> Config:
    import yaml

    try:
        data = yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise UsageError(f"config {where}: duplicate key {_key(exc.key)} at line {exc.line} (each setting once)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        raise UsageError(f"config {where} is not valid YAML{line}" + (f": {_yaml_problem(problem)}" if problem else "")) from None
    if _is_null(data):
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"config {where} must be a mapping of settings (`key: value` lines), not {_kind(data)}")
    declared = None
    if "tenants" in data:
        data = dict(data)
        declared = tenants(data.pop("tenants"))
    values: dict[str, Any] = {}
    for key, value in _flatten(data).items():
        option = _BY_PATH.get(key)
        if option is None:
            raise UsageError(f"unknown setting {_key(key)} in config {where} (see `rbacbridge config-reference`)")
        if _is_null(value):
            if option.default in (None, ()):
                continue
            raise UsageError(f"invalid {key}: empty (remove the line to use the default, {option.default})")
        values[option.field] = option.check(key, value)
    if declared is not None:
        legacy = [o.path for o in SCHEMA if o.path in LEGACY_KEYS and o.field in values]
        if legacy:
            raise UsageError(f"config {where} has tenants: and the legacy {', '.join(legacy)}: move "
                             f"{'them' if len(legacy) > 1 else 'it'} into a tenant (role, policy, write) and remove the legacy key")
        config = Config(**values, tenants=declared, explicit=frozenset(values) | {"tenants"})
    else:
        config = Config(**values, explicit=frozenset(values))
    config.check_consistency()
    return config
