"""One or two examples per command, shown at the end of its `--help` (and in the generated CLI reference).

Each block starts with click's `\\b` marker, so the lines keep their layout instead of being re-wrapped.
docs/hooks/reference.py renders such a block as a code block.
"""

ACCOUNT = "123456789012"

_EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "": (
        (f"rbacbridge setup --account-id {ACCOUNT}", "IAM, kube2iam, the iptables rule: plan, ask, apply"),
        ("rbacbridge plan -h", "any command's flags, with examples"),
    ),
    "plan": (
        (f"rbacbridge plan --account-id {ACCOUNT}", "what setup would change (changes nothing)"),
        ("rbacbridge plan -c rbacbridge.yaml --exit-code -o json > plan.json", "CI: exit 4 when changes are pending"),
    ),
    "setup": (
        (f"rbacbridge setup --account-id {ACCOUNT}", "shows the plan, asks, applies"),
        (f"rbacbridge setup -c rbacbridge.yaml --account-id {ACCOUNT} --yes", "CI: no terminal to ask"),
    ),
    "teardown": (
        ("rbacbridge teardown --dry-run", "the plan only"),
        ("rbacbridge teardown -c rbacbridge.yaml --yes", "undo setup without asking"),
    ),
    "demo": (
        ("rbacbridge demo --scenario abc", "clients A, B, C: the breach before kube2iam, isolation after"),
        ("rbacbridge demo --break trust", "plant a fault; verify blames the trust layer"),
        ("rbacbridge demo --scenario migrate", "off kube2iam to IRSA phase by phase: the same cells after each, and back"),
    ),
    "config-reference": (
        ("rbacbridge config-reference", "every setting of rbacbridge.yaml with its default"),
    ),
    "config-schema": (
        ("rbacbridge config-schema > rbacbridge.schema.json", "for the editor's YAML language server"),
    ),
    "permissions": (
        (f"rbacbridge permissions --account-id {ACCOUNT} > operator.json", "the operator's IAM policy"),
    ),
    "render": (
        (f"rbacbridge render --account-id {ACCOUNT} | kubectl apply --dry-run=server -f -", ""),
        (f"rbacbridge render --account-id {ACCOUNT} --out-dir manifests/", "one file per object, for GitOps"),
    ),
    "verify": (
        ("rbacbridge verify --probe ephemeral", "the access matrix, pods left as they are"),
        ("rbacbridge verify --tenant client-a -o junit --junit-file verify.xml", "one tenant, for CI"),
    ),
    "audit": (
        ("rbacbridge audit", "any kube2iam install: findings, exit 1 at --fail-on (high)"),
        ("rbacbridge audit --only aws,kube -o json --fail-on medium", ""),
    ),
    "tenant": (
        ("rbacbridge tenant add client-c -n client-c --write client-c-data", ""),
        ("rbacbridge tenant list", ""),
    ),
    "tenant add": (
        ("rbacbridge tenant add client-c -n client-c --write client-c-data", "edits ./rbacbridge.yaml, prints the plan"),
        ("rbacbridge tenant add client-b -n client-b --existing-role arn:aws:iam::111122223333:role/b",
         "a role of its own that rbacbridge only links"),
    ),
    "tenant remove": (
        ("rbacbridge tenant remove client-c", "then `rbacbridge setup` deletes what was made for it"),
    ),
    "tenant list": (
        ("rbacbridge tenant list -c rbacbridge.yaml -o json", ""),
    ),
    "iptables": (
        ("rbacbridge iptables status --via kubernetes", "each node's rule, through the cluster"),
        ("rbacbridge iptables fix --node 10.0.1.5 --ssh-user ubuntu", ""),
    ),
    "iptables status": (
        ("rbacbridge iptables status --via kubernetes", "through the cluster, no SSH"),
        ("rbacbridge iptables status --node 10.0.1.5 --node 10.0.1.6 -o json", ""),
    ),
    "iptables fix": (
        ("rbacbridge iptables fix --dry-run", "the plan only"),
        ("rbacbridge iptables fix --via kubernetes --add-missing --yes", ""),
    ),
    "migrate": (
        ("rbacbridge migrate plan --to irsa", "what moving off kube2iam would take (changes nothing)"),
        ("rbacbridge migrate apply --phase dual --to irsa --dry-run", "the dual phase's steps"),
        ("rbacbridge migrate status", "the phase and each workload's path"),
    ),
    "migrate plan": (
        ("rbacbridge migrate plan --to irsa -c rbacbridge.yaml", "inventory, ServiceAccounts, trust, blockers"),
        ("rbacbridge migrate plan --to pod-identity --cluster-name prod --exit-code -o json", "CI: 1 on a blocker, 4 on changes"),
    ),
    "migrate apply": (
        ("rbacbridge migrate apply --phase dual --to irsa --dry-run", "the steps only: trust beside kube2iam's, ServiceAccounts"),
        ("rbacbridge migrate apply --phase dual --to irsa --yes", "no restart: kube2iam keeps serving"),
        ("rbacbridge migrate apply --phase cutover --to irsa --timeout 600 --yes", "restart onto the new path, wait, check"),
    ),
    "migrate rollback": (
        ("rbacbridge migrate rollback --dry-run", "what going back one phase would restore"),
        ("rbacbridge migrate rollback --yes", ""),
    ),
    "migrate status": (
        ("rbacbridge migrate status", "phase, each workload's path, restarted or not"),
        ("rbacbridge migrate status -o json", ""),
    ),
    "iptables remove": (
        ("rbacbridge iptables remove --node 10.0.1.5 --dry-run", ""),
    ),
}


def examples(command: str) -> str:
    """The examples paragraph of `rbacbridge COMMAND --help` ("" for the top level)."""
    lines = ["\b", "Examples:"]
    for line, why in _EXAMPLES[command]:
        lines += ([f"  # {why}"] if why else []) + [f"  {line}"]
    return "\n".join(lines)


def commands() -> list[str]:
    return list(_EXAMPLES)
