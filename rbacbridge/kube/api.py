"""The gateway to the Kubernetes API server: the client (found as kubectl finds it), one-line errors,
the paths of the kinds rbacbridge touches, and exec in a pod.

Every failure becomes one line (`RbacbridgeError`, `KubeApiError` with the HTTP status): a 403 names
the RBAC verb and resource that is missing. The kubernetes client is imported inside the functions
(`rbacbridge --help` stays instant).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from rbacbridge.errors import RbacbridgeError, UsageError
from rbacbridge.kube.objects import FIELD_MANAGER

# kind -> (API path prefix, plural, namespaced)
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Node": ("/api/v1", "nodes", False),
    "Pod": ("/api/v1", "pods", True),
    "Event": ("/api/v1", "events", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),  # audit --who-can reads these two
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "StatefulSet": ("/apis/apps/v1", "statefulsets", True),  # migrate plan's inventory reads these three
    "Job": ("/apis/batch/v1", "jobs", True),
    "CronJob": ("/apis/batch/v1", "cronjobs", True),
}


@dataclass
class ExecResult:
    rc: int
    stdout: str
    stderr: str


_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class KubeGateway:
    """The Kubernetes API, reached like kubectl: --kubeconfig, else KUBECONFIG, else ~/.kube/config,
    else the in-cluster service account. Every failure becomes one line (`RbacbridgeError`)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, timeout: float = 30):
        self.api_client, self.source = _load_client(kubeconfig, context)
        self.timeout = timeout
        self.patches = 0  # server-side apply requests sent (a no-op run sends none)

    @classmethod
    def from_config(cls, config) -> "KubeGateway":
        return cls(config.kubeconfig, config.context)

    @property
    def host(self) -> str:
        return self.api_client.configuration.host

    # -- raw requests --

    def request(self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
                content_type: str = "application/json", what: str | None = None) -> Any:
        """One API call; returns the decoded JSON, or None for 404 on GET (absent)."""
        import urllib3

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        client = self.api_client
        try:
            method_, url, headers, body_, _ = client.param_serialize(
                method, path, query_params=query or [], header_params=headers, body=body, auth_settings=["BearerToken"])
            response = client.call_api(method_, url, header_params=headers, body=body_,
                                       _request_timeout=(min(5, self.timeout), self.timeout))
            data = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise RbacbridgeError(f"cannot reach the Kubernetes API server at {self.host} ({self.source}): {_short(reason)}") from None
        if response.status == 404 and method == "GET":
            return None
        if response.status >= 400:
            raise _api_error(response.status, data, method, path, what)
        return json.loads(data) if data else None

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.request("GET", object_path(kind, name, namespace))

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        answer = self.request("GET", collection_path(kind, namespace), query=query)
        return (answer or {}).get("items", [])

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply, field manager rbacbridge, force (creates the object if missing)."""
        meta = obj["metadata"]
        self.patches += 1
        return self.request("PATCH", object_path(obj["kind"], meta["name"], meta.get("namespace")), body=obj,
                            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                            content_type="application/apply-patch+yaml")

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        return self.request("PATCH", object_path(kind, name, namespace), body=patch,
                            content_type="application/strategic-merge-patch+json")

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        path = object_path(kind, name, namespace)
        try:
            self.request("DELETE", path, body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})
        except RbacbridgeError as exc:
            if getattr(exc, "status", None) != 404:  # already gone: the goal is reached
                raise

    # -- what other parts use --

    def list_pods(self, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.list("Pod", namespace, label_selector)

    def exec(self, namespace: str, pod: str, argv: list[str], container: str | None = None, timeout: float = 60) -> ExecResult:
        """Run argv in a pod over the websocket exec API; rc comes from the status channel (3)."""
        from kubernetes.client import CoreV1Api
        from kubernetes.client.exceptions import ApiException
        from kubernetes.stream import stream

        if not argv:
            raise UsageError("exec needs a command")
        kwargs: dict[str, Any] = {"command": list(argv), "stdin": False, "stdout": True, "stderr": True,
                                  "tty": False, "_preload_content": False}
        if container:
            kwargs["container"] = container
        # kubernetes.stream.stream swaps the client's request method while it runs: on a client shared by
        # threads (verify probes pods concurrently) other calls would go out as websocket handshakes.
        from kubernetes.client import ApiClient

        private = ApiClient(configuration=self.api_client.configuration)
        try:
            ws = stream(CoreV1Api(private).connect_get_namespaced_pod_exec, pod, namespace, **kwargs)
        except ApiException as exc:
            raise _exec_error(self.host, namespace, pod, exc) from None
        except Exception as exc:  # noqa: BLE001 - websocket/socket errors
            raise RbacbridgeError(f"cannot exec in pod {namespace}/{pod} via {self.host}: {_short(exc)}") from None
        try:
            ws.run_forever(timeout=timeout)
            if ws.is_open():
                raise RbacbridgeError(f"exec in pod {namespace}/{pod} did not finish within {timeout:g}s: {' '.join(argv)[:80]}")
            stdout, stderr = ws.read_stdout(), ws.read_stderr()
            rc = ws.returncode
        finally:
            ws.close()
        return ExecResult(rc if rc is not None else -1, stdout or "", stderr or "")


def _exec_error(host: str, namespace: str, pod: str, exc) -> RbacbridgeError:
    """The client reports a refused websocket handshake as status 0 with the HTTP answer in its text."""
    import re

    path = f"{collection_path('Pod', namespace)}/{pod}/exec"
    if exc.status:
        return _api_error(exc.status, exc.body or b"", "EXEC", path)
    text = str(exc.reason or "")
    status = re.search(r"Handshake status (\d+)", text)
    if not status:
        return RbacbridgeError(f"cannot exec in pod {namespace}/{pod} via {host}: {_short(text)}")
    message = re.search(r'"message":\s*"((?:[^"\\]|\\.)*)"', text)
    body = json.dumps({"message": message.group(1) if message else ""})
    return _api_error(int(status.group(1)), body, "EXEC", path)


def object_path(kind: str, name: str, namespace: str | None = None) -> str:
    return f"{collection_path(kind, namespace)}/{quote(name, safe='')}"


def collection_path(kind: str, namespace: str | None = None) -> str:
    prefix, plural, namespaced = KINDS[kind]
    if namespaced and namespace:
        return f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{prefix}/{plural}"


def _short(exc: Any) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused"
    return text if len(text) <= 200 else text[:200] + "…"


class KubeApiError(RbacbridgeError):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _api_error(status: int, data: bytes | str, method: str, path: str, what: str | None = None) -> KubeApiError:
    try:
        body = json.loads(data)
        message = body.get("message") or ""
    except (ValueError, AttributeError, TypeError):
        message = (data.decode(errors="replace") if isinstance(data, bytes) else str(data)).strip()
    message = " ".join(message.split())[:300]
    verb, resource, namespace = _permission(method, path)
    scope = f" in namespace {namespace}" if namespace else ""
    if status == 401:
        text = f"the Kubernetes API server rejected the credentials (401 Unauthorized) on {verb} {resource}: check the kubeconfig user or token"
    elif status == 403:
        text = f"missing Kubernetes permission: {verb} {resource}{scope} (403 Forbidden: {message})"
    elif status == 409:
        text = f"conflict (409) on {verb} {resource}{scope}: {message}; re-run to plan again from live state"
    elif status == 422:
        text = f"the API server rejected {what or resource} as invalid (422): {message}"
    else:
        text = f"Kubernetes API error {status} on {verb} {resource}{scope}: {message or 'no message'}"
    return KubeApiError(text, status)


def _permission(method: str, path: str) -> tuple[str, str, str | None]:
    """The RBAC verb and resource (plural.group) a request needs, from its method and path."""
    segs = [s for s in path.split("?")[0].split("/") if s]
    group = "" if segs[:1] == ["api"] else (segs[1] if len(segs) > 1 else "")
    rest = segs[2:] if segs[:1] == ["api"] else segs[3:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if rest else "?"
    has_name = len(rest) > 1
    if len(rest) > 2:
        plural = f"{plural}/{rest[2]}"
    verb = "create" if method == "EXEC" else _VERBS.get(method, "get" if has_name else "list")
    return verb, f"{plural}.{group}" if group else plural, namespace


def _load_client(kubeconfig: str | None, context: str | None):
    """ApiClient as kubectl would find it. Returns (client, where the settings came from)."""
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    from kubernetes.config.config_exception import ConfigException

    path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    first = os.path.expanduser(path.split(os.pathsep)[0])
    in_cluster = os.environ.get("KUBERNETES_SERVICE_HOST") and not kubeconfig and not os.environ.get("KUBECONFIG")
    if in_cluster and not Path(first).exists():
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise UsageError(f"cannot use the in-cluster service account: {_short(exc)}") from None
        if context:
            raise UsageError("--context needs a kubeconfig; running in-cluster has none")
        return k8s_client.ApiClient(configuration), "in-cluster service account"
    import yaml

    from rbacbridge.errors import shown

    if kubeconfig and not Path(os.path.expanduser(kubeconfig)).is_file():
        raise UsageError(f"kubeconfig {shown(kubeconfig)} does not exist")
    if not any(Path(os.path.expanduser(p)).is_file() for p in path.split(os.pathsep) if p):
        raise UsageError(f"no kubeconfig found ({shown(path)}): pass --kubeconfig, set KUBECONFIG, or run inside a pod")
    try:
        api_client = k8s_config.new_client_from_config(config_file=path, context=context, persist_config=False)
    except ConfigException as exc:
        raise UsageError(f"kubeconfig {shown(path)}: {_short(exc)}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UsageError(f"kubeconfig {shown(path)} is not valid YAML{where}: {_short(problem)}") from None
    except UnicodeDecodeError:
        raise UsageError(f"kubeconfig {shown(path)} is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read kubeconfig {shown(path)}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UsageError(f"kubeconfig {shown(path)} is not usable: {_short(exc)}") from None
    return api_client, f"kubeconfig {path}" + (f", context {context}" if context else "")


def gateway(ctx) -> KubeGateway:
    return ctx.gateway("kube", lambda: KubeGateway.from_config(ctx.config))


def note(ctx, text: str) -> None:
    """A note for the plan, once."""
    notes = ctx.facts.setdefault("notes", [])
    if text not in notes:
        notes.append(text)


def applier(gw: KubeGateway, obj: dict[str, Any]) -> Callable[[], Any]:
    """A step's `run`: server-side apply `obj`."""
    return lambda: gw.apply(obj)


def deleter(gw: KubeGateway, kind: str, name: str, namespace: str | None) -> Callable[[], Any]:
    """A step's `run`: delete one object (already gone is fine)."""
    return lambda: gw.delete(kind, name, namespace)
