"""A small Kubernetes API server of the project's own, for tests.

It serves exactly the subset rbacbridge uses, over real HTTP on 127.0.0.1 (the official client
reaches it through a generated kubeconfig; nothing in the client is patched):

- discovery: /version, /api, /api/v1, /apis, /apis/<group>/<version>
- objects: POST to a collection, GET / PUT / DELETE an object, GET a collection (optionally
  across namespaces) with ?labelSelector=, PATCH as strategic merge (application/strategic-merge-patch+json
  or merge-patch+json) and as server-side apply (application/apply-patch+yaml, ?fieldManager=, creating
  missing objects, recording the manager's fields in metadata.managedFields), the /status subresource
- pod exec over websocket (v5/v4 channel protocol), answered by the pluggable `exec_handler`

Every body it receives (and the result of every strategic merge patch) is checked with
kubernetes-validate --strict; a bad one gets 422 as a real API server would. `forbid(verb, resource)`
makes it answer 403 for that permission. Tests play the controllers: `auto_ready` marks DaemonSets and
Deployments rolled out (and creates their pods) as soon as they are written; turn it off and use
`set_status` / `add_pod` / `add_event` to stage anything else. Not served: watch (rbacbridge polls).
Set `store.webhook` (tests/identity_webhook.IdentityWebhook) to have pods mutated at creation as EKS's injecting
webhooks do (IRSA, Pod Identity); pods put directly can go through `store.admit_pod` first.
`store.rollouts = True` makes the controllers build pods from the pod template and replace them when it changes
(a rollout restart), as the Deployment / DaemonSet controllers do.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import re
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

# (group, version, plural) -> (kind, namespaced)
RESOURCES: dict[tuple[str, str, str], tuple[str, bool]] = {
    ("", "v1", "namespaces"): ("Namespace", False),
    ("", "v1", "nodes"): ("Node", False),
    ("", "v1", "pods"): ("Pod", True),
    ("", "v1", "serviceaccounts"): ("ServiceAccount", True),
    ("", "v1", "events"): ("Event", True),
    ("apps", "v1", "daemonsets"): ("DaemonSet", True),
    ("apps", "v1", "deployments"): ("Deployment", True),
    ("rbac.authorization.k8s.io", "v1", "clusterroles"): ("ClusterRole", False),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings"): ("ClusterRoleBinding", False),
}

# --- RBAC objects `audit --who-can` lists (issue 27): namespaced Roles and RoleBindings --------------------
RESOURCES.update({
    ("rbac.authorization.k8s.io", "v1", "roles"): ("Role", True),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"): ("RoleBinding", True),
})
# --- end of the who-can block -------------------------------------------------------------------------------

# --- `migrate plan`'s inventory (issue 26): the other workload kinds, listed and read -------------------------
RESOURCES.update({
    ("apps", "v1", "statefulsets"): ("StatefulSet", True),
    ("batch", "v1", "jobs"): ("Job", True),
    ("batch", "v1", "cronjobs"): ("CronJob", True),
})
OPENID_PATH = "/.well-known/openid-configuration"  # served when KubeApiServer.issuer is set, else 404


def openid_configuration(issuer: str) -> dict[str, Any]:
    """The service-account issuer's discovery document, as kube-apiserver serves it."""
    return {"issuer": issuer, "jwks_uri": f"{issuer.rstrip('/')}/openid/v1/jwks", "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"]}
# --- end of the migrate block ---------------------------------------------------------------------------------

KIND_TO_RESOURCE = {kind: key for key, (kind, _) in RESOURCES.items()}
VALIDATE_VERSION = "1.33.0"
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def api_version(group: str, version: str) -> str:
    return f"{group}/{version}" if group else version


# --- label selectors ------------------------------------------------------------------------


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    if not selector:
        return True
    for term in _split_selector(selector):
        match = re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term)
        if match:
            key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
            if op == "in" and labels.get(key) not in values:
                return False
            if op == "notin" and labels.get(key) in values:
                return False
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in re.split(r"==?", term, maxsplit=1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


# --- merging ----------------------------------------------------------------------------------


def _is_keyed_list(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def merge(live: Any, patch: Any, null_deletes: bool = True) -> Any:
    """Strategic-merge-like: dicts merge, lists of named dicts merge by name, other lists replace."""
    if isinstance(live, dict) and isinstance(patch, dict):
        out = copy.deepcopy(live)
        for key, value in patch.items():
            if value is None and null_deletes:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value, null_deletes)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(live, list) and isinstance(patch, list) and _is_keyed_list(live) and _is_keyed_list(patch):
        out = copy.deepcopy(live)
        index = {item["name"]: i for i, item in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = merge(out[index[item["name"]]], item, null_deletes)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def field_set(obj: Any) -> dict[str, Any]:
    """FieldsV1 of an applied object (lists are treated as atomic leaves)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out[f"f:{key}"] = field_set(value) if isinstance(value, dict) else {}
    return out


def _strip(fields: dict[str, Any], taken: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in fields.items():
        if key not in taken:
            out[key] = value
        elif value and taken[key]:
            rest = _strip(value, taken[key])
            if rest:
                out[key] = rest
    return out


def _null_fields(patch: Any) -> dict[str, Any]:
    """FieldsV1 of the fields a merge patch deletes (set to null): nobody manages them any more."""
    out: dict[str, Any] = {}
    if isinstance(patch, dict):
        for key, value in patch.items():
            if value is None:
                out[f"f:{key}"] = {}
            elif isinstance(value, dict):
                inner = _null_fields(value)
                if inner:
                    out[f"f:{key}"] = inner
    return out


def _without_bookkeeping(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    meta = out.get("metadata", {})
    for key in ("managedFields", "resourceVersion", "generation"):
        meta.pop(key, None)
    return out


# --- the store ----------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    changed: bool = False  # did it change stored state?


@dataclass
class Store:
    objects: dict[tuple[tuple[str, str, str], str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    forbidden: set[tuple[str, str]] = field(default_factory=set)
    auto_ready: bool = True
    admission: Callable[[dict[str, Any]], str | None] | None = None  # a refusal reason for a created object (403)
    # a kubelet of the test's own for a pod written without a phase: returns True if it takes the pod (e.g. the lab
    # gives it a network namespace later), False to let the store run it at once (podIP made up)
    kubelet: Callable[[dict[str, Any]], bool] | None = None
    # called (under the store's lock) with each object an API DELETE removes, garbage-collected ones included:
    # e.g. the lab stops a node's kube2iam stand-in when its kube2iam pod is gone, as the kubelet would
    on_delete: Callable[[dict[str, Any]], None] | None = None
    # migrate block: EKS's injecting webhooks (tests/identity_webhook.IdentityWebhook) for pods at creation
    webhook: Any = None
    # migrate block: with auto_ready, Deployments and DaemonSets get pods made from their pod template (named
    # NAME-HASH-N / NAME-HASH-NODE, label pod-template-hash), admitted; a changed template (`kubectl rollout
    # restart`'s annotation) replaces them, as the controllers would
    rollouts: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)
    _versions: Any = field(default_factory=lambda: itertools.count(1000))

    # -- helpers the tests use to play the controllers --

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object directly (no validation, no request recorded)."""
        with self.lock:
            key = self._key_of(obj)
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["resourceVersion"] = str(next(self._versions))
            meta.setdefault("generation", 1)
            self.objects[key] = obj
            return copy.deepcopy(obj)

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        with self.lock:
            obj = self.objects.get((KIND_TO_RESOURCE[kind], namespace, name))
            return copy.deepcopy(obj) if obj else None

    def objects_of(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        resource = KIND_TO_RESOURCE[kind]
        with self.lock:
            return [copy.deepcopy(o) for (r, ns, _), o in self.objects.items() if r == resource and (namespace is None or ns == namespace)]

    def delete(self, kind: str, name: str, namespace: str = "") -> None:
        with self.lock:
            self.objects.pop((KIND_TO_RESOURCE[kind], namespace, name), None)

    def add_node(self, name: str, internal_ip: str, external_ip: str | None = None,
                 provider_id: str | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
        addresses = [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}]
        if external_ip:
            addresses.append({"type": "ExternalIP", "address": external_ip})
        spec = {"providerID": provider_id} if provider_id else {}
        return self.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}},
                         "spec": spec, "status": {"addresses": addresses}})

    def add_pod(self, namespace: str, name: str, labels: dict[str, str], ready: bool = True,
                waiting_reason: str | None = None, owner: dict[str, Any] | None = None,
                node: str | None = None, container: str = "main") -> dict[str, Any]:
        state: dict[str, Any] = {"running": {"startedAt": _now()}}
        if waiting_reason:
            state = {"waiting": {"reason": waiting_reason, "message": f"container {container} is {waiting_reason}"}}
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
        if owner:
            meta["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"], "controller": True}]
        return self.put({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": container, "image": "x"}]} if node else {"containers": [{"name": container, "image": "x"}]},
            "status": {"phase": "Running" if ready else "Pending",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "containerStatuses": [{"name": container, "ready": ready, "restartCount": 0, "image": "x",
                                              "imageID": "", "state": state}]},
        })

    def add_event(self, namespace: str, pod: str, reason: str, message: str, seconds_ago: int = 0) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))
        self.put({"apiVersion": "v1", "kind": "Event",
                  "metadata": {"name": f"{pod}.{uuid.uuid4().hex[:8]}", "namespace": namespace},
                  "involvedObject": {"kind": "Pod", "name": pod, "namespace": namespace},
                  "reason": reason, "message": message, "type": "Warning",
                  "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1})

    def set_status(self, kind: str, name: str, namespace: str, status: dict[str, Any]) -> None:
        with self.lock:
            obj = self.objects[(KIND_TO_RESOURCE[kind], namespace, name)]
            obj["status"] = copy.deepcopy(status)
            obj["metadata"]["resourceVersion"] = str(next(self._versions))

    def admit_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        """A pod as the mutating admission (the `webhook`, if set) returns it: what a creation stores. For tests
        that put pods directly (the lab's controllers) and want what the API server would have stored."""
        if self.webhook is None:
            return pod
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        account = self.get("ServiceAccount", spec.get("serviceAccountName") or "default", meta.get("namespace", ""))
        return self.webhook.mutate(pod, account)

    def mutating_requests(self, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.method != "GET" and (method is None or r.method == method)]

    # -- the API semantics --

    @staticmethod
    def _key_of(obj: dict[str, Any]) -> tuple[tuple[str, str, str], str, str]:
        resource = KIND_TO_RESOURCE[obj["kind"]]
        namespaced = RESOURCES[resource][1]
        meta = obj["metadata"]
        return resource, meta.get("namespace", "") if namespaced else "", meta["name"]

    def _bump(self, old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
        """Give `new` the next resourceVersion (and generation) if it differs from `old`."""
        meta = new.setdefault("metadata", {})
        if old is not None and _without_bookkeeping(old) == _without_bookkeeping(new):
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            meta["generation"] = old["metadata"].get("generation", 1)
            return False
        meta["resourceVersion"] = str(next(self._versions))
        if old is None:
            meta["generation"] = 1
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"].get("creationTimestamp", _now())
            spec_changed = {k: v for k, v in old.items() if k not in ("metadata", "status")} != \
                           {k: v for k, v in new.items() if k not in ("metadata", "status")}
            meta["generation"] = old["metadata"].get("generation", 1) + (1 if spec_changed else 0)
        return True

    def _after_write(self, resource: tuple[str, str, str], obj: dict[str, Any]) -> None:
        if not self.auto_ready:
            return
        kind = RESOURCES[resource][0]
        if kind == "Pod" and not (obj.get("status") or {}).get("phase"):
            if not (self.kubelet and self.kubelet(obj)):
                self._run_pod(obj)
            return
        if kind not in ("DaemonSet", "Deployment"):
            return
        meta = obj["metadata"]
        if self.rollouts:
            self._roll_out(kind, obj)
            return
        if kind == "DaemonSet":
            nodes = [o for (r, _, _), o in self.objects.items() if RESOURCES[r][0] == "Node"] or [None]
            count = len(nodes)
            obj["status"] = {"observedGeneration": meta["generation"], "desiredNumberScheduled": count,
                             "currentNumberScheduled": count, "updatedNumberScheduled": count,
                             "numberReady": count, "numberAvailable": count, "numberMisscheduled": 0}
            names = [f"{meta['name']}-{(n['metadata']['name'] if n else 'node')}" for n in nodes]
        else:
            count = obj.get("spec", {}).get("replicas", 1)
            obj["status"] = {"observedGeneration": meta["generation"], "replicas": count, "updatedReplicas": count,
                             "readyReplicas": count, "availableReplicas": count}
            names = [f"{meta['name']}-{i}" for i in range(count)]
        labels = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
        account = obj.get("spec", {}).get("template", {}).get("spec", {}).get("serviceAccountName")
        for pod in names:
            if (KIND_TO_RESOURCE["Pod"], meta["namespace"], pod) not in self.objects:
                made = self.add_pod(meta["namespace"], pod, labels, owner=obj)
                if self.webhook is not None:  # migrate block: the pod runs as the template's account, admitted
                    if account:
                        made["spec"]["serviceAccountName"] = account
                    self.put(self.admit_pod(made))

    def _roll_out(self, kind: str, obj: dict[str, Any]) -> None:
        """The Deployment / DaemonSet controller when `rollouts` is on (see the field)."""
        meta, template = obj["metadata"], obj["spec"]["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        if kind == "DaemonSet":
            nodes = sorted(o["metadata"]["name"] for (r, _, _), o in self.objects.items() if RESOURCES[r][0] == "Node")
            placements: list[tuple[str, str | None]] = [(n, n) for n in nodes] or [("node", None)]
        else:
            placements = [(str(i), None) for i in range(obj.get("spec", {}).get("replicas", 1))]
        count = len(placements)
        status = {"observedGeneration": meta["generation"]}
        if kind == "DaemonSet":
            status.update(desiredNumberScheduled=count, currentNumberScheduled=count, updatedNumberScheduled=count,
                          numberReady=count, numberAvailable=count, numberMisscheduled=0)
        else:
            status.update(replicas=count, updatedReplicas=count, readyReplicas=count, availableReplicas=count)
        obj["status"] = status
        pod_resource = KIND_TO_RESOURCE["Pod"]
        for key, pod in list(self.objects.items()):
            owned = key[0] == pod_resource and key[1] == meta["namespace"] and any(
                ref.get("uid") == meta["uid"] for ref in pod["metadata"].get("ownerReferences", []))
            if owned and (pod["metadata"].get("labels") or {}).get("pod-template-hash") != digest:
                del self.objects[key]
                if self.on_delete:
                    self.on_delete(copy.deepcopy(pod))
        for suffix, node in placements:
            name = f"{meta['name']}-{digest[:5]}-{suffix}"
            if (pod_resource, meta["namespace"], name) in self.objects:
                continue
            tmeta = template.get("metadata") or {}
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": name, "namespace": meta["namespace"],
                "labels": {**(tmeta.get("labels") or {}), "pod-template-hash": digest},
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [{"apiVersion": obj["apiVersion"], "kind": kind, "name": meta["name"],
                                     "uid": meta["uid"], "controller": True}]},
                "spec": copy.deepcopy(template.get("spec") or {})}
            if node:
                pod["spec"]["nodeName"] = node
            pod = self.admit_pod(pod)
            self._bump(None, pod)
            self.objects[(pod_resource, meta["namespace"], name)] = pod
            if not (self.kubelet and self.kubelet(pod)):
                self._run_pod(pod)

    def _run_pod(self, obj: dict[str, Any]) -> None:
        """The kubelet for a pod created through the API (e.g. rbacbridge's node pods): running at once,
        on its spec.nodeName, hostIP the Node's InternalIP."""
        node = self.objects.get((KIND_TO_RESOURCE["Node"], "", (obj.get("spec") or {}).get("nodeName") or ""))
        addresses = (node or {}).get("status", {}).get("addresses") or []
        host_ip = next((a["address"] for a in addresses if a.get("type") == "InternalIP"), "10.0.0.1")
        pod_ip = host_ip if (obj.get("spec") or {}).get("hostNetwork") else "10.244.0.10"
        obj["status"] = {"phase": "Running", "hostIP": host_ip, "podIP": pod_ip,
                         "conditions": [{"type": "Ready", "status": "True"}],
                         "containerStatuses": [{"name": c["name"], "ready": True, "restartCount": 0, "image": c.get("image", ""),
                                                "imageID": "", "state": {"running": {"startedAt": _now()}}}
                                               for c in (obj.get("spec") or {}).get("containers") or []]}

    def _collect_garbage(self, owner: dict[str, Any]) -> list[dict[str, Any]]:
        uid = owner["metadata"].get("uid")
        removed = []
        for key, obj in list(self.objects.items()):
            refs = obj.get("metadata", {}).get("ownerReferences", [])
            if any(ref.get("uid") == uid for ref in refs):
                removed.append(self.objects.pop(key))
        return removed

    def handle(self, method: str, path: str, query: dict[str, list[str]], content_type: str,
               body: Any) -> tuple[int, Any]:
        record = Request(method, path, query, content_type)
        self.requests.append(record)
        with self.lock:
            code, answer, changed = self._handle(method, path, query, content_type, body)
        record.changed = changed
        return code, answer

    def _handle(self, method, path, query, content_type, body):
        route = parse_path(path)
        if route is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        resource, namespace, name, sub = route
        kind, namespaced = RESOURCES[resource]
        plural = resource[2]
        verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}[method]
        self._authorize(verb, plural, resource[0], name, namespace)
        key = (resource, namespace if namespaced else "", name)
        if method == "GET" and not name:
            selector = (query.get("labelSelector") or [None])[0]
            items = [copy.deepcopy(o) for (r, ns, _), o in sorted(self.objects.items())
                     if r == resource and (not namespace or ns == namespace)
                     and selector_matches(selector, o.get("metadata", {}).get("labels", {}))]
            return 200, {"apiVersion": api_version(*resource[:2]), "kind": f"{kind}List",
                         "metadata": {"resourceVersion": str(next(self._versions))}, "items": items}, False
        live = self.objects.get(key)
        if method == "GET":
            if live is None:
                raise _not_found(plural, resource[0], name)
            return 200, copy.deepcopy(live), False
        if method == "DELETE":
            if live is None:
                raise _not_found(plural, resource[0], name)
            del self.objects[key]
            removed = [live] + self._collect_garbage(live)
            for obj in removed if self.on_delete else ():
                self.on_delete(copy.deepcopy(obj))
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                         "details": {"name": name, "kind": plural}}, True
        if method == "POST":
            _check_identity(body, kind, resource)
            name = body["metadata"].get("name")
            key = (resource, namespace if namespaced else "", name)
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", f'{_qualified(plural, resource[0])} "{name}" already exists')
            new = copy.deepcopy(body)
            if namespaced:
                new["metadata"]["namespace"] = namespace
            if kind == "Pod":
                new = self.admit_pod(new)
            validate(new)
            refusal = self.admission(new) if self.admission else None
            if refusal:
                raise ApiError(403, "Forbidden", f'{_qualified(plural, resource[0])} "{name}" is forbidden: {refusal}')
            self._bump(None, new)
            self.objects[key] = new
            self._after_write(resource, new)
            return 201, copy.deepcopy(new), True
        if method == "PUT":
            _check_identity(body, kind, resource)
            if live is None:
                raise _not_found(plural, resource[0], name)
            sent_version = body.get("metadata", {}).get("resourceVersion")
            if sent_version and sent_version != live["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {_qualified(plural, resource[0])} "{name}": the object has been modified; please apply your changes to the latest version and try again')
            if sub == "status":
                new = copy.deepcopy(live)
                new["status"] = copy.deepcopy(body.get("status", {}))
            else:
                new = copy.deepcopy(body)
                new["status"] = copy.deepcopy(live.get("status", {})) if "status" in live else body.get("status")
                if new.get("status") is None:
                    new.pop("status", None)
                new["metadata"]["managedFields"] = live["metadata"].get("managedFields", [])
            if namespaced:
                new["metadata"]["namespace"] = namespace
            validate(new)
            changed = self._bump(live, new)
            self.objects[key] = new
            if changed and sub != "status":
                self._after_write(resource, new)
            return 200, copy.deepcopy(new), changed
        # PATCH
        if "apply-patch" in content_type:
            manager = (query.get("fieldManager") or [""])[0]
            if not manager:
                raise ApiError(422, "Invalid", "PatchOptions.meta.k8s.io is invalid: fieldManager: Required value: is required for apply patch")
            _check_identity(body, kind, resource)
            if body["metadata"].get("name") != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
            validate(body)
            if live is None:
                self._authorize("create", plural, resource[0], name, namespace)
                base: dict[str, Any] = {}
            else:
                base = live
            new = merge(base, body, null_deletes=False)
            if namespaced:
                new["metadata"]["namespace"] = namespace
            applied = field_set({k: v for k, v in body.items() if k not in ("apiVersion", "kind")})
            applied.get("f:metadata", {}).pop("f:name", None)
            applied.get("f:metadata", {}).pop("f:namespace", None)
            managed = []
            for entry in (live or {}).get("metadata", {}).get("managedFields", []):
                if entry.get("manager") == manager and entry.get("operation") == "Apply":
                    continue
                rest = _strip(entry.get("fieldsV1", {}), applied)
                if rest:
                    managed.append({**entry, "fieldsV1": rest})
            managed.append({"manager": manager, "operation": "Apply", "apiVersion": body["apiVersion"],
                            "fieldsType": "FieldsV1", "fieldsV1": applied, "time": _now()})
            new["metadata"]["managedFields"] = managed
            changed = self._bump(live, new)
            if not changed:
                new["metadata"]["managedFields"] = live["metadata"].get("managedFields", [])
                changed = managed != live["metadata"].get("managedFields", [])
            self.objects[key] = new
            if changed:
                self._after_write(resource, new)
            return (201 if live is None else 200), copy.deepcopy(new), changed
        if live is None:
            raise _not_found(plural, resource[0], name)
        if not isinstance(body, dict):
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {content_type} for this server")
        target = {"status": live.get("status", {})} if sub == "status" else live
        patched = merge(target, body)
        new = merge(live, {"status": patched["status"]}) if sub == "status" else patched
        removed = _null_fields(body)
        if removed and new.get("metadata", {}).get("managedFields"):
            new["metadata"]["managedFields"] = [
                {**e, "fieldsV1": _strip(e.get("fieldsV1", {}), removed)} for e in new["metadata"]["managedFields"]]
        validate(new)
        changed = self._bump(live, new)
        self.objects[key] = new
        if changed and sub != "status":
            self._after_write(resource, new)
        return 200, copy.deepcopy(new), changed

    def _authorize(self, verb: str, plural: str, group: str, name: str, namespace: str) -> None:
        if (verb, plural) in self.forbidden:
            scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
            target = f'{_qualified(plural, group)} "{name}" is forbidden' if name else f"{_qualified(plural, group)} is forbidden"
            raise ApiError(403, "Forbidden", f'{target}: User "system:serviceaccount:ci:deployer" cannot {verb} resource "{plural}" in API group "{group}" {scope}')


def _qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def _not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{_qualified(plural, group)} "{name}" not found')


def _check_identity(body: Any, kind: str, resource: tuple[str, str, str]) -> None:
    if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
        raise ApiError(400, "BadRequest", "the body is not a Kubernetes object")
    if body.get("kind") != kind or body.get("apiVersion") != api_version(*resource[:2]):
        raise ApiError(400, "BadRequest", f"the body's {body.get('apiVersion')}/{body.get('kind')} does not match the URL's {kind}")


def validate(obj: dict[str, Any]) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, VALIDATE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        raise ApiError(422, "Invalid", f'{obj.get("kind")} "{obj.get("metadata", {}).get("name")}" is invalid: {where}: {exc.message}') from None


def parse_path(path: str) -> tuple[tuple[str, str, str], str, str, str] | None:
    segs = [s for s in path.split("/") if s]
    if len(segs) >= 2 and segs[0] == "api":
        group, version, rest = "", segs[1], segs[2:]
    elif len(segs) >= 3 and segs[0] == "apis":
        group, version, rest = segs[1], segs[2], segs[3:]
    else:
        return None
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces" and RESOURCES.get((group, version, rest[2]), ("", False))[1]:
        namespace, rest = rest[1], rest[2:]
    if not rest or (group, version, rest[0]) not in RESOURCES or len(rest) > 3:
        return None
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    return (group, version, rest[0]), namespace, name, sub


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _discovery(path: str) -> Any:
    segs = [s for s in path.split("/") if s]
    if segs == ["version"]:
        return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-rbacbridge-test", "platform": "linux/amd64"}
    if segs == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if segs == ["apis"]:
        groups = sorted({g for g, _, _ in RESOURCES if g})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
             "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}} for g in groups]}
    group_version = None
    if segs == ["api", "v1"]:
        group_version = ("", "v1")
    elif len(segs) == 3 and segs[0] == "apis":
        group_version = (segs[1], segs[2])
    if group_version and any((g, v) == group_version for g, v, _ in RESOURCES):
        resources = []
        for (g, v, plural), (kind, namespaced) in RESOURCES.items():
            if (g, v) == group_version:
                resources.append({"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
                                  "verbs": ["create", "delete", "get", "list", "patch", "update"]})
                if plural in ("daemonsets", "deployments"):
                    resources.append({"name": f"{plural}/status", "singularName": "", "namespaced": True, "kind": kind,
                                      "verbs": ["get", "patch", "update"]})
                if plural == "pods":
                    resources.append({"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
                                      "verbs": ["create", "get"]})
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version(*group_version),
                "resources": resources}
    return None


# --- HTTP ---------------------------------------------------------------------------------------


ExecHandler = Callable[[str, str, str | None, list[str]], tuple[int, bytes, bytes]]


def _default_exec(namespace: str, pod: str, container: str | None, argv: list[str]) -> tuple[int, bytes, bytes]:
    return 127, b"", f"{argv[0] if argv else ''}: not found (no exec handler in the test API server)\n".encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: avoid 40 ms delayed-ACK stalls
    server: "KubeApiServer"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: ApiError) -> None:
        self._send(err.code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": err.message, "reason": err.reason, "code": err.code})

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.server.token and self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self._error(ApiError(401, "Unauthorized", "Unauthorized"))
            return
        if self.command == "GET" and self.headers.get("Upgrade", "").lower() == "websocket" and path.endswith("/exec"):
            self._exec(path, query)
            return
        if self.command == "GET" and path == OPENID_PATH:  # migrate block: the issuer's discovery document
            self.server.store.requests.append(Request("GET", path, query, ""))
            if self.server.issuer:
                self._send(200, openid_configuration(self.server.issuer))
            else:
                self._error(ApiError(404, "NotFound", "the server could not find the requested resource"))
            return
        if self.command == "GET":
            answer = _discovery(path)
            if answer is not None:
                self._send(200, answer)
                return
        body = None
        if raw:
            try:
                import yaml

                body = yaml.safe_load(raw.decode()) if "yaml" in (self.headers.get("Content-Type") or "") else json.loads(raw)
            except Exception:  # noqa: BLE001
                self._error(ApiError(400, "BadRequest", "the body is not valid JSON/YAML"))
                return
        try:
            code, answer = self.server.store.handle(self.command, path, query, self.headers.get("Content-Type") or "", body)
        except ApiError as err:
            self._error(err)
            return
        self._send(code, answer)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    # -- websocket exec --

    def _exec(self, path: str, query: dict[str, list[str]]) -> None:
        segs = [s for s in path.split("/") if s]  # api v1 namespaces NS pods NAME exec
        namespace, pod = segs[3], segs[5]
        self.server.store.requests.append(Request("EXEC", path, query, ""))
        try:
            self.server.store._authorize("create", "pods", "", pod, namespace)
        except ApiError as err:
            self._error(err)
            return
        if self.server.store.get("Pod", pod, namespace) is None:
            self._error(_not_found("pods", "", pod))
            return
        offered = [p.strip() for p in (self.headers.get("Sec-WebSocket-Protocol") or "").split(",")]
        protocol = next((p for p in offered if p in ("v5.channel.k8s.io", "v4.channel.k8s.io")), None)
        if protocol is None:
            self._error(ApiError(400, "BadRequest", "no supported channel protocol offered (v5/v4)"))
            return
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + _WS_GUID).encode()).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", protocol)
        self.end_headers()
        argv = query.get("command", [])
        container = (query.get("container") or [None])[0]
        try:
            rc, out, err = self.server.exec_handler(namespace, pod, container, argv)
        except Exception as exc:  # noqa: BLE001 - reported to the client as a failure
            rc, out, err = 126, b"", f"exec handler failed: {exc}\n".encode()
        if out:
            self._frame(0x2, b"\x01" + out)
        if err:
            self._frame(0x2, b"\x02" + err)
        if rc == 0:
            status = {"metadata": {}, "status": "Success"}
        else:
            status = {"metadata": {}, "status": "Failure", "message": f"command terminated with non-zero exit code: {rc}",
                      "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]}}
        self._frame(0x2, b"\x03" + json.dumps(status).encode())
        self._frame(0x8, struct.pack("!H", 1000))
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.settimeout(0.5)
            self.connection.recv(64)  # the client's close frame, if it sends one
        except (socket.timeout, OSError):
            pass

    def _frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        if len(payload) < 126:
            header += bytes([len(payload)])
        elif len(payload) < 65536:
            header += bytes([126]) + struct.pack("!H", len(payload))
        else:
            header += bytes([127]) + struct.pack("!Q", len(payload))
        self.wfile.write(header + payload)


class KubeApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, token: str | None = "test-token"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store = Store()
        self.token = token
        self.issuer: str | None = None  # migrate block: the service-account issuer (--service-account-issuer)
        self.exec_handler: ExecHandler = _default_exec
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def forbid(self, verb: str, resource: str) -> None:
        """Answer 403 for `verb` on `resource` (plural, e.g. ("patch", "clusterroles"))."""
        self.store.forbidden.add((verb, resource))

    def start(self) -> "KubeApiServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="kube-apiserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread:
            self._thread.join(timeout=5)
