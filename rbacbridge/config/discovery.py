"""Which rbacbridge.yaml a command reads, and reading it within bounds.

Found like kubectl's and terraform's files: `-c FILE` (`-c -`: standard input), else `RBACBRIDGE_CONFIG`,
else `./rbacbridge.yaml` when it exists, else the built-in defaults (the article's values). `tenant add` and
`tenant remove` edit the file found the same way (none found: add creates ./rbacbridge.yaml).

Whatever the source, what is read is bounded: a regular file (or standard input) of at most MAX_BYTES;
a device, a FIFO or a directory is refused before a byte is read (`-c /dev/zero` would read forever).
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from rbacbridge.errors import UsageError, shown

ENV = "RBACBRIDGE_CONFIG"
LOCAL = "rbacbridge.yaml"
STDIN = "-"
MAX_BYTES = 1024 * 1024  # a configuration is a few KiB; anything past 1 MiB is not one
LIMIT = "1 MiB"

FLAG, FROM_ENV, FROM_CWD, DEFAULTS = "flag", "env", "cwd", "defaults"


@dataclass(frozen=True)
class Source:
    """Where the configuration comes from: `path` None for the built-in defaults, "-" for standard input."""

    path: str | None
    how: str  # FLAG, FROM_ENV, FROM_CWD or DEFAULTS

    @property
    def stdin(self) -> bool:
        return self.path == STDIN

    def describe(self) -> str:
        """One short line for stderr: which configuration this run reads."""
        if self.how == FROM_ENV:
            return f"config: {self.path} (from {ENV})"
        if self.how == FROM_CWD:
            return f"config: ./{LOCAL} (found in the current directory)"
        if self.how == DEFAULTS:
            return f"config: built-in defaults (the article's values; no -c FILE, {ENV} or ./{LOCAL})"
        return "config: standard input" if self.stdin else f"config: {self.path}"

    def named(self) -> str:
        """The source as error lines name it (quoted)."""
        where = "'-' (standard input)" if self.stdin else shown(str(self.path))
        return where + {FROM_ENV: f" (from {ENV})", FROM_CWD: " (found in the current directory)"}.get(self.how, "")


def find(flag: str | None, environ=None, cwd: str | Path | None = None) -> Source:
    """The configuration a command reads: -c, RBACBRIDGE_CONFIG, ./rbacbridge.yaml, else the defaults.
    An empty RBACBRIDGE_CONFIG counts as unset (like an empty KUBECONFIG)."""
    if flag is not None:
        if flag == "":
            raise UsageError("invalid -c/--config: empty (give a file, or - for standard input)")
        return Source(flag, FLAG)
    value = (os.environ if environ is None else environ).get(ENV)
    if value:
        return Source(value, FROM_ENV)
    local = Path(cwd or ".") / LOCAL
    if os.path.lexists(local):
        return Source(LOCAL if cwd is None else str(local), FROM_CWD)
    return Source(None, DEFAULTS)


def find_for_edit(flag: str | None, command: str, environ=None, cwd: str | Path | None = None) -> Source:
    """The file `tenant add|remove` edits: found as `find` does; nothing found: ./rbacbridge.yaml (created by
    add). Standard input cannot be written."""
    source = find(flag, environ, cwd)
    if source.stdin:
        raise UsageError(f"{command} edits a file: -c - (standard input) cannot be written; give -c FILE")
    if source.how == DEFAULTS:
        return Source(str(Path(cwd or ".") / LOCAL) if cwd is not None else LOCAL, FROM_CWD)
    return source


def read_bytes(source: Source, missing_ok: bool = False) -> bytes | None:
    """The configuration's bytes, at most MAX_BYTES, from a regular file or standard input (None: the
    defaults, or a missing file when `missing_ok`). Anything else is refused with one line (exit 2)."""
    if source.path is None:
        return None
    where = source.named()
    if source.stdin:
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None:  # a text stream (tests, embedding): its characters as UTF-8
            data = sys.stdin.read(MAX_BYTES + 1).encode("utf-8")
        else:
            data = stream.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise UsageError(f"cannot read config {where}: over the {LIMIT} limit of a configuration (nothing read past it)")
        return data
    try:
        fd = os.open(source.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        if missing_ok:
            return None
        raise UsageError(f"cannot read config {where}: {exc.strerror}") from None
    except OSError as exc:
        raise UsageError(f"cannot read config {where}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"cannot read config {where}: {_kind(info.st_mode)}, not a regular file (nothing read)")
        if info.st_size > MAX_BYTES:
            raise UsageError(f"cannot read config {where}: {info.st_size} bytes, over the {LIMIT} limit of a "
                             "configuration (nothing read)")
        chunks, size = [], 0
        while size <= MAX_BYTES:  # a file that grows while it is read stops at the limit too
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_BYTES:
            raise UsageError(f"cannot read config {where}: it grew past the {LIMIT} limit of a configuration while it was read")
        return b"".join(chunks)
    except OSError as exc:
        raise UsageError(f"cannot read config {where}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe (-c - reads standard input)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"
