"""`rbacbridge demo --scenario migrate`: the move off kube2iam to IRSA in the sandbox (moto; no cluster).

After the article's setup, the matrix is taken (the baseline), then each phase's AWS half is made in moto as
`migrate apply` makes it — the cluster's OIDC provider and each pod role's web identity trust statement
(rbacbridge.migrate.trust: the same statements), then the node role's trust removed from the pod roles — and
the pods' switch is played by the sandbox: after `cutover` each pod's credentials come from
sts:AssumeRoleWithWebIdentity for its ServiceAccount (the sandbox's own small trust check decides first,
since moto accepts any token and any trust), after `finish` kube2iam no longer answers and the metadata path
is closed to pods. After every phase the whole matrix is compared with the baseline
(rbacbridge.verify.migration): the same answers, only the identities' source changes. Then everything is
rolled back, phase by phase, to kube2iam, and compared once more.

The Kubernetes half of each phase (ServiceAccounts, annotations, rollouts, kube2iam's DaemonSet and iptables
rules) needs a cluster; the story says what `migrate apply` does there."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

from rbacbridge import verify as v
from rbacbridge.config import Config
from rbacbridge.migrate.mapping import dedicated_name
from rbacbridge.migrate.trust import IRSA, SID_PREFIX, issuer_host, merged_trust, provider_arn, statements_for, subject

SANDBOX_ISSUER = "https://oidc.sandbox.rbacbridge.invalid/id/DEMO"  # .invalid: never resolves anywhere
TOKEN_FILE = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"


@dataclass
class PodPaths:
    """Where the sandbox's pods get credentials during the migration (rbacbridge.sandbox.sandbox_matrix)."""

    provider: str
    issuer: str
    web_identity: dict[str, tuple[str, str]] = field(default_factory=dict)  # principal -> (role ARN, its SA subject)
    kube2iam: bool = True  # False after finish: the metadata path is closed to pods

    def admitted(self, principals: list[v.Principal]) -> list[v.Principal]:
        """The pods as the IRSA webhook admits them: AWS_ROLE_ARN and the token file for those cut over."""
        return [replace(p, credential_env=(("AWS_ROLE_ARN", self.web_identity[p.name][0]),
                                           ("AWS_WEB_IDENTITY_TOKEN_FILE", TOKEN_FILE)))
                if p.name in self.web_identity else p for p in principals]

    def backend(self, endpoint_url: str, region: str, admin: dict[str, str], live: v.Documents, principal: v.Principal) -> Any:
        """The pod's SDK calling sts:AssumeRoleWithWebIdentity with its ServiceAccount's token."""
        from rbacbridge.sandbox import Boto3Backend, _client

        role_arn, sub = self.web_identity[principal.name]
        role = role_arn.rsplit("/", 1)[-1]
        trust = live.trust.get(role)
        if trust is None:
            return v.UnavailableBackend(v.ASSUME_DENIED, f"role {role} does not exist")
        if not web_identity_trusted(trust, self.provider, self.issuer, sub):
            return v.UnavailableBackend(v.ASSUME_DENIED, f"AssumeRoleWithWebIdentity {role_arn} denied: its trust policy "
                                                          f"does not trust {sub} through {self.provider}")
        sts = _client("sts", endpoint_url, region, admin)
        creds = sts.assume_role_with_web_identity(RoleArn=role_arn, RoleSessionName=f"botocore-session-{int(time.time())}",
                                                  WebIdentityToken=_token(self.issuer, sub))["Credentials"]
        return Boto3Backend(endpoint_url, region, {"aws_access_key_id": creds["AccessKeyId"],
                                                   "aws_secret_access_key": creds["SecretAccessKey"],
                                                   "aws_session_token": creds["SessionToken"]})


def web_identity_trusted(trust: dict[str, Any], provider: str, issuer: str, sub: str) -> bool:
    """The sandbox's own decision (AWS's documented IRSA trust): an Allow statement for the provider as
    Federated principal and sts:AssumeRoleWithWebIdentity, whose StringEquals names this sub and aud
    sts.amazonaws.com. Anything else (another condition operator, a Deny) is not trusted here."""
    host = issuer_host(issuer)
    statements = trust.get("Statement") or []
    for statement in statements if isinstance(statements, list) else [statements]:
        federated = (statement.get("Principal") or {}).get("Federated") if isinstance(statement.get("Principal"), dict) else None
        actions = statement.get("Action")
        actions = actions if isinstance(actions, list) else [actions]
        if statement.get("Effect") != "Allow" or provider not in (federated if isinstance(federated, list) else [federated]):
            continue
        if "sts:AssumeRoleWithWebIdentity" not in actions:
            continue
        condition = statement.get("Condition") or {}
        if set(condition) != {"StringEquals"}:
            continue
        equals = condition["StringEquals"]
        subs, auds = equals.get(f"{host}:sub"), equals.get(f"{host}:aud")
        if sub in (subs if isinstance(subs, list) else [subs]) and "sts.amazonaws.com" in (auds if isinstance(auds, list) else [auds]):
            return True
    return False


def _token(issuer: str, sub: str) -> str:
    """A JWT-shaped token (unsigned: moto does not check tokens; the trust check above is the sandbox's)."""
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'iss': issuer, 'sub': sub, 'aud': 'sts.amazonaws.com', 'iat': now, 'exp': now + 3600})}."


@dataclass
class SandboxMigration:
    """What the demo's phases changed in moto, to roll back from (the real record is signed: migrate/record.py)."""

    config: Config
    account: str
    paths: PodPaths
    pairs: dict[str, list[tuple[str, str]]]  # pod role -> its (namespace, ServiceAccount) pairs
    targets: dict[str, tuple[str, str]]  # pod principal -> (role ARN, its ServiceAccount's subject)
    originals: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> trust before dual
    before_finish: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> trust before finish
    provider_created: bool = False
    phase: str = "kube2iam"


def plan_sandbox_migration(config: Config, account: str) -> SandboxMigration:
    """Each pod principal -> a dedicated ServiceAccount of its role in its namespace (what `migrate plan` proposes
    where one ServiceAccount would serve several roles: the sandbox's pods all run as `default`)."""
    from rbacbridge.verify.expected import _role_name

    arns = v.role_arns(config, account)
    paths = PodPaths(provider_arn(account, SANDBOX_ISSUER, config.partition.name), SANDBOX_ISSUER)
    pairs: dict[str, list[tuple[str, str]]] = {}
    targets: dict[str, tuple[str, str]] = {}
    for principal in v.configured_principals(config):
        if principal.kind != "pod":
            continue
        role = _role_name(principal.role_annotation) if principal.role_annotation else config.effective_default_role
        role_arn = arns.get(role) or config.role_arn(account, role)
        account_name = dedicated_name(role_arn)
        targets[principal.name] = (role_arn, subject(principal.namespace, account_name))
        pairs.setdefault(role, [])
        if (principal.namespace, account_name) not in pairs[role]:
            pairs[role].append((principal.namespace, account_name))
    return SandboxMigration(config, account, paths, pairs, targets)


def _trust(iam, role: str) -> dict[str, Any]:
    from rbacbridge.sandbox import _doc

    return _doc(iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"])


def apply_dual(iam, m: SandboxMigration) -> list[str]:
    """The OIDC provider (created, so ours) and each pod role's IRSA statement beside the node role's."""
    done = []
    iam.create_open_id_connect_provider(Url=SANDBOX_ISSUER, ClientIDList=["sts.amazonaws.com"], ThumbprintList=["0" * 40])
    m.provider_created = True
    done.append(f"create IAM OIDC provider {m.paths.provider} (audience sts.amazonaws.com)")
    for role, pairs in sorted(m.pairs.items()):
        live = _trust(iam, role)
        m.originals[role] = live
        document, added = merged_trust(live, statements_for(IRSA, pairs, m.paths.provider, m.paths.issuer))
        if added:
            iam.update_assume_role_policy(RoleName=role, PolicyDocument=json.dumps(document))
            done.append(f"add to role {role}'s trust: web identity for {', '.join(subject(ns, sa) for ns, sa in pairs)} "
                        "(the node role's statement stays)")
    m.phase = "dual"
    return done


def apply_cutover(m: SandboxMigration) -> list[str]:
    """(In a cluster: each workload moved to its ServiceAccount and restarted.) The pods now take web identity."""
    m.phase = "cutover"
    m.paths = replace(m.paths, web_identity=dict(m.targets))
    return [f"pod {name}: ServiceAccount {sub.rsplit(':', 1)[1]} (eks.amazonaws.com/role-arn {arn}), restarted: "
            "the webhook injects AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE" for name, (arn, sub) in sorted(m.targets.items())]


def apply_finish(iam, m: SandboxMigration) -> list[str]:
    """The node role's statements leave the pod roles' trust; kube2iam goes; the metadata path closes to pods."""
    node_arn = m.config.role_arn(m.account, m.config.node_role)
    done = []
    for role in sorted(m.pairs):
        live = _trust(iam, role)
        m.before_finish[role] = live
        kept = [s for s in _statements(live) if not _names(s, node_arn)]
        if len(kept) != len(_statements(live)):
            iam.update_assume_role_policy(RoleName=role, PolicyDocument=json.dumps({**live, "Statement": kept}))
            done.append(f"remove the node role {m.config.node_role} from role {role}'s trust")
    m.paths = replace(m.paths, kube2iam=False)
    m.phase = "finish"
    done.append("(in a cluster: kube2iam's DaemonSet, RBAC and iptables rules removed; a node rule drops pods' traffic "
                "to 169.254.169.254)")
    return done


def rollback(iam, m: SandboxMigration) -> list[tuple[str, list[str]]]:
    """From wherever the demo is, back to kube2iam, phase by phase, from what the phases kept (never live state)."""
    steps: list[tuple[str, list[str]]] = []
    if m.phase == "finish":
        for role, document in sorted(m.before_finish.items()):
            iam.update_assume_role_policy(RoleName=role, PolicyDocument=json.dumps(document))
        m.paths = replace(m.paths, kube2iam=True)
        m.phase = "cutover"
        steps.append(("finish", [f"restore role {r}'s trust as it was before finish" for r in sorted(m.before_finish)]
                      + ["(in a cluster: kube2iam's DaemonSet and iptables rules back; the metadata rule removed)"]))
    if m.phase == "cutover":
        m.phase = "dual"
        steps.append(("cutover", ["(in a cluster: each workload back on its ServiceAccount, restarted): pods take kube2iam's "
                                  "credentials again"]))
        m.paths = replace(m.paths, web_identity={})
    if m.phase == "dual":
        lines = []
        for role, document in sorted(m.originals.items()):
            iam.update_assume_role_policy(RoleName=role, PolicyDocument=json.dumps(document))
            lines.append(f"restore role {role}'s trust as it was before dual")
        if m.provider_created:
            iam.delete_open_id_connect_provider(OpenIDConnectProviderArn=m.paths.provider)
            m.provider_created = False
            lines.append(f"delete IAM OIDC provider {m.paths.provider} (created by dual)")
        m.phase = "kube2iam"
        steps.append(("dual", lines))
    return steps


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    statements = document.get("Statement") or []
    return statements if isinstance(statements, list) else [statements]


def _names(statement: dict[str, Any], arn: str) -> bool:
    principal = statement.get("Principal")
    aws = principal.get("AWS") if isinstance(principal, dict) else None
    return arn in (aws if isinstance(aws, list) else [aws]) and not str(statement.get("Sid", "")).startswith(SID_PREFIX)


def sources(result: v.VerifyResult) -> dict[str, str]:
    return {c.principal: c.source or "?" for c in result.all_cells if c.check == v.IDENTITY}



def run_story(out, config: Config, url: str, account: str, tables: bool) -> tuple[str | None, Any, Any]:
    """The demo's migration: baseline, dual, cutover, finish, rollback to kube2iam; the matrix after each, compared
    with the baseline. Returns (what went wrong or None, the baseline matrix, the last matrix)."""
    from rbacbridge import report
    from rbacbridge.sandbox import _bootstrap_admin, _client, sandbox_matrix
    from rbacbridge.verify.migration import apply_baseline

    out.rule("3b. rbacbridge verify -o json > before.json  (the baseline: kube2iam serves every pod)")
    baseline = sandbox_matrix(url, config, account, "after")
    if tables:
        report.print_table(baseline)
    if not baseline.ok:
        return f"the baseline does not match the configuration: {len(baseline.mismatches)} cell(s) differ", baseline, baseline
    document = json.loads(report.to_json(baseline))
    m = plan_sandbox_migration(config, account)
    iam = _client("iam", url, config.region, _bootstrap_admin(url, config.region))
    problems: list[str] = []

    def check(label: str, result: v.VerifyResult, want_source: str | None) -> None:
        counts = apply_baseline(result, document, "the baseline")
        got = sources(result)
        pods = {p.principal.name for p in result.principals if p.principal.kind == "pod"}
        out.print(f"  {'principal':<22} {'role':<24} {'source':<13} cells")
        for p in result.principals:
            cells = [p.identity, *p.cells]
            out.print(f"  {p.principal.name:<22} {p.identity.observed or '(none)':<24} {got[p.principal.name]:<13} "
                      f"{sum(c.match for c in cells)}/{len(cells)} as before")
        wrong = [n for n in pods if want_source and got[n] != want_source]
        line = (f"  {counts['compared']} cells compared with the baseline: {counts['changed']} changed, "
                f"{counts['source_changed']} identities served by another path")
        if result.ok and not wrong:
            out.print(f"[green]{line}[/green]")
        else:
            out.print(f"[red]{line}[/red]")
            first = result.mismatches[0] if result.mismatches else None
            problems.append(f"{label}: {counts['changed']} cell(s) changed" + (
                f"; first: {report.cell_name(first)}: {report.failure_text(first)}" if first else
                f"; pods not on {want_source}: {', '.join(sorted(wrong))}"))

    out.rule("3c. rbacbridge migrate apply --phase dual --to irsa  (both paths valid; no pod restarts)")
    for line in apply_dual(iam, m):
        out.print("  " + line)
    check("dual", sandbox_matrix(url, config, account, "after", paths=m.paths), "kube2iam")

    out.rule("3d. rbacbridge migrate apply --phase cutover  (pods restarted onto their ServiceAccounts)")
    for line in apply_cutover(m):
        out.print("  " + line)
    check("cutover", sandbox_matrix(url, config, account, "after", paths=m.paths), "web-identity")

    out.rule("3e. rbacbridge migrate apply --phase finish  (kube2iam goes; pods' metadata path closed)")
    for line in apply_finish(iam, m):
        out.print("  " + line)
    finished = sandbox_matrix(url, config, account, "after", paths=m.paths)
    check("finish", finished, "web-identity")
    out.print("  (in a cluster, a new pod without a role's ServiceAccount must get no credentials at all, never the "
              "node role: the lab's end-to-end test checks it; the sandbox has no metadata service to close)")

    out.rule("3f. rbacbridge migrate rollback  (finish, cutover, dual: back to kube2iam, from what each phase kept)")
    for phase, lines in rollback(iam, m):
        out.print(f"  rollback {phase}:")
        for line in lines:
            out.print("    " + line)
    after = sandbox_matrix(url, config, account, "after", paths=m.paths)
    check("rollback", after, "kube2iam")
    if tables:
        report.print_table(after)
    return (f"migration: {'; '.join(problems)}" if problems else None), baseline, after

