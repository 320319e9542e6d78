"""Files read for every node (ssh config, key files, known_hosts), parsed once per version of the file."""

from __future__ import annotations

import os
import time
from typing import Any

# Files read for every node (ssh config, key files, known_hosts) are parsed once per version of the
# file, not once per node and again per connection: with N nodes and an N-line known_hosts, parsing
# it per connection costs O(N^2). A version is (device, inode, size, mtime, ctime); only a file left
# unchanged for _SETTLED seconds is reused, so a rewrite inside the file system's timestamp granularity
# (same size, same mtime) cannot hand out an old parse; accept-new's appends make a new version.
_parsed: dict[tuple, Any] = {}
_SETTLED = 2.0


def cached(kind: str, path: str, parse):
    """parse(path), reused while the file is unchanged; errors are raised every time, never cached."""
    try:
        st = os.stat(path)
    except OSError:
        return parse(path)  # let the parser report the missing or unreadable file
    key = (kind, path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _parsed:
        return _parsed[key]
    value = parse(path)
    if time.time() - max(st.st_mtime, st.st_ctime) > _SETTLED:
        _parsed[key] = value
    return value
