"""kube2iam's role matching, as kube2iam itself does it (read from jtblin/kube2iam, not guessed).

- A pod's role: the `iam.amazonaws.com/role` annotation made a full ARN by `iam.RoleARN` (iam/arn.go):
  a value starting with `arn:` (any case) is kept as is, anything else gets `--base-role-arn` in front
  (cmd/main.go adds the trailing `/`; `--auto-discover-base-arn` gives `arn:aws:iam::ACCOUNT:role/`).
  No annotation: the default role (`--default-role`, made an ARN the same way).
- With `--namespace-restrictions` (mappings/mapper.go, checkRoleForNamespace) the role is handed out when
  it is the default role, or when one entry of the namespace's `iam.amazonaws.com/allowed-roles` (a JSON
  list of strings; anything else allows nothing) matches: each entry is first made an ARN like a role
  name, then compared with the pod's role ARN
  - `--namespace-restriction-format=glob` (the default): ryanuber/go-glob. Only `*` is special and it
    matches any run of characters, `/` included (not Go's filepath.Match); `?` and `[` are literal;
    the whole ARN must match.
  - `regexp`: Go's regexp.MatchString, which *searches*: an entry matches anywhere in the ARN unless
    anchored, so `app` allows `arn:...:role/app-admin` and `.` matches any character. An entry that is
    not a valid RE2 expression matches nothing (kube2iam logs an error).
- Without `--namespace-restrictions` every role the node role can assume is handed to any pod.

Pure functions; no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

GLOB, REGEXP = "glob", "regexp"
ALLOWED_ROLES_KEY = "iam.amazonaws.com/allowed-roles"  # kube2iam's default --namespace-key
ROLE_KEY = "iam.amazonaws.com/role"  # kube2iam's default --iam-role-key


def role_arn(value: str, base_arn: str | None) -> str:
    """kube2iam's iam.RoleARN: full ARNs stay, anything else gets the base ARN in front."""
    if value.lower().startswith("arn:"):
        return value
    return f"{base_arn or ''}{value}"


def normalise_base(base_arn: str | None) -> str | None:
    """`--base-role-arn` as kube2iam keeps it: with a trailing `/` (cmd/main.go)."""
    if not base_arn:
        return None
    return base_arn if base_arn.endswith("/") else base_arn + "/"


def glob_match(pattern: str, subject: str) -> bool:
    """ryanuber/go-glob's Glob: `*` matches any run of characters (slashes too); nothing else is special."""
    if pattern == "":
        return subject == ""
    return _glob_regex(pattern).fullmatch(subject) is not None


@lru_cache(maxsize=4096)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


# RE2 (Go's regexp) has no lookaround and no backreferences: Python would accept them, Go refuses the pattern.
_NOT_RE2 = re.compile(r"\(\?(?:[=!]|<[=!])|\\[1-9]")


@lru_cache(maxsize=4096)
def go_regexp(pattern: str) -> re.Pattern[str] | None:
    """The pattern as Go would compile it, or None when Go's regexp refuses it."""
    if _NOT_RE2.search(pattern):
        return None
    try:
        return re.compile(pattern.replace(r"\z", r"\Z"))
    except re.error:
        return None


def regexp_match(pattern: str, subject: str) -> bool:
    """Go's regexp.MatchString: a search, not a full match."""
    compiled = go_regexp(pattern)
    return compiled is not None and compiled.search(subject) is not None


def allowed_patterns(raw: str | None) -> list[str] | None:
    """The annotation as kube2iam decodes it: None when absent or empty, [] when not a JSON list of strings."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return []
    return value


@dataclass(frozen=True)
class Kube2iamSettings:
    """What decides which role a pod gets: from the live DaemonSet's args, else from the configuration."""

    restrictions: bool = False
    format: str = GLOB  # --namespace-restriction-format
    base_arn: str | None = None  # normalised (trailing /)
    default_role_arn: str | None = None  # None: no default role; the node role's ARN for --auto-discover-default-role
    namespace_key: str = ALLOWED_ROLES_KEY
    source: str = ""  # "DaemonSet kube-system/kube2iam" or "config"

    def pod_role(self, annotation: str | None) -> str | None:
        """The ARN kube2iam asks STS for, for a pod with this annotation (None: no role at all)."""
        if annotation is None:
            return self.default_role_arn
        return role_arn(annotation, self.base_arn)

    def pattern_matches(self, pattern: str, arn: str) -> bool:
        normalised = role_arn(pattern, self.base_arn)
        if self.format == REGEXP:
            return regexp_match(normalised, arn)
        return glob_match(normalised, arn)

    def matching_pattern(self, patterns: list[str] | None, arn: str) -> str | None:
        for pattern in patterns or ():
            if self.pattern_matches(pattern, arn):
                return pattern
        return None

    def allows(self, patterns: list[str] | None, arn: str) -> bool:
        """kube2iam's checkRoleForNamespace for a namespace with these allowed-roles (None: unannotated)."""
        if not self.restrictions or arn == self.default_role_arn:
            return True
        return self.matching_pattern(patterns, arn) is not None


def settings_from_flags(flags: dict[str, str], source: str, node_role_arn: str | None = None,
                        account: str | None = None) -> Kube2iamSettings:
    """kube2iam's settings from its parsed command line (rbacbridge.audit.kube2iam.parse_flags)."""
    truthy = ("true", "1", "t", "yes")
    base = normalise_base(flags.get("base-role-arn"))
    if not base and (flags.get("auto-discover-base-arn", "").lower() in truthy
                     or flags.get("auto-discover-default-role", "").lower() in truthy) and account:
        partition = node_role_arn.split(":")[1] if node_role_arn and node_role_arn.count(":") >= 5 else "aws"
        base = f"arn:{partition}:iam::{account}:role/"
    default = None
    if flags.get("auto-discover-default-role", "").lower() in truthy:
        default = node_role_arn
    elif flags.get("default-role"):
        default = role_arn(flags["default-role"], base)
    fmt = (flags.get("namespace-restriction-format") or GLOB).lower()
    return Kube2iamSettings(restrictions=flags.get("namespace-restrictions", "").lower() in truthy,
                            format=REGEXP if fmt == REGEXP else GLOB, base_arn=base, default_role_arn=default,
                            namespace_key=flags.get("namespace-key") or ALLOWED_ROLES_KEY, source=source)
