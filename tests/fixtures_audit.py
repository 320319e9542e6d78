"""A brownfield cluster for `rbacbridge audit`: kube2iam installed by Helm long ago, not by rbacbridge.

`Brownfield.build()` makes a *clean* baseline (its only finding is the info `kube2iam-daemonset`):

- moto: node role `k8s-node` (EC2 trust) in instance profile `k8s-node-profile`, associated with one
  instance per node; its policy may assume `app-role` and `k8s-default`, both trusting its exact ARN;
  `k8s-default` (kube2iam's --default-role) may only read S3.
- test API server: nodes n1, n2 (providerID = their instances); flannel (so the pods' interface is
  cni0); a Helm-labelled kube2iam DaemonSet (0.13.1, port 8181, --host-interface=cni0,
  --default-role=k8s-default, --namespace-restrictions) with a pod on each node, ready since T0;
  namespace tenant-a with allowed-roles ["app-role"] and an annotated pod started after T0.

Each `plant_*` method adds exactly one known way kube2iam goes wrong. Tests play the controllers
(`store.put`), so no request is recorded while planting.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from rbacbridge.audit import run_audit
from rbacbridge.aws import AwsGateway
from rbacbridge.config import Config
from rbacbridge.planner import Context
from tests.fixtures_aws import ACCOUNT

NOW = datetime.now(timezone.utc).replace(microsecond=0)
T0 = NOW - timedelta(hours=2)  # kube2iam became ready on every node
ROLE = f"arn:aws:iam::{ACCOUNT}:role/"
NODE_ROLE_ARN = ROLE + "k8s-node"
ALLOWED = "iam.amazonaws.com/allowed-roles"
HELM_LABELS = {"app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": "kube2iam-2.6.0", "app.kubernetes.io/name": "kube2iam"}
BASE_ARGS = ["--app-port=8181", "--host-interface=cni0", "--default-role=k8s-default", f"--base-role-arn={ROLE}",
             "--iptables=true", "--host-ip=$(HOST_IP)", "--node=$(NODE_NAME)", "--namespace-restrictions"]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def trust(*principals: str, service: str | None = None) -> str:
    statements = [{"Effect": "Allow", "Principal": {"AWS": p}, "Action": "sts:AssumeRole"} for p in principals]
    if service:
        statements.append({"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"})
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def allow(action: str, *resources: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": list(resources)}]})


def daemonset(namespace: str, name: str, image: str, args: list[str], labels: dict[str, str] | None = None,
              tolerations: list[dict] | None = None) -> dict:
    select = {"app": name}
    spec = {"hostNetwork": True, "containers": [{"name": "kube2iam" if "kube2iam" in image else name, "image": image, "args": list(args)}]}
    if tolerations:
        spec["tolerations"] = tolerations
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
            "spec": {"selector": {"matchLabels": select}, "template": {"metadata": {"labels": select}, "spec": spec}}}


class Brownfield:
    def __init__(self, kube_api, sandbox):
        self.kube_api, self.sandbox = kube_api, sandbox
        self.store = kube_api.store
        self.store.auto_ready = False
        self.iam, self.ec2 = sandbox.client("iam"), sandbox.client("ec2")
        self.instances: dict[str, str] = {}

    # -- building blocks --

    def pod(self, namespace: str, name: str, node: str | None, started: datetime, *, ready: bool = True,
            annotations: dict | None = None, host_network: bool = False, owner: dict | None = None,
            labels: dict | None = None, waiting: str | None = None, restarts: int = 0) -> dict:
        meta = {"name": name, "namespace": namespace, "labels": dict(labels or {}), "annotations": dict(annotations or {}),
                "creationTimestamp": iso(started)}
        if owner:
            meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": owner["metadata"]["name"],
                                        "uid": owner["metadata"]["uid"], "controller": True}]
        spec = {"containers": [{"name": "main", "image": "x"}]}
        if node:
            spec["nodeName"] = node
        if host_network:
            spec["hostNetwork"] = True
        state = {"waiting": {"reason": waiting, "message": "back-off restarting failed container"}} if waiting else \
            {"running": {"startedAt": iso(started)}}
        status = {"phase": "Running", "startTime": iso(started),
                  "conditions": [{"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": iso(started)}],
                  "containerStatuses": [{"name": "main", "ready": ready, "restartCount": restarts, "image": "x",
                                         "imageID": "", "state": state}]}
        return self.store.put({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status})

    def node(self, name: str, ip: str, taints: list[dict] | None = None) -> str:
        instance = self.ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        self.ec2.associate_iam_instance_profile(InstanceId=instance, IamInstanceProfile={"Name": "k8s-node-profile"})
        self.instances[name] = instance
        self.store.add_node(name, ip, provider_id=f"aws:///us-east-1a/{instance}", labels={"kubernetes.io/os": "linux"})
        if taints:
            obj = self.store.get("Node", name)
            obj["spec"]["taints"] = taints
            self.store.put(obj)
        return instance

    def kube2iam(self, namespace: str = "kube-system", name: str = "kube2iam", image: str = "jtblin/kube2iam:0.13.1",
                 args: list[str] | None = None, labels: dict | None = None, nodes: tuple[str, ...] = ("n1", "n2")) -> dict:
        ds = self.store.put(daemonset(namespace, name, image, BASE_ARGS if args is None else args,
                                      HELM_LABELS if labels is None else labels))
        for node in nodes:
            self.pod(namespace, f"{name}-{node}", node, T0, owner=ds, labels={"app": name}, host_network=True)
        return ds

    # -- the clean baseline --

    def build(self) -> "Brownfield":
        iam = self.iam
        iam.create_role(RoleName="k8s-node", AssumeRolePolicyDocument=trust(service="ec2.amazonaws.com"))
        policy = iam.create_policy(PolicyName="k8s-node-kube2iam", PolicyDocument=allow(
            "sts:AssumeRole", ROLE + "app-role", ROLE + "k8s-default"))["Policy"]["Arn"]
        iam.attach_role_policy(RoleName="k8s-node", PolicyArn=policy)
        iam.create_role(RoleName="k8s-default", AssumeRolePolicyDocument=trust(NODE_ROLE_ARN))
        iam.put_role_policy(RoleName="k8s-default", PolicyName="read", PolicyDocument=allow("s3:GetObject", "arn:aws:s3:::shared/*"))
        iam.create_role(RoleName="app-role", AssumeRolePolicyDocument=trust(NODE_ROLE_ARN))
        iam.create_instance_profile(InstanceProfileName="k8s-node-profile")
        iam.add_role_to_instance_profile(InstanceProfileName="k8s-node-profile", RoleName="k8s-node")
        store = self.store
        store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenant-a", "annotations": {ALLOWED: '["app-role"]'}}})
        store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenant-b"}})
        store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-flannel"}})
        self.node("n1", "10.0.0.11")
        self.node("n2", "10.0.0.12")
        store.put(daemonset("kube-flannel", "kube-flannel-ds", "flannel/flannel:v0.25.1", ["--ip-masq"]))
        self.kube2iam()
        later = T0 + timedelta(minutes=10)
        self.pod("tenant-a", "app", "n1", later, annotations={"iam.amazonaws.com/role": "app-role"})
        self.pod("default", "web", "n2", later)
        return self

    # -- the planted faults (each one known way kube2iam goes wrong) --

    def set_args(self, change) -> None:
        ds = self.store.get("DaemonSet", "kube2iam", "kube-system")
        container = ds["spec"]["template"]["spec"]["containers"][0]
        container["args"] = change(container["args"])
        self.store.put(ds)

    def set_image(self, image: str) -> None:
        ds = self.store.get("DaemonSet", "kube2iam", "kube-system")
        ds["spec"]["template"]["spec"]["containers"][0]["image"] = image
        self.store.put(ds)

    def plant_auto_discover(self) -> None:
        self.set_args(lambda args: [a for a in args if not a.startswith("--default-role")] + ["--auto-discover-default-role"])

    def plant_self_trust(self) -> None:
        self.iam.update_assume_role_policy(RoleName="k8s-node", PolicyDocument=trust(NODE_ROLE_ARN, service="ec2.amazonaws.com"))

    def plant_default_role_assumes_others(self) -> None:
        self.iam.put_role_policy(RoleName="k8s-default", PolicyName="chain", PolicyDocument=allow("sts:AssumeRole", "*"))

    def plant_second_interceptor(self) -> None:
        self.kube2iam(namespace="iam", name="kube2iam-manual", image="jtblin/kube2iam:0.13.1", labels={},
                      args=[a.replace("8181", "8282") for a in BASE_ARGS], nodes=())

    def plant_tainted_node(self) -> None:
        self.node("n3", "10.0.0.13", taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
        self.pod("default", "gpu-job", "n3", T0 + timedelta(minutes=5))

    def plant_crash_loop(self) -> None:
        ds = self.store.get("DaemonSet", "kube2iam", "kube-system")
        self.pod("kube-system", "kube2iam-n2", "n2", T0, owner=ds, labels={"app": "kube2iam"}, host_network=True,
                 ready=False, waiting="CrashLoopBackOff", restarts=7)

    def plant_typo_trust(self) -> None:
        self.iam.update_assume_role_policy(RoleName="app-role", PolicyDocument=trust(ROLE + "k8s-nod"))

    def plant_missing_role(self) -> None:
        self.pod("tenant-a", "orphan", "n1", T0 + timedelta(minutes=20), annotations={"iam.amazonaws.com/role": "no-such-role"})

    def plant_not_permitted(self) -> None:
        arn = f"arn:aws:iam::{ACCOUNT}:policy/k8s-node-kube2iam"
        self.iam.create_policy_version(PolicyArn=arn, PolicyDocument=allow("sts:AssumeRole", ROLE + "k8s-default"), SetAsDefault=True)

    def plant_namespace_without_allowed_roles(self) -> None:
        self.pod("tenant-b", "worker", "n2", T0 + timedelta(minutes=20), annotations={"iam.amazonaws.com/role": "app-role"})

    def plant_host_network_pod(self) -> None:
        self.pod("tenant-a", "sniffer", "n1", T0 + timedelta(minutes=20), host_network=True)

    def plant_pod_older_than_kube2iam(self) -> None:
        self.pod("default", "old-timer", "n1", T0 - timedelta(minutes=30))

    def plant_old_image(self) -> None:
        self.set_image("jtblin/kube2iam:0.11.2")

    def plant_tokens_required(self) -> None:
        self.ec2.modify_instance_metadata_options(InstanceId=self.instances["n1"], HttpTokens="required", HttpEndpoint="enabled")

    def plant_interface_mismatch(self) -> None:
        self.set_args(lambda args: [("--host-interface=docker0" if a.startswith("--host-interface") else a) for a in args])

    def plant_debug(self) -> None:
        self.set_args(lambda args: args + ["--debug"])

    def plant_no_kube2iam(self) -> None:
        for key, obj in list(self.store.objects.items()):
            if obj["metadata"]["name"].startswith("kube2iam"):
                self.store.delete(obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace", ""))

    # -- running the audit in-process (AWS calls recorded by the sandbox's botocore hook) --

    def config(self, **values) -> Config:
        return Config(kubeconfig=self.kube_api.kubeconfig, endpoint_url=self.sandbox.url, **values)

    def audit(self, parts=("aws", "kube"), config: Config | None = None, config_given: bool = False):
        config = config or self.config()
        ctx = Context(config=config, parts=tuple(parts),
                      gateways={"aws": AwsGateway(config, session=self.sandbox.session())})
        return run_audit(ctx, config_given=config_given)
