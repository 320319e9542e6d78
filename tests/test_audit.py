"""`rbacbridge audit` against the test API server + moto: each finding appears exactly when its cause
is planted, reads only (no mutating AWS call, only GETs on the API server, one list per kind)."""

from __future__ import annotations

import pytest

from tests.fixtures_audit import Brownfield
from tests.fixtures_aws import moto_url, sandbox  # noqa: F401
from tests.fixtures_kube import kube_api  # noqa: F401

BASELINE = {"kube2iam-daemonset"}


@pytest.fixture
def field(kube_api, sandbox):
    return Brownfield(kube_api, sandbox).build()


def ids(result) -> set[str]:
    assert result.complete, result.errors
    return result.ids()


def assert_read_only(field: Brownfield) -> None:
    assert field.sandbox.mutating_calls == []
    assert field.sandbox.calls, "the audit made no AWS call at all"
    requests = field.store.requests
    assert requests and {r.method for r in requests} == {"GET"}
    assert not any(r.changed for r in requests)


PLANTS = [
    # (plant methods, the findings they must add)
    (("plant_auto_discover",), {"default-role-escalation", "default-role-self-trust"}),
    (("plant_auto_discover", "plant_self_trust"), {"default-role-escalation"}),
    (("plant_default_role_assumes_others",), {"default-role-escalation"}),
    (("plant_second_interceptor",), {"multiple-interceptors"}),
    (("plant_tainted_node",), {"node-without-kube2iam"}),
    (("plant_crash_loop",), {"node-without-kube2iam"}),
    (("plant_typo_trust",), {"pod-role-untrusted"}),
    (("plant_missing_role",), {"pod-role-missing"}),
    (("plant_not_permitted",), {"pod-role-not-permitted"}),
    (("plant_namespace_without_allowed_roles",), {"namespace-without-allowed-roles"}),
    (("plant_host_network_pod",), {"hostnetwork-pod-in-restricted-namespace"}),
    (("plant_pod_older_than_kube2iam",), {"pod-started-before-kube2iam"}),
    (("plant_old_image", "plant_tokens_required"), {"image-without-imdsv2"}),
    (("plant_old_image",), set()),  # old image, but no instance requires tokens
    (("plant_tokens_required",), set()),  # tokens required, but the image supports them
    (("plant_interface_mismatch",), {"host-interface-mismatch"}),
    (("plant_debug",), {"debug-enabled"}),
]


@pytest.mark.parametrize("plants,expected", PLANTS, ids=["+".join(p[0]).replace("plant_", "") for p in PLANTS])
def test_each_finding_appears_exactly_when_its_cause_is_planted(field, plants, expected):
    assert ids(field.audit()) == BASELINE  # not there before
    for plant in plants:
        getattr(field, plant)()
    assert ids(field.audit()) == BASELINE | expected
    assert_read_only(field)


def test_without_kube2iam_every_pod_gets_the_node_role(field):
    field.plant_no_kube2iam()
    assert ids(field.audit()) == {"kube2iam-absent"}


def test_the_helm_kube2iam_is_described_with_image_args_port_and_interface(field):
    result = field.audit()
    (found,) = result.findings
    assert found.objects == ["DaemonSet kube-system/kube2iam"]
    assert found.details["port"] == 8181 and found.details["interface"] == "cni0" and found.details["helm"] is True
    assert "jtblin/kube2iam:0.13.1" in found.evidence and "--default-role=k8s-default" in found.evidence


def test_findings_carry_objects_evidence_and_an_rbacbridge_fix(field):
    field.plant_auto_discover()
    field.plant_typo_trust()
    field.plant_tainted_node()
    field.plant_pod_older_than_kube2iam()
    by_id = {f.kind: f for f in field.audit().findings}
    escalation = by_id["default-role-escalation"]
    assert escalation.evidence.startswith("--auto-discover-default-role") and "k8s-node" in escalation.evidence
    assert "rbacbridge setup --adopt" in escalation.fix
    untrusted = by_id["pod-role-untrusted"]
    assert f"{'arn:aws:iam::123456789012:role/k8s-nod'}" in untrusted.evidence  # the typo, verbatim
    assert "Pod tenant-a/app" in untrusted.objects
    tainted = by_id["node-without-kube2iam"]
    assert tainted.objects == ["Node n3"] and "taint dedicated=gpu:NoSchedule not tolerated" in tainted.evidence
    assert tainted.severity == "high"  # a pod runs there
    early = by_id["pod-started-before-kube2iam"]
    assert early.objects == ["Pod default/old-timer"] and "kubectl delete pod" in early.fix


def test_crash_looping_kube2iam_names_the_reason_and_restarts(field):
    field.plant_crash_loop()
    (finding,) = [f for f in field.audit().findings if f.kind == "node-without-kube2iam"]
    assert finding.objects == ["Node n2"]
    assert "CrashLoopBackOff" in finding.evidence and "7 restarts" in finding.evidence


def test_reads_are_listed_once_per_kind(field):
    field.plant_pod_older_than_kube2iam()
    field.plant_namespace_without_allowed_roles()
    field.audit()
    lists = sorted(r.path for r in field.store.requests if r.method == "GET")
    assert lists == ["/api/v1/namespaces", "/api/v1/nodes", "/api/v1/pods", "/apis/apps/v1/daemonsets"]
    operations = sorted(op for _, op, _ in field.sandbox.calls)
    assert operations == ["DescribeInstances", "GetAccountAuthorizationDetails", "GetCallerIdentity"]


def test_only_kube_still_sees_auto_discovery_as_escalation(field):
    field.plant_auto_discover()
    result = field.audit(parts=("kube",))
    assert ids(result) == BASELINE | {"default-role-escalation"}
    assert field.sandbox.calls == []


def test_only_aws_with_a_config_audits_the_iam_side_it_names(field):
    # the config names the brownfield's roles; default_role auto (= the node role) is the escalation
    config = field.config(node_role="k8s-node", pod_role="app-role", default_role="auto")
    result = field.audit(parts=("aws",), config=config, config_given=True)
    assert ids(result) == {"default-role-escalation", "default-role-self-trust"}
    config = field.config(node_role="k8s-node", pod_role="app-role", default_role="k8s-default")
    assert ids(field.audit(parts=("aws",), config=config, config_given=True)) == set()
    field.plant_typo_trust()
    result = field.audit(parts=("aws",), config=config, config_given=True)
    assert ids(result) == {"pod-role-untrusted"}
    assert result.findings[0].objects == ["Role app-role", "config iam.pod_role"]
    assert field.store.requests == []  # the kube part was not asked


def test_config_tenants_name_the_roles_audit_checks(field):
    from rbacbridge.config import Tenant

    tenants = (Tenant("client-a", ("tenant-a",), "app-role"), Tenant("client-z", ("tenant-z",), "no-such-tenant-role"))
    config = field.config(node_role="k8s-node", default_role="k8s-default", tenants=tenants)
    result = field.audit(parts=("aws",), config=config, config_given=True)
    assert ids(result) == {"pod-role-missing"}
    assert result.findings[0].objects == ["config tenant client-z"]
    field.plant_typo_trust()
    untrusted = next(f for f in field.audit(parts=("aws",), config=config, config_given=True).findings
                     if f.kind == "pod-role-untrusted")
    assert untrusted.objects == ["Role app-role", "config tenant client-a"]


# --- a clean rbacbridge setup audits clean --------------------------------------------------------

# What the audit finds right after `rbacbridge setup`, per kube2iam.default_role: the default
# (dedicated) audits clean; `auto` (the node role, the article's way) is the escalation, warned about.
AFTER_SETUP = [
    ("dedicated", set()),
    ("auto", {"default-role-escalation"}),
]


@pytest.mark.parametrize("default_role,expected", AFTER_SETUP, ids=[d for d, _ in AFTER_SETUP])
def test_a_clean_rbacbridge_setup_audits_clean(kube_api, sandbox, default_role, expected):
    from rbacbridge import planner
    from rbacbridge.audit import run_audit
    from rbacbridge.aws import AwsGateway
    from rbacbridge.config import Config
    from rbacbridge.planner import Context

    store = kube_api.store
    for name, ip in (("n1", "10.0.0.11"), ("n2", "10.0.0.12")):
        instance = sandbox.new_instance()
        store.add_node(name, ip, provider_id=f"aws:///us-east-1a/{instance}", labels={"kubernetes.io/os": "linux"})
    config = Config(account_id="123456789012", kubeconfig=kube_api.kubeconfig, endpoint_url=sandbox.url, rollout_timeout=5,
                    default_role=default_role)
    ctx = Context(config=config, parts=("aws", "kube"), gateways={"aws": AwsGateway(config, session=sandbox.session(record=False))})
    outcome = planner.run(ctx, planner.plan_setup(ctx))
    assert outcome.ok, outcome.failure and outcome.failure.error
    # Play the controllers the test API server leaves out: DaemonSet pods land on their nodes,
    # Deployment pods carry their template's annotations.
    for (resource, namespace, name), pod in list(store.objects.items()):
        if pod["kind"] != "Pod":
            continue
        if name.startswith("kube2iam-"):
            pod["spec"]["nodeName"] = name.removeprefix("kube2iam-")
        owner = next(iter(pod["metadata"].get("ownerReferences") or []), {})
        if owner.get("kind") == "Deployment":
            template = store.get("Deployment", owner["name"], namespace)["spec"]["template"]["metadata"]
            pod["metadata"]["annotations"] = template.get("annotations") or {}
    annotated = [p for p in store.objects_of("Pod") if "iam.amazonaws.com/role" in (p["metadata"].get("annotations") or {})]
    assert annotated, "the annotated nginx pod is part of what gets audited"
    store.requests.clear()

    for config_given in (True, False):  # with the config, and as a stranger would see it
        audit_ctx = Context(config=config, parts=("aws", "kube"), gateways={"aws": AwsGateway(config, session=sandbox.session())})
        result = run_audit(audit_ctx, config_given=config_given)
        assert result.complete, result.errors
        assert result.ids() == {"kube2iam-daemonset"} | expected, [f.to_dict() for f in result.findings]
    assert sandbox.mutating_calls == []
    assert {r.method for r in store.requests} == {"GET"}


def test_a_kube2iam_interface_that_is_not_a_name_leaves_the_rules_unjudged_not_bad_input(field):
    field.set_args(lambda args: [("--host-interface=$(IFACE)" if a.startswith("--host-interface") else a) for a in args])
    config = field.config(node_hosts=("127.0.0.1:1",), ssh_config="none")
    result = field.audit(parts=("kube", "nodes"), config=config)
    assert not result.complete
    assert result.errors == ["nodes: rules not judged: DaemonSet kube-system/kube2iam has invalid interface '$(IFACE)': "
                             "at most 15 of [A-Za-z0-9_.-], optionally ending in '+'"]
