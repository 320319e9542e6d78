"""One validator per kind of setting: each returns the cleaned value or raises UsageError (one line).

A validator takes the setting's name as the user wrote it (`iam.node_role`, `--node-role`) and the value;
the option table (`schema.SCHEMA`) names the validator of each setting.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable

from rbacbridge.config.values import Text, _as_list, _fail, _key, _number, _text, _whole

# Every pattern is ASCII-only (no \w or \d: they match the letters and digits of every script).

_IAM_NAME = re.compile(r"[A-Za-z0-9_+=,.@-]+")
_ACCOUNT_ID = re.compile(r"[0-9]{12}")
_INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_IFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}\+?")
_IMAGE = re.compile(r"[a-z0-9]+([._/:@-][A-Za-z0-9_.-]+)*")
_LABEL_SELECTOR = re.compile(r"[A-Za-z0-9_./=!,() -]*")
_SSH_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_ENDPOINT = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(/[!-~]*)?")


def account_id(key: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = _text(key, value)
    if not _ACCOUNT_ID.fullmatch(text):
        raise _fail(key, value, "an AWS account id is exactly 12 digits 0-9")
    return text


def region(key: str, value: Any) -> str:
    """The shape of a region name only; its partition (and a warning for a region botocore does not list)
    comes from botocore's data when an ARN is first built (`Config.partition`)."""
    from rbacbridge.config.partitions import well_formed

    text = _text(key, value)
    if not well_formed(text):
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
