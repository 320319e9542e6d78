"""`rbacbridge demo`: the whole AWS side against an embedded moto server. Nothing real is touched.

Scenarios: `article` (the default: the walkthrough's one tenant, verify before and after kube2iam),
`abc` (templates/scenarios/abc.yaml: clients A, B and C, only C with a bucket: the breach before kube2iam,
isolation after) and `migrate` (the article, then off kube2iam to IRSA phase by phase and back:
rbacbridge/demo_migrate.py); `-c FILE` runs any configuration's tenants the same way."""

from __future__ import annotations

from typing import Any

from rbacbridge.config import Config
from rbacbridge.errors import RbacbridgeError, UsageError

SANDBOX_ACCOUNT = "123456789012"  # moto's default account
# article: the walkthrough's one tenant (the default); abc: clients A, B and C; migrate: the article, then off kube2iam
SCENARIOS = ("article", "abc", "migrate")
OUTPUTS = ("table", "json")
DEMO_SCHEMA = "rbacbridge.demo/v1"
MUTATING_PREFIXES = ("Create", "Delete", "Update", "Attach", "Detach", "Put", "Add", "Remove", "Tag", "Untag",
                     "Associate", "Disassociate", "Replace", "SetDefault")


class _CallCounter:
    def __init__(self) -> None:
        self.mutating = 0

    def __call__(self, model: Any, **_: Any) -> None:
        if model.name.startswith(MUTATING_PREFIXES):
            self.mutating += 1


def _sandbox_session(counter: _CallCounter | None = None):
    import boto3

    # Throwaway keys that only the embedded moto server accepts.
    session = boto3.Session(aws_access_key_id="sandbox", aws_secret_access_key="sandbox", region_name="us-east-1")
    if counter is not None:
        session.events.register("before-parameter-build", counter)
    return session


def sandbox_buckets(config: Config) -> list[str]:
    """buckets.shared and every bucket the tenants' grants name (the article: the shared and the tenant bucket)."""
    from rbacbridge.config import grant_bucket

    return list(dict.fromkeys([config.shared_bucket] + [grant_bucket(g) for t in config.tenants for g in t.read + t.write]))


def _seed(session, url: str, config: Config) -> str:
    """What the article assumes exists: the tenants' buckets and a worker node with a profile of its own;
    for a tenant with `role: {existing: ARN}`, an empty role of that name (not rbacbridge's) trusting the node role."""
    s3 = session.client("s3", endpoint_url=url)
    for bucket in sandbox_buckets(config):
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello from the sandbox\n")
    iam, ec2 = session.client("iam", endpoint_url=url), session.client("ec2", endpoint_url=url)
    import json

    for tenant in (t for t in config.tenants if not t.managed):
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {
            "AWS": config.role_arn(SANDBOX_ACCOUNT, config.node_role)}}]}
        iam.create_role(RoleName=tenant.role, AssumeRolePolicyDocument=json.dumps(trust))
    iam.create_instance_profile(InstanceProfileName="legacy-node-profile")
    # Today's launch templates (kops >= 1.27, eksctl, Karpenter) require IMDSv2 tokens with hop limit 1.
    instance = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, MetadataOptions={
        "HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"})["Instances"][0]["InstanceId"]
    ec2.associate_iam_instance_profile(InstanceId=instance, IamInstanceProfile={"Name": "legacy-node-profile"})
    return instance


def _leftovers(session, url: str, instance: str) -> tuple[list[str], str]:
    iam, ec2 = session.client("iam", endpoint_url=url), session.client("ec2", endpoint_url=url)
    owned = []
    for role in iam.list_roles()["Roles"]:
        tags = iam.list_role_tags(RoleName=role["RoleName"])["Tags"]
        if {"Key": "managed-by", "Value": "rbacbridge"} in tags:
            owned.append(f"role {role['RoleName']}")
    owned += [f"policy {p['PolicyName']}" for p in iam.list_policies(Scope="Local")["Policies"]]
    owned += [f"instance profile {p['InstanceProfileName']}" for p in iam.list_instance_profiles()["InstanceProfiles"]
              if p["InstanceProfileName"] != "legacy-node-profile"]
    associations = ec2.describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [instance]}, {"Name": "state", "Values": ["associated"]}])
    profile = ", ".join(a["IamInstanceProfile"]["Arn"].rsplit("/", 1)[-1]
                        for a in associations["IamInstanceProfileAssociations"]) or "none"
    return owned, profile


def _render_section(out, config: Config) -> None:
    """What setup would apply to a cluster (article steps 8, 12, 13); there is no cluster here."""
    from rbacbridge.kube import FALLBACK_INTERFACE, desired_objects

    out.rule("3a. rbacbridge render  (article steps 8, 12-13: what setup applies to the cluster)")
    objects = desired_objects(config, FALLBACK_INTERFACE)
    for obj in objects:
        meta = obj["metadata"]
        where = f"{meta['namespace']}/" if meta.get("namespace") else ""
        out.print(f"  {obj['kind']:20} {where}{meta['name']}")
    daemonset = next(o for o in objects if o["kind"] == "DaemonSet")
    args = daemonset["spec"]["template"]["spec"]["containers"][0]["args"]
    out.print("  kube2iam args: " + " ".join(args))
    out.print(f"  unannotated pods (nginx-vanilla) get the dedicated role {config.effective_default_role}: the node role's "
              "read-only S3 access without its sts:AssumeRole on the pod roles, so no pod can chain into another role")
    out.print("  --debug is off (it serves /debug/store, the role map); the article's step 13 turns it on: kube2iam.debug: true")
    out.print(f"  (no cluster in the sandbox: `rbacbridge render --account-id {SANDBOX_ACCOUNT}` prints the manifests "
              "(`-o json`, `--out-dir DIR`); `setup` applies them)")


def _verify_section(out, config: Config, url: str, fault: str | None, tables: bool) -> tuple[str | None, Any, Any]:
    """The access matrix, computed by moto from the live policies (article steps 10-11 and 15).

    The article's config: `verify --stage before` (everyone has the node role) and after. Tenants (a
    scenario or -c FILE): before is the article's starting point — every tenant's grants on the node's
    instance profile, nothing intercepts — so every pod reaches every tenant's buckets (the breach);
    after, each tenant's pods reach only their own. Returns what went wrong (None: the cells prove the story)."""
    from rbacbridge import report
    from rbacbridge.sandbox import fault_differences, sandbox_matrix

    starting_point = not config.legacy_tenants
    if starting_point:
        out.rule("3b. before kube2iam  (the article's starting point: the node role holds what every tenant needs)")
    else:
        out.rule("3b. rbacbridge verify --stage before  (article steps 10-11: everyone has the node role)")
    before = sandbox_matrix(url, config, SANDBOX_ACCOUNT, stage="before", starting_point=starting_point)
    if tables:
        report.print_table(before)
    if starting_point:
        out.print("(✓: as expected at the starting point, where the node role holds every tenant's grants)"
                  if before.ok else "[red](✗: the starting point differs from what the configuration expects)[/red]")
        _print_reach(out, before, "BREACH" if before.breaches else "no breach")
    out.rule("3c. rbacbridge verify  (article step 15)" + (f"  — with a planted fault: {fault}" if fault else ""))
    after = sandbox_matrix(url, config, SANDBOX_ACCOUNT, stage="after", fault=fault)
    if tables:
        report.print_table(after)
    if not fault:
        if starting_point:
            verdict = "BREACH" if after.breaches else "isolated" if after.ok else "isolation not shown"
            _print_reach(out, after, verdict)
        return _differing("", after) or _differing("before kube2iam: ", before), before, after
    if before.mismatches:
        return _differing("before kube2iam: ", before), before, after
    differences = fault_differences(config, SANDBOX_ACCOUNT, fault, after)
    blamed = sorted({c.blame.layer for c in after.mismatches if c.blame})
    if not differences:
        out.print(f"verify caught the planted {fault} fault: exactly the {len(after.mismatches)} cell(s) it must break, "
                  f"blamed on {', '.join(blamed)}.")
        return None, before, after
    out.print(f"[red]verify's mismatches differ from what the planted {fault} fault must cause[/red] "
              f"({len(after.mismatches)} mismatching cell(s), blamed on {', '.join(blamed) or 'nothing'}):")
    for line in differences:
        out.print(f"  {line}")
    return f"--break {fault}: verify's mismatches differ from what the fault must cause ({len(differences)} " \
           f"difference(s)); first: {differences[0]}", before, after


def _differing(stage: str, result) -> str | None:
    """One line naming how many cells differ and the first of them (None: every cell matched)."""
    if not result.mismatches and not result.findings:
        return None
    from rbacbridge.report import cell_name, failure_text, finding_text

    first = result.mismatches[0] if result.mismatches else None
    what = f"{cell_name(first)}: {failure_text(first)}" if first else finding_text(result.findings[0])
    return f"{stage}{len(result.mismatches)} of {len(result.all_cells)} cells differ from what the configuration expects; first: {what}"


def reach(result) -> dict[str, list[str]]:
    """Tenant bucket grant -> the pods observed reading or writing it."""
    out: dict[str, list[str]] = {}
    for p in result.principals:
        for c in p.cells:
            if p.principal.kind == "pod" and c.check in ("read", "write") and c.owners and c.observed is True:
                out.setdefault(c.bucket, [])
                if p.principal.name not in out[c.bucket]:
                    out[c.bucket].append(p.principal.name)
    return out


def _print_reach(out, result, verdict: str) -> None:
    from rich.markup import escape

    owners = {c.bucket: c.owners for c in result.all_cells if c.owners and c.check in ("read", "write")}
    reached = reach(result)
    for location, tenants in owners.items():
        pods = reached.get(location, [])
        out.print(f"  {escape(location)} (tenant {', '.join(tenants)}): reached by {escape(', '.join(pods)) or 'no pod'}")
    breaches = sorted({(c.principal, c.bucket) for c in result.breaches})
    colour = "red" if breaches else "green"
    out.print(f"[bold {colour}]{verdict}[/bold {colour}]: " + (
        "; ".join(f"{escape(p)} reaches {escape(b)}" for p, b in breaches) if breaches
        else "each tenant's pods reach only their own tenant's buckets"))


def demo_config(config_path: str | None, scenario: str) -> Config:
    """The demo's configuration: -c FILE, else the scenario (article: the built-in defaults; abc: its tenants)."""
    from rbacbridge import config as config_module

    if config_path is not None:
        return config_module.load(config_path)
    if scenario not in SCENARIOS:
        raise UsageError(f"invalid --scenario {scenario!r}: choose from {', '.join(SCENARIOS)}")
    if scenario in ("article", "migrate"):
        return Config()
    from rbacbridge.templating import template_dir

    return config_module.load(template_dir() / "scenarios" / f"{scenario}.yaml")


def _into_sandbox(config: Config, url: str, instance_ids: tuple[str, ...] = ()) -> Config:
    """The same configuration pointed at the sandbox: its account, endpoint and region; an existing role's
    ARN moved into the sandbox account (the seeded stand-in of that name)."""
    from dataclasses import replace

    tenants = tuple(replace(t, existing_role_arn=f"arn:aws:iam::{SANDBOX_ACCOUNT}:role/{t.role}") if not t.managed else t
                    for t in config.tenants)
    return replace(config, account_id=SANDBOX_ACCOUNT, endpoint_url=url, region="us-east-1", profile=None,
                   instance_ids=instance_ids, tenants=None if config.legacy_tenants else tenants)


def run_demo(keep: bool = False, fault: str | None = None, config_path: str | None = None, scenario: str = "article",
             output: str = "table") -> int:
    """The sandbox walk-through. `output` json: the story goes to stderr, stdout gets the matrices as JSON.

    The backend is checked first (known-answer probes: a wrong answer is one line, exit 3, before any story).
    Exit 0 only when the cells prove the story (every cell matches; with --break, exactly the fault's cells
    mismatch, blamed on its layer) and teardown left nothing; otherwise the last line on stderr says why (exit 1)."""
    from rbacbridge import cleanup, planner
    from rbacbridge.aws import AwsGateway
    from rbacbridge.output import console, dump_json, print_plan, step_line
    from rbacbridge.sandbox_backend import check_backend, start_moto

    if output not in OUTPUTS:
        raise UsageError(f"invalid --output {output!r}: choose from {', '.join(OUTPUTS)}")
    cleanup.on_interrupt_say(INTERRUPTED_LINE)
    base = demo_config(config_path, scenario)  # bad input: exit 2 before the sandbox starts
    tables = output == "table"
    out = console(stderr=not tables)
    server, url = start_moto()
    try:
        check_backend(url)  # before any story: a backend that answers unlike AWS would blame rbacbridge's layers
        out.rule("[bold yellow]SANDBOX[/bold yellow]")
        out.print(f"[yellow]This is a sandbox:[/yellow] an embedded moto server at {url} plays AWS "
                  f"(account {SANDBOX_ACCOUNT}). No real account, cluster or node is touched.")
        config = _into_sandbox(base, url)
        seed_session = _sandbox_session()
        instance = _seed(seed_session, url, config)
        config = _into_sandbox(base, url, (instance,))
        if not config.legacy_tenants:
            out.print("Tenants: " + "; ".join(f"{t.name} (namespace {', '.join(t.namespaces)}, role {t.role}, "
                                               f"{'writes ' + ', '.join(t.write) if t.write else 'no bucket of its own'})"
                                               for t in config.tenants))
        out.print(f"Seeded: buckets {', '.join(sandbox_buckets(config))}; worker instance {instance} "
                  "using its own instance profile legacy-node-profile.\n")

        class Reporter(planner.Reporter):
            def step_done(self, step) -> None:
                out.print("  " + step_line(step, done=True))

        def context(counter: _CallCounter | None = None) -> planner.Context:
            gateway = AwsGateway(config, session=_sandbox_session(counter))
            return planner.Context(config=config, parts=("aws",), reporter=Reporter(), gateways={"aws": gateway})

        out.rule("1. rbacbridge plan  (article steps 1-7; reads only)")
        print_plan(planner.plan_setup(context()), "setup plan", to_stderr=not tables, notes_to=out)

        out.rule("2. rbacbridge setup --account-id " + SANDBOX_ACCOUNT)
        ctx = context()
        outcome = planner.run(ctx, planner.plan_setup(ctx))
        if not outcome.ok:
            raise DemoFailed(f"setup failed in the sandbox: {outcome.failure.error}")

        out.rule("3. rbacbridge setup again  (idempotent)")
        counter = _CallCounter()
        ctx = context(counter)
        again = planner.plan_setup(ctx)
        planner.run(ctx, again)
        out.print(f"{len(again.changes)} changes planned, {counter.mutating} mutating AWS calls made.")

        _render_section(out, config)
        if scenario == "migrate" and config_path is None:
            from rbacbridge.demo_migrate import run_story

            problem, before, after = run_story(out, config, url, SANDBOX_ACCOUNT, tables)
        else:
            problem, before, after = _verify_section(out, config, url, fault, tables)

        out.rule("4. rbacbridge teardown")
        ctx = context()
        outcome = planner.run(ctx, planner.plan_teardown(ctx), teardown=True)
        if not outcome.ok:
            raise DemoFailed(f"teardown failed in the sandbox: {outcome.failure.error}")

        out.rule("5. what is left")
        owned, profile = _leftovers(seed_session, url, instance)
        out.print(f"rbacbridge-owned resources left: {len(owned)}" + (f" ({', '.join(owned)})" if owned else ""))
        restored = profile == "legacy-node-profile"
        out.print(f"instance {instance} uses instance profile: {profile}"
                  + (" (restored)" if restored else " [red](not restored: it had legacy-node-profile)[/red]"))
        if problem is None and owned:
            problem = f"teardown left {len(owned)} rbacbridge-owned resource(s): {', '.join(owned)}"
        if problem is None and not restored:
            problem = f"teardown did not give instance {instance} back legacy-node-profile (it uses {profile})"
        ok = problem is None
        if not tables:
            dump_json(demo_document(base, scenario if config_path is None else None, config_path, fault, before, after,
                                    owned, profile, ok))
        if keep:
            out.print(f"\nSandbox still running at {url}; Ctrl-C ends it. In another shell (moto takes any key;\n"
                      "these are placeholders, not credentials):\n")
            out.print(f"  export AWS_ENDPOINT_URL={url} AWS_REGION=us-east-1 "
                      "AWS_ACCESS_KEY_ID=sandbox AWS_SECRET_ACCESS_KEY=sandbox", soft_wrap=True)
            out.print(f"  rbacbridge plan --account-id {SANDBOX_ACCOUNT} --only aws --instance-id {instance}", soft_wrap=True)
            out.print(f"  rbacbridge setup --account-id {SANDBOX_ACCOUNT} --only aws --instance-id {instance} --yes", soft_wrap=True)
            out.print(f"  rbacbridge teardown --only aws --yes", soft_wrap=True)
            import time

            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        out.rule("[bold yellow]end of sandbox[/bold yellow]")
    finally:
        server.stop()
    if problem is not None:
        raise DemoFailed(problem)
    return 0


INTERRUPTED_LINE = ("interrupted: the demo stopped and its sandbox (the embedded moto server) is gone with everything in "
                    "it; nothing real was touched (`rbacbridge demo` starts a new one)")


class DemoFailed(RbacbridgeError):
    """The sandbox's cells or teardown did not prove the story: exit 1, the reason as the last stderr line."""


def demo_document(config: Config, scenario: str | None, config_path: str | None, fault: str | None, before, after,
                  owned: list[str], profile: str, ok: bool) -> dict[str, Any]:
    """`demo -o json`: both matrices (verify's JSON, rbacbridge.verify/v3) and what the story concluded."""
    from rbacbridge import report

    def breaches(result) -> list[dict[str, Any]]:
        return [{"principal": c.principal, "tenant": c.tenant, "check": c.check, "bucket": c.bucket, "owners": list(c.owners)}
                for c in result.breaches]

    return {
        "schema": DEMO_SCHEMA,
        "scenario": scenario,
        "config": config_path,
        "fault": fault,
        "tenants": [t.name for t in config.tenants],
        "before": {"starting_point": not config.legacy_tenants, "breaches": breaches(before), "reach": reach(before),
                   "verify": report.to_dict(before)},
        "after": {"breaches": breaches(after), "reach": reach(after), "verify": report.to_dict(after)},
        "teardown": {"left": owned, "instance_profile": profile},
        "ok": ok,
    }
