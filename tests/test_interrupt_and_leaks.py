"""Issue 22, item 10, against the real stand-ins:

- SIGTERM is handled like Ctrl-C: a `--via kubernetes` run (netns nodes behind the test API server) and a
  verify with annotation probe pods leave no rbacbridge pod behind, for SIGINT and SIGTERM alike;
- an error line never quotes a config file's contents (`-c .env`) or a URL's user-info (AWS_ENDPOINT_URL,
  --endpoint-url, aws.endpoint_url, a kubeconfig's server), also not with --debug;
- `render --out-dir` writes through directory descriptors: the target swapped for a symlink between two
  files (deterministically, at the first rename) gets nothing written through the link.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.fixtures_aws import ACCOUNT, moto_url, sandbox  # noqa: F401
from tests.fixtures_kube import kube_api, write_kubeconfig  # noqa: F401
from tests.fixtures_kube_nodes import kube_nodes  # noqa: F401
from tests.fixtures_nodes import host_ruleset_unchanged, make_node, netns  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
PASSWORD = "Pa55w0rdNeverShown"
USER = "opsuserneverShown"


def rbb(*argv: str, env: dict | None = None, cwd=None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rbacbridge", *argv], capture_output=True, text=True, timeout=timeout,
                          env={**(env or os.environ), "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL, cwd=cwd)


def _default_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def start(*argv: str, env: dict | None = None) -> subprocess.Popen:
    # SIGINT and SIGTERM at their defaults, as from a terminal or a CI runner (a background job starts with
    # SIGINT ignored; an ignored signal is inherited, and rbacbridge keeps it ignored)
    return subprocess.Popen([sys.executable, "-m", "rbacbridge", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env={**(env or os.environ), "PYTHONPATH": str(REPO)},
                            preexec_fn=_default_signals)


def wait_for(condition, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def assert_interrupted(proc: subprocess.Popen, grace: float = 20) -> str:
    _, err = proc.communicate(timeout=grace)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and lines[-1].startswith("error: interrupted"), err
    assert sum(line.startswith("error:") for line in lines) == 1, err
    return err


# --- SIGTERM like SIGINT: the short-lived node pods (--via kubernetes, real iptables in netns) ----------

@netns
@pytest.mark.netns
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_a_via_kubernetes_run_leaves_no_node_pod(kube_nodes, signum):  # noqa: F811
    from tests.test_nodes_netns import add_rule, kube2iam_rules
    from tests.test_nodes_via_kube import via_kube

    cluster = kube_nodes(1)
    node = cluster.nodes[0]
    add_rule(node)
    add_rule(node)
    held, release = threading.Event(), threading.Event()

    def hold(namespace, pod):
        held.set()
        release.wait(45)  # the node command hangs: only the interruption can end the run in time

    cluster.on_exec = hold
    proc = start("iptables", "fix", "--yes", *via_kube(cluster))
    try:
        assert held.wait(60), "the run never reached the node"
        assert len(cluster.our_pods()) == 1  # rbacbridge's short-lived NET_ADMIN pod, in use
        proc.send_signal(signum)
        assert_interrupted(proc)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cluster.on_exec = None
    assert cluster.our_pods() == []
    assert cluster.api.store.objects_of("Pod") == []
    assert len(kube2iam_rules(node)) == 2  # interrupted before it changed anything


# --- SIGTERM like SIGINT: verify's annotation probe pods -------------------------------------------------

TENANTS = [{"name": "client-a", "namespaces": ["client-a"], "role": "client-a-s3", "read": ["nettech-helm-test"],
            "workloads": ["nginx-client-a"]},
           {"name": "client-b", "namespaces": ["client-b"], "role": "client-b-s3", "read": ["nettech-helm-test"],
            "workloads": ["nginx-client-b"]}]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_verify_leaves_no_probe_pod(sandbox, kube_api, tmp_path, signum):
    from dataclasses import replace

    from rbacbridge import planner
    from rbacbridge.config import load
    from rbacbridge.plan import execute
    from rbacbridge.planner import Context

    store = kube_api.store
    for name in ("client-a", "client-b"):
        store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    store.add_node("node-a", "10.0.0.1")
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(yaml.safe_dump({"account_id": ACCOUNT, "tenants": TENANTS}))
    config = replace(load(str(path)), kubeconfig=kube_api.kubeconfig, host_interface="docker0", rollout_timeout=5.0)
    execution = execute(planner.plan_setup(Context(config=config, parts=("kube",)), parts=("kube",)).steps)
    assert execution.ok, execution.error
    probes = lambda: [p for p in store.objects_of("Pod")  # noqa: E731
                      if p["metadata"]["name"].startswith("rbacbridge-annotation-probe-")]
    store.kubelet = lambda pod: pod["metadata"]["name"].startswith("rbacbridge-annotation-probe-")  # never runs

    def aws_cli(namespace, pod, container, argv):  # an AWS CLI in every pod that finds no credentials
        if argv[:2] == ["sh", "-c"]:
            return 0, b"/usr/bin/aws\n", b""
        return 255, b"", b"Unable to locate credentials. You can configure credentials by running \"aws configure\".\n"

    kube_api.server.exec_handler = aws_cli
    proc = start("verify", "-c", str(path), "--kubeconfig", kube_api.kubeconfig, "--no-drift-check",
                 "--account-id", ACCOUNT, "--via", "kubernetes", "-o", "json", env=sandbox.env())
    try:
        assert wait_for(lambda: probes() or proc.poll() is not None, 90), "no probe pod was created"
        assert proc.poll() is None, proc.communicate()
        assert probes()  # a probe pod annotated with the other tenant's role, waiting to run
        proc.send_signal(signum)
        assert_interrupted(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert probes() == []
    # nor verify's host-probe pod (--via kubernetes): only the Deployments' and kube2iam's pods are left
    assert [p["metadata"]["name"] for p in store.objects_of("Pod") if not p["metadata"].get("ownerReferences")] == []


# --- error lines: no file contents, no URL user-info -----------------------------------------------------

ENV_FILES = {
    "dotenv": f"AWS_ACCESS_KEY_ID={KEY_ID}\nAWS_SECRET_ACCESS_KEY={SECRET}\n",
    "one-line": f"AWS_ACCESS_KEY_ID={KEY_ID}\n",
    "export": f"export AWS_ACCESS_KEY_ID={KEY_ID}\nexport AWS_SECRET_ACCESS_KEY={SECRET}\n",
    "colon": f"AWS_ACCESS_KEY_ID: {KEY_ID}\nAWS_SECRET_ACCESS_KEY: {SECRET}\n",
    "secret-first": f"{SECRET}: {KEY_ID}\n",
    "broken-yaml": f"token: '{SECRET}\nkey: [{KEY_ID}\n",
    "known-setting": f"iam:\n  node_role: {SECRET}!\n",
    "account": f"account_id: {KEY_ID}\n",
    "tenant": f"tenants:\n  - {{name: a, namespaces: [a], role: r, policy: {SECRET}, read: []}}\n",
}


@pytest.mark.parametrize("name", sorted(ENV_FILES))
@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_a_config_error_never_quotes_the_file(sandbox, tmp_path, name, debug):
    path = tmp_path / ".env"
    path.write_text(ENV_FILES[name])
    result = rbb(*(["--debug"] if debug else []), "plan", "--only", "aws", "-c", str(path), env=sandbox.env())
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    output = result.stdout + result.stderr
    assert KEY_ID not in output and SECRET not in output, output
    for line in ENV_FILES[name].splitlines():  # no line of the file
        assert line.strip() not in output, output


def endpoint_with_user_info(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{USER}:{PASSWORD}@{rest}"


@pytest.mark.parametrize("where", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IAM", "--endpoint-url", "config"])
@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_an_endpoint_url_with_user_info_is_refused_and_never_echoed(sandbox, tmp_path, where, debug):
    url = endpoint_with_user_info(sandbox.url)
    env, argv = sandbox.env(), ["plan", "--only", "aws", "-o", "json"]
    if where.startswith("AWS_"):
        env[where] = url
    elif where == "--endpoint-url":
        argv += ["--endpoint-url", url]
    else:
        config = tmp_path / "rbacbridge.yaml"
        config.write_text(f"aws:\n  endpoint_url: {url}\n")
        argv += ["-c", str(config)]
    before = sandbox.snapshot()
    result = rbb(*(["--debug"] if debug else []), *argv, env=env)
    assert result.returncode == 2, result.stderr
    output = result.stdout + result.stderr
    assert PASSWORD not in output and USER not in output, output
    assert "user:password@" in output  # the line says what to remove
    assert sandbox.snapshot() == before


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_a_kubeconfig_server_with_user_info_is_not_echoed(tmp_path, debug):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"c": f"http://{USER}:{PASSWORD}@127.0.0.1:9"}, current="c")
    result = rbb(*(["--debug"] if debug else []), "plan", "--only", "kube", "--kubeconfig", str(kubeconfig),
                 "--account-id", ACCOUNT, "--host-interface", "docker0")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert PASSWORD not in output and USER not in output, output


# --- render --out-dir: a swapped directory cannot redirect the writes --------------------------------------


def test_out_dir_swapped_for_a_symlink_between_files_gets_nothing_through_the_link(tmp_path, monkeypatch):
    from rbacbridge import kube
    from rbacbridge.config import Config
    from rbacbridge.errors import RbacbridgeError

    documents = kube.render_documents(kube.desired_objects(Config(account_id=ACCOUNT), "cni0"))
    out, moved, elsewhere = tmp_path / "out", tmp_path / "out.moved", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "README").write_text("mine\n")
    real_rename = os.rename
    renames = []

    def rename_then_swap(*args, **kwargs):
        real_rename(*args, **kwargs)
        renames.append(args)
        if len(renames) == 1:  # between the first and the second file: the attacker's swap
            real_rename(out, moved)
            os.symlink(elsewhere, out)

    monkeypatch.setattr(os, "rename", rename_then_swap)
    with pytest.raises(RbacbridgeError) as error:
        kube.write_manifests(str(out), documents)
    assert "was replaced" in str(error.value)
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
    assert sorted(p.name for p in moved.iterdir()) == sorted([n for n, _ in documents] + ["README"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_out_dir_swapped_before_it_is_opened_is_refused(tmp_path, monkeypatch):
    """The target is a directory when checked and a link when opened: O_NOFOLLOW refuses it."""
    from rbacbridge import kube
    from rbacbridge.config import Config
    from rbacbridge.errors import UsageError

    documents = kube.render_documents(kube.desired_objects(Config(account_id=ACCOUNT), "cni0"))
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, out)
    with pytest.raises(UsageError) as error:
        kube.write_manifests(str(out), documents)
    assert "symbolic link" in str(error.value)
    assert list(elsewhere.iterdir()) == []
