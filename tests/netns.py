"""A real node for tests: a network namespace with sshd and iptables, reachable over a veth pair.

    node = Node.start("n1")                     # namespace rbn-<id>, veth to the root namespace
    node.exec(["iptables", "-t", "nat", "-S"])  # run inside the namespace (root, no SSH)
    target = node.ssh_target()                  # rbacbridge.nodes.ssh.SshTarget with key + known_hosts
    pod = node.add_pod("web")                   # bridge docker0 on the node + a pod namespace behind it
    node.close()                                # kill every pid in the namespace, delete veth + namespace

Needs root, `ip`, `/usr/sbin/sshd`, `iptables`, `ssh-keygen`. Names are unique per process and call
(`rbn` + 6 hex digits), /30 subnets in 10.231.0.0/16 are claimed with O_EXCL lock files, so several
test processes can run at once. Addresses exist only on interfaces inside namespaces made here and on
the root-side veth ends made here.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "rbn"
SUPERNET = ipaddress.ip_network("10.231.0.0/16")
LOCK_DIR = Path(tempfile.gettempdir()) / "rbacbridge-netns-locks"
SSHD = "/usr/sbin/sshd"


def available() -> str | None:
    """Why real nodes cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "iptables", "ssh-keygen", "unshare"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.path.exists(SSHD):
        return "needs openssh-server"
    return None


def run(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {result.returncode}: {result.stderr.strip()}")
    return result


def _namespace_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def _claim_subnet(owner: str, supernet: ipaddress.IPv4Network = SUPERNET) -> tuple[ipaddress.IPv4Network, Path]:
    """An unused /30 of `supernet` (10.231.0.0/16), claimed by an O_EXCL lock file naming its namespace."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    subnets = supernet.prefixlen
    total = 2 ** (30 - subnets)
    for _ in range(200):
        index = secrets.randbelow(total)
        lock = LOCK_DIR / (f"{index}" if supernet == SUPERNET else f"{supernet.network_address}-{index}")
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock.read_text().strip() if lock.exists() else ""
            if holder and not _namespace_exists(holder):
                lock.unlink(missing_ok=True)  # left by a crashed run
            continue
        os.write(fd, owner.encode())
        os.close(fd)
        network = ipaddress.ip_network(f"{supernet.network_address + index * 4}/30")
        return network, lock
    raise RuntimeError(f"no free /30 in {supernet}")


def _keygen(path: Path) -> str:
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)])
    return (path.with_suffix(".pub") if path.suffix else Path(str(path) + ".pub")).read_text().strip()


@dataclass
class Pod:
    """A pod namespace behind the node's docker0 bridge."""

    namespace: str
    address: str

    def exec(self, argv: list[str], check: bool = False, timeout: float = 10) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", self.namespace, *argv], check=check, timeout=timeout)


@dataclass
class User:
    name: str
    sudoers: Path | None


@dataclass
class Node:
    name: str  # the node's label in reports
    namespace: str
    address: str  # the node's address (inside the namespace)
    gateway: str  # the other end of the veth (root namespace, or the parent node)
    workdir: Path
    ssh_port: int
    host_public_key: str  # "ssh-ed25519 AAAA..."
    client_key: Path
    known_hosts: Path
    parent: "Node | None" = None
    veth: str = ""  # the veth end outside the namespace
    _lock: Path | None = None
    _sshd: subprocess.Popen | None = None
    pods: list[Pod] = field(default_factory=list)
    users: list[User] = field(default_factory=list)
    _closed: bool = False
    keep_under_root: tuple[str, ...] = ()
    sshd_log_level: str = "INFO"  # VERBOSE also logs every connection ("Connection from ...")

    # --- life cycle --------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        name: str = "node",
        parent: "Node | None" = None,
        ssh_port: int = 22,
        path: str | None = None,
        client_key: Path | None = None,
        start_sshd: bool = True,
        prefix: str = PREFIX,
        supernet: ipaddress.IPv4Network = SUPERNET,
        keep_under_root: tuple[str, ...] = (),
        session_env: dict[str, str] | None = None,
        sshd_log_level: str = "INFO",
    ) -> "Node":
        """Make the namespace, the veth (to the root namespace, or to `parent`'s namespace), sshd.

        `path`: PATH for SSH sessions (sshd SetEnv), e.g. to put a fake iptables first.
        `session_env`: more variables for SSH sessions (sshd SetEnv).
        `parent`: the node is reachable only from inside `parent` (a jump host), not from the root.
        `prefix`/`supernet`: names and addresses for another family of tests (the lab uses rbl, 10.233.0.0/17).
        `keep_under_root`: directories under /root that SSH sessions still see (e.g. a pyenv Python that
        runs the host's AWS CLI); the rest of /root is hidden behind an empty directory.
        `sshd_log_level`: VERBOSE makes sshd.log show every TCP connection, even one that never authenticates.
        """
        uid = secrets.token_hex(3)
        namespace = f"{prefix}-{uid}"
        workdir = Path(tempfile.mkdtemp(prefix=f"{namespace}-"))
        os.chmod(workdir, 0o755)  # a non-root user's sshd session reads authorized_keys from here
        network, lock = _claim_subnet(namespace, supernet)
        hosts = list(network.hosts())
        gateway, address = str(hosts[0]), str(hosts[1])
        outside, inside = f"{prefix}{uid}o", f"{prefix}{uid}i"
        node = cls(name=name, namespace=namespace, address=address, gateway=gateway, workdir=workdir,
                   ssh_port=ssh_port, host_public_key="", client_key=workdir / "client_key",
                   known_hosts=workdir / "known_hosts", parent=parent, veth=outside, _lock=lock,
                   keep_under_root=tuple(keep_under_root), sshd_log_level=sshd_log_level)
        try:
            run(["ip", "netns", "add", namespace])
            outer = ["ip", "-n", parent.namespace] if parent else ["ip"]
            run([*outer, "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", namespace])
            run([*outer, "addr", "add", f"{gateway}/30", "dev", outside])
            run([*outer, "link", "set", outside, "up"])
            inner = ["ip", "-n", namespace]
            run([*inner, "link", "set", "lo", "up"])
            run([*inner, "link", "set", inside, "name", "eth0"])
            run([*inner, "addr", "add", f"{address}/30", "dev", "eth0"])
            run([*inner, "link", "set", "eth0", "up"])
            # No default route: the node talks to its veth peer only, never beyond this machine.
            if client_key is not None:
                shutil.copy(client_key, node.client_key)
                shutil.copy(str(client_key) + ".pub", str(node.client_key) + ".pub")
                os.chmod(node.client_key, 0o600)
                public = Path(str(client_key) + ".pub").read_text().strip()
            else:
                public = _keygen(node.client_key)
            (workdir / "authorized_keys").write_text(public + "\n")
            os.chmod(workdir / "authorized_keys", 0o644)
            node.host_public_key = " ".join(_keygen(workdir / "host_key").split()[:2])
            node.known_hosts.write_text(f"{node.known_host_name} {node.host_public_key}\n")
            node._write_sshd_config(path, session_env)
            if start_sshd:
                node.start_sshd()
        except BaseException:
            node.close()
            raise
        return node

    @property
    def known_host_name(self) -> str:
        return self.address if self.ssh_port == 22 else f"[{self.address}]:{self.ssh_port}"

    @property
    def host(self) -> str:
        """HOST[:PORT] as `--node` takes it."""
        return self.address if self.ssh_port == 22 else f"{self.address}:{self.ssh_port}"

    def _write_sshd_config(self, path: str | None, session_env: dict[str, str] | None = None) -> None:
        lines = [
            f"Port {self.ssh_port}",
            f"ListenAddress {self.address}",
            f"HostKey {self.workdir / 'host_key'}",
            "PidFile none",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UseDNS no",
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
            "AllowTcpForwarding yes",
            "LogLevel ERROR",
            "SetEnv " + " ".join([f"PATH={path or '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'}"]
                                 + [f"{k}={v}" for k, v in (session_env or {}).items()]),
        ]
        (self.workdir / "sshd_config").write_text("\n".join(lines) + "\n")
        (self.workdir / "root").mkdir(exist_ok=True)

    def start_sshd(self, timeout: float = 10) -> None:
        log = self.workdir / "sshd.log"
        keep = ""
        for path in self.keep_under_root:
            inside = self.workdir / "root" / os.path.relpath(path, "/root")
            inside.mkdir(parents=True, exist_ok=True)
            keep += f"mount --bind {shlex.quote(path)} {shlex.quote(str(inside))} && "
        bind = "--rbind" if self.keep_under_root else "--bind"
        script = (
            "mount -t tmpfs -o mode=755 tmpfs /run && mkdir -m 755 /run/sshd && " + keep +
            f"mount {bind} {self.workdir / 'root'} /root && "
            f"exec {SSHD} -D -e -o LogLevel={self.sshd_log_level} -f {self.workdir / 'sshd_config'}"
        )
        with open(log, "ab") as handle:
            self._sshd = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, "unshare", "--mount", "--uts", "--propagation", "private",
                 "sh", "-c", script],
                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Server listening" in log.read_text(errors="replace"):
                return
            if self._sshd.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError(f"sshd in {self.namespace} did not start: {log.read_text(errors='replace')[-500:]}")

    def stop_sshd(self) -> None:
        """Stop sshd and every session it started (the node goes 'down'; the namespace stays)."""
        self._kill_namespace_pids()
        if self._sshd is not None:
            try:
                self._sshd.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._sshd = None

    def _kill_namespace_pids(self) -> None:
        for _ in range(20):
            result = run(["ip", "netns", "pids", self.namespace], check=False)
            pids = [int(p) for p in result.stdout.split()]
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pod in self.pods:
            for pid in run(["ip", "netns", "pids", pod.namespace], check=False).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            run(["ip", "netns", "del", pod.namespace], check=False)
        if _namespace_exists(self.namespace):
            self.stop_sshd()
        outer = ["ip", "-n", self.parent.namespace] if self.parent and _namespace_exists(self.parent.namespace) else ["ip"]
        if not self.parent or _namespace_exists(self.parent.namespace):
            run([*outer, "link", "del", self.veth], check=False)
        run(["ip", "netns", "del", self.namespace], check=False)
        for user in self.users:
            if user.sudoers is not None:
                user.sudoers.unlink(missing_ok=True)
            run(["userdel", user.name], check=False)
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Node":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- using it ----------------------------------------------------------------------------

    def exec(self, argv: list[str], check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess:
        """Run argv inside the namespace as root (not over SSH)."""
        return run(["ip", "netns", "exec", self.namespace, *argv], check=check, timeout=timeout)

    def spawn(self, argv: list[str], **kw) -> subprocess.Popen:
        """A long-running process inside the namespace; killed by close()."""
        return subprocess.Popen(["ip", "netns", "exec", self.namespace, *argv], stdin=subprocess.DEVNULL, **kw)

    def nat_rules(self, chain: str = "PREROUTING") -> list[str]:
        return [l for l in self.exec(["iptables", "-t", "nat", "-S", chain]).stdout.splitlines() if l.startswith("-A ")]

    def iptables(self, *args: str) -> None:
        self.exec(["iptables", *args])

    def ssh_target(self, user: str = "root", **kw):
        from rbacbridge.nodes.ssh import SshTarget

        values = dict(host=self.address, port=self.ssh_port, user=user, key_file=str(self.client_key),
                      known_hosts=str(self.known_hosts), ssh_config="none", connect_timeout=5, label=self.name)
        values.update(kw)
        return SshTarget(**values)

    def add_user(self, sudo_iptables: bool = True) -> User:
        """A non-root login user (key auth), optionally with NOPASSWD sudo for iptables only.

        /etc is shared with the host: the user and its sudoers file have unique names and are
        removed by close().
        """
        name = f"{PREFIX}u{secrets.token_hex(3)}"
        run(["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/bin/sh", name])
        user = User(name, None)
        self.users.append(user)
        run(["usermod", "-p", "*", name])
        if sudo_iptables:
            staged = self.workdir / f"sudoers-{name}"
            staged.write_text(f"{name} ALL=(root) NOPASSWD: /usr/sbin/iptables, /usr/sbin/iptables-save\n")
            run(["visudo", "-cf", str(staged)])
            final = Path("/etc/sudoers.d") / f"rbacbridge-test-{name}"
            shutil.copy(staged, final)
            os.chmod(final, 0o440)
            user.sudoers = final
        return user

    def add_pod(self, name: str = "pod", bridge: str = "docker0", bridge_cidr: str = "172.17.0.1/16") -> Pod:
        """A pod namespace whose eth0 sits on `bridge` in the node, default route via the bridge."""
        inner = ["ip", "-n", self.namespace]
        if run([*inner, "link", "show", bridge], check=False).returncode != 0:
            # A bridge whose address was never set takes the lowest MAC of its ports: a later pod's veth could
            # change it, and every pod's cached gateway MAC goes stale (SYNs dropped for ~30-60 s until ARP
            # re-resolves). Docker sets docker0's address for the same reason.
            run([*inner, "link", "add", bridge, "address", "02:42:" + ":".join(secrets.token_hex(4)[i:i + 2] for i in range(0, 8, 2)),
                 "type", "bridge"])
            run([*inner, "addr", "add", bridge_cidr, "dev", bridge])
            run([*inner, "link", "set", bridge, "up"])
        index = len(self.pods) + 2
        bridge_ip = ipaddress.ip_interface(bridge_cidr)
        address = str(bridge_ip.network.network_address + index)
        pod_ns = f"{self.namespace}-p{index}"
        host_end, pod_end = f"{self.veth[:-1]}p{index}", f"{self.veth[:-1]}q{index}"
        run(["ip", "netns", "add", pod_ns])
        pod = Pod(pod_ns, address)
        self.pods.append(pod)
        run([*inner, "link", "add", host_end, "type", "veth", "peer", "name", pod_end, "netns", pod_ns])
        run([*inner, "link", "set", host_end, "master", bridge])
        run([*inner, "link", "set", host_end, "up"])
        pod_ip = ["ip", "-n", pod_ns]
        run([*pod_ip, "link", "set", "lo", "up"])
        run([*pod_ip, "link", "set", pod_end, "name", "eth0"])
        run([*pod_ip, "addr", "add", f"{address}/{bridge_ip.network.prefixlen}", "dev", "eth0"])
        run([*pod_ip, "link", "set", "eth0", "up"])
        run([*pod_ip, "route", "add", "default", "via", str(bridge_ip.ip)])
        return pod


def leftovers(prefix: str = PREFIX) -> list[str]:
    """Namespaces and links this module made that still exist (for assertions)."""
    names = [line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines() if line.startswith(prefix)]
    links = [line.split(":")[1].strip().split("@")[0] for line in run(["ip", "-o", "link"]).stdout.splitlines()
             if line.split(":")[1].strip().startswith(prefix)]
    return names + links
