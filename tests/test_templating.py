"""The JSON policy templates rendered without Jinja2 (rbacbridge.templating's subset) give exactly the
documents Jinja2 gives, for the contexts rbacbridge passes and for awkward values; a missing variable still
fails as Jinja2's StrictUndefined does; a template beyond the subset goes through Jinja2."""

from __future__ import annotations

import json

import jinja2
import pytest

from rbacbridge import templating
from rbacbridge.aws import desired_resources
from rbacbridge.config import Config
from rbacbridge.permissions import operator_policy

ARN = "arn:aws:iam::123456789012:role/r"
AWKWARD = "a<b>&'c\u00e9"  # jinja2's tojson escapes these; the parsed document is the same


def jinja(name: str, **context):
    return json.loads(templating.render_text(name, **context))


CASES = [
    ("node-policy.json.j2", {"shared_bucket": "nettech-helm-test", "tenant_bucket": "lanre.k8s.dev", "partition": "aws"}),
    ("node-policy.json.j2", {"shared_bucket": "nettech-helm-test", "tenant_bucket": "lanre.k8s.dev", "partition": "aws-cn"}),
    ("tenant-policy.json.j2", {"bucket_arns": [ARN, AWKWARD], "read_arns": [ARN + "/*"], "write_arns": [AWKWARD + "/*"]}),
    ("tenant-policy.json.j2", {"bucket_arns": [ARN], "read_arns": [ARN + "/*"], "write_arns": []}),
    ("pod-trust.json.j2", {"node_role_arn": ARN}),
    ("node-trust.json.j2", {"self_trust": True, "node_role_arn": ARN, "ec2_principal": "ec2.amazonaws.com"}),
    ("node-trust.json.j2", {"self_trust": False, "node_role_arn": ARN, "ec2_principal": "ec2.amazonaws.com.cn"}),
    ("kube2iam-node-policy.json.j2", {"assumable_role_arns": [ARN, ARN + "2"]}),
    ("kube2iam-node-policy.json.j2", {"assumable_role_arns": [AWKWARD]}),
    ("operator-policy.json.j2", {k: [AWKWARD, ARN] for k in (
        "policy_arns", "managed_role_arns", "read_role_arns", "explain_arns", "pass_role_arns", "instance_arns")}
     | {"instance_profile_arn": AWKWARD, "any_instance_profile_arn": "*", "previous_profile_tag": "rbacbridge:x",
        "passed_to_ec2": ["ec2.amazonaws.com", "ec2.amazonaws.com.cn"]}),
]


@pytest.mark.parametrize("name,context", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_subset_renders_what_jinja2_renders(name, context):
    assert templating._simple_source(name) is not None, f"{name} should be in the subset"
    assert templating.render_json(name, **context) == jinja(name, **context)


def test_every_json_template_is_in_the_subset():
    names = [p.name for p in templating.template_dir().glob("*.json.j2")]
    assert len(names) >= 6 and all(templating._simple_source(n) is not None for n in names)


def test_missing_variable_fails_like_jinja2():
    with pytest.raises(jinja2.UndefinedError):
        templating.render_json("pod-trust.json.j2")
    with pytest.raises(jinja2.UndefinedError):
        templating.render_json("node-trust.json.j2", node_role_arn=ARN, ec2_principal="ec2.amazonaws.com")


def test_template_beyond_the_subset_goes_through_jinja2(tmp_path, monkeypatch):
    (tmp_path / "x.json.j2").write_text('{"a": {{ items | join(",") | tojson }}, "b": {% for i in n %}{{ i }}{% endfor %}}')
    monkeypatch.setattr(templating, "template_dir", lambda: tmp_path)
    templating._simple_source.cache_clear()
    templating._environment.cache_clear()
    try:
        assert templating._simple_source("x.json.j2") is None
        assert templating.render_json("x.json.j2", items=["p", "q"], n=[7]) == {"a": "p,q", "b": 7}
    finally:
        templating._simple_source.cache_clear()
        templating._environment.cache_clear()


@pytest.mark.parametrize("default_role", ["dedicated", "node"])
def test_desired_documents_unchanged(monkeypatch, default_role):
    """What aws.py and permissions.py build is what they built through Jinja2 (self-trusting node role too)."""
    import dataclasses

    config = dataclasses.replace(Config(), default_role=default_role, instance_ids=("i-1", "i-2"))

    def documents():
        out = [(r.kind, r.name, getattr(r, "document", None), getattr(r, "trust", None))
               for r in desired_resources(config, "123456789012", ["i-1"])]
        return out, operator_policy(config, "123456789012", ("legacy",))

    subset = documents()
    monkeypatch.setattr(templating, "_simple_source", lambda name: None)
    assert subset == documents()
    assert any(t and len(t["Statement"]) == 2 for _, _, _, t in subset[0]) == (default_role == "node")
