"""The test API server's admission plays EKS's injecting webhooks (tests/identity_webhook.py): pods created
through the real Kubernetes client come back with the IRSA or Pod Identity environment and projected token."""

from __future__ import annotations

import pytest

from tests.eks_standin import EksStandin
from tests.fixtures_kube import kube_api  # noqa: F401
from tests.identity_webhook import IdentityWebhook, associations_in, projected_tokens
from tests.kube_apiserver import validate

ROLE = "arn:aws:iam::123456789012:role/app"


@pytest.fixture
def eks():
    server = EksStandin("http://127.0.0.1:9").start()  # associations only: moto is never asked here
    server.add_cluster("lab", "http://127.0.0.1:9")
    yield server
    server.stop()


@pytest.fixture
def core(kube_api, eks):  # noqa: F811
    from kubernetes import client, config

    store = kube_api.store
    store.webhook = IdentityWebhook(region="us-east-1", pod_identity=associations_in(eks.url, "lab"))
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
    for name, annotations in (("irsa", {"eks.amazonaws.com/role-arn": ROLE}), ("plain", {}), ("both", {"eks.amazonaws.com/role-arn": ROLE})):
        store.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": "team-a", "annotations": annotations}})
    return client.CoreV1Api(config.new_client_from_config(config_file=kube_api.kubeconfig)), store


def _pod(name: str, account: str, env: list | None = None, annotations: dict | None = None) -> dict:
    container = {"name": "main", "image": "amazon/aws-cli"}
    if env:
        container["env"] = env
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"serviceAccountName": account, "containers": [container, {"name": "side", "image": "busybox"}]}}


def _env(stored: dict, container: int = 0) -> dict:
    return {e["name"]: e["value"] for e in stored["spec"]["containers"][container].get("env") or []}


def test_irsa_service_account_gets_role_env_and_sts_token(core):
    api, store = core
    api.create_namespaced_pod("team-a", _pod("web", "irsa"))
    stored = store.get("Pod", "web", "team-a")
    assert _env(stored) == {"AWS_STS_REGIONAL_ENDPOINTS": "regional", "AWS_DEFAULT_REGION": "us-east-1",
                            "AWS_REGION": "us-east-1", "AWS_ROLE_ARN": ROLE,
                            "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"}
    assert stored["spec"]["volumes"] == [{"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": {
        "audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}}]}}]
    assert stored["spec"]["containers"][1]["volumeMounts"] == [
        {"name": "aws-iam-token", "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount", "readOnly": True}]
    assert projected_tokens(stored) == [("/var/run/secrets/eks.amazonaws.com/serviceaccount/token", "sts.amazonaws.com", "aws-iam-token")]
    validate(stored)  # kubernetes-validate --strict still accepts the mutated pod


def test_pod_identity_association_wins_over_the_role_annotation(core, eks):
    api, store = core
    import boto3

    boto3.client("eks", endpoint_url=eks.url, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t") \
        .create_pod_identity_association(clusterName="lab", namespace="team-a", serviceAccount="both", roleArn=ROLE)
    api.create_namespaced_pod("team-a", _pod("web", "both"))
    stored = store.get("Pod", "web", "team-a")
    env = _env(stored)
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://169.254.170.23/v1/credentials"
    assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] == "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"
    assert "AWS_ROLE_ARN" not in env and "AWS_WEB_IDENTITY_TOKEN_FILE" not in env
    assert [v["name"] for v in stored["spec"]["volumes"]] == ["eks-pod-identity-token"]
    assert projected_tokens(stored) == [("/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token",
                                         "pods.eks.amazonaws.com", "eks-pod-identity-token")]
    validate(stored)


def test_neither_path_leaves_the_pod_alone(core):
    api, store = core
    api.create_namespaced_pod("team-a", _pod("web", "plain"))
    stored = store.get("Pod", "web", "team-a")
    assert "env" not in stored["spec"]["containers"][0] and "volumes" not in stored["spec"]


def test_existing_env_kept_and_skipped_containers_untouched(core):
    api, store = core
    api.create_namespaced_pod("team-a", _pod("web", "irsa", env=[{"name": "AWS_REGION", "value": "eu-west-1"}],
                                             annotations={"eks.amazonaws.com/skip-containers": "side"}))
    stored = store.get("Pod", "web", "team-a")
    assert _env(stored)["AWS_REGION"] == "eu-west-1" and _env(stored)["AWS_ROLE_ARN"] == ROLE
    assert [e["name"] for e in stored["spec"]["containers"][0]["env"]].count("AWS_REGION") == 1
    assert "env" not in stored["spec"]["containers"][1] and "volumeMounts" not in stored["spec"]["containers"][1]


def test_service_account_annotations_tune_audience_expiration_and_regional(core):
    api, store = core
    store.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tuned", "namespace": "team-a", "annotations": {
        "eks.amazonaws.com/role-arn": ROLE, "eks.amazonaws.com/audience": "other", "eks.amazonaws.com/token-expiration": "3600",
        "eks.amazonaws.com/sts-regional-endpoints": "false"}}})
    api.create_namespaced_pod("team-a", _pod("web", "tuned"))
    stored = store.get("Pod", "web", "team-a")
    assert stored["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"] == {
        "audience": "other", "expirationSeconds": 3600, "path": "token"}
    assert "AWS_STS_REGIONAL_ENDPOINTS" not in _env(stored)


def test_pods_of_the_servers_controllers_are_admitted_too(core, kube_api):  # noqa: F811
    from kubernetes import client, config

    _api, store = core
    apps = client.AppsV1Api(config.new_client_from_config(config_file=kube_api.kubeconfig))
    apps.create_namespaced_deployment("team-a", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"serviceAccountName": "irsa", "containers": [{"name": "main", "image": "x"}]}}}})
    pods = store.objects_of("Pod", "team-a")
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == "irsa" and _env(pod)["AWS_ROLE_ARN"] == ROLE
        validate(pod)


def test_without_a_webhook_nothing_is_injected(kube_api):  # noqa: F811
    from kubernetes import client, config

    store = kube_api.store
    store.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "irsa", "namespace": "default",
                                                                          "annotations": {"eks.amazonaws.com/role-arn": ROLE}}})
    client.CoreV1Api(config.new_client_from_config(config_file=kube_api.kubeconfig)).create_namespaced_pod("default", _pod("web", "irsa"))
    assert "env" not in store.get("Pod", "web", "default")["spec"]["containers"][0]


def test_rollouts_replace_pods_when_the_template_changes_and_admit_them(core, kube_api):  # noqa: F811
    from kubernetes import client, config

    _api, store = core
    store.rollouts = True
    store.add_node("node-a", "10.0.0.1")
    store.add_node("node-b", "10.0.0.2")
    apps = client.AppsV1Api(config.new_client_from_config(config_file=kube_api.kubeconfig))
    apps.create_namespaced_deployment("team-a", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}, "annotations": {"iam.amazonaws.com/role": "app"}},
            "spec": {"serviceAccountName": "plain", "containers": [{"name": "main", "image": "amazon/aws-cli"}]}}}})
    before = {p["metadata"]["name"]: p for p in store.objects_of("Pod", "team-a")}
    assert len(before) == 2 and all("env" not in p["spec"]["containers"][0] for p in before.values())
    assert all(p["metadata"]["annotations"] == {"iam.amazonaws.com/role": "app"} for p in before.values())
    apps.patch_namespaced_deployment("web", "team-a", {"spec": {"template": {
        "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-08T03:00:00Z"}},
        "spec": {"serviceAccountName": "irsa"}}}})
    after = {p["metadata"]["name"]: p for p in store.objects_of("Pod", "team-a")}
    assert len(after) == 2 and not set(after) & set(before)
    for pod in after.values():
        assert pod["status"]["phase"] == "Running" and _env(pod)["AWS_ROLE_ARN"] == ROLE
        validate(pod)
    apps.patch_namespaced_deployment("web", "team-a", {"spec": {"replicas": 2}})  # same template: pods kept
    assert {p["metadata"]["uid"] for p in store.objects_of("Pod", "team-a")} == {p["metadata"]["uid"] for p in after.values()}
    apps.create_namespaced_daemon_set("team-a", {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {
            "metadata": {"labels": {"app": "agent"}},
            "spec": {"serviceAccountName": "irsa", "containers": [{"name": "main", "image": "x"}]}}}})
    agents = [p for p in store.objects_of("Pod", "team-a") if p["metadata"]["labels"]["app"] == "agent"]
    assert sorted(p["spec"]["nodeName"] for p in agents) == ["node-a", "node-b"]
    assert store.get("DaemonSet", "agent", "team-a")["status"]["numberReady"] == 2
