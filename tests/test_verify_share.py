"""verify probes the bucket and chain cells once per workload and OBSERVED role (issue 14): pods of one workload
on several nodes each get their identity probed, and copy the rest only when their own identity call returned
the same role. Real calls against moto (server mode) with IAM enforcement on; the requests each principal's
credentials sent are counted on the wire (botocore's before-send), the outcomes come from moto's decisions."""

from collections import Counter

import boto3

from rbacbridge import verify as v
from rbacbridge.sandbox import Boto3Backend, set_enforcement
from tests.fixtures_verify import ACCOUNT, DUMMY, bucket_keys, moto_url, sandbox  # noqa: F401


class Counted(Boto3Backend):
    """A principal's boto3 probes; `sent` counts the operations that went over the wire."""

    def __init__(self, url, config, role):
        sts = boto3.client("sts", endpoint_url=url, region_name="us-east-1", **DUMMY)
        c = sts.assume_role(RoleArn=config.role_arn(ACCOUNT, role), RoleSessionName="i-0share")["Credentials"]
        super().__init__(url, "us-east-1", {"aws_access_key_id": c["AccessKeyId"], "aws_secret_access_key": c["SecretAccessKey"],
                                            "aws_session_token": c["SessionToken"]})
        self.sent = Counter()
        for client in (self.sts, self.s3):
            client.meta.events.register("before-send", lambda request, **_: self.sent.update([request.url.split("?")[0]]))

    @property
    def calls(self) -> int:
        return sum(self.sent.values())


def pod(name, node, config, annotated):
    return v.Principal(f"{name}@{node}", "pod", namespace=config.namespace, node=node,
                       role_annotation=config.pod_role if annotated else None)


def run(url, config, targets, share=True):
    set_enforcement(url, True)
    try:
        expected = v.expected_matrix(config, ACCOUNT, "after", [p for p, _ in targets])
        chains = {e.principal.name: [(t, config.role_arn(ACCOUNT, t)) for t in e.chains] for e in expected if e.chains}
        observed = v.observe(targets, v.buckets_of(config), chains=chains, share=share)
        return v.compare(config, ACCOUNT, "after", expected, observed)
    finally:
        set_enforcement(url, False)


def test_one_workload_on_four_nodes_probes_its_cells_once(sandbox):
    url, config = sandbox
    backends = {n: Counted(url, config, config.pod_role) for n in ("node-a", "node-b", "node-c", "node-d")}
    targets = [(pod(v.ANNOTATED, n, config, True), b) for n, b in backends.items()]
    result = run(url, config, targets)
    assert result.ok, [(c.principal, c.check, c.detail) for c in result.mismatches]
    first = backends["node-a"].calls
    assert first >= 1 + 2 * 2 + 3  # identity, 2 buckets x read/write (put, and delete when allowed), 3 chain targets
    assert [backends[n].calls for n in ("node-b", "node-c", "node-d")] == [1, 1, 1]  # identity only
    by_name = {p.principal.name: p for p in result.principals}
    for node in ("node-b", "node-c", "node-d"):
        cells = by_name[f"{v.ANNOTATED}@{node}"].cells
        assert {(c.bucket, c.check): c.observed for c in cells if c.check != v.CHAIN} == {
            ("nettech-helm-test", "read"): True, ("nettech-helm-test", "write"): False,
            ("lanre.k8s.dev", "read"): True, ("lanre.k8s.dev", "write"): True}
        assert all(f"probed by {v.ANNOTATED}@node-a" in c.detail for c in cells)
    assert bucket_keys(url, config.tenant_bucket) == []  # one probe object, written and deleted once


def test_a_node_that_hands_out_another_role_is_probed_again(sandbox):
    url, config = sandbox
    good = Counted(url, config, config.effective_default_role)
    leaked = Counted(url, config, config.node_role)  # node-b: no interception, the pod gets the node role
    targets = [(pod(v.VANILLA, "node-a", config, False), good), (pod(v.VANILLA, "node-b", config, False), leaked)]
    result = run(url, config, targets)
    assert leaked.calls == good.calls > 1  # its own cells, not node-a's copies
    by_name = {p.principal.name: p for p in result.principals}
    assert by_name[f"{v.VANILLA}@node-a"].identity.match and all(c.match for c in by_name[f"{v.VANILLA}@node-a"].cells)
    b = by_name[f"{v.VANILLA}@node-b"]
    assert b.observed.role == config.node_role and not b.identity.match and b.identity.blame.layer == v.INTERCEPTION
    assert not any("probed by" in c.detail for c in b.cells)
    # the chain cell the node role really allows (it may assume the pod role, for kube2iam) is observed there
    chain = next(c for c in b.cells if c.check == v.CHAIN and c.target == config.pod_role)
    assert chain.observed is True and not chain.match


def test_without_sharing_every_principal_probes_everything(sandbox):
    url, config = sandbox
    backends = [Counted(url, config, config.pod_role) for _ in range(2)]
    targets = [(pod(v.ANNOTATED, f"node-{i}", config, True), b) for i, b in enumerate(backends)]
    result = run(url, config, targets, share=False)
    assert result.ok
    assert backends[0].calls == backends[1].calls > 1
    assert not any("probed by" in c.detail for p in result.principals for c in p.cells)


class Failing(Counted):
    """A principal whose S3 reads break in transit (a transport error, not an answer from AWS)."""

    def list_bucket(self, bucket):
        self.sent.update(["broken"])
        return v.CallResult(False, v.ERROR, "SshError: cannot start command: ChannelException(2, 'Connect failed')")


def test_a_cell_the_first_could_not_tell_is_probed_by_the_others_themselves(sandbox):
    url, config = sandbox
    first, second = Failing(url, config, config.pod_role), Counted(url, config, config.pod_role)
    targets = [(pod(v.ANNOTATED, "node-a", config, True), first), (pod(v.ANNOTATED, "node-b", config, True), second)]
    result = run(url, config, targets)
    by_name = {p.principal.name: p for p in result.principals}
    b = by_name[f"{v.ANNOTATED}@node-b"]
    assert all(c.match for c in b.cells) and not any("probed by" in c.detail for c in b.cells)
    assert second.calls == first.calls  # all of its own cells, after node-a's errors
    a = by_name[f"{v.ANNOTATED}@node-a"]
    assert {c.blame.layer for c in a.cells if not c.match} == {v.PROBE}
