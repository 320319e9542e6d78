"""`rbacbridge audit --who-can` on a realistic multi-tenant cluster (tests/fixtures_who_can.py): every
answer asserted exactly, in-process for the answers and as users run it for formats, exit codes and
read-only-ness."""

from __future__ import annotations

import pytest

from rbacbridge.audit import run_audit
from rbacbridge.audit import who_can as who_can_part
from rbacbridge.aws import AwsGateway
from rbacbridge.config.loading import load
from rbacbridge.planner import Context
from tests.fixtures_aws import moto_url, sandbox  # noqa: F401
from tests.fixtures_kube import kube_api  # noqa: F401
from tests.fixtures_who_can import Tenants, arn


@pytest.fixture
def cluster(kube_api, sandbox):
    return Tenants(kube_api, sandbox).build()


def answer_of(cluster: Tenants, tmp_path, config: bool = True):
    path = cluster.config_file(tmp_path) if config else None
    cfg = load(path)
    cfg = type(cfg)(**{**cfg.__dict__, "kubeconfig": cluster.kube_api.kubeconfig, "endpoint_url": cluster.sandbox.url})
    ctx = Context(config=cfg, parts=("aws", "kube"), gateways={"aws": AwsGateway(cfg, session=cluster.sandbox.session())})
    result = run_audit(ctx, config_given=config)
    who_can_part.run(ctx, result, config_given=config)
    return result


def by_subject(result) -> dict[str, dict]:
    return {f"{a['subject']['kind']} {a['subject']['name']}": a for a in result.who_can.to_dict()["subjects"]}


def compact(result) -> dict[str, dict]:
    """Each non-admin subject's answer with role names for ARNs; admins as "admin"."""
    out = {}
    for name, a in by_subject(result).items():
        if a["admin"]:
            out[name] = "admin"
            continue
        short = lambda arn: arn.rsplit("/", 1)[-1]  # noqa: E731
        out[name] = {
            "bindings": a["bindings"], "run": a["run_pods_in"], "exec": a["exec_in"], "edit": a["edit_allowed_roles_in"],
            "roles": {short(r["role"]): (r["namespaces"], r["how"]) for r in a["roles"]},
            "chains": {short(r["role"]): [short(p) for p in r["path"]] for r in a["chained_roles"]},
            "node_role": a["node_role"]["how"]}
    return out


GLOB_ALPHA, GLOB_BETA = "allowed-roles 'alpha-*' (glob)", "allowed-roles 'beta-app' (glob)"
DEFAULT_ROLE, HOSTNET = "kube2iam's default role", "hostNetwork admitted (Pod Security enforce: unlabelled)"
EDIT = "can edit the namespace's allowed-roles"


def test_every_subjects_answer(cluster, tmp_path):
    result = answer_of(cluster, tmp_path)
    assert result.errors == []
    assert compact(result) == {
        # aggregated ClusterRole tenant-deployer = deployer-apps + deployer-exec, bound to a group
        "Group alpha-devs": {
            "bindings": ["RoleBinding tenant-a/devs -> ClusterRole tenant-deployer"],
            "run": ["tenant-a"], "exec": ["tenant-a"], "edit": [],
            "roles": {"alpha-app": (["tenant-a"], [GLOB_ALPHA, "exec into pod tenant-a/app"]),
                      "k8s-default": (["tenant-a"], [DEFAULT_ROLE])},
            # alpha-etl trusts only alpha-app: the node role cannot get it, the chain can (two hops to beta-app)
            "chains": {"alpha-etl": ["alpha-app", "alpha-etl"], "beta-app": ["alpha-app", "alpha-etl", "beta-app"]},
            "node_role": []},
        "Group system:masters": "admin",
        # the CI account that can create Jobs in two tenants' namespaces
        "ServiceAccount ci/deployer": {
            "bindings": ["RoleBinding tenant-a/ci -> ClusterRole job-runner", "RoleBinding tenant-b/ci -> ClusterRole job-runner"],
            "run": ["tenant-a", "tenant-b"], "exec": [], "edit": [],
            "roles": {"alpha-app": (["tenant-a"], [GLOB_ALPHA]), "beta-app": (["tenant-b"], [GLOB_BETA]),
                      "k8s-default": (["tenant-a", "tenant-b"], [DEFAULT_ROLE]), "k8s-node": (["tenant-b"], [HOSTNET])},
            "chains": {"alpha-etl": ["alpha-app", "alpha-etl"]},  # the node role's own reach: listed once, below
            "node_role": [f"{HOSTNET} in tenant-b"]},
        # the namespace admin who can patch its Namespace: every role kube2iam can assume, there
        "User bob": {
            "bindings": ["RoleBinding tenant-b/ns-admin -> ClusterRole namespace-admin"],
            "run": ["tenant-b"], "exec": [], "edit": ["tenant-b"],
            "roles": {"alpha-app": (["tenant-b"], [EDIT]), "app-role": (["tenant-b"], [EDIT]),
                      "beta-app": (["tenant-b"], [GLOB_BETA, EDIT]), "beta-app-admin": (["tenant-b"], [EDIT]),
                      "k8s-default": (["tenant-b"], [DEFAULT_ROLE, EDIT]), "k8s-node": (["tenant-b"], [HOSTNET])},
            "chains": {"alpha-etl": ["alpha-app", "alpha-etl"]},
            "node_role": [f"{HOSTNET} in tenant-b"]},
        "User carol": {
            "bindings": ["RoleBinding sandbox/carol -> ClusterRole job-runner"],
            "run": ["sandbox"], "exec": [], "edit": [],
            "roles": {"k8s-default": (["sandbox"], [DEFAULT_ROLE])}, "chains": {}, "node_role": []},
        "User root-admin": "admin",
    }
    report = result.who_can.to_dict()
    assert report["kube2iam"] == {"source": "DaemonSet kube-system/kube2iam", "namespace_restrictions": True, "format": "glob",
                                  "base_role_arn": arn(""), "default_role": arn("k8s-default")}
    assert report["node_roles"] == [arn("k8s-node")]
    assert [[p.rsplit("/", 1)[1] for p in r["path"]] for r in report["node_role_reach"]] == [
        ["k8s-node", "alpha-app"], ["k8s-node", "alpha-app", "alpha-etl"], ["k8s-node", "app-role"], ["k8s-node", "beta-app"],
        ["k8s-node", "beta-app-admin"], ["k8s-node", "k8s-default"]]
    assert report["counts"] == {"roles": 1, "cluster_roles": 7, "role_bindings": 6, "cluster_role_bindings": 2, "subjects": 6}
    root = by_subject(result)["User root-admin"]
    assert root["node_role"]["how"][1:] == ["exec into hostNetwork pod kube-system/kube2iam-n1 in kube-system",
                                            "exec into hostNetwork pod kube-system/kube2iam-n2 in kube-system"]


WHO_CAN_KINDS = {"who-can-other-tenant-role", "who-can-chain-other-tenant-role", "who-can-node-role", "who-can-edit-allowed-roles",
                 "allowed-roles-absent", "allowed-roles-broader-than-config", "hostnetwork-admitted-in-tenant-namespace"}


def who_can_findings(result) -> list[tuple[str, str, tuple[str, ...]]]:
    return sorted((f.kind, f.severity, tuple(f.objects)) for f in result.findings if f.kind in WHO_CAN_KINDS)


def test_findings(cluster, tmp_path):
    result = answer_of(cluster, tmp_path)
    assert who_can_findings(result) == [
        ("allowed-roles-absent", "low", ("Namespace sandbox",)),
        ("allowed-roles-broader-than-config", "high", ("Namespace tenant-a", "Role alpha-etl")),
        ("hostnetwork-admitted-in-tenant-namespace", "high", ("Namespace tenant-b",)),
        ("who-can-chain-other-tenant-role", "high", ("Role alpha-app", "Role alpha-etl", "Role beta-app")),
        ("who-can-edit-allowed-roles", "high", ("User bob", "Namespace tenant-b")),
        ("who-can-node-role", "high", ("ServiceAccount ci/deployer",)),
        ("who-can-node-role", "high", ("User bob",)),
        ("who-can-other-tenant-role", "high", ("ServiceAccount ci/deployer", "Role alpha-app", "Role beta-app")),
        ("who-can-other-tenant-role", "high", ("User bob", "Role alpha-app")),
    ]
    chain = next(f for f in result.findings if f.kind == "who-can-chain-other-tenant-role")
    assert chain.details == {"path": [arn("alpha-app"), arn("alpha-etl"), arn("beta-app")], "subjects": ["Group alpha-devs"]}
    assert WHO_CAN_KINDS <= set(result.checked)


def test_regexp_format_is_a_search(cluster, tmp_path):
    cluster.use_regexp()  # kube2iam --namespace-restriction-format=regexp: 'beta-app' also allows beta-app-admin
    result = answer_of(cluster, tmp_path)
    ci = compact(result)["ServiceAccount ci/deployer"]
    assert ci["roles"]["beta-app-admin"] == (["tenant-b"], ["allowed-roles 'beta-app' (regexp)"])
    assert ci["roles"]["alpha-app"] == (["tenant-a"], ["allowed-roles 'alpha-*' (regexp)"])
    broader = {f.objects[0]: f for f in result.findings if f.kind == "allowed-roles-broader-than-config"}
    assert sorted(broader) == ["Namespace tenant-a", "Namespace tenant-b"]
    assert broader["Namespace tenant-b"].details == {"patterns": ["beta-app"], "extra": [arn("beta-app-admin")],
                                                     "intended": [arn("beta-app")]}


def test_without_a_config_tenant_rules_are_not_checked(cluster, tmp_path):
    result = answer_of(cluster, tmp_path, config=False)
    kinds = {k for k, _, _ in who_can_findings(result)}
    assert kinds == {"allowed-roles-absent", "hostnetwork-admitted-in-tenant-namespace", "who-can-edit-allowed-roles",
                     "who-can-node-role"}
    assert not {"who-can-other-tenant-role", "who-can-chain-other-tenant-role", "allowed-roles-broader-than-config"} & set(result.checked)
    assert any(n.startswith("who-can: tenants unknown (no -c)") for n in result.notes)
    # without a config the tenants' namespaces are those with allowed-roles: tenant-b admits hostNetwork
    assert [f.objects for f in result.findings if f.kind == "hostnetwork-admitted-in-tenant-namespace"] == [["Namespace tenant-b"]]


def test_no_kube2iam_gives_everyone_who_runs_pods_the_node_role(cluster, tmp_path):
    cluster.plant_no_kube2iam()
    result = answer_of(cluster, tmp_path)
    carol = compact(result)["User carol"]
    assert carol["roles"] == {"k8s-node": (["sandbox"], ["no kube2iam DaemonSet: pods reach the metadata service"])}
    assert carol["chains"] == {}
    assert {r["role"].rsplit("/", 1)[1]: [p.rsplit("/", 1)[1] for p in r["path"]] for r in result.who_can.to_dict()["node_role_reach"]} == {
        "alpha-app": ["k8s-node", "alpha-app"], "alpha-etl": ["k8s-node", "alpha-app", "alpha-etl"], "app-role": ["k8s-node", "app-role"],
        "beta-app": ["k8s-node", "beta-app"], "beta-app-admin": ["k8s-node", "beta-app-admin"], "k8s-default": ["k8s-node", "k8s-default"]}
    assert carol["node_role"] == ["no kube2iam DaemonSet: pods reach the metadata service in sandbox"]
