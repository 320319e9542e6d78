"""`rbacbridge demo` runs end to end as a user would run it, and says it is a sandbox."""

import os
import subprocess
import sys

import pytest


def _demo(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["COLUMNS"] = "200"  # the story's sentences on one line each (piped output is 80 columns otherwise)
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


@pytest.mark.parametrize("fault,cells,layers", [("trust", 4, "trust"), ("policy", 2, "permissions"),
                                                 ("iptables", 5, "escalation, interception"), ("namespace", 4, "kube2iam")])
def test_demo_break_is_caught_and_blamed(fault, cells, layers):
    result = _demo("--break", fault)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert f"verify caught the planted {fault} fault: exactly the {cells} cell(s) it must break, blamed on {layers}." in result.stdout
    assert "rbacbridge-owned resources left: 0" in result.stdout and result.stderr == ""


def _vanilla_writes_the_tenant_bucket(iam, config, account):
    """The default role gets write on the tenant's bucket: nginx-vanilla can now write lanre.k8s.dev / client-c-data."""
    import json

    bucket = config.tenants[-1].write[0].split("/")[0]
    iam.put_role_policy(RoleName=config.effective_default_role, PolicyName="extra", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:PutObject", "s3:DeleteObject"],
                                                "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    return [lambda: iam.delete_role_policy(RoleName=config.effective_default_role, PolicyName="extra")]


def plant_extra_and_run() -> None:
    """`python -c` entry point: the demo as users run it, with one real misconfiguration planted in moto right
    after the requested fault (or none) — one the story did not ask for."""
    from rbacbridge import sandbox
    from rbacbridge.__main__ import run

    plant = sandbox._plant

    def planting(iam, config, account, fault):
        return plant(iam, config, account, fault) + _vanilla_writes_the_tenant_bucket(iam, config, account)

    sandbox._plant = planting
    run()


def _demo_with_extra_fault(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["COLUMNS"] = "200"  # the story's sentences on one line each (piped output is 80 columns otherwise)
    code = "from tests.test_demo import plant_extra_and_run; plant_extra_and_run()"
    result = subprocess.run([sys.executable, "-c", code, "demo", *args], capture_output=True, text=True, env=env, timeout=180)
    return result.returncode, result.stdout, result.stderr


def test_demo_break_exits_1_when_the_mismatches_are_not_exactly_the_faults():
    code, out, err = _demo_with_extra_fault("--break", "policy")
    assert code == 1
    assert "verify caught" not in out and "differ from what the planted policy fault must cause" in out
    assert err.count("\n") == 1 and err.startswith("error: --break policy: verify's mismatches differ from what the fault")
    assert "first: nginx-vanilla write lanre.k8s.dev mismatched too" in err


def test_demo_exits_1_with_the_count_and_first_cell_when_cells_differ():
    code, out, err = _demo_with_extra_fault()
    assert code == 1 and "end of sandbox" in out
    assert err.startswith("error: 1 of 21 cells differ from what the configuration expects; first: nginx-vanilla write "
                          "lanre.k8s.dev: expected denied, observed allowed") and err.count("\n") == 1


def test_demo_abc_says_isolated_only_when_the_cells_prove_it():
    code, out, err = _demo_with_extra_fault("--scenario", "abc")
    after = " ".join(out.split("3c. rbacbridge verify")[1].split())
    assert code == 1 and "isolated" not in after and "BREACH: nginx-vanilla reaches client-c-data" in after
    assert err.startswith("error: 1 of 51 cells differ") and "nginx-vanilla write client-c-data" in err


def test_demo_rejects_unknown_fault():
    result = _demo("--break", "dns")
    assert result.returncode == 2 and result.stderr.startswith("error: invalid --break")


def test_demo_keep_prints_commands_that_work_against_the_kept_sandbox():
    import shlex
    import signal

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["COLUMNS"] = "200"  # the story's sentences on one line each (piped output is 80 columns otherwise)
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


# --- tenants: the article's clients A, B and C, and a user's own file (issue 12) ---------------------------


def _cells(document, stage):
    """(principal, check, bucket or target) -> observed, from `demo -o json`'s verify document of a stage."""
    from rbacbridge.report import principals_of

    return {(p["name"], c["check"], c["bucket"] or c["target"]): c["observed"]
            for p in principals_of(document[stage]["verify"]) for c in p["cells"]}


def test_demo_scenario_abc_breach_before_only_c_after():
    result = _demo("--scenario", "abc")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    out = " ".join(result.stdout.split())
    before, after = out.split("3c. rbacbridge verify")
    assert "the article's starting point" in before and "25 checks, all match" in before
    assert "client-c-data (tenant client-c): reached by nginx-vanilla, nginx-client-a, nginx-client-b, nginx-client-c" in before
    assert ("BREACH: nginx-client-a reaches client-c-data; nginx-client-b reaches client-c-data; "
            "nginx-vanilla reaches client-c-data") in before
    assert "51 checks, all match" in after
    assert "client-c-data (tenant client-c): reached by nginx-client-c isolated:" in after
    assert "tenant client-a" in after and "ask client-c ✓ no" in after
    assert "rbacbridge-owned resources left: 0" in after and "legacy-node-profile (restored)" in after


def test_demo_json_prints_both_matrices():
    result = _demo("--scenario", "abc", "-o", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    document = json.loads(result.stdout)  # stdout is the document only; the story went to stderr
    assert "SANDBOX" in result.stderr and document["schema"] == "rbacbridge.demo/v1" and document["ok"] is True
    assert document["tenants"] == ["client-a", "client-b", "client-c"]
    before, after = _cells(document, "before"), _cells(document, "after")
    for pod in ("nginx-client-a", "nginx-client-b", "nginx-client-c", "nginx-vanilla"):
        assert before[(pod, "read", "client-c-data")] is True and before[(pod, "write", "client-c-data")] is True
        assert after[(pod, "read", "client-c-data")] is (pod == "nginx-client-c")
        assert after[(pod, "write", "client-c-data")] is (pod == "nginx-client-c")
    asks = {k: v for k, v in after.items() if k[1] == "annotation"}
    assert len(asks) == 6 and set(asks.values()) == {False}
    assert {b["principal"] for b in document["before"]["breaches"]} == {"nginx-client-a", "nginx-client-b", "nginx-vanilla"}
    assert document["after"]["breaches"] == [] and document["after"]["reach"] == {"client-c-data": ["nginx-client-c"]}
    assert document["after"]["verify"]["schema"] == "rbacbridge.verify/v7"
    assert [t["name"] for t in document["after"]["verify"]["tenants"]] == ["client-a", "client-b", "client-c"]
    assert document["teardown"] == {"left": [], "instance_profile": "legacy-node-profile"}


def test_demo_config_file_runs_its_tenants(tmp_path):
    path = tmp_path / "rbacbridge.yaml"
    path.write_text("# my tenant plan\n"
                    "tenants:\n"
                    "  - name: shop\n    namespaces: [shop]\n    role: shop-s3\n    read: [nettech-helm-test]\n"
                    "    write: [\"shared-uploads/shop/*\"]\n    workloads: [shop-web]\n"
                    "  - name: blog\n    namespaces: [blog, blog-jobs]\n    role: blog-s3\n    write: [blog-media]\n"
                    "    workloads: [blog-web]\n")
    result = _demo("-c", str(path), "-o", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    document = json.loads(result.stdout)
    assert document["config"] == str(path) and document["scenario"] is None and document["tenants"] == ["shop", "blog"]
    after = _cells(document, "after")
    assert after[("shop-web", "write", "shared-uploads/shop/*")] is True and after[("shop-web", "read", "nettech-helm-test")] is True
    assert after[("blog-web", "write", "blog-media")] is True
    assert after[("shop-web", "write", "blog-media")] is False and after[("blog-web", "write", "shared-uploads/shop/*")] is False
    assert after[("blog-web", "annotation", "shop-s3")] is False and after[("shop-web", "annotation", "blog-s3")] is False
    # before: the node role holds both tenants' grants, so each reaches the other's; buckets.shared is no tenant's
    assert {(b["principal"], b["bucket"]) for b in document["before"]["breaches"]} == {
        ("shop-web", "blog-media"), ("blog-web", "shared-uploads/shop/*"), ("nginx-vanilla", "blog-media"),
        ("nginx-vanilla", "shared-uploads/shop/*")}
    assert document["after"]["breaches"] == []
    assert document["after"]["reach"] == {"shared-uploads/shop/*": ["shop-web"], "blog-media": ["blog-web"]}


@pytest.mark.parametrize("args,message", [(["--scenario", "xyz"], "invalid --scenario"),
                                          (["--scenario", "abc", "-c", "x.yaml"], "not both"),
                                          (["-o", "yaml"], "invalid --output")])
def test_demo_bad_input_is_one_line_and_exit_2(args, message):
    result = _demo(*args)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1
