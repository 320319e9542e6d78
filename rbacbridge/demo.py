"""`rbacbridge demo`: the whole AWS side against an embedded moto server. Nothing real is touched."""

from __future__ import annotations

import logging
from typing import Any

from rbacbridge.config import Config
from rbacbridge.errors import UsageError

SANDBOX_ACCOUNT = "123456789012"  # moto's default account
MUTATING_PREFIXES = ("Create", "Delete", "Update", "Attach", "Detach", "Put", "Add", "Remove", "Tag", "Untag",
                     "Associate", "Disassociate", "Replace", "SetDefault")


class _CallCounter:
    def __init__(self) -> None:
        self.mutating = 0

    def __call__(self, model: Any, **_: Any) -> None:
        if model.name.startswith(MUTATING_PREFIXES):
            self.mutating += 1


def _start_moto():
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise UsageError("the sandbox needs moto: pip install 'rbacbridge[sandbox]'") from None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def _sandbox_session(counter: _CallCounter | None = None):
    import boto3

    # Throwaway keys that only the embedded moto server accepts.
    session = boto3.Session(aws_access_key_id="sandbox", aws_secret_access_key="sandbox", region_name="us-east-1")
    if counter is not None:
        session.events.register("before-parameter-build", counter)
    return session


def _seed(session, url: str, config: Config) -> str:
    """What the article assumes exists: the tenants' buckets and a worker node with a profile of its own."""
    s3 = session.client("s3", endpoint_url=url)
    for bucket in (config.shared_bucket, config.tenant_bucket):
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello from the sandbox\n")
    iam, ec2 = session.client("iam", endpoint_url=url), session.client("ec2", endpoint_url=url)
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


def _verify_section(out, config: Config, url: str, fault: str | None) -> bool:
    """The access matrix, computed by moto from the live policies (article steps 10-11 and 15)."""
    from rbacbridge import report
    from rbacbridge.sandbox import sandbox_matrix

    out.rule("3b. rbacbridge verify --stage before  (article steps 10-11: everyone has the node role)")
    before = sandbox_matrix(url, config, SANDBOX_ACCOUNT, stage="before")
    report.print_table(before)
    out.rule("3c. rbacbridge verify  (article step 15)" + (f"  — with a planted fault: {fault}" if fault else ""))
    after = sandbox_matrix(url, config, SANDBOX_ACCOUNT, stage="after", fault=fault)
    report.print_table(after)
    if not fault:
        return before.ok and after.ok
    blamed = sorted({c.blame.layer for c in after.mismatches if c.blame})
    out.print(f"verify caught the planted {fault} fault: {len(after.mismatches)} mismatching cell(s), blamed on {', '.join(blamed) or 'nothing'}."
              if after.mismatches else f"[red]verify did not catch the planted {fault} fault[/red]")
    return bool(after.mismatches)


def run_demo(keep: bool = False, fault: str | None = None) -> int:
    from rbacbridge import planner
    from rbacbridge.aws import AwsGateway
    from rbacbridge.output import console, print_plan, step_line

    out = console()
    server, url = _start_moto()
    try:
        out.rule("[bold yellow]SANDBOX[/bold yellow]")
        out.print(f"[yellow]This is a sandbox:[/yellow] an embedded moto server at {url} plays AWS "
                  f"(account {SANDBOX_ACCOUNT}). No real account, cluster or node is touched.")
        config = Config(account_id=SANDBOX_ACCOUNT, endpoint_url=url)
        seed_session = _sandbox_session()
        instance = _seed(seed_session, url, config)
        config = Config(account_id=SANDBOX_ACCOUNT, endpoint_url=url, instance_ids=(instance,))
        out.print(f"Seeded: buckets {config.shared_bucket} and {config.tenant_bucket}; worker instance {instance} "
                  "using its own instance profile legacy-node-profile.\n")

        class Reporter(planner.Reporter):
            def step_done(self, step) -> None:
                out.print("  " + step_line(step, done=True))

        def context(counter: _CallCounter | None = None) -> planner.Context:
            gateway = AwsGateway(config, session=_sandbox_session(counter))
            return planner.Context(config=config, parts=("aws",), reporter=Reporter(), gateways={"aws": gateway})

        out.rule("1. rbacbridge plan  (article steps 1-7; reads only)")
        print_plan(planner.plan_setup(context()), "setup plan", notes_to=out)

        out.rule("2. rbacbridge setup --account-id " + SANDBOX_ACCOUNT)
        ctx = context()
        outcome = planner.run(ctx, planner.plan_setup(ctx))
        if not outcome.ok:
            out.print(f"[red]setup failed:[/red] {outcome.failure.error}")
            return 1

        out.rule("3. rbacbridge setup again  (idempotent)")
        counter = _CallCounter()
        ctx = context(counter)
        again = planner.plan_setup(ctx)
        planner.run(ctx, again)
        out.print(f"{len(again.changes)} changes planned, {counter.mutating} mutating AWS calls made.")

        _render_section(out, config)
        verified = _verify_section(out, config, url, fault)

        out.rule("4. rbacbridge teardown")
        ctx = context()
        outcome = planner.run(ctx, planner.plan_teardown(ctx), teardown=True)
        if not outcome.ok:
            out.print(f"[red]teardown failed:[/red] {outcome.failure.error}")
            return 1

        out.rule("5. what is left")
        owned, profile = _leftovers(seed_session, url, instance)
        out.print(f"rbacbridge-owned resources left: {len(owned)}" + (f" ({', '.join(owned)})" if owned else ""))
        out.print(f"instance {instance} uses instance profile: {profile} (restored)")
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
        return 0 if verified and not owned and profile == "legacy-node-profile" else 1
    finally:
        server.stop()

