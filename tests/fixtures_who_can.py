"""A multi-tenant cluster for `rbacbridge audit --who-can`, on top of the audit's Brownfield baseline.

IAM (moto; Brownfield's k8s-node, k8s-default, app-role, plus):
- tenant roles alpha-app (tenant alpha, namespace tenant-a) and beta-app (tenant beta, tenant-b), and
  beta-app-admin; all trust the node role, whose extra policy may assume `alpha-*` and `beta-*`.
- a chain two hops deep: alpha-app may assume alpha-etl, alpha-etl may assume beta-app. alpha-etl trusts
  only alpha-app: the node role's policy allows it (`alpha-*`) but its trust does not, so kube2iam cannot
  hand it out; only the chain reaches it. beta-app also trusts alpha-etl (the cross-tenant slip).

Kubernetes (the test API server):
- namespaces tenant-a (allowed-roles ["alpha-*"], Pod Security baseline), tenant-b (["beta-app"], no Pod
  Security label), ci (restricted), sandbox (no allowed-roles, restricted), kube-flannel (Brownfield's).
- ClusterRole tenant-deployer aggregates deployer-apps (create/update/patch deployments) and deployer-exec
  (create pods/exec) by label; RoleBinding tenant-a/devs gives it to Group alpha-devs.
- ClusterRole job-runner (create jobs): RoleBindings in tenant-a and tenant-b give it to ServiceAccount
  ci/deployer (a CI account that can create Jobs in two namespaces), one in sandbox to User carol.
- ClusterRole namespace-admin (everything on pods, get/patch namespaces): RoleBinding tenant-b/ns-admin
  gives it to User bob, who can therefore patch Namespace tenant-b (its allowed-roles).
- cluster-admin to Group system:masters and User root-admin; a read-only ClusterRole to system:authenticated.
"""

from __future__ import annotations

from tests.fixtures_audit import ROLE, Brownfield, allow, trust

ACCOUNT_ROLE = ROLE  # arn:aws:iam::123456789012:role/
RBAC = "rbac.authorization.k8s.io/v1"
PSA = "pod-security.kubernetes.io/enforce"
ALLOWED = "iam.amazonaws.com/allowed-roles"
AGGREGATE = "rbac.example.com/aggregate-to-deployer"

CONFIG = """\
account_id: "123456789012"
iam:
  node_role: k8s-node
tenants:
  - name: alpha
    namespaces: [tenant-a]
    role: alpha-app
    read: [alpha-data]
  - name: beta
    namespaces: [tenant-b]
    role: beta-app
    read: [beta-data]
"""


def arn(name: str) -> str:
    return ACCOUNT_ROLE + name


def cluster_role(name: str, rules: list[dict], labels: dict | None = None, aggregate: dict | None = None) -> dict:
    obj = {"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": name, "labels": dict(labels or {})}, "rules": rules}
    if aggregate is not None:
        obj["aggregationRule"] = {"clusterRoleSelectors": [{"matchLabels": aggregate}]}
    return obj


def binding(kind: str, name: str, role_kind: str, role: str, subjects: list[dict], namespace: str | None = None) -> dict:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": RBAC, "kind": kind, "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role}, "subjects": subjects}


def user(name: str) -> dict:
    return {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name}


def group(name: str) -> dict:
    return {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": name}


def service_account(namespace: str, name: str) -> dict:
    return {"kind": "ServiceAccount", "namespace": namespace, "name": name}


class Tenants(Brownfield):
    def build(self) -> "Tenants":
        super().build()
        iam, store = self.iam, self.store
        node = arn("k8s-node")
        for name, trusted in (("alpha-app", [node]), ("beta-app", [node, arn("alpha-etl")]), ("beta-app-admin", [node]),
                              ("alpha-etl", [arn("alpha-app")])):
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust(*trusted))
        iam.put_role_policy(RoleName="alpha-app", PolicyName="hop", PolicyDocument=allow("sts:AssumeRole", arn("alpha-etl")))
        iam.put_role_policy(RoleName="alpha-etl", PolicyName="hop", PolicyDocument=allow("sts:AssumeRole", arn("beta-*")))
        policy = iam.create_policy(PolicyName="k8s-node-tenants", PolicyDocument=allow(
            "sts:AssumeRole", arn("alpha-*"), arn("beta-*")))["Policy"]["Arn"]
        iam.attach_role_policy(RoleName="k8s-node", PolicyArn=policy)
        namespaces = {"tenant-a": ({ALLOWED: '["alpha-*"]'}, {PSA: "baseline"}), "tenant-b": ({ALLOWED: '["beta-app"]'}, {}),
                      "ci": ({}, {PSA: "restricted"}), "sandbox": ({}, {PSA: "restricted"})}
        for name, (annotations, labels) in namespaces.items():
            store.put({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": name, "annotations": annotations, "labels": labels}})
        app = store.get("Pod", "app", "tenant-a")
        app["metadata"]["annotations"]["iam.amazonaws.com/role"] = "alpha-app"
        store.put(app)
        for obj in self.rbac_objects():
            store.put(obj)
        return self

    @staticmethod
    def rbac_objects() -> list[dict]:
        everything = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
        return [
            cluster_role("cluster-admin", everything),
            cluster_role("tenant-deployer", [], aggregate={AGGREGATE: "true"}),
            cluster_role("deployer-apps", [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "update", "patch"]}],
                         labels={AGGREGATE: "true"}),
            cluster_role("deployer-exec", [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}],
                         labels={AGGREGATE: "true"}),
            cluster_role("job-runner", [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list"]}]),
            cluster_role("namespace-admin", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]},
                                             {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "patch"]}]),
            cluster_role("pod-viewer", [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]}]),
            binding("ClusterRoleBinding", "cluster-admin", "ClusterRole", "cluster-admin", [group("system:masters"), user("root-admin")]),
            binding("ClusterRoleBinding", "everyone-views", "ClusterRole", "pod-viewer", [group("system:authenticated")]),
            binding("RoleBinding", "devs", "ClusterRole", "tenant-deployer", [group("alpha-devs")], "tenant-a"),
            binding("RoleBinding", "ci", "ClusterRole", "job-runner", [service_account("ci", "deployer")], "tenant-a"),
            binding("RoleBinding", "ci", "ClusterRole", "job-runner", [service_account("ci", "deployer")], "tenant-b"),
            binding("RoleBinding", "ns-admin", "ClusterRole", "namespace-admin", [user("bob")], "tenant-b"),
            binding("RoleBinding", "carol", "ClusterRole", "job-runner", [user("carol")], "sandbox"),
            {"apiVersion": RBAC, "kind": "Role", "metadata": {"name": "reader", "namespace": "tenant-b"},
             "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]},
            binding("RoleBinding", "reader", "Role", "reader", [group("system:serviceaccounts:tenant-b")], "tenant-b"),
        ]

    def use_regexp(self) -> None:
        self.set_args(lambda args: args + ["--namespace-restriction-format=regexp"])

    def config_file(self, tmp_path) -> str:
        path = tmp_path / "rbacbridge.yaml"
        path.write_text(CONFIG)
        return str(path)
