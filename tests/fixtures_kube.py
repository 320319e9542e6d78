"""pytest fixture `kube_api`: the test API server on 127.0.0.1:0 and a kubeconfig that reaches it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.kube_apiserver import KubeApiServer, Store


def write_kubeconfig(path: Path, clusters: dict[str, str], current: str, token: str = "test-token") -> Path:
    """One context per cluster name (context name = cluster name), all using the same bearer token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url}} for name, url in clusters.items()],
        "users": [{"name": "tester", "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "tester"}} for name in clusters],
        "current-context": current,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class KubeApi:
    server: KubeApiServer
    kubeconfig: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def store(self) -> Store:
        return self.server.store


@pytest.fixture
def kube_api(tmp_path):
    server = KubeApiServer().start()
    store = server.store
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}})
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"test": server.url}, current="test")
    try:
        yield KubeApi(server, str(kubeconfig))
    finally:
        server.stop()
