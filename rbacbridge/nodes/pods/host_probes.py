"""verify's host probes through Kubernetes: the AWS CLI in a short-lived hostNetwork pod on each host node."""

from __future__ import annotations

from rbacbridge.errors import RbacbridgeError
from rbacbridge.nodes.pods.lifecycle import HOST_PROBE, check_pod_security, pod_namespace, remove_leftovers, start_pod
from rbacbridge.nodes.pods.session import PodSession


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
