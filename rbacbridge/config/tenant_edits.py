"""`rbacbridge tenant add / remove / list`: edit the `tenants:` of rbacbridge.yaml.

ruamel.yaml's round-trip parser gives the lines of keys and items; the edit itself is done on the
text (an item's lines added or taken out, a legacy key's line removed), so every other line of the
file, comments and blank lines included, stays byte-identical (a full round-trip dump would re-flow
comments and indentation). The whole resulting configuration is validated before anything is written (bad input: exit 2, file
unchanged), and the new text replaces the file atomically (a temporary file in the same directory,
then rename). Nothing outside the file changes: the CLI prints the plan that would apply it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rbacbridge.config.loading import load_text
from rbacbridge.config.model import Config
from rbacbridge.config.tenancy import LEGACY_KEYS, Tenant, _tenant_role, bucket_grant
from rbacbridge.config.validators import k8s_name, policy_name
from rbacbridge.config.validators import role_name as valid_role_name
from rbacbridge.errors import UsageError, shown


@dataclass
class Edit:
    path: Path
    config: Config  # the configuration the new file holds (validated)
    messages: list[str] = field(default_factory=list)  # what was done, for the user


# --- reading and writing the file --------------------------------------------------------------


def _read(path: Path) -> tuple[Any, Any, str]:
    """(round-trip document: for the positions of keys and items, YAML instance, original text)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError

    from rbacbridge.config.discovery import FLAG, Source, read_bytes

    where = shown(str(path))
    raw = read_bytes(Source(str(path), FLAG), missing_ok=True)  # a regular file of at most 1 MiB, or none yet
    try:
        text = raw.decode("utf-8") if raw is not None else ""
    except UnicodeDecodeError:
        raise UsageError(f"config {where} is not UTF-8 text") from None
    load_text(text, where)  # the file as it is must be valid: never edit what rbacbridge cannot read
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    try:
        data = yaml.load(text) if text.strip() else None
    except YAMLError as exc:  # the strict loader accepted it; ruamel should too
        raise UsageError(f"config {where} cannot be edited: {' '.join(str(exc).split())[:200]}") from None
    if data is None:
        data = CommentedMap()
    if not isinstance(data, dict):
        raise UsageError(f"config {where} must be a mapping of settings")
    return data, yaml, text


def _render(yaml, data) -> str:
    import io

    buffer = io.StringIO()
    yaml.dump(data, buffer)
    return buffer.getvalue()


def _write_atomically(path: Path, text: str) -> None:
    """Replace the file (the target of a link, not the link) by renaming a complete new file over it."""
    target = Path(os.path.realpath(path))
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".rbacbridge-tmp", dir=target.parent)
    except OSError as exc:
        raise UsageError(f"cannot write config {shown(str(path))}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


# --- the edits ----------------------------------------------------------------------------------


def _flow(items) -> Any:
    from ruamel.yaml.comments import CommentedSeq

    seq = CommentedSeq(list(items))
    seq.fa.set_flow_style()
    return seq


def _entry(tenant: Tenant) -> Any:
    """A tenant as a YAML mapping, in the order config-reference lists the keys; defaults left out."""
    from ruamel.yaml.comments import CommentedMap

    entry = CommentedMap()
    entry["name"] = tenant.name
    entry["namespaces"] = _flow(tenant.namespaces)
    if tenant.existing_role_arn:
        role = CommentedMap()
        role["existing"] = tenant.existing_role_arn
        role.fa.set_flow_style()
        entry["role"] = role
    else:
        entry["role"] = tenant.role
    if tenant.policy and tenant.policy != tenant.role:
        entry["policy"] = tenant.policy
    for key in ("read", "write", "workloads"):
        if getattr(tenant, key):
            entry[key] = _flow(getattr(tenant, key))
    return entry


def _convert_legacy(text: str, data, current: Config, messages: list[str]) -> str:
    """No `tenants:` yet: the article's tenant (from the legacy keys) becomes an explicit entry, and
    the legacy keys' lines go (setup then manages exactly the same resources). Other lines unchanged."""
    legacy = current.tenants[0]
    lines = text.splitlines(keepends=True)
    drop: set[int] = set()
    removed = []
    for path in LEGACY_KEYS:
        section, key = path.split(".")
        mapping = data.get(section) if data is not None else None
        if isinstance(mapping, dict) and key in mapping:
            line = mapping.lc.key(key)[0]
            if mapping.lc.value(key)[0] != line:
                raise UsageError(f"cannot convert {path}: its value is not on the line of its key; move it into tenants: by hand")
            drop.add(line)
            removed.append(path)
            if all(mapping.lc.key(k)[0] in drop for k in mapping):
                drop.add(data.lc.key(section)[0])
    text = "".join(line for number, line in enumerate(lines) if number not in drop)
    from ruamel.yaml import YAML

    data = YAML().load(text) if text.strip() else None
    text = _with_item(text, data, _entry(legacy))
    moved = f" ({', '.join(removed)} moved into it)" if removed else ""
    messages.append(f"converted the article's tenant into an explicit entry: tenant {legacy.name}, role {legacy.role}, "
                    f"namespace {legacy.namespace}{moved}; it keeps the same AWS and Kubernetes resources")
    return text


def add(path: str | Path, name: str, namespaces: list[str], read: list[str] = (), write: list[str] = (),
        role: str | None = None, existing_role: str | None = None, policy: str | None = None,
        workloads: list[str] = (), keep_article_tenant: bool = False) -> Edit:
    """Add tenant NAME to the file's `tenants:`. A file without `tenants:` gets only NAME, unless it sets the
    article's tenant itself (the legacy keys) or `keep_article_tenant`: then that tenant becomes an explicit
    entry first. Either way the messages say what became of the article's tenant."""
    path = Path(path)
    name = k8s_name("NAME", name)
    if not namespaces:
        raise UsageError("tenant add needs at least one --namespace")
    if role and existing_role:
        raise UsageError("give --role (a role rbacbridge creates) or --existing-role (one it only links), not both")
    namespaces = [k8s_name("--namespace", n) for n in namespaces]
    read = [bucket_grant("--read", b) for b in read]
    write = [bucket_grant("--write", b) for b in write]
    workloads = [k8s_name("--workload", w) for w in workloads]
    if existing_role:
        role_name, existing = _tenant_role("--existing-role", {"existing": existing_role})
    else:
        role_name, existing = valid_role_name("--role", role or f"{name}-s3"), None
    if policy is not None:
        policy = policy_name("--policy", policy)
    tenant = Tenant(name, tuple(namespaces), role_name, existing,
                    policy or (role_name if not existing and (read or write) else None),
                    tuple(read), tuple(write), tuple(workloads))
    data, yaml, text = _read(path)
    current = load_text(text, shown(str(path)))
    if any(t.name == name for t in current.tenants):
        raise UsageError(f"tenant {shown(name)} already exists in {shown(str(path))} (tenant remove {name} first to replace it)")
    messages: list[str] = [] if path.exists() else [f"creating {path}"]
    if "tenants" not in data:
        legacy_keys = _legacy_keys_in(data)
        if legacy_keys or keep_article_tenant:
            text = _convert_legacy(text, data, current, messages)
            messages[-1] += (" (--keep-article-tenant)" if keep_article_tenant and not legacy_keys
                             else f" (the file sets it: {', '.join(legacy_keys)})")
            data = yaml.load(text)
        else:
            article = current.tenants[0]
            messages.append(f"not carried over: the article's built-in tenant {article.name} (namespace "
                            f"{article.namespace}, role {article.role}, writes {', '.join(article.write) or 'nothing'}); "
                            f"tenants: holds only what you add (--keep-article-tenant carries it over)")
    text = _with_item(text, data, _entry(tenant))
    messages.append(f"added tenant {name} to {path}: role {existing or role_name}"
                    + (" (existing: linked only)" if existing else "") + f", namespace(s) {', '.join(namespaces)}")
    if not workloads:
        messages.append(f"tenant {name} has no --workload: verify checks it from a short-lived probe pod in namespace "
                        f"{namespaces[0]} annotated with its role, on each node verify covers (demo -c: the same in the sandbox)")
    config = load_text(text, shown(str(path)))  # the whole result, before anything is written
    _write_atomically(path, text)
    return Edit(path, config, messages)


def _legacy_keys_in(data) -> list[str]:
    """The legacy keys (the article's tenant) the file itself sets."""
    found = []
    for path in LEGACY_KEYS:
        section, key = path.split(".")
        mapping = data.get(section) if data is not None else None
        if isinstance(mapping, dict) and key in mapping:
            found.append(path)
    return found


def _item_lines(entry, dash: int) -> list[str]:
    """One `tenants:` item as block YAML lines, its '-' at column `dash`."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    yaml = YAML()
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=2, offset=0)
    seq = CommentedSeq([entry])
    return [" " * dash + line + "\n" for line in _render(yaml, seq).splitlines()]


def _with_item(text: str, data, entry) -> str:
    """The text with `entry` appended to `tenants:` (created at the end when missing); every other
    line byte-identical."""
    import re

    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    seq = data.get("tenants") if data is not None else None
    if seq is None:
        return "".join(lines + ["tenants:\n"] + _item_lines(entry, 2))
    key_line, key_column = data.lc.key("tenants")
    if not seq:
        lines[key_line] = re.sub(r"^(\s*tenants:)\s*\[\s*\]", r"\1", lines[key_line], count=1)
        lines[key_line + 1:key_line + 1] = _item_lines(entry, key_column + 2)
        return "".join(lines)
    if seq.fa.flow_style():
        raise UsageError("tenants: is written as a flow list ([...]): write it as a block list to use tenant add")
    line, column = seq.lc.item(len(seq) - 1)
    dash = lines[line][:column].rstrip().rfind("-")
    last = _last_line(lines, line, dash)
    lines[last + 1:last + 1] = _item_lines(entry, dash)
    return "".join(lines)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _last_line(lines: list[str], line: int, dash: int) -> int:
    """The last line with content of the item whose '-' is at (line, dash)."""
    last = line
    for number in range(line + 1, len(lines)):
        stripped = lines[number].strip()
        if not stripped or stripped.startswith("#"):
            continue
        if _indent(lines[number]) <= dash:
            break
        last = number
    return last


def remove(path: str | Path, name: str) -> Edit:
    """Remove tenant NAME from `tenants:` (the article's tenant of a legacy file: converted, then removed)."""
    path = Path(path)
    name = k8s_name("NAME", name)
    data, yaml, text = _read(path)
    current = load_text(text, shown(str(path)))
    current.tenant(name)  # unknown: one line, exit 2
    messages: list[str] = []
    if "tenants" not in data:
        text = _convert_legacy(text, data, current, messages)
        data = yaml.load(text)
    index = next(i for i, entry in enumerate(data["tenants"]) if str(entry.get("name")) == name)
    text = _without_item(text, data, index)
    messages.append(f"removed tenant {name} from {path}; setup deletes its role, policy, workloads and namespace "
                    "annotations (what rbacbridge made for it), and leaves an existing role alone")
    config = load_text(text, shown(str(path)))  # the whole result, before anything is written
    _write_atomically(path, text)
    return Edit(path, config, messages)


def _without_item(text: str, data, index: int) -> str:
    """The text without item `index` of `tenants:` and the comment lines right above it; every other
    line byte-identical (ruamel would re-flow the comments around a deleted item). The last item
    gone, `tenants: []` stays (an explicit empty list, not the article's tenant)."""
    import re

    seq = data["tenants"]
    if seq.fa.flow_style():
        del seq[index]
        from ruamel.yaml import YAML

        yaml = YAML()
        yaml.preserve_quotes = True
        yaml.width = 4096
        return _render(yaml, data)
    lines = text.splitlines(keepends=True)
    line, column = seq.lc.item(index)
    dash = lines[line][:column].rstrip().rfind("-")
    if dash < 0 or lines[line][:dash].strip():
        raise UsageError(f"cannot edit tenant {index}'s layout (its '- ' is not on the line of its first key): remove it by hand")

    last = _last_line(lines, line, dash)
    first = line
    key_line = data.lc.key("tenants")[0]
    while first - 1 > key_line and lines[first - 1].strip().startswith("#") and _indent(lines[first - 1]) >= dash:
        first -= 1
    del lines[first:last + 1]
    if len(seq) == 1:
        lines[key_line] = re.sub(r"^(\s*tenants:)", r"\1 []", lines[key_line], count=1)
    return "".join(lines)


# --- listing -------------------------------------------------------------------------------------


def rows(config: Config) -> list[dict[str, Any]]:
    """The tenants as plain data (`tenant list -o json`)."""
    return [{
        "name": t.name,
        "namespaces": list(t.namespaces),
        "role": t.role,
        "existing_role_arn": t.existing_role_arn,
        "managed": t.managed,
        "policy": t.policy,
        "read": list(t.read),
        "write": list(t.write),
        "workloads": list(t.workloads),
        "from_legacy_keys": t.legacy,
    } for t in config.tenants]
