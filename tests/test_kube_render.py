"""`rbacbridge render`: the manifests, as files or one YAML stream, valid for Kubernetes 1.29-1.33."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from rbacbridge.config import Config
from rbacbridge.kube import desired_objects, render_documents
from tests.fixtures_kube import kube_api  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("KUBECONFIG", None)
    return subprocess.run([sys.executable, "-m", "rbacbridge", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=60, stdin=subprocess.DEVNULL)


CONFIGS = {
    "article defaults": Config(account_id="123456789012"),
    "explicit role, no restrictions": Config(account_id="123456789012", default_role="nettech-s3-read-only",
                                             namespace_restrictions=False, kube2iam_port=8181, namespace="tenant-a"),
    "auto default role, debug, own tolerations": Config(
        account_id="123456789012", default_role="auto", kube2iam_debug=True, region="eu-west-1",
        kube2iam_tolerations=({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
                              {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                               "tolerationSeconds": 300})),
    "no tolerations": Config(account_id="123456789012", kube2iam_tolerations=()),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_every_rendered_object_passes_strict_validation(version, config_name):
    objects = desired_objects(CONFIGS[config_name], "cali+")
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_would_catch_a_bad_field():
    daemonset = next(o for o in desired_objects(CONFIGS["article defaults"], "eni+") if o["kind"] == "DaemonSet")
    daemonset["spec"]["template"]["spec"]["containers"][0]["hostNetwork"] = True  # wrong level
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, "1.33.0", strict=True)


def test_daemonset_carries_every_kube2iam_setting():
    objects = desired_objects(Config(account_id="210987654321", kube2iam_image="jtblin/kube2iam:0.11.1", region="eu-central-1"), "eni+")
    daemonset = next(o for o in objects if o["kind"] == "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["hostNetwork"] is True and pod["serviceAccountName"] == "kube2iam"
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]  # every taint: no node without kube2iam
    assert container["securityContext"] == {"privileged": True}
    assert container["image"] == "jtblin/kube2iam:0.11.1"
    # The dedicated default role, never auto-discovery (the node role); no --debug unless asked for.
    assert container["args"] == [
        "--base-role-arn=arn:aws:iam::210987654321:role/", "--default-role=nettech-pod-default", "--iptables=true",
        "--host-ip=$(HOST_IP)", "--host-interface=eni+", "--node=$(NODE_NAME)", "--app-port=8282",
        "--namespace-restrictions"]
    env = {e["name"]: e.get("value") or e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"HOST_IP": "status.podIP", "NODE_NAME": "spec.nodeName",
                   "AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "eu-central-1"}
    assert container["ports"] == [{"name": "http", "containerPort": 8282, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8282, "scheme": "HTTP"}
    assert container["resources"]["requests"] == {"cpu": "10m", "memory": "32Mi"}
    assert pod["volumes"] == [{"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}}]
    role = next(o for o in objects if o["kind"] == "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["namespaces", "pods"], "verbs": ["get", "list", "watch"]}]
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rbacbridge"
    namespace = next(o for o in objects if o["kind"] == "Namespace")
    assert namespace["metadata"] == {"name": "default", "annotations": {"iam.amazonaws.com/allowed-roles": '["nettech-s3-read-write"]'}}
    nginx = [o for o in objects if o["kind"] == "Deployment"]
    assert [d["spec"]["template"]["spec"]["containers"][0]["image"] for d in nginx] == ["nginx:1.27", "nginx:1.27"]


def test_default_image_is_the_first_upstream_release_with_imdsv2():
    container = _kube2iam_container(Config(account_id="123456789012"))
    assert container["image"] == "jtblin/kube2iam:0.13.0"


def _kube2iam_container(config: Config) -> dict:
    daemonset = next(o for o in desired_objects(config, "cni0") if o["kind"] == "DaemonSet")
    return daemonset["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("mode, flag", [
    ("dedicated", "--default-role=nettech-pod-default"),
    ("node", "--default-role=nettech-s3-read-only"),
    ("auto", "--auto-discover-default-role"),
    ("tenant-default", "--default-role=tenant-default"),
])
def test_default_role_flag_per_mode(mode, flag):
    args = _kube2iam_container(Config(account_id="123456789012", default_role=mode))["args"]
    defaults = [a for a in args if "default-role" in a]
    assert defaults == [flag]  # never both --default-role and --auto-discover-default-role


def test_debug_only_when_asked_for():
    assert "--debug" not in _kube2iam_container(Config(account_id="123456789012"))["args"]
    assert _kube2iam_container(Config(account_id="123456789012", kube2iam_debug=True))["args"][-1] == "--debug"


def test_tolerations_from_the_config_file(tmp_path):
    config = tmp_path / "rbacbridge.yaml"
    config.write_text("account_id: '123456789012'\nkube2iam:\n  debug: true\n  tolerations:\n"
                      "    - {key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}\n")
    result = _cli("render", "-c", str(config))
    assert result.returncode == 0, result.stderr
    daemonset = next(d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]
    assert "--debug" in pod["containers"][0]["args"]


@pytest.mark.parametrize("value, why", [
    ("[{operator: Sometimes}]", "operator is Exists or Equal"),
    ("[{key: a, colour: red}]", "unknown toleration field 'colour'"),
    ("[{operator: Exists, value: x}]", "takes no value"),
    ("[{effect: NoSchedule}]", "needs operator Exists"),
    ("{operator: Exists}", "expected a list of tolerations"),
])
def test_bad_tolerations_are_one_line_exit_2(tmp_path, value, why):
    config = tmp_path / "rbacbridge.yaml"
    config.write_text(f"account_id: '123456789012'\nkube2iam:\n  tolerations: {value}\n")
    result = _cli("render", "-c", str(config))
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: invalid kube2iam.tolerations") and why in line


def test_render_to_stdout_is_a_yaml_stream_for_kubectl():
    result = _cli("render", "--account-id", "123456789012", "--host-interface", "cni0")
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert [(d["kind"], d["metadata"]["name"]) for d in documents] == [
        ("ServiceAccount", "kube2iam"), ("ClusterRole", "kube2iam"), ("ClusterRoleBinding", "kube2iam"),
        ("DaemonSet", "kube2iam"), ("Namespace", "default"), ("Deployment", "nginx-vanilla"), ("Deployment", "nginx-annotated")]
    assert "--host-interface=cni0" in documents[3]["spec"]["template"]["spec"]["containers"][0]["args"]
    [said] = result.stderr.splitlines()  # only which configuration was read: stdout stays the stream alone
    assert said.startswith("config: built-in defaults")


def test_render_to_directory_and_config_file(tmp_path):
    config = tmp_path / "rbacbridge.yaml"
    config.write_text("account_id: '123456789012'\nkubernetes:\n  nginx_image: nginx:1.27.3\nkube2iam:\n  namespace_restrictions: false\n")
    result = _cli("render", "-c", str(config), "--out-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["01-serviceaccount-kube2iam.yaml", "02-clusterrole-kube2iam.yaml", "03-clusterrolebinding-kube2iam.yaml",
                     "04-daemonset-kube2iam.yaml", "05-deployment-nginx-vanilla.yaml", "06-deployment-nginx-annotated.yaml"]
    deployment = yaml.safe_load((tmp_path / "out" / "05-deployment-nginx-vanilla.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27.3"
    assert "host interface docker0 (offline" in result.stderr


def test_render_without_account_is_one_line_exit_2():
    result = _cli("render")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: render needs --account-id (or account_id in the config) for kube2iam's --base-role-arn"]
    assert result.stdout == ""


def test_render_rejects_a_bad_interface_before_writing(tmp_path):
    result = _cli("render", "--account-id", "123456789012", "--host-interface", "eth0; rm -rf /", "--out-dir", str(tmp_path / "x"))
    assert result.returncode == 2 and "invalid --host-interface" in result.stderr
    assert not (tmp_path / "x").exists()


def test_render_detects_the_interface_from_a_cluster(kube_api):
    kube_api.store.put({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "aws-node", "namespace": "kube-system"},
                        "spec": {"selector": {"matchLabels": {"k8s-app": "aws-node"}}, "template": {
                            "metadata": {"labels": {"k8s-app": "aws-node"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
    result = _cli("render", "--account-id", "123456789012", "--kubeconfig", kube_api.kubeconfig)
    assert result.returncode == 0, result.stderr
    assert "--host-interface=eni+" in result.stdout
    assert "DaemonSet kube-system/aws-node found" in result.stderr
    assert kube_api.store.mutating_requests() == []


def test_render_documents_round_trip():
    objects = desired_objects(CONFIGS["article defaults"], "weave")
    for (name, text), obj in zip(render_documents(objects), objects):
        assert yaml.safe_load(text) == obj
        assert name.endswith(f"-{obj['metadata']['name']}.yaml")
    assert json.loads(objects[4]["metadata"]["annotations"]["iam.amazonaws.com/allowed-roles"]) == ["nettech-s3-read-write"]


def test_render_json_is_one_list_for_kubectl():
    result = _cli("render", "--account-id", "123456789012", "--host-interface", "cni0", "-o", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["apiVersion"], document["kind"]) == ("v1", "List")
    assert document["items"] == desired_objects(Config(account_id="123456789012"), "cni0")


def test_render_json_files(tmp_path):
    result = _cli("render", "--account-id", "123456789012", "-o", "json", "--out-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "out").iterdir())
    assert [p.suffix for p in files] == [".json"] * 7
    assert json.loads(files[3].read_text())["kind"] == "DaemonSet"


DAEMONSET_FILE = "04-daemonset-kube2iam.yaml"


def test_render_never_follows_a_symlink_in_the_target(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "precious.txt"
    out.mkdir()
    outside.write_text("not rbacbridge's\n")
    (out / "01-serviceaccount-kube2iam.yaml").write_text("old\n")
    (out / DAEMONSET_FILE).symlink_to(outside)
    result = _cli("render", "--account-id", "123456789012", "--out-dir", str(out))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 2  # the offline-interface note, then the one error line
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: refusing to write {out / DAEMONSET_FILE}: it is a symbolic link")
    assert outside.read_text() == "not rbacbridge's\n"
    # nothing of the set was written: the whole set or nothing
    assert sorted(p.name for p in out.iterdir()) == ["01-serviceaccount-kube2iam.yaml", DAEMONSET_FILE]
    assert (out / "01-serviceaccount-kube2iam.yaml").read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_render_refuses_a_dangling_link_and_a_linked_target(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / DAEMONSET_FILE).symlink_to(tmp_path / "nowhere" / "x.yaml")
    result = _cli("render", "--account-id", "123456789012", "--host-interface", "cni0", "--out-dir", str(out))
    assert result.returncode == 2 and "symbolic link" in result.stderr
    assert not (tmp_path / "nowhere").exists() and [p.name for p in out.iterdir()] == [DAEMONSET_FILE]
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    result = _cli("render", "--account-id", "123456789012", "--host-interface", "cni0", "--out-dir", str(tmp_path / "link"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: refusing --out-dir {tmp_path / 'link'}: it is a symbolic link (rbacbridge never writes through links)"]
    assert list(real.iterdir()) == []


def test_render_replaces_its_own_files_and_keeps_others(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README").write_text("mine\n")
    (out / DAEMONSET_FILE).write_text("old\n")
    result = _cli("render", "--account-id", "123456789012", "--host-interface", "cni0", "--out-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "README").read_text() == "mine\n"
    assert yaml.safe_load((out / DAEMONSET_FILE).read_text())["kind"] == "DaemonSet"
    assert len(list(out.iterdir())) == 8
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("args, message", [
    (["--out-dir", ""], "error: --out-dir must name a directory (got an empty string)"),
    (["-o", "yml"], "error: invalid --output 'yml': choose from yaml, json"),
])
def test_render_bad_target_or_format_is_one_line_exit_2(tmp_path, args, message):
    result = _cli("render", "--account-id", "123456789012", "--host-interface", "cni0", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [message]
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_render_refuses_a_file_as_target(tmp_path):
    target = tmp_path / "file.yaml"
    target.write_text("keep\n")
    result = _cli("render", "--account-id", "123456789012", "--host-interface", "cni0", "--out-dir", str(target))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: --out-dir {target} exists and is not a directory"]
    assert target.read_text() == "keep\n"
