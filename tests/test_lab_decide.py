"""The lab's own trust/permission decisions (tests/lab_decide.py) — independent of rbacbridge.policy_eval."""

from tests import lab_decide

NODE = "arn:aws:iam::123456789012:role/node"
POD = "arn:aws:iam::123456789012:role/pod"


def _trust(principal, effect="Allow", **extra):
    return {"Statement": [{"Effect": effect, "Principal": principal, "Action": "sts:AssumeRole", **extra}]}


def test_trust_names_the_exact_arn_or_the_service():
    assert lab_decide.trusts(_trust({"AWS": NODE}), arn=NODE)
    assert not lab_decide.trusts(_trust({"AWS": NODE + "x"}), arn=NODE)
    assert not lab_decide.trusts(_trust({"AWS": NODE}), service="ec2.amazonaws.com")
    assert lab_decide.trusts(_trust({"Service": "ec2.amazonaws.com"}), service="ec2.amazonaws.com")
    both = {"Statement": _trust({"AWS": NODE})["Statement"] + _trust({"AWS": NODE}, "Deny")["Statement"]}
    assert not lab_decide.trusts(both, arn=NODE)
    assert not lab_decide.trusts(_trust({"AWS": NODE}, Condition={"Bool": {"x": "true"}}), arn=NODE)


def test_permits_with_wildcards_and_deny():
    allow = {"Statement": [{"Effect": "Allow", "Action": "sts:Assume*", "Resource": POD}]}
    deny = {"Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]}
    assert lab_decide.permits([allow], "sts:AssumeRole", POD)
    assert not lab_decide.permits([allow], "sts:AssumeRole", NODE)
    assert not lab_decide.permits([allow, deny], "sts:AssumeRole", POD)
    assert not lab_decide.permits([], "sts:AssumeRole", POD)


def test_namespace_globs_match_name_or_arn():
    assert lab_decide.namespace_allows(POD, ["pod"])
    assert lab_decide.namespace_allows(POD, ["arn:aws:iam::123456789012:role/p*"])
    assert not lab_decide.namespace_allows(POD, ["tenant-b-*"])
    assert not lab_decide.namespace_allows(POD, [])
