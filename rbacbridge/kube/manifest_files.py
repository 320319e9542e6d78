"""`rbacbridge render --out-dir`: the whole set of manifests written into one directory, or nothing,
never through a symbolic link."""

from __future__ import annotations

import os
from pathlib import Path

from rbacbridge.errors import RbacbridgeError, UsageError


_LINK = "rbacbridge never writes through links"


def write_manifests(target: str, documents: list[tuple[str, str]]) -> Path:
    """Write the whole set into directory `target`, or nothing.

    Never writes through a symbolic link, even one swapped in while it runs: the parent directory and the
    target are opened once (O_DIRECTORY | O_NOFOLLOW: a target that is a link is refused, exit 2), and every
    later step is relative to those descriptors (openat, mkdirat, renameat, fstatat), never to the path
    again. The files are written with O_CREAT | O_EXCL | O_NOFOLLOW into a new temporary directory made
    next to the target, then renamed into the target (a rename replaces a directory entry and never writes
    through it); a target that does not exist yet is the renamed temporary directory. A file name of the set
    that is a link in the target is refused before anything is written. If the target's path was replaced
    while it ran (by a link, say), the files are in the directory that was opened, and that is an error (1).
    """
    import secrets
    import stat

    if not target.strip():
        raise UsageError("--out-dir must name a directory (got an empty string)")
    path = Path(target)
    parent = path.absolute().parent
    leaf = path.absolute().name
    if not leaf or leaf in (".", ".."):
        raise UsageError(f"--out-dir {target} must name a directory by its own name")
    directory = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise UsageError(f"--out-dir {target}: parent directory {parent} does not exist") from None
    target_fd = staging_fd = None
    staging = ""
    try:
        try:
            target_fd = os.open(leaf, directory, dir_fd=parent_fd)
        except FileNotFoundError:
            target_fd = None
        except OSError:
            info = os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                raise UsageError(f"refusing --out-dir {target}: it is a symbolic link ({_LINK})") from None
            raise UsageError(f"--out-dir {target} exists and is not a directory") from None
        if target_fd is not None:
            for name, _ in documents:
                try:
                    info = os.stat(name, dir_fd=target_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(info.st_mode):
                    raise UsageError(f"refusing to write {path / name}: it is a symbolic link ({_LINK})")
                if not stat.S_ISREG(info.st_mode):
                    raise UsageError(f"refusing to write {path / name}: it exists and is not a regular file")
        umask = os.umask(0)
        os.umask(umask)
        staging = f".{leaf or 'manifests'}.rbacbridge-{secrets.token_hex(4)}"
        try:
            os.mkdir(staging, 0o700, dir_fd=parent_fd)
            staging_fd = os.open(staging, directory, dir_fd=parent_fd)
        except OSError as exc:
            raise UsageError(f"cannot write manifests next to {target}: {exc.strerror or exc}") from None
        for name, text in documents:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                         0o666 & ~umask, dir_fd=staging_fd)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
        if target_fd is None:
            os.chmod(staging_fd, 0o777 & ~umask)
            os.rename(staging, leaf, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)  # the whole set appears at once
            staging = ""
            return path
        for name, _ in documents:
            os.rename(name, name, src_dir_fd=staging_fd, dst_dir_fd=target_fd)  # into the opened directory only
        os.rmdir(staging, dir_fd=parent_fd)
        staging = ""
        _check_still_there(target, leaf, parent_fd, target_fd)
        return path
    except OSError as exc:
        raise UsageError(f"cannot write manifests to {target}: {exc.strerror or exc}") from None
    finally:
        if staging and staging_fd is not None:
            for name, _ in documents:
                try:
                    os.unlink(name, dir_fd=staging_fd)
                except OSError:
                    pass
        if staging:
            try:
                os.rmdir(staging, dir_fd=parent_fd)
            except OSError:
                pass
        for fd in (staging_fd, target_fd, parent_fd):
            if fd is not None:
                os.close(fd)


def _check_still_there(target: str, leaf: str, parent_fd: int, target_fd: int) -> None:
    """The path still names the directory the files went into; else say where they are."""
    opened = os.fstat(target_fd)
    try:
        now = os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
        same = (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)
    except FileNotFoundError:
        same = False
    if not same:
        raise RbacbridgeError(f"--out-dir {target} was replaced while rbacbridge wrote into it: the manifests are in the "
                              f"directory it was when opened (inode {opened.st_ino}), nothing was written through the new path")
