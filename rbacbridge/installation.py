"""How this rbacbridge was installed, and the one command that adds an extra to *that* installation.

rbacbridge is not on PyPI, so `pip install 'rbacbridge[sandbox]'` would fetch whatever holds that name there
(nothing today; someone else's package tomorrow). What is missing is the extra's own requirements (moto),
which are on PyPI: they go into the environment rbacbridge runs in, by the tool that manages it.

The tool is told by the environment and the installed metadata: pipx leaves `pipx_metadata.json` in the venv
it made (sys.prefix), `uv tool` a `uv-receipt.toml`; the distribution's INSTALLER file names the installer
(pip, uv), and its PEP 610 `direct_url.json` the checkout or wheel it came from, whose `requirements.lock`
(the versions CI tests) is passed as constraints when it is there.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

DISTRIBUTION = "rbacbridge"
LOCK = "requirements.lock"


@dataclass(frozen=True)
class Installation:
    tool: str  # "pipx", "uv tool", "uv pip", "pip"
    prefix: Path  # the environment rbacbridge runs in
    python: str  # its interpreter
    source: Path | None  # the checkout (or wheel) it was installed from, when the metadata says
    editable: bool = False

    @property
    def lock(self) -> Path | None:
        checkout = self.source if self.source is not None and self.source.is_dir() else None
        return checkout / LOCK if checkout is not None and (checkout / LOCK).is_file() else None


def _metadata(dist, name: str) -> str | None:
    try:
        return dist.read_text(name)
    except OSError:
        return None


def detect(prefix: str | Path | None = None, python: str | None = None, dist=None) -> Installation:
    """The installation running now (or the one `prefix` / `dist` describe: tests)."""
    prefix = Path(prefix or sys.prefix)
    python = python or sys.executable
    if dist is None:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            dist = distribution(DISTRIBUTION)
        except PackageNotFoundError:
            dist = None
    installer = ((_metadata(dist, "INSTALLER") if dist is not None else None) or "").strip().lower()
    source, editable = None, False
    try:
        direct = json.loads((_metadata(dist, "direct_url.json") if dist is not None else None) or "null")
    except ValueError:
        direct = None
    if isinstance(direct, dict) and str(direct.get("url", "")).startswith("file://"):
        source = Path(unquote(urlparse(direct["url"]).path))
        editable = bool((direct.get("dir_info") or {}).get("editable"))
    if (prefix / "pipx_metadata.json").is_file():
        tool = "pipx"
    elif (prefix / "uv-receipt.toml").is_file():
        tool = "uv tool"
        if source is None:
            source, editable = _uv_receipt_source(prefix / "uv-receipt.toml")
    elif installer == "uv":
        tool = "uv pip"
    else:
        tool = "pip"
    return Installation(tool, prefix, python, source, editable)


def _uv_receipt_source(receipt: Path) -> tuple[Path | None, bool]:
    """`uv tool install PATH` records PATH in the tool's receipt: [tool] requirements = [{name, directory|path|editable}]."""
    import tomllib

    try:
        data = tomllib.loads(receipt.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, False
    for requirement in (data.get("tool") or {}).get("requirements") or ():
        if isinstance(requirement, dict) and requirement.get("name") == DISTRIBUTION:
            for key in ("editable", "directory", "path"):
                if isinstance(requirement.get(key), str):
                    return Path(requirement[key]), key == "editable"
    return None, False


def extra_requirements(extra: str, dist=None) -> list[str]:
    """The requirements an extra adds (`moto[server]!=5.2.6,>=5.1` for sandbox), from the installed metadata."""
    if dist is None:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            dist = distribution(DISTRIBUTION)
        except PackageNotFoundError:
            return []
    found = []
    for requirement in dist.requires or ():
        text, _, marker = requirement.partition(";")
        if marker and f'extra == "{extra}"' in marker.replace("'", '"'):
            found.append(text.strip())
    return found


def add_command(requirements: list[str], install: Installation) -> str:
    """The shell command that adds `requirements` to `install`'s environment, with the lock's versions when
    the checkout it came from has one."""
    q = shlex.quote
    wanted = " ".join(q(r) for r in requirements)
    lock = install.lock
    if install.tool == "pipx":
        pip_args = f" --pip-args={q('-c ' + str(lock))}" if lock else ""
        return f"pipx inject{pip_args} {q(install.prefix.name)} {wanted}"
    if install.tool == "uv tool":
        constraints = f" -c {q(str(lock))}" if lock else ""
        source = (("--editable " if install.editable else "") + q(str(install.source))) if install.source else "PATH-YOU-INSTALLED-FROM"
        return f"uv tool install --force{constraints} --with {wanted} {source}"
    constraints = f"-c {q(str(lock))} " if lock else ""
    if install.tool == "uv pip":
        return f"uv pip install --python {q(install.python)} {constraints}{wanted}"
    return f"{q(install.python)} -m pip install {constraints}{wanted}"


def extra_hint(extra: str, fallback: str) -> str:
    """`how to add EXTRA here: COMMAND` for an error line (`fallback` when the metadata names no requirement)."""
    install = detect()
    requirements = extra_requirements(extra) or [fallback]
    return f"{install.tool}: {add_command(requirements, install)}"
