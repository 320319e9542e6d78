"""--probe ephemeral: the container is added through the pods/ephemeralcontainers subresource of an
HTTP API server on 127.0.0.1, reached through a generated kubeconfig (the real kubernetes client)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rbacbridge.errors import RbacbridgeError
from rbacbridge.verify import EPHEMERAL_PREFIX, ensure_ephemeral_probe

IMAGE = "amazon/aws-cli:2.22.0"


class PodServer:
    """One pod `default/web`; a new ephemeral container turns running on the second read
    (or reports `fail_reason` while waiting)."""

    def __init__(self, fail_reason=None):
        self.pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx"}], "ephemeralContainers": []},
                    "status": {"phase": "Running", "ephemeralContainerStatuses": []}}
        self.patches, self.reads, self.fail_reason = [], 0, fail_reason
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.split("?")[0] != "/api/v1/namespaces/default/pods/web":
                    return self._send(404, {"kind": "Status", "code": 404})
                server.reads += 1
                for status in server.pod["status"]["ephemeralContainerStatuses"]:
                    if "waiting" in status["state"] and server.reads > 2:
                        status["state"] = ({"waiting": {"reason": server.fail_reason}} if server.fail_reason
                                           else {"running": {"startedAt": "2026-11-26T00:00:00Z"}})
                self._send(200, server.pod)

            def do_PATCH(self):
                if self.path.split("?")[0] != "/api/v1/namespaces/default/pods/web/ephemeralcontainers":
                    return self._send(404, {"kind": "Status", "code": 404})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.patches.append((self.headers["Content-Type"], body))
                for container in body["spec"]["ephemeralContainers"]:
                    server.pod["spec"]["ephemeralContainers"].append(container)
                    server.pod["status"]["ephemeralContainerStatuses"].append(
                        {"name": container["name"], "image": container["image"], "imageID": "", "ready": False,
                         "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}})
                self._send(200, server.pod)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def client(self, tmp_path):
        from kubernetes import config as kube_config

        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{self.http.server_port}"}}],
            "users": [{"name": "t", "user": {"token": "t"}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}]}))
        return kube_config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture
def pod_server():
    servers = []

    def make(**kw):
        servers.append(PodServer(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.http.shutdown()
        s.http.server_close()


def test_adds_an_aws_cli_container_and_waits_until_it_runs(pod_server, tmp_path):
    server = pod_server()
    api = server.client(tmp_path)
    name = ensure_ephemeral_probe(api, "default", "web", IMAGE, poll=0.01)
    assert name.startswith(EPHEMERAL_PREFIX)
    (content_type, body), = server.patches
    assert content_type == "application/strategic-merge-patch+json"
    (container,) = body["spec"]["ephemeralContainers"]
    assert container["name"] == name and container["image"] == IMAGE and container["command"][0] == "sleep"
    # a second verify reuses the running probe container instead of piling up new ones
    assert ensure_ephemeral_probe(api, "default", "web", IMAGE, poll=0.01) == name
    assert len(server.patches) == 1


def test_image_pull_failure_is_reported(pod_server, tmp_path):
    server = pod_server(fail_reason="ImagePullBackOff")
    with pytest.raises(RbacbridgeError, match="ImagePullBackOff"):
        ensure_ephemeral_probe(server.client(tmp_path), "default", "web", IMAGE, poll=0.01)
