"""Recognise kube2iam (and other metadata interceptors) in live DaemonSets and read their settings.

Pure functions over the API objects: any name, any namespace, Helm-labelled or not. A container is
kube2iam when its image is `.../kube2iam[:tag|@digest]`, or its command is `kube2iam`, or its args carry
kube2iam's own `--base-role-arn` / `--auto-discover-base-arn`. Flags are read the way kube2iam's
pflag parser reads them (`--flag=value`, `--flag value`, bare booleans), with kube2iam's defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

KUBE2IAM_DEFAULT_PORT = 8181  # kube2iam's own default for --app-port
KIAM_AGENT_DEFAULT_PORT = 3100  # kiam agent's own default for --port (uswitch/kiam cmd/kiam/agent.go)
KUBE2IAM_DEFAULT_INTERFACE = "docker0"  # kube2iam's own default for --host-interface
IMDSV2_VERSION = (0, 13, 0)  # first upstream image with IMDSv2 (token) support
_BOOL_FLAGS = {"debug", "iptables", "auto-discover-default-role", "auto-discover-base-arn", "namespace-restrictions",
               "verbose", "use-regional-sts-endpoint", "version", "insecure"}
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")
# Flags whose values are never shown (kube2iam's --api-token; anything else that looks like a secret).
_SECRET_FLAG = re.compile(r"token|secret|password|passwd|credential|(^|-)key($|-)", re.IGNORECASE)
HELM_LABELS = (("app.kubernetes.io/managed-by", "Helm"), ("heritage", "Helm"))
# DaemonSet pods the DaemonSet controller tolerates without being told (kubernetes docs, "Taints and
# tolerations" added automatically to DaemonSet pods).
AUTO_TOLERATIONS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable", "node.kubernetes.io/disk-pressure",
                    "node.kubernetes.io/memory-pressure", "node.kubernetes.io/pid-pressure",
                    "node.kubernetes.io/unschedulable", "node.kubernetes.io/network-unavailable")


def image_name(image: str) -> str:
    """`registry:5000/jtblin/kube2iam:0.11.2@sha256:..` -> `kube2iam`."""
    path = image.split("@", 1)[0]
    last = path.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def image_tag(image: str) -> str | None:
    path = image.split("@", 1)[0]
    last = path.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def image_version(image: str) -> tuple[int, int, int] | None:
    """(0, 11, 2) from a tag like `0.11.2` / `v0.11.2` / `0.13.0-alpine`; None for latest, digests, etc."""
    tag = image_tag(image)
    m = _VERSION.match(tag or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def parse_flags(tokens: list[str]) -> dict[str, str]:
    """`--flag=value`, `--flag value` (non-boolean flags), `--flag` (booleans: "true")."""
    flags: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = str(tokens[i])
        i += 1
        if not token.startswith("-"):
            continue
        name = token.lstrip("-")
        if "=" in name:
            name, value = name.split("=", 1)
        elif name in _BOOL_FLAGS:
            value = "true"
        elif i < len(tokens) and not str(tokens[i]).startswith("-"):
            value = str(tokens[i])
            i += 1
        else:
            value = "true"
        flags[name] = value
    return flags


def redact(tokens: list[str]) -> list[str]:
    """The args with secret-looking flag values replaced by ***, for evidence and JSON."""
    out: list[str] = []
    hide_next = False
    for token in tokens:
        if hide_next and not token.startswith("-"):
            out.append("***")
            hide_next = False
            continue
        hide_next = False
        name = token.lstrip("-")
        if token.startswith("-") and _SECRET_FLAG.search(name.split("=", 1)[0]):
            if "=" in name:
                out.append(token.split("=", 1)[0] + "=***")
                continue
            hide_next = True
        out.append(token)
    return out


def _truthy(value: str | None) -> bool:
    return str(value).lower() in ("true", "1", "t", "yes")


def _is_kube2iam(container: dict[str, Any]) -> bool:
    if image_name(str(container.get("image", ""))) == "kube2iam":
        return True
    command = [str(c) for c in container.get("command") or []]
    if command and command[0].rsplit("/", 1)[-1] == "kube2iam":
        return True
    flags = parse_flags([*command, *(container.get("args") or [])])
    return "base-role-arn" in flags or "auto-discover-base-arn" in flags


def is_kiam_agent(container: dict[str, Any]) -> bool:
    """A kiam agent container: image `kiam` running `agent` (the kiam server runs `server`)."""
    words = [str(w) for w in (container.get("command") or []) + (container.get("args") or [])]
    return image_name(str(container.get("image", ""))) == "kiam" and "agent" in words


@dataclass
class Interceptor:
    """A DaemonSet that intercepts the pods' calls to 169.254.169.254."""

    tool: str  # kube2iam | kiam
    namespace: str
    name: str
    uid: str
    container: str
    image: str
    args: list[str]
    flags: dict[str, str]
    labels: dict[str, str]
    template: dict[str, Any]  # pod template spec
    selector: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"DaemonSet {self.namespace}/{self.name}"

    @property
    def helm(self) -> bool:
        return any(self.labels.get(k) == v for k, v in HELM_LABELS) or "helm.sh/chart" in self.labels

    @property
    def port(self) -> int:
        """kube2iam's --app-port (default 8181); a kiam agent's --port (default 3100)."""
        flag, default = ("port", KIAM_AGENT_DEFAULT_PORT) if self.tool == "kiam" else ("app-port", KUBE2IAM_DEFAULT_PORT)
        try:
            return int(self.flags.get(flag, default))
        except ValueError:
            return default

    @property
    def interface(self) -> str:
        return self.flags.get("host-interface", KUBE2IAM_DEFAULT_INTERFACE)

    @property
    def version(self) -> tuple[int, int, int] | None:
        return image_version(self.image)

    @property
    def debug(self) -> bool:
        return _truthy(self.flags.get("debug"))

    @property
    def namespace_restrictions(self) -> bool:
        return _truthy(self.flags.get("namespace-restrictions"))

    @property
    def auto_discover_default_role(self) -> bool:
        return _truthy(self.flags.get("auto-discover-default-role"))

    @property
    def default_role(self) -> str | None:
        return self.flags.get("default-role") or None

    @property
    def base_role_arn(self) -> str | None:
        return self.flags.get("base-role-arn") or None

    def default_role_evidence(self) -> str:
        if self.auto_discover_default_role:
            return "--auto-discover-default-role"
        return f"--default-role={self.default_role}" if self.default_role else "no default role"

    def summary(self) -> str:
        parts = [f"image {self.image}", f"port {self.port}", f"interface {self.interface}"]
        parts.append("Helm-labelled" if self.helm else "not Helm-labelled")
        return ", ".join(parts) + "; args: " + " ".join(self.shown_args)

    @property
    def shown_args(self) -> list[str]:
        return redact(self.args)

    def owns(self, pod: dict[str, Any]) -> bool:
        meta = pod.get("metadata") or {}
        if any(ref.get("uid") == self.uid and ref.get("kind") == "DaemonSet" for ref in meta.get("ownerReferences") or []):
            return True
        if meta.get("namespace") != self.namespace or not self.selector:
            return False
        labels = meta.get("labels") or {}
        return all(labels.get(k) == v for k, v in self.selector.items())

    # -- scheduling: would the DaemonSet put a pod on this node? --

    def unschedulable_reason(self, node: dict[str, Any]) -> str | None:
        spec = self.template
        labels = (node.get("metadata") or {}).get("labels") or {}
        wanted = spec.get("nodeSelector") or {}
        mismatched = [f"{k}={v}" for k, v in wanted.items() if labels.get(k) != v]
        if mismatched:
            return f"nodeSelector {', '.join(mismatched)} does not match the node's labels"
        tolerations = spec.get("tolerations") or []
        for taint in (node.get("spec") or {}).get("taints") or []:
            if taint.get("effect") not in ("NoSchedule", "NoExecute"):
                continue
            if taint.get("key") in AUTO_TOLERATIONS:
                continue
            if not any(_tolerates(t, taint) for t in tolerations):
                return f"taint {taint_text(taint)} not tolerated"
        return None


def taint_text(taint: dict[str, Any]) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key')}{value}:{taint.get('effect')}"


def _tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
        return False
    operator = toleration.get("operator") or "Equal"
    if not toleration.get("key"):
        return operator == "Exists"
    if toleration.get("key") != taint.get("key"):
        return False
    return operator == "Exists" or (toleration.get("value") or "") == (taint.get("value") or "")


def find_interceptors(daemonsets: list[dict[str, Any]]) -> list[Interceptor]:
    found = []
    for ds in daemonsets:
        meta = ds.get("metadata") or {}
        template = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
        for container in template.get("containers") or []:
            tool = "kube2iam" if _is_kube2iam(container) else "kiam" if is_kiam_agent(container) else None
            if tool is None:
                continue
            tokens = [str(t) for t in (container.get("command") or [])[1:] + (container.get("args") or [])]
            found.append(Interceptor(
                tool=tool, namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
                container=container.get("name", ""), image=str(container.get("image", "")), args=tokens,
                flags=parse_flags(tokens), labels=meta.get("labels") or {}, template=template,
                selector=(((ds.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})))
            break  # one interceptor per DaemonSet
    return found
