"""Nodes through Kubernetes (`--via kubernetes`): the same node scripts, reached by pod exec, not SSH.

`rbacbridge.nodes` builds every script (look, guarded changes) and classifies what comes back; this
module only carries a script to a node and its output back, as `rbacbridge.ssh.SshSession` does:
a `PodSession` has the same `name`, `user`, `run(argv, sudo)`, `peer_address()` and `close()`.

Where the script runs, per node:

- in rbacbridge's own kube2iam pod on that node: a running hostNetwork pod (its network namespace is
  the node's) whose controller is rbacbridge's DaemonSet `kube2iam` in kube2iam.namespace, by the
  DaemonSet's UID — never a pod found by image or args (`kube2iam_pods`). Upstream's image is alpine + the
  `iptables` package, entrypoint kube2iam (jtblin/kube2iam Dockerfile: `FROM alpine:3.x`,
  `RUN apk --no-cache add ca-certificates iptables`), so `sh` and `iptables` are there, and its
  iptables is the very one kube2iam writes its rule with. Not used when this run changes kube2iam
  itself (setup/teardown with the kube part: its pods are replaced or deleted under the run);
- else in a short-lived pod rbacbridge creates on that node (templates/k8s/node-exec-pod.yaml.j2):
  hostNetwork, capabilities drop ALL + add NET_ADMIN (not privileged), `nodeName` pinned, every
  taint tolerated, image `nodes.pod_image` (default kube2iam.image), labelled
  app.kubernetes.io/managed-by=rbacbridge + app.kubernetes.io/component=node-exec, in
  `nodes.pod_namespace` (default kube2iam.namespace). It is deleted when the run closes its
  sessions; pods with both labels that a killed run left are deleted by the next run before it
  creates any (only pods with both labels: ours). `audit` never creates one (it only reads).

Neither image ships `ss` (iproute2): a script that runs `sh -c` gets an `ss` shell function when the
command is missing, which reads /proc/net/tcp{,6} (the node's, with host networking) and prints the
listening sockets in `ss -Htln`'s shape, so the listener checks (dead-port guard, conflicts) work the
same as over SSH (process names are not visible from a pod: "a process listening on ...").

Before the first short-lived pod, the namespace's PodSecurity label is read: `baseline` and
`restricted` refuse hostNetwork and NET_ADMIN, so that is bad input (exit 2, one line, nothing
created), not a pod that never starts.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from rbacbridge.errors import RbacbridgeError, UsageError

SSH, KUBERNETES, AUTO = "ssh", "kubernetes", "auto"
COMPONENT_LABEL = "app.kubernetes.io/component"
NODE_EXEC = "node-exec"  # the iptables pod
HOST_PROBE = "host-probe"  # verify's host-node AWS CLI pod
NODE_ANNOTATION = "rbacbridge.io/node"
POD_SECURITY = "pod-security.kubernetes.io/enforce"
LIFETIME = 3600  # seconds: a pod a killed run left ends by itself (activeDeadlineSeconds), the next run deletes it
_BAD_WAITING = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                "CreateContainerError", "RunContainerError", "ErrImageNeverPull")
_SSH_FIELDS = ("node_hosts", "ssh_user", "ssh_key", "ssh_port", "known_hosts", "ssh_config", "accept_new_host_keys")
_lock = threading.Lock()

# `ss -Htln [sport = :PORT]` for images without iproute2: listening TCP sockets (state 0A) from the
# kernel's tables, one `LISTEN 0 0 *:PORT *` line each (what iptables.parse_listeners reads).
SS_FALLBACK = (
    "command -v ss >/dev/null 2>&1 || ss() { _p=; for _a in \"$@\"; do case $_a in 'sport = :'*) _p=${_a#'sport = :'};; esac; done; "
    "awk -v p=\"$_p\" 'function h(s, i, n) { n = 0; for (i = 1; i <= length(s); i++) "
    "n = n * 16 + index(\"0123456789ABCDEF\", toupper(substr(s, i, 1))) - 1; return n } "
    "FNR > 1 && $4 == \"0A\" { split($2, a, \":\"); port = h(a[2]); if (p == \"\" || p == port) print \"LISTEN 0 0 *:\" port \" *\" }' "
    "/proc/net/tcp /proc/net/tcp6 2>/dev/null; }; "
)


def resolve_via(config, ssh_given: bool | None = None) -> str:
    """ssh or kubernetes. auto: ssh when nodes.hosts / --node or any SSH option is given, else kubernetes."""
    via = getattr(config, "node_via", AUTO) or AUTO
    if via != AUTO:
        return via
    if ssh_given is None:
        ssh_given = bool(config.node_hosts) or any(f in config.explicit for f in _SSH_FIELDS)
    return SSH if ssh_given else KUBERNETES


def pod_namespace(config) -> str:
    return config.node_pod_namespace or config.kube2iam_namespace


def pod_image(config) -> str:
    return config.node_pod_image or config.kube2iam_image


def selector(component: str = NODE_EXEC) -> str:
    from rbacbridge.kube import MANAGED_BY, OWNER

    return f"{MANAGED_BY}={OWNER},{COMPONENT_LABEL}={component}"


def render_pod(name: str, namespace: str, node: str, image: str, component: str = NODE_EXEC,
               capabilities: tuple[str, ...] = ("NET_ADMIN",), lifetime: int = LIFETIME) -> dict[str, Any]:
    import yaml

    from rbacbridge.templating import render_text

    return yaml.safe_load(render_text("k8s/node-exec-pod.yaml.j2", pod_name=name, namespace=namespace, node=node, image=image,
                                      component=component, capabilities=list(capabilities), lifetime=int(lifetime)))


def pod_name(node: str, component: str = NODE_EXEC) -> str:
    """rbacbridge-<component>-<8 hex of the node name>-<4 random hex>: a DNS label whatever the node's name."""
    digest = hashlib.sha256(node.encode()).hexdigest()[:8]
    return f"rbacbridge-{component}-{digest}-{secrets.token_hex(2)}"


# --- a session: one pod on one node --------------------------------------------------------------


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
        from rbacbridge.ssh import command_line

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


def _track(session: PodSession) -> None:
    import atexit

    with _lock:
        if not _open and not getattr(_track, "registered", False):
            atexit.register(close_all)
            _track.registered = True  # type: ignore[attr-defined]
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


# --- once per run: leftovers, kube2iam's pods, the namespace's PodSecurity -----------------------


@dataclass(frozen=True)
class Kube2iamPod:
    namespace: str
    name: str
    container: str | None
    host_ip: str | None


def _get(obj: Any, path: str) -> Any:
    for key in path.split("."):
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def kube2iam_pods(ctx) -> dict[str, Kube2iamPod]:
    """node name -> a running hostNetwork pod of rbacbridge's own kube2iam DaemonSet there (read once per run).

    Only rbacbridge's own: the DaemonSet `kube2iam` in kube2iam.namespace with rbacbridge's labels, and
    pods whose controller owner reference carries that DaemonSet's UID (`kube.own_kube2iam`). Never a pod
    found by image or args: any tenant can run a DaemonSet that looks like kube2iam, with its own `iptables`
    inside, and the node's rules would be read (and changed) through whatever that binary does."""
    def compute() -> dict[str, Kube2iamPod]:
        from rbacbridge import kube

        try:
            own = kube.own_kube2iam(ctx)
        except kube.KubeApiError as exc:
            if exc.status != 403:
                raise
            notes = ctx.facts.setdefault("notes", [])
            text = (f"cannot read rbacbridge's kube2iam DaemonSet and pods in {ctx.config.kube2iam_namespace} (403): "
                    "no kube2iam pod is used, short-lived pods instead")
            if text not in notes:
                notes.append(text)
            return {}
        found: dict[str, Kube2iamPod] = {}
        for pod in own.pods if own is not None else ():
            if pod.node and pod.node not in found and pod.running and pod.host_network:
                found[pod.node] = Kube2iamPod(pod.namespace, pod.name, pod.container, pod.host_ip)
        return found

    return ctx.fact("nodes.kube2iam_pods", compute)


def remove_leftovers(ctx, component: str = NODE_EXEC) -> list[str]:
    """Delete the pods an interrupted run left (both labels: ours), once per run and component."""
    done = ctx.facts.setdefault("nodes.leftovers_removed", set())
    if component in done:
        return []
    from rbacbridge import kube

    gw = kube.gateway(ctx)
    namespace = pod_namespace(ctx.config)
    removed = []
    for pod in gw.list_pods(namespace, selector(component)):
        labels = _get(pod, "metadata.labels") or {}
        if labels.get(kube.MANAGED_BY) != kube.OWNER or labels.get(COMPONENT_LABEL) != component:
            continue  # belt and braces: the selector already says so
        name = _get(pod, "metadata.name")
        delete_pod(gw, namespace, name)
        removed.append(f"{namespace}/{name}")
    done.add(component)
    if removed:
        text = f"removed {len(removed)} pod(s) an interrupted rbacbridge run left: {', '.join(removed)}"
        ctx.reporter.progress(text)
        notes = ctx.facts.setdefault("notes", [])
        if text not in notes:
            notes.append(text)
    return removed


def check_pod_security(ctx, nodes: list[str], what: str = "hostNetwork and NET_ADMIN") -> None:
    """The pod namespace must exist and not enforce PodSecurity baseline/restricted (both refuse hostNetwork)."""
    from rbacbridge import kube

    namespace = pod_namespace(ctx.config)
    key = ("nodes.pod_security", namespace)
    if ctx.facts.get(key):
        return
    try:
        obj = kube.gateway(ctx).get("Namespace", namespace)
    except kube.KubeApiError as exc:
        if exc.status != 403:
            raise
        ctx.facts.setdefault("notes", []).append(
            f"cannot read namespace {namespace} (403) to check its PodSecurity level; a refused pod is reported per node")
        ctx.facts[key] = True
        return
    if obj is None:
        raise UsageError(f"namespace {namespace} (nodes.pod_namespace) does not exist: rbacbridge's node pods go there; nothing created")
    level = (_get(obj, "metadata.labels") or {}).get(POD_SECURITY)
    if level in ("baseline", "restricted"):
        shown = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
        raise UsageError(f"namespace {namespace} enforces PodSecurity {level} ({POD_SECURITY}), which refuses the pod "
                         f"rbacbridge needs on {shown} ({what}); nothing created: set nodes.pod_namespace to a "
                         f"privileged namespace, or use --via ssh")
    ctx.facts[key] = True


def prepare(ctx, refs: list, read_only: bool = False) -> None:
    """Before the first node is contacted: leftovers gone, kube2iam's pods found, and if some node needs
    a short-lived pod, its namespace checked (bad input before anything is created)."""
    use_kube2iam = not ctx.facts.get("nodes.kube2iam_changing")
    pods = kube2iam_pods(ctx) if use_kube2iam else {}
    without = [ref.name for ref in refs if ref.name not in pods]
    if read_only:
        return
    remove_leftovers(ctx)
    if without:
        check_pod_security(ctx, without)


def open_session(ctx, ref) -> PodSession:
    """The node's kube2iam pod, else a new short-lived pod there (read-only runs: never a new pod)."""
    from rbacbridge import kube
    from rbacbridge.nodes import NodeError

    gw = kube.gateway(ctx)
    timeout = ctx.config.ssh_command_timeout
    if not ctx.facts.get("nodes.kube2iam_changing"):
        found = kube2iam_pods(ctx).get(ref.name)
        if found is not None:
            ctx.reporter.progress(f"{ref.name}: exec in kube2iam pod {found.namespace}/{found.name}")
            session = PodSession(gw, ref.name, found.namespace, found.name, found.container, False,
                                 ref.internal_ip or found.host_ip, timeout)
            _remember(ctx, ref.name, session.where)
            return session
    if ctx.facts.get("nodes.read_only"):
        raise NodeError(f"{ref.name}: no pod of rbacbridge's kube2iam DaemonSet "
                        f"{ctx.config.kube2iam_namespace}/kube2iam runs there, and this command only reads "
                        "(it creates no pod): use --via ssh for this node")
    namespace, image = pod_namespace(ctx.config), pod_image(ctx.config)
    session = start_pod(ctx, ref.name, ref.internal_ip, namespace, image, NODE_EXEC, ("NET_ADMIN",), timeout)
    _remember(ctx, ref.name, session.where)
    return session


def _remember(ctx, node: str, where: str) -> None:
    with _lock:
        ctx.facts.setdefault("nodes.via_pods", {})[node] = where


def start_pod(ctx, node: str, host_ip: str | None, namespace: str, image: str, component: str,
              capabilities: tuple[str, ...], timeout: float) -> PodSession:
    """Create the pod on `node`, wait until its container runs; a pod that cannot start is deleted again."""
    from rbacbridge import kube
    from rbacbridge.nodes import NodeError

    gw = kube.gateway(ctx)
    name = pod_name(node, component)
    body = render_pod(name, namespace, node, image, component, capabilities)
    ctx.reporter.progress(f"{node}: starting pod {namespace}/{name} ({image})")
    from rbacbridge import cleanup

    key = ("pod", namespace, name)
    try:
        with cleanup.creating(key, lambda: delete_pod(gw, namespace, name)):  # an interruption from here on deletes it
            gw.request("POST", kube.collection_path("Pod", namespace), body=body, what=f"pod {namespace}/{name}")
    except kube.KubeApiError as exc:
        cleanup.forget(key)
        text = str(exc)
        if exc.status in (400, 403, 422) and "cannot create resource" not in text:
            raise NodeError(f"{node}: the API server refused pod {namespace}/{name} (admission): {_message(text)}") from None
        raise NodeError(f"{node}: {text}") from None
    session = PodSession(gw, node, namespace, name, component, True, host_ip, ctx.config.ssh_command_timeout)
    _track(session)
    try:
        _wait_running(gw, namespace, name, node, min(ctx.config.rollout_timeout, max(timeout, 1.0) * 5))
        if session.host_ip is None:
            session.host_ip = _get(gw.get("Pod", name, namespace), "status.hostIP")
    except BaseException:
        try:
            session.close()
        except RbacbridgeError:
            pass
        raise
    return session


def _message(text: str) -> str:
    """The API server's own words from a KubeApiError line (what admission said)."""
    import re

    match = re.search(r"\(403 Forbidden: (.*)\)$|\(422\): (.*)$", text)
    found = next((g for g in match.groups() if g), None) if match else None
    return found or text


def _wait_running(gw, namespace: str, name: str, node: str, timeout: float) -> None:
    from rbacbridge.kube import pod_not_ready_reason
    from rbacbridge.nodes import NodeError

    from rbacbridge import cleanup

    deadline = time.monotonic() + timeout
    pause = 0.02
    while True:
        cleanup.check()  # interrupted: stop waiting (the caller deletes the pod)
        pod = gw.get("Pod", name, namespace)
        if pod is None:
            raise NodeError(f"{node}: pod {namespace}/{name} disappeared before it ran")
        phase = _get(pod, "status.phase")
        statuses = _get(pod, "status.containerStatuses") or []
        if phase == "Running" and statuses and all("running" in (s.get("state") or {}) for s in statuses):
            return
        if phase in ("Failed", "Succeeded"):
            raise NodeError(f"{node}: pod {namespace}/{name} ended ({phase}): {pod_not_ready_reason(pod) or ''}".rstrip(": "))
        for status in statuses:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _BAD_WAITING:
                raise NodeError(f"{node}: pod {namespace}/{name} cannot start: {waiting.get('reason')}"
                                + (f": {waiting['message']}" if waiting.get("message") else ""))
        if time.monotonic() > deadline:
            raise NodeError(f"{node}: pod {namespace}/{name} not running after {timeout:g}s: {pod_not_ready_reason(pod)}")
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


# --- verify's host probes: the AWS CLI in a hostNetwork pod on the node --------------------------


class HostProbeRunner:
    """verify's CommandRunner for a host node through Kubernetes: the AWS CLI (verify.probe_image) in a
    short-lived hostNetwork pod on that node, no capabilities at all. Host networking gives it the node's
    own metadata path (kube2iam's DNAT rule only matches traffic from the pods' interface), so it gets
    the node role as a shell on the node would."""

    def __init__(self, session: PodSession):
        self.session = session

    @property
    def where(self) -> str:
        return f"{self.session.namespace}/{self.session.pod}"

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        s = self.session
        result = s.gateway.exec(s.namespace, s.pod, list(argv), container=s.container, timeout=timeout)
        return result.rc, result.stdout, result.stderr

    def close(self) -> None:
        self.session.close()


def start_host_probes(ctx, nodes: list[tuple[str, str | None]]) -> dict[str, HostProbeRunner]:
    """One probe pod per (node name, InternalIP), started side by side; all or none (a failure deletes the others)."""
    from concurrent.futures import ThreadPoolExecutor

    config = ctx.config
    remove_leftovers(ctx, HOST_PROBE)
    check_pod_security(ctx, [name for name, _ in nodes], "hostNetwork")
    namespace = pod_namespace(config)

    def start(item: tuple[str, str | None]) -> PodSession | BaseException:
        try:
            return start_pod(ctx, item[0], item[1], namespace, config.probe_image, HOST_PROBE, (), config.ssh_command_timeout)
        except BaseException as exc:  # noqa: BLE001 - handed back: the others are deleted first
            return exc

    workers = max(1, min(config.node_parallelism, len(nodes)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="host-probe") as pool:
        started = list(pool.map(start, nodes))
    failed = [s for s in started if isinstance(s, BaseException)]
    if failed:
        for session in started:
            if isinstance(session, PodSession):
                try:
                    session.close()
                except RbacbridgeError:
                    pass
        raise failed[0]
    return {name: HostProbeRunner(session) for (name, _), session in zip(nodes, started)}
