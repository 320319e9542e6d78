"""`rbacbridge demo` runs end to end as a user would run it, and says it is a sandbox."""

import os
import subprocess
import sys

import pytest


def _demo(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-m", "rbacbridge", "demo", *args], capture_output=True, text=True,
                          env=env, timeout=180)


def test_demo_runs_and_leaves_nothing():
    result = _demo()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "SANDBOX" in out and "No real account" in out
    assert "0 changes planned, 0 mutating AWS calls made." in out
    assert out.count("15 checks, all match") == 1  # before kube2iam: identity + read/write, 3 principals
    assert out.count("21 checks, all match") == 1  # after: plus a chain cell per managed role for each pod
    assert "DaemonSet            kube-system/kube2iam" in out and "--namespace-restrictions" in out
    assert "--default-role=nettech-pod-default" in out and "--namespace-restrictions --debug" not in " ".join(out.split())
    assert "pods cannot reach the metadata service even without" in " ".join(out.split())  # the seeded IMDSv2 node
    assert "warning:" not in out + result.stderr
    assert "rbacbridge-owned resources left: 0" in out
    assert "legacy-node-profile (restored)" in out


@pytest.mark.parametrize("fault,layer", [("trust", "trust"), ("policy", "permissions"), ("iptables", "interception")])
def test_demo_break_is_caught_and_blamed(fault, layer):
    result = _demo("--break", fault)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert f"verify caught the planted {fault} fault" in result.stdout
    assert f"blamed on {layer}." in result.stdout
    assert "rbacbridge-owned resources left: 0" in result.stdout


def test_demo_rejects_unknown_fault():
    result = _demo("--break", "dns")
    assert result.returncode == 2 and result.stderr.startswith("error: invalid --break")


def test_demo_keep_prints_commands_that_work_against_the_kept_sandbox():
    import shlex
    import signal

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    demo = subprocess.Popen([sys.executable, "-m", "rbacbridge", "demo", "--keep"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, env=env)
    try:
        lines: list[str] = []
        for line in demo.stdout:
            lines.append(line.strip())
            if line.strip().startswith("rbacbridge teardown"):
                break
        at = next(i for i, line in enumerate(lines) if line.startswith("export "))
        shown_env = dict(item.split("=", 1) for item in shlex.split(lines[at])[1:])
        commands = [line for line in lines[at:] if line.startswith("rbacbridge ")]
        assert [c.split()[1] for c in commands] == ["plan", "setup", "teardown"]
        for command in commands:
            run = subprocess.run([sys.executable, "-m", *shlex.split(command)], capture_output=True, text=True,
                                 env={**env, **shown_env}, timeout=120, stdin=subprocess.DEVNULL)
            assert run.returncode == 0, (command, run.stderr)
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=30)
