"""The article's cluster on one machine, for the acceptance test (tests/test_lab.py) and for people
who want to watch rbacbridge work (`python -m tests.lab`, root + Linux).

    lab = Lab.start()          # ~ a few seconds
    lab.cli("setup", ...)      # the real CLI, as a user runs it
    lab.close()                # nothing left: no namespace, veth, route or process

Topology (names start with `rbl`, addresses in 10.233.0.0/16, all inside namespaces made here;
the root namespace only gets the veth ends and routes to the nodes through the "aws" namespace):

    root ns (CLI, test, Kubernetes API server on 127.0.0.1, stand-in servers' threads)
      └─ veth ─ "aws" ns: moto (IAM, EC2, S3, STS) + control endpoint   (tests/lab_moto.py)
                 ├─ veth ─ node-a ns: sshd, iptables, 169.254.169.254 = metadata stand-in,
                 │                    kube2iam stand-in at <node IP>:8282 (while its pod runs),
                 │                    docker0 bridge ─ pod ns nginx-vanilla, pod ns nginx-annotated
                 └─ veth ─ node-b ns: the same

The metadata stand-in (`ImdsHandler`) plays EC2's instance metadata service: it hands out credentials
of the role in the instance profile associated with that node's instance, so an un-intercepted pod
gets the node role (the article's leak). The kube2iam stand-in (`Kube2iamHandler`) only receives
traffic when the node's iptables DNAT rule sends it there, and listens only while a kube2iam pod runs on
the node (from `play_controllers` until that pod is deleted, as kube2iam's process lives and dies with its
pod: rbacbridge tells its own kube2iam's listener from another's by that pod). Both listen on sockets made inside the
node's namespace but are served by threads of this process, so they can reach the API server on
127.0.0.1 and moto.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from rbacbridge.sandbox_backend import check_backend
from tests import lab_decide, netns
from tests.netns import Node, Pod

PREFIX = "rbl"
SUPERNET = ipaddress.ip_network("10.233.0.0/17")  # /30 links, claimed with lock files
POD_CIDR = "10.233.{}.1/24"  # node i's docker0 bridge: 10.233.(128+i).0/24, seen only inside the lab
MOTO_PORT, CONTROL_PORT = 5000, 5001  # inside the lab's own "aws" namespace
METADATA_IP = "169.254.169.254"
ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
# botocore gives the metadata service 1 s by default. The lab's stand-ins answer from threads of the
# test process while ~30 AWS CLI processes start at once on 2 cores, which can miss that; a real
# node's metadata service would not. Pods and SSH sessions on the nodes get more patience.
METADATA_PATIENCE = {"AWS_METADATA_SERVICE_TIMEOUT": "5", "AWS_METADATA_SERVICE_NUM_ATTEMPTS": "3"}
ADMIN_USER = "rbl-lab-admin"
LEGACY_PROFILE, LEGACY_ROLE = "legacy-node-profile", "legacy-node-role"
BUCKET_OBJECTS = {"nettech-helm-test": ["charts/index.yaml", "charts/nginx-1.0.0.tgz"],
                  "lanre.k8s.dev": ["tenant/config.json", "tenant/data.csv"]}
ROLE_ANNOTATION = "iam.amazonaws.com/role"
ALLOWED_ROLES = "iam.amazonaws.com/allowed-roles"
REPO = Path(__file__).resolve().parent.parent
_CLONE_NEWNET = 0x40000000
_DUMMY = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def aws_cli() -> str | None:
    """The host's AWS CLI script (not a pyenv shim: pods run it with a clean environment)."""
    beside = Path(sys.executable).parent / "aws"
    if beside.exists():
        return str(beside)
    return shutil.which("aws")


def available() -> str | None:
    """Why the lab cannot run here, or None."""
    why = netns.available()
    if why:
        return why
    if aws_cli() is None:
        return "needs the AWS CLI (pip install awscli)"
    return None


def _sh(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return netns.run(argv, check=check)


def in_namespace(namespace: str, fn):
    """Run fn() on a thread that has joined `namespace`'s network namespace (sockets made there stay there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    box: dict[str, Any] = {}

    def target() -> None:
        fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {namespace}")
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=target, name=f"setns-{namespace}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the address's FQDN: a 5 s DNS timeout inside a node namespace.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def serve_in_namespace(namespace: str, address: str, port: int, handler: type, **attrs) -> ThreadingHTTPServer:
    """An HTTP server listening inside `namespace`, served by threads of this process."""
    server = in_namespace(namespace, lambda: _Server((address, port), handler))
    server.daemon_threads = True
    for key, value in attrs.items():
        setattr(server, key, value)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                     name=f"serve-{namespace}-{port}").start()
    return server


# --- the two stand-ins ----------------------------------------------------------------------------

class _MetadataHandler(BaseHTTPRequestHandler):
    """Shared by both stand-ins: the IMDSv2 token and the two credential paths botocore reads."""

    protocol_version = "HTTP/1.1"
    CREDENTIALS = "/latest/meta-data/iam/security-credentials/"
    OTHER_ROLE = 404  # a role other than the one this pod gets, asked for by name (EC2: not found)

    def log_message(self, *args) -> None:
        pass

    def _answer(self, code: int, text: str, content_type: str = "text/plain") -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:  # noqa: N802
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._answer(200, "lab-token-" + secrets.token_hex(8))
        else:
            self._answer(400, "bad token request")

    def do_GET(self) -> None:  # noqa: N802
        try:
            role = self.role()
        except PermissionError as exc:
            self._answer(403, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a stand-in answers 500 like a broken daemon
            self._answer(500, f"{type(exc).__name__}: {exc}")
            return
        if self.path.rstrip("/") == self.CREDENTIALS.rstrip("/"):
            self._answer(200, role) if role else self._answer(404, "no role")
        elif self.path.startswith(self.CREDENTIALS) and role and self.path[len(self.CREDENTIALS):].strip("/") != role:
            self._answer(self.OTHER_ROLE, f"Invalid role {self.path[len(self.CREDENTIALS):].strip('/')}")
        elif self.path.startswith(self.CREDENTIALS) and role:
            try:
                creds = self.credentials(role)
            except PermissionError as exc:
                self._answer(403, str(exc))
                return
            now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._answer(200, json.dumps({"Code": "Success", "LastUpdated": now, "Type": "AWS-HMAC", **creds}),
                         "application/json")
        else:
            self._answer(404, "not found")

    def role(self) -> str | None:
        raise NotImplementedError

    def credentials(self, role: str) -> dict[str, str]:
        raise NotImplementedError


class ImdsHandler(_MetadataHandler):
    """EC2's instance metadata service for one node: the role of the instance profile associated
    with the node's instance, read from moto now (so setup's association and teardown's restore show)."""

    def role(self) -> str | None:
        return self.server.lab.instance_role(self.server.instance_id)

    def credentials(self, role: str) -> dict[str, str]:
        return self.server.lab.node_credentials(role, self.server.instance_id)


class Kube2iamHandler(_MetadataHandler):
    """Stands in for kube2iam's Go daemon, which cannot run here: for a request from a pod IP it finds
    the pod in the Kubernetes API server, takes its iam.amazonaws.com/role annotation (else the default
    role), honours the namespace's allowed-roles under --namespace-restrictions, and assumes the role
    from the node role, checking the role's trust policy with the lab's own small evaluator
    (tests/lab_decide.py, never rbacbridge's). Its settings come from the kube2iam DaemonSet's args,
    as setup wrote them."""

    OTHER_ROLE = 403  # kube2iam: "Invalid role X" when a pod asks for a role that is not its annotation's

    def role(self) -> str | None:
        self.server.lab.kube2iam_asked.append(self.client_address[0])
        return self.server.lab.kube2iam_role(self.client_address[0])

    def credentials(self, role: str) -> dict[str, str]:
        return self.server.lab.kube2iam_credentials(self.server.instance_id, role, self.client_address[0])


def _running(lab_node: "LabNode", pod_ip: str, containers: list[str]) -> dict[str, Any]:
    return {"phase": "Running", "podIP": pod_ip, "hostIP": lab_node.address, "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": c, "ready": True, "restartCount": 0, "image": "x", "imageID": "",
                                   "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}} for c in containers]}


# --- the lab --------------------------------------------------------------------------------------

@dataclass
class LabNode:
    node: Node
    name: str
    instance_id: str
    pod_cidr: str
    pods: dict[tuple[str, str], Pod] = field(default_factory=dict)  # (k8s namespace, pod name) -> netns pod
    servers: list[ThreadingHTTPServer] = field(default_factory=list)
    kube2iam: ThreadingHTTPServer | None = None  # the kube2iam stand-in: listens while a kube2iam pod runs here

    @property
    def address(self) -> str:
        return self.node.address


@dataclass
class Lab:
    workdir: Path
    aws: Node
    moto: subprocess.Popen | None = None
    nodes: list[LabNode] = field(default_factory=list)
    api: Any = None  # tests.kube_apiserver.KubeApiServer
    admin: dict[str, str] = field(default_factory=dict)
    kube2iam_port: int = 8282
    root_routes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _cache: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    _cache_lock: threading.RLock = field(default_factory=threading.RLock)
    _clients: dict[tuple[str, str], Any] = field(default_factory=dict)
    _kube2iam_cache: dict[tuple[str, str | None, str], dict[str, str]] = field(default_factory=dict)
    _ttl_cache: dict[Any, tuple[float, Any]] = field(default_factory=dict)
    _closed: bool = False
    _pods_lock: threading.RLock = field(default_factory=threading.RLock)
    _kube2iam_lock: threading.Lock = field(default_factory=threading.Lock)
    kube2iam_asked: list[str] = field(default_factory=list)  # the client IP of every request kube2iam answered
    identity: Any = None  # tests.lab_identity.LabIdentity, once start_identity() ran

    # -- life cycle --

    @classmethod
    def start(cls, node_names: tuple[str, ...] = ("node-a", "node-b"), kube2iam_port: int = 8282) -> "Lab":
        began = time.monotonic()
        why = available()
        if why:
            raise RuntimeError(f"the lab cannot run here: {why}")
        workdir = Path(tempfile.mkdtemp(prefix="rbl-lab-"))
        os.chmod(workdir, 0o755)
        aws = Node.start("aws", start_sshd=False, prefix=PREFIX, supernet=SUPERNET)
        lab = cls(workdir=workdir, aws=aws, kube2iam_port=kube2iam_port)
        try:
            _sh(["ip", "netns", "exec", aws.namespace, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            lab._start_moto()
            (workdir / "bin").mkdir()
            os.symlink(aws_cli(), workdir / "bin" / "aws")
            (workdir / "home").mkdir()
            key = workdir / "ssh_key"
            netns.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)])
            for index, name in enumerate(node_names):
                lab._add_node(index, name, key)
            (workdir / "known_hosts").write_text("".join(n.node.known_hosts.read_text() for n in lab.nodes))
            lab._wait_moto()
            check_backend(lab.endpoint_url)  # its own process: checked like the test run's (BackendMismatch ends the start)
            lab._seed_aws()
            lab.client("iam"), lab.client("ec2")  # made once here, not inside the stand-ins' first answer
            lab._start_api()
            for lab_node in lab.nodes:
                lab._start_stand_ins(lab_node)
            lab._write_config()
        except BaseException:
            lab.close()
            raise
        lab.timings["start"] = time.monotonic() - began
        return lab

    def _start_moto(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(PYTHONPATH=str(REPO), MOTO_ACCOUNT_ID=ACCOUNT)
        self.moto = subprocess.Popen(
            ["ip", "netns", "exec", self.aws.namespace, sys.executable, "-m", "tests.lab_moto", self.aws.address,
             str(MOTO_PORT), str(CONTROL_PORT)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=open(self.workdir / "moto.log", "wb"), env=env, cwd=REPO)

    def _wait_moto(self) -> None:
        line = self.moto.stdout.readline().decode().strip()
        if line != "ready":
            raise RuntimeError(f"moto did not start: {(self.workdir / 'moto.log').read_text()[-800:]}")

    def _add_node(self, index: int, name: str, key: Path) -> None:
        path = f"{self.workdir / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        keep = tuple(p for p in {sys.prefix, sys.base_prefix, str(Path(aws_cli()).resolve().parent.parent)} if p.startswith("/root/"))
        node = Node.start(name, parent=self.aws, client_key=key, path=path, prefix=PREFIX, supernet=SUPERNET,
                          keep_under_root=keep, session_env=METADATA_PATIENCE)
        lab_node = LabNode(node, name, instance_id="", pod_cidr=POD_CIDR.format(128 + index))
        self.nodes.append(lab_node)
        inner = ["ip", "-n", node.namespace]
        _sh([*inner, "route", "add", "default", "via", node.gateway])
        _sh(["ip", "netns", "exec", node.namespace, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        _sh([*inner, "addr", "add", f"{METADATA_IP}/32", "dev", "lo"])
        link = str(ipaddress.ip_interface(f"{node.address}/30").network)
        _sh(["ip", "route", "add", link, "via", self.aws.address])
        self.root_routes.append(link)
        pod_net = str(ipaddress.ip_interface(lab_node.pod_cidr).network)
        _sh(["ip", "-n", self.aws.namespace, "route", "add", pod_net, "via", node.address])
        for app in ("nginx-vanilla", "nginx-annotated"):  # the article's two; play_controllers adds the rest
            self.pod_namespace(lab_node, "default", f"{app}-{name}")

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.aws.address}:{MOTO_PORT}"

    def client(self, service: str, credentials: dict[str, str] | None = None):
        """A boto3 client for moto (the admin's, made once and shared: the stand-ins answer within botocore's 1 s)."""
        import boto3

        key = (service, credentials["aws_access_key_id"] if credentials else "admin")
        with self._cache_lock:
            if key not in self._clients:
                self._clients[key] = boto3.client(service, endpoint_url=self.endpoint_url, region_name=REGION,
                                                  **(credentials or self.admin))
            return self._clients[key]

    def _post_moto(self, path: str, body: bytes) -> bytes:
        request = urllib.request.Request(self.endpoint_url + path, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def _seed_aws(self) -> None:
        """What the article assumes exists, then IAM enforcement on (only moto-issued keys work from here)."""
        iam = self.client("iam", _DUMMY)
        iam.create_user(UserName=ADMIN_USER)
        iam.put_user_policy(UserName=ADMIN_USER, PolicyName="lab-admin", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
        self.admin = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        s3 = self.client("s3", _DUMMY)
        for bucket, keys in BUCKET_OBJECTS.items():
            s3.create_bucket(Bucket=bucket)
            for item in keys:
                s3.put_object(Bucket=bucket, Key=item, Body=f"lab object {item}\n".encode())
        ec2 = self.client("ec2", _DUMMY)
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                          "Action": "sts:AssumeRole"}]}
        iam.create_role(RoleName=LEGACY_ROLE, AssumeRolePolicyDocument=json.dumps(trust))
        iam.create_instance_profile(InstanceProfileName=LEGACY_PROFILE)
        iam.add_role_to_instance_profile(InstanceProfileName=LEGACY_PROFILE, RoleName=LEGACY_ROLE)
        for index, lab_node in enumerate(self.nodes):
            lab_node.instance_id = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, Placement={
                "AvailabilityZone": f"{REGION}a"})["Instances"][0]["InstanceId"]
            if index == 0:  # the first node had a profile of its own before rbacbridge: teardown must restore it
                ec2.associate_iam_instance_profile(InstanceId=lab_node.instance_id, IamInstanceProfile={"Name": LEGACY_PROFILE})
        self._post_moto("/moto-api/reset-auth", b"0")

    def _start_api(self) -> None:
        from tests.fixtures_kube import write_kubeconfig
        from tests.kube_apiserver import KubeApiServer

        self.api = KubeApiServer().start()
        store = self.api.store
        for name in ("default", "kube-system"):
            store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        for lab_node in self.nodes:
            store.add_node(lab_node.name, lab_node.address, provider_id=f"aws:///{REGION}a/{lab_node.instance_id}")
        write_kubeconfig(self.workdir / "kubeconfig", {"lab": self.api.url}, current="lab")
        self.api.exec_handler = self._exec
        # pods created through the API (not hostNetwork) wait for the lab kubelet below: it gives each a pod
        # network namespace and its IP (the store alone would mark them Running at once with a made-up IP)
        store.kubelet = lambda pod: not (pod.get("spec") or {}).get("hostNetwork")
        store.on_delete = self._on_delete
        threading.Thread(target=self._kubelet, name="lab-kubelet", daemon=True).start()

    def _start_stand_ins(self, lab_node: LabNode) -> None:
        ns = lab_node.node.namespace
        lab_node.servers.append(serve_in_namespace(ns, METADATA_IP, 80, ImdsHandler, lab=self, instance_id=lab_node.instance_id))

    def _kube2iam_listen(self, lab_node: LabNode) -> None:
        """kube2iam's process on this node listens on its port (its pod runs: play_controllers)."""
        with self._kube2iam_lock:
            if lab_node.kube2iam is None and not self._closed:
                lab_node.kube2iam = serve_in_namespace(lab_node.node.namespace, lab_node.address, self.kube2iam_port,
                                                       Kube2iamHandler, lab=self, instance_id=lab_node.instance_id)

    def _kube2iam_quiet(self, lab_node: LabNode) -> None:
        """kube2iam's process on this node is gone with its pod: nothing listens on its port any more (rbacbridge
        tells its own kube2iam's listener from another interceptor's by that pod, issue 22)."""
        with self._kube2iam_lock:
            server, lab_node.kube2iam = lab_node.kube2iam, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def _on_delete(self, obj: dict[str, Any]) -> None:
        """The API server deleted an object (a DaemonSet's pods with it): a kube2iam pod's process stops."""
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if obj.get("kind") == "Pod" and labels.get("app.kubernetes.io/name") == "kube2iam":
            lab_node = next((n for n in self.nodes if n.name == (obj.get("spec") or {}).get("nodeName")), None)
            if lab_node is not None:
                self._kube2iam_quiet(lab_node)

    def _write_config(self) -> None:
        config = {
            "account_id": ACCOUNT,
            "aws": {"region": REGION, "endpoint_url": self.endpoint_url},
            "kubernetes": {"kubeconfig": self.kubeconfig, "rollout_timeout": 30},
            "kube2iam": {"port": self.kube2iam_port},
            "nodes": {"ssh_user": "root", "ssh_key": self.ssh_key, "known_hosts": self.known_hosts, "ssh_config": "none"},
        }
        (self.workdir / "rbacbridge.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for lab_node in self.nodes:
            self._kube2iam_quiet(lab_node)
            for server in lab_node.servers:
                server.shutdown()
                server.server_close()
        if self.identity is not None:
            self.identity.close()
        if self.api is not None:
            self.api.stop()
        for lab_node in reversed(self.nodes):
            lab_node.node.close()
        for link in self.root_routes:
            _sh(["ip", "route", "del", link], check=False)  # gone with the veth already; this is a safety net
        self.aws.close()  # kills moto (every pid in the namespace)
        if self.moto is not None:
            try:
                self.moto.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            if self.moto.stdout:
                self.moto.stdout.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def leftovers(self) -> list[str]:
        """Namespaces, links, routes and processes of this lab that still exist."""
        left = [n for n in netns.leftovers(PREFIX) if any(n.startswith(x.node.namespace) or x.node.namespace.replace("-", "") in n
                                                             for x in self.nodes)
                or n.startswith(self.aws.namespace) or self.aws.namespace.replace("-", "") in n]
        routes = _sh(["ip", "route"]).stdout
        left += [f"route {r}" for r in self.root_routes if r in routes]
        if self.moto is not None and self.moto.poll() is None:
            left.append(f"moto pid {self.moto.pid}")
        if self.workdir.exists():
            left.append(str(self.workdir))
        return left

    # -- what a user needs to run the CLI against the lab --

    @property
    def kubeconfig(self) -> str:
        return str(self.workdir / "kubeconfig")

    @property
    def known_hosts(self) -> str:
        return str(self.workdir / "known_hosts")

    @property
    def ssh_key(self) -> str:
        return str(self.workdir / "ssh_key")

    @property
    def config_file(self) -> str:
        return str(self.workdir / "rbacbridge.yaml")

    def env(self) -> dict[str, str]:
        """The CLI's environment: AWS points at the lab's moto with the admin key moto issued."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG", "RBACBRIDGE_"))}
        env.update(PYTHONPATH=str(REPO), HOME=str(self.workdir / "home"), AWS_ENDPOINT_URL=self.endpoint_url,
                   AWS_ACCESS_KEY_ID=self.admin["aws_access_key_id"], AWS_SECRET_ACCESS_KEY=self.admin["aws_secret_access_key"],
                   AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
                   AWS_EC2_METADATA_DISABLED="true")
        return env

    def cli(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rbacbridge", *args], capture_output=True, text=True,
                              env={**self.env(), **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.workdir)

    def write_config(self, name: str, **sections: dict[str, Any]) -> str:
        """Another rbacbridge.yaml next to the lab's, with `sections` merged over it; returns its path."""
        config = yaml.safe_load((self.workdir / "rbacbridge.yaml").read_text())
        for section, values in sections.items():
            config.setdefault(section, {}).update(values)
        path = self.workdir / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return str(path)

    def write_tenants_config(self, name: str, tenants: list[dict[str, Any]]) -> str:
        """Another rbacbridge.yaml next to the lab's, with a `tenants:` list (issue 12); returns its path."""
        config = yaml.safe_load((self.workdir / "rbacbridge.yaml").read_text())
        config["tenants"] = tenants
        path = self.workdir / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return str(path)

    def kube2iam_stop(self, node_name: str) -> None:
        """kube2iam is not running on this node (its pod gone, its DNAT rules removed): like a node whose taint
        the DaemonSet does not tolerate."""
        lab_node = self.node(node_name)
        for pod in self.api.store.objects_of("Pod"):
            labels = pod["metadata"].get("labels") or {}
            if labels.get("app.kubernetes.io/name") == "kube2iam" and pod["spec"].get("nodeName") == node_name:
                self.api.store.delete("Pod", pod["metadata"]["name"], pod["metadata"]["namespace"])
        self._kube2iam_quiet(lab_node)
        for rule in lab_node.node.nat_rules():
            if f"-d {METADATA_IP}/32" in rule and "DNAT" in rule:
                lab_node.node.iptables("-t", "nat", *rule.replace("-A ", "-D ", 1).split())

    def taint(self, node_name: str, taints: list[dict[str, str]]) -> None:
        node = self.api.store.get("Node", node_name)
        node.setdefault("spec", {})["taints"] = taints
        self.api.store.put(node)

    def add_host_network_pod(self, node_name: str, namespace: str, name: str) -> None:
        """A pod sharing the node's network (no namespace of its own): kube2iam never sees its calls."""
        lab_node = self.node(node_name)
        self._put_pod(lab_node, namespace, name, {"app": name}, {}, lab_node.address, host_network=True)

    # -- pods: the namespaces behind docker0 and the API server's view of them --

    def pod_env(self) -> list[str]:
        return ["env", "-i", f"PATH={self.workdir / 'bin'}:/usr/bin:/bin", f"HOME={self.workdir / 'home'}",
                f"AWS_DEFAULT_REGION={REGION}", f"AWS_ENDPOINT_URL={self.endpoint_url}",
                *(f"{k}={v}" for k, v in METADATA_PATIENCE.items())]

    def start_identity(self, cluster: str = "lab") -> Any:
        """IRSA and EKS Pod Identity for this lab (tests/lab_identity.py): the test issuer, the STS proxy, the EKS
        stand-in, a Pod Identity agent per node and the injecting webhook. Returns the LabIdentity."""
        from tests.lab_identity import LabIdentity

        if self.identity is None:
            self.identity = LabIdentity.start(self, cluster)
        return self.identity

    def _pod_argv(self, target_namespace: str, namespace: str, name: str, argv: list[str]) -> list[str]:
        """`ip netns exec` into a pod's namespace with its environment. Once start_identity() ran: the env its
        first container was given (the webhook's), STS through the proxy, and its projected token files minted
        and bound over /run for this process only."""
        base = ["ip", "netns", "exec", target_namespace]
        if self.identity is None:
            return [*base, *self.pod_env(), *argv]
        from tests.lab_identity import pod_environment

        pod = self.api.store.get("Pod", name, namespace) or {}
        env = [f"AWS_ENDPOINT_URL_STS={self.identity.sts_url}",
               *(f"{k}={v}" for k, v in pod_environment(pod).items())]
        run_dir = self.identity.pod_run_dir(pod) if pod else None
        if run_dir is None:
            return [*base, *self.pod_env(), *env, *argv]
        return [*base, "sh", "-c", 'mount --bind "$0" /run && exec "$@"', str(run_dir), *self.pod_env(), *env, *argv]

    def _find_pod(self, namespace: str, name: str) -> Pod | None:
        for lab_node in self.nodes:
            if (namespace, name) in lab_node.pods:
                return lab_node.pods[(namespace, name)]
        return None

    def _exec(self, namespace: str, pod: str, container: str | None, argv: list[str]) -> tuple[int, bytes, bytes]:
        target = self._find_pod(namespace, pod)
        if target is None:  # a hostNetwork pod (kube2iam's, rbacbridge's node pods) runs in its node's namespace
            spec = (self.api.store.get("Pod", pod, namespace) or {}).get("spec") or {}
            lab_node = next((n for n in self.nodes if n.name == spec.get("nodeName")), None)
            if spec.get("hostNetwork") and lab_node is not None:
                target = Pod(lab_node.node.namespace, lab_node.address)
                argv = [f"PATH={self.workdir / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", *argv]  # after env -i: iptables too
        if target is None:
            return 1, b"", f"pod {namespace}/{pod} has no network namespace in the lab\n".encode()
        done = subprocess.run(self._pod_argv(target.namespace, namespace, pod, argv), capture_output=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        return done.returncode, done.stdout, done.stderr

    def pod_exec(self, namespace: str, name: str, argv: list[str]) -> subprocess.CompletedProcess:
        target = self._find_pod(namespace, name)
        return subprocess.run(self._pod_argv(target.namespace, namespace, name, argv), capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    def node(self, name: str) -> LabNode:
        return next(n for n in self.nodes if n.name == name)

    def _put_pod(self, lab_node: LabNode, namespace: str, name: str, labels: dict[str, str], annotations: dict[str, str],
                 pod_ip: str, owner: dict[str, Any] | None = None, host_network: bool = False,
                 service_account: str | None = None) -> None:
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations}
        if owner:
            meta["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
                                        "uid": owner["metadata"]["uid"], "controller": True}]
        spec: dict[str, Any] = {"nodeName": lab_node.name, "hostNetwork": host_network, "containers": [{"name": "main", "image": "x"}]}
        if service_account:
            spec["serviceAccountName"] = service_account
        store = self.api.store
        store.put(store.admit_pod({  # through the injecting webhook, if start_identity() set one
            "apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
            "status": _running(lab_node, pod_ip, ["main"]),
        }))

    def _kubelet(self) -> None:
        """The scheduler and kubelet for pods created through the API (e.g. verify's annotation probe pods): a pod
        with no status gets a node (its nodeName, else the nodes in turn), a lab pod namespace behind that node's
        docker0, and status Running with that namespace's IP. Pods made by play_controllers already run."""
        store, turn = self.api.store, 0
        while not self._closed:
            try:
                self._kubelet_turn(store, turn)
                turn += 1
            except Exception:  # noqa: BLE001 - the lab is closing (or one pod failed to start: it stays Pending)
                if self._closed:
                    return
            time.sleep(0.05)

    def _kubelet_turn(self, store: Any, turn: int) -> None:
        for pod in store.objects_of("Pod"):
            meta, spec = pod["metadata"], pod.get("spec") or {}
            if (pod.get("status") or {}).get("phase") or spec.get("hostNetwork"):
                continue
            lab_node = next((n for n in self.nodes if n.name == spec.get("nodeName")), None) or self.nodes[turn % len(self.nodes)]
            address = self.pod_namespace(lab_node, meta["namespace"], meta["name"]).address
            with store.lock:  # only if it was not deleted meanwhile
                live = store.get("Pod", meta["name"], meta["namespace"])
                if live is None or live["metadata"].get("uid") != meta.get("uid"):
                    continue
                live["spec"]["nodeName"] = lab_node.name
                live["status"] = _running(lab_node, address, [c["name"] for c in spec.get("containers") or []])
                store.put(live)

    def pod_namespace(self, lab_node: LabNode, namespace: str, name: str) -> Pod:
        """The network namespace behind docker0 of pod `namespace/name` on this node (made on first use)."""
        with self._pods_lock:  # the kubelet thread and the test's controllers both make pods
            if (namespace, name) not in lab_node.pods:
                lab_node.pods[(namespace, name)] = lab_node.node.add_pod(name, bridge="docker0", bridge_cidr=lab_node.pod_cidr)
            return lab_node.pods[(namespace, name)]

    def managed_deployments(self) -> list[dict[str, Any]]:
        """Every Deployment setup made (label app.kubernetes.io/managed-by=rbacbridge), in any namespace."""
        return sorted((d for d in self.api.store.objects_of("Deployment")
                       if (d["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "rbacbridge"),
                      key=lambda d: (d["metadata"]["namespace"], d["metadata"]["name"]))

    def play_controllers(self, placement: dict[str, list[str]] | None = None) -> None:
        """The Deployment and DaemonSet controllers: one pod of every Deployment setup made (the article's nginx
        pair, and each tenant's workloads in its namespace) on every node — or on the nodes `placement` names for
        that Deployment — with labels and annotations from the templates setup wrote and the IP of a lab pod
        namespace; pods of Deployments that are gone are deleted; one kube2iam pod per node (hostNetwork)."""
        store = self.api.store
        deployments = self.managed_deployments()
        if not deployments:
            raise RuntimeError("no Deployment of rbacbridge's exists: run setup first")
        for pod in store.objects_of("Pod"):
            refs = pod["metadata"].get("ownerReferences") or []
            if refs and refs[0].get("kind") == "Deployment":  # re-placed below, or its Deployment is gone
                store.delete("Pod", pod["metadata"]["name"], pod["metadata"]["namespace"])
        for owner in deployments:
            name, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
            template = owner["spec"]["template"]["metadata"]
            on = (placement or {}).get(name)
            for lab_node in self.nodes:
                if on is not None and lab_node.name not in on:
                    continue
                pod_name = f"{name}-{lab_node.name}"
                pod = self.pod_namespace(lab_node, namespace, pod_name)
                self._put_pod(lab_node, namespace, pod_name, dict(template.get("labels") or {}),
                              dict(template.get("annotations") or {}), pod.address, owner,
                              service_account=(owner["spec"]["template"].get("spec") or {}).get("serviceAccountName"))
        daemonset = next(d for d in store.objects_of("DaemonSet") if d["metadata"]["name"] == "kube2iam")
        namespace = daemonset["metadata"]["namespace"]
        for pod in store.objects_of("Pod", namespace):
            if any(ref.get("uid") == daemonset["metadata"]["uid"] for ref in pod["metadata"].get("ownerReferences", [])):
                store.delete("Pod", pod["metadata"]["name"], namespace)
        labels = dict(daemonset["spec"]["template"]["metadata"].get("labels") or {})
        for lab_node in self.nodes:
            self._put_pod(lab_node, namespace, f"kube2iam-{lab_node.name}", labels, {}, lab_node.address, daemonset, host_network=True)
            self._kube2iam_listen(lab_node)

    def add_tenant_pod(self, node_name: str, namespace: str, name: str, role: str, allowed_roles: list[str]) -> None:
        """A third tenant: a namespace whose allowed-roles is `allowed_roles`, and a pod annotated with `role`."""
        self.api.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": namespace, "annotations": {ALLOWED_ROLES: json.dumps(allowed_roles)}}})
        self.add_pod(node_name, namespace, name, {ROLE_ANNOTATION: role})

    def add_pod(self, node_name: str, namespace: str, name: str, annotations: dict[str, str],
                service_account: str | None = None) -> None:
        """A bare pod (no controller, not rbacbridge's) in an existing namespace, e.g. a tenant's own pod asking
        for a role; its namespace (and allowed-roles) is left as it is. With start_identity(), admitted by the
        injecting webhook (its ServiceAccount's role, or its Pod Identity association)."""
        lab_node = self.node(node_name)
        pod = self.pod_namespace(lab_node, namespace, name)
        self._put_pod(lab_node, namespace, name, {"app": name}, annotations, pod.address, service_account=service_account)

    def add_buckets(self, names: list[str]) -> None:
        """More buckets (e.g. the tenants'), each with one object, made with the lab admin's key."""
        s3 = self.client("s3")
        for bucket in names:
            s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key="tenant/seed.txt", Body=b"lab object\n")

    def kube2iam_start(self, node_name: str, port: int | None = None) -> None:
        """What kube2iam does at start-up with --iptables=true: append its DNAT rule (it never checks for others)."""
        lab_node = self.node(node_name)
        interface = self._kube2iam_args().get("--host-interface", "docker0")
        lab_node.node.iptables("-t", "nat", "-A", "PREROUTING", "-d", f"{METADATA_IP}/32", "-i", interface, "-p", "tcp",
                               "-m", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination",
                               f"{lab_node.address}:{port or self.kube2iam_port}")

    # -- what the stand-ins know --

    def _kube2iam_args(self) -> dict[str, str]:
        daemonset = next((d for d in self.api.store.objects_of("DaemonSet") if d["metadata"]["name"] == "kube2iam"), None)
        if daemonset is None:
            return {}
        args: dict[str, str] = {}
        for container in daemonset["spec"]["template"]["spec"]["containers"]:
            for arg in container.get("args") or []:
                key, _, value = arg.partition("=")
                args[key] = value
        return args

    def _ttl(self, key: Any, seconds: float, compute):
        """A short-lived cache: IMDS answers at once and kube2iam reads pods from an informer cache, so the
        stand-ins must answer within botocore's 1 s metadata timeout while verify starts ~30 CLIs at once."""
        now = time.monotonic()
        with self._cache_lock:
            hit = self._ttl_cache.get(key)
        if hit and now - hit[0] < seconds:
            return hit[1]
        value = compute()
        with self._cache_lock:
            self._ttl_cache[key] = (now, value)
        return value

    def instance_role(self, instance_id: str) -> str | None:
        return self._ttl(("instance_role", instance_id), 2.0, lambda: self._instance_role(instance_id))

    def _instance_role(self, instance_id: str) -> str | None:
        ec2, iam = self.client("ec2"), self.client("iam")
        found = ec2.describe_iam_instance_profile_associations(Filters=[
            {"Name": "instance-id", "Values": [instance_id]}, {"Name": "state", "Values": ["associated"]}])["IamInstanceProfileAssociations"]
        if not found:
            return None
        profile = found[0]["IamInstanceProfile"]["Arn"].rsplit("/", 1)[-1]
        roles = iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]["Roles"]
        return roles[0]["RoleName"] if roles else None

    def _assume(self, role_arn: str, session: str) -> dict[str, str]:
        key = (role_arn, session)
        with self._cache_lock:
            cached = self._cache.get(key)
        if cached:
            return cached
        request = urllib.request.Request(f"http://{self.aws.address}:{CONTROL_PORT}/assume-role", method="POST",
                                         data=json.dumps({"role_arn": role_arn, "session": session}).encode())
        with urllib.request.urlopen(request, timeout=10) as response:
            creds = json.loads(response.read())
        with self._cache_lock:
            self._cache[key] = creds
        return creds

    def _trust(self, role: str) -> dict[str, Any]:
        document = self.client("iam").get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
        return json.loads(document) if isinstance(document, str) else document

    def _role_policies(self, role: str) -> list[Any]:
        iam = self.client("iam")
        documents = []
        for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
            version = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]["DefaultVersionId"]
            documents.append(iam.get_policy_version(PolicyArn=attached["PolicyArn"], VersionId=version)["PolicyVersion"]["Document"])
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            documents.append(iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])
        return documents

    def node_credentials(self, role: str, instance_id: str) -> dict[str, str]:
        if not lab_decide.trusts(self._trust(role), service="ec2.amazonaws.com"):
            raise PermissionError(f"role {role} does not trust ec2.amazonaws.com")
        return self._assume(f"arn:aws:iam::{ACCOUNT}:role/{role}", instance_id)

    def _pod_by_ip(self, ip: str) -> dict[str, Any] | None:
        def find(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
            return next((p for p in pods if (p.get("status") or {}).get("podIP") == ip and not (p.get("spec") or {}).get("hostNetwork")), None)

        found = find(self._ttl("pods", 1.0, self._list_pods))
        if found is None:  # a pod newer than the cache (kube2iam, too, looks again before refusing an unknown IP)
            fresh = self._list_pods()
            with self._cache_lock:
                self._ttl_cache["pods"] = (time.monotonic(), fresh)
            found = find(fresh)
        return found

    def _list_pods(self) -> list[dict[str, Any]]:
        request = urllib.request.Request(f"{self.api.url}/api/v1/pods", headers={"Authorization": f"Bearer {self.api.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["items"]

    def _namespace_annotations(self, namespace: str) -> dict[str, str]:
        request = urllib.request.Request(f"{self.api.url}/api/v1/namespaces/{namespace}",
                                         headers={"Authorization": f"Bearer {self.api.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["metadata"].get("annotations") or {}

    def kube2iam_role(self, pod_ip: str) -> str | None:
        args = self._kube2iam_args()
        pod = self._pod_by_ip(pod_ip)
        if pod is None:
            raise PermissionError(f"no pod with IP {pod_ip}")
        annotated = (pod["metadata"].get("annotations") or {}).get(ROLE_ANNOTATION)
        if annotated is None:
            if "--default-role" in args:
                return args["--default-role"].rsplit("/", 1)[-1]
            if "--auto-discover-default-role" in args:
                node = next(n for n in self.nodes if n.name == pod["spec"].get("nodeName"))
                return self.instance_role(node.instance_id)
            raise PermissionError("no role annotation and no default role")
        role = annotated.rsplit("/", 1)[-1]
        if "--namespace-restrictions" in args:
            raw = self._namespace_annotations(pod["metadata"]["namespace"]).get(ALLOWED_ROLES)
            patterns = json.loads(raw) if raw else []
            if not lab_decide.namespace_allows(f"arn:aws:iam::{ACCOUNT}:role/{role}", patterns):
                raise PermissionError(f"role {role} is not allowed in namespace {pod['metadata']['namespace']}")
        return role

    def kube2iam_credentials(self, instance_id: str, role: str, pod_ip: str) -> dict[str, str]:
        node_role = self.instance_role(instance_id)
        with self._cache_lock:  # like kube2iam: credentials per role, reused until they expire
            cached = self._kube2iam_cache.get((instance_id, node_role, role))
        if cached:
            return cached
        if node_role is None:
            raise PermissionError("the node has no instance profile role to assume from")
        node_arn, role_arn = f"arn:aws:iam::{ACCOUNT}:role/{node_role}", f"arn:aws:iam::{ACCOUNT}:role/{role}"
        try:
            trust = self._trust(role)
        except self.client("iam").exceptions.NoSuchEntityException:
            trust = {}
        if not lab_decide.trusts(trust, arn=node_arn):
            raise PermissionError(f"AssumeRole {role_arn} denied: its trust policy does not trust {node_arn}")
        if not lab_decide.permits(self._role_policies(node_role), "sts:AssumeRole", role_arn):
            raise PermissionError(f"AssumeRole {role_arn} denied: the node role may not assume it")
        creds = self._assume(role_arn, f"{instance_id}-kube2iam")
        with self._cache_lock:
            self._kube2iam_cache[(instance_id, node_role, role)] = creds
        return creds


def main() -> int:
    """Start the lab, print how to use it, wait for Ctrl-C, tear it down."""
    print("starting the rbacbridge lab (root + Linux; network namespaces, sshd, iptables, moto)...", flush=True)
    lab = Lab.start()
    try:
        print(f"lab up in {lab.timings['start']:.1f}s\n")
        print(f"  moto (AWS):        {lab.endpoint_url}  (admin key in the env below; IAM enforcement on)")
        print(f"  Kubernetes API:    {lab.api.url}  (kubeconfig {lab.kubeconfig})")
        for n in lab.nodes:
            print(f"  {n.name}: ssh root@{n.address}  instance {n.instance_id}  namespace {n.node.namespace}  pods "
                  + ", ".join(f"{name}={pod.address}" for (_, name), pod in n.pods.items()))
        env = lab.env()
        env_file = lab.workdir / "lab.env"  # the moto-issued admin key goes to a file, never to the screen
        env_file.write_text("".join(f"export {key}={shlex.quote(env[key])}\n" for key in (
            "PYTHONPATH", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")))
        os.chmod(env_file, 0o600)
        print("\nIn another shell (as root):")
        print(f"  . {env_file}")
        print(f"  python -m rbacbridge setup -c {lab.config_file} --only aws,kube --yes")
        print("  (then press Enter here: the lab plays the controllers and kube2iam's start-up)")
        print(f"  python -m rbacbridge verify -c {lab.config_file}")
        print(f"  python -m rbacbridge iptables status -c {lab.config_file}")
        print(f"  python -m rbacbridge teardown -c {lab.config_file} --yes")
        print("\nEnter: play the controllers and start kube2iam on every node; Ctrl-C: tear the lab down.")
        try:
            input()
            lab.play_controllers()
            for n in lab.nodes:
                lab.kube2iam_start(n.name)
            print("nginx and kube2iam pods placed, DNAT rules added. Ctrl-C tears the lab down.")
            while True:
                time.sleep(3600)
        except (KeyboardInterrupt, EOFError):
            pass
    finally:
        lab.close()
        left = lab.leftovers()
        print("lab torn down" + (f"; LEFT BEHIND: {left}" if left else ": nothing left"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
