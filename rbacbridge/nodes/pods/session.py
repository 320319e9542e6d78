"""A `PodSession`: the scripts the nodes part builds, carried to a node by exec in a hostNetwork pod
there (the rbacbridge.nodes.session.Session interface: `name`, `user`, `run(argv, sudo)`,
`peer_address()`, `close()`). Closing deletes the pod when rbacbridge created it; pods this process
created are deleted at exit too."""

from __future__ import annotations

import threading

from rbacbridge.errors import RbacbridgeError
from rbacbridge.nodes.session import command_line

_lock = threading.Lock()

# `ss -Htln [sport = :PORT]` for images without iproute2: listening TCP sockets (state 0A) from the
# kernel's tables, one `LISTEN 0 0 *:PORT *` line each (what rbacbridge.nodes.rules.parse_listeners reads).
SS_FALLBACK = (
    "command -v ss >/dev/null 2>&1 || ss() { _p=; for _a in \"$@\"; do case $_a in 'sport = :'*) _p=${_a#'sport = :'};; esac; done; "
    "awk -v p=\"$_p\" 'function h(s, i, n) { n = 0; for (i = 1; i <= length(s); i++) "
    "n = n * 16 + index(\"0123456789ABCDEF\", toupper(substr(s, i, 1))) - 1; return n } "
    "FNR > 1 && $4 == \"0A\" { split($2, a, \":\"); port = h(a[2]); if (p == \"\" || p == port) print \"LISTEN 0 0 *:\" port \" *\" }' "
    "/proc/net/tcp /proc/net/tcp6 2>/dev/null; }; "
)


class PodSession:
    """Runs argv on a node by exec in a hostNetwork pod there; deletes the pod on close if it made it."""

    user = "root"  # a container's root: no sudo

    def __init__(self, gateway, node: str, namespace: str, pod: str, container: str | None, created: bool,
                 host_ip: str | None, timeout: float):
        self.gateway, self.node, self.namespace, self.pod = gateway, node, namespace, pod
        self.container, self.created, self.host_ip, self.timeout = container, created, host_ip, timeout
        self._closed = False

    @property
    def name(self) -> str:
        return self.node

    @property
    def where(self) -> str:
        kind = "short-lived pod" if self.created else "kube2iam pod"
        return f"{kind} {self.namespace}/{self.pod}"

    def peer_address(self) -> str | None:
        return self.host_ip

    def run(self, argv: list[str], sudo: bool = False, timeout: float | None = None) -> tuple[int, str, str]:
        command_line(argv)  # the same checks on every part as over SSH (no NUL, no newline)
        argv = list(argv)
        if len(argv) == 3 and argv[:2] == ["sh", "-c"]:
            argv[2] = SS_FALLBACK + argv[2]
        limit = self.timeout if timeout is None else timeout
        try:
            result = self.gateway.exec(self.namespace, self.pod, argv, container=self.container, timeout=limit)
        except RbacbridgeError as exc:
            raise RbacbridgeError(f"{self.node}: {exc}") from None
        return result.rc, result.stdout, result.stderr

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _lock:
            _open.discard(self)
        if self.created:
            delete_pod(self.gateway, self.namespace, self.pod)
            from rbacbridge import cleanup

            cleanup.forget(("pod", self.namespace, self.pod))


# Pods this process created and has not deleted yet: deleted at exit too, so a command that ends without
# closing its sessions (`plan`, `--dry-run`, a plan not confirmed, a part that failed first) leaves none.
# Ctrl-C and SIGTERM exit at once: rbacbridge.cleanup (each pod registered before it is created) deletes
# them then. Only a killed process (SIGKILL) leaves one: the next run deletes it.
_open: set = set()


def track(session: PodSession) -> None:
    """Delete this (created) pod at exit if nobody closed its session."""
    import atexit

    with _lock:
        if not _open and not getattr(track, "registered", False):
            atexit.register(close_all)
            track.registered = True  # type: ignore[attr-defined]
        _open.add(session)


def close_all() -> None:
    with _lock:
        sessions = list(_open)
    for session in sessions:
        try:
            session.close()
        except Exception:  # noqa: BLE001 - best effort at exit; the next run deletes what is left
            pass


def delete_pod(gateway, namespace: str, name: str) -> None:
    from rbacbridge.kube import object_path

    try:
        gateway.request("DELETE", object_path("Pod", name, namespace),
                        body={"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0})
    except RbacbridgeError as exc:
        if getattr(exc, "status", None) != 404:
            raise
