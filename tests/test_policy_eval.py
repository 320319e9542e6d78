from rbacbridge import policy_eval as pe
from rbacbridge.config import Config
from rbacbridge.verify import managed_documents

ACCT = "123456789012"


def doc(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action, resource, **extra):
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def test_explicit_deny_overrides_allow_in_any_document():
    docs = [doc(allow("s3:*", "*")), doc({"Effect": "Deny", "Sid": "NoPuts", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::b1/*"})]
    decision = pe.evaluate(docs, "s3:PutObject", "arn:aws:s3:::b1/k")
    assert decision.result == pe.EXPLICIT_DENY and decision.statement == "NoPuts"
    assert pe.is_allowed(docs, "s3:PutObject", "arn:aws:s3:::b2/k")


def test_default_deny_when_nothing_matches():
    assert pe.evaluate([doc(allow("s3:ListBucket", "arn:aws:s3:::b1"))], "s3:GetObject", "arn:aws:s3:::b1/k").result == pe.IMPLICIT_DENY
    assert not pe.is_allowed([], "s3:ListBucket", "arn:aws:s3:::b1")


def test_action_wildcards_and_case_insensitive_action_names():
    docs = [doc(allow("s3:Get*", "*"))]
    assert pe.is_allowed(docs, "s3:GetObject", "arn:aws:s3:::b/k")
    assert pe.is_allowed(docs, "S3:getobject", "arn:aws:s3:::b/k")
    assert not pe.is_allowed(docs, "s3:PutObject", "arn:aws:s3:::b/k")
    assert pe.is_allowed([doc(allow("s3:*", "*"))], "s3:DeleteObject", "arn:aws:s3:::b/k")
    assert not pe.is_allowed([doc(allow("s3:*", "*"))], "sts:AssumeRole", "*")
    assert pe.is_allowed([doc(allow("s3:?etObject", "*"))], "s3:GetObject", "x")


def test_bucket_arn_and_object_arn_are_different_resources():
    docs = [doc(allow("s3:ListBucket", "arn:aws:s3:::b1"), allow("s3:PutObject", "arn:aws:s3:::b2/*"))]
    assert pe.can_read(docs, "b1") and not pe.can_read(docs, "b2")
    assert not pe.is_allowed(docs, "s3:ListBucket", "arn:aws:s3:::b1/k")
    assert not pe.is_allowed(docs, "s3:PutObject", "arn:aws:s3:::b2")
    assert pe.is_allowed(docs, "s3:PutObject", "arn:aws:s3:::b2/any/key")
    # resources match case-sensitively and dots literally (moto does not escape them; AWS does)
    assert not pe.is_allowed([doc(allow("s3:ListBucket", "arn:aws:s3:::lanre.k8s.dev"))], "s3:ListBucket", "arn:aws:s3:::lanre-k8s-dev")


def test_not_action_and_not_resource():
    docs = [doc({"Effect": "Allow", "NotAction": "s3:Delete*", "Resource": "*"})]
    assert pe.is_allowed(docs, "s3:PutObject", "arn:aws:s3:::b/k")
    assert not pe.is_allowed(docs, "s3:DeleteObject", "arn:aws:s3:::b/k")
    docs = [doc({"Effect": "Allow", "Action": "s3:*", "NotResource": "arn:aws:s3:::secret/*"})]
    assert pe.is_allowed(docs, "s3:GetObject", "arn:aws:s3:::open/k")
    assert not pe.is_allowed(docs, "s3:GetObject", "arn:aws:s3:::secret/k")
    deny_all_but = [doc(allow("s3:*", "*"), {"Effect": "Deny", "NotAction": "s3:List*", "Resource": "*"})]
    assert pe.is_allowed(deny_all_but, "s3:ListBucket", "arn:aws:s3:::b")
    assert not pe.is_allowed(deny_all_but, "s3:GetObject", "arn:aws:s3:::b/k")


def test_statement_with_condition_never_grants():
    docs = [doc(allow("s3:*", "*", Condition={"Bool": {"aws:SecureTransport": "true"}}))]
    assert not pe.is_allowed(docs, "s3:GetObject", "arn:aws:s3:::b/k")


def test_trust_exact_arn_and_sessions_of_that_role():
    trust = doc({"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCT}:role/ro"}, "Action": "sts:AssumeRole"})
    assert pe.trust_allows(trust, f"arn:aws:iam::{ACCT}:role/ro")
    assert pe.trust_allows(trust, f"arn:aws:sts::{ACCT}:assumed-role/ro/i-0abc")
    assert not pe.trust_allows(trust, f"arn:aws:sts::{ACCT}:assumed-role/rw/i-0abc")
    assert not pe.trust_allows(trust, f"arn:aws:iam::{ACCT}:role/ro-other")
    assert not pe.trust_allows(trust, f"arn:aws:iam::210987654321:role/ro")
    assert not pe.trust_allows(trust, f"arn:aws:iam::{ACCT}:role/ro", action="sts:TagSession")


def test_trust_account_root_bare_account_and_star():
    for principal in (f"arn:aws:iam::{ACCT}:root", ACCT):
        trust = doc({"Effect": "Allow", "Principal": {"AWS": principal}, "Action": "sts:AssumeRole"})
        assert pe.trust_allows(trust, f"arn:aws:iam::{ACCT}:user/alice")
        assert pe.trust_allows(trust, f"arn:aws:sts::{ACCT}:assumed-role/ro/s1")
        assert not pe.trust_allows(trust, "arn:aws:iam::210987654321:user/alice")
    assert pe.trust_allows(doc({"Effect": "Allow", "Principal": "*", "Action": "sts:AssumeRole"}), "arn:aws:iam::210987654321:user/x")
    assert pe.trust_allows(doc({"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:*"}), "arn:aws:iam::210987654321:user/x")


def test_trust_deny_and_service_principal():
    trust = doc({"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"},
                {"Effect": "Deny", "Principal": {"AWS": f"arn:aws:iam::{ACCT}:role/bad"}, "Action": "sts:AssumeRole"})
    assert pe.trust_allows(trust, f"arn:aws:iam::{ACCT}:role/good")
    assert not pe.trust_allows(trust, f"arn:aws:sts::{ACCT}:assumed-role/bad/s")
    ec2 = doc({"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"})
    assert pe.trust_allows_service(ec2, "ec2.amazonaws.com")
    assert not pe.trust_allows_service(ec2, "lambda.amazonaws.com")
    assert not pe.trust_allows(ec2, f"arn:aws:iam::{ACCT}:role/ro")


def test_rendered_documents_give_the_spec_matrix():
    config = Config()
    docs = managed_documents(config, ACCT)
    node, pod = docs.policies[config.node_role], docs.policies[config.pod_role]
    assert pe.can_read(node, "nettech-helm-test") and not pe.can_read(node, "lanre.k8s.dev")
    assert not pe.can_write(node, "nettech-helm-test", "k") and not pe.can_write(node, "lanre.k8s.dev", "k")
    assert pe.can_read(pod, "nettech-helm-test") and pe.can_read(pod, "lanre.k8s.dev")
    assert pe.can_write(pod, "lanre.k8s.dev", "k") and not pe.can_write(pod, "nettech-helm-test", "k")
    node_arn = config.role_arn(ACCT, config.node_role)
    assert pe.trust_allows(docs.trust[config.pod_role], node_arn)
    assert not pe.trust_allows(docs.trust[config.node_role], node_arn)  # pods never get the node role: no self trust
    assert pe.trust_allows_service(docs.trust[config.node_role], "ec2.amazonaws.com")
    assert pe.is_allowed(node, "sts:AssumeRole", config.role_arn(ACCT, config.pod_role))
    assert pe.is_allowed(node, "sts:AssumeRole", config.role_arn(ACCT, config.pod_default_role))
    assert not pe.is_allowed(node, "sts:AssumeRole", node_arn)
    assert not pe.is_allowed(node, "sts:AssumeRole", config.role_arn(ACCT, "someone-else"))
    # The dedicated default role: the node role's S3 access, trusted by the node role only, no sts at all.
    default = docs.policies[config.pod_default_role]
    assert pe.can_read(default, "nettech-helm-test") and not pe.can_read(default, "lanre.k8s.dev")
    assert not pe.can_write(default, "nettech-helm-test", "k") and not pe.can_write(default, "lanre.k8s.dev", "k")
    for target in (config.pod_role, config.node_role, config.pod_default_role):
        assert not pe.is_allowed(default, "sts:AssumeRole", config.role_arn(ACCT, target))
    assert pe.trust_allows(docs.trust[config.pod_default_role], node_arn)
    assert not pe.trust_allows(docs.trust[config.pod_default_role], config.role_arn(ACCT, config.pod_role))


def test_node_default_role_documents_trust_itself():
    config = Config(default_role="node")
    docs = managed_documents(config, ACCT)
    node_arn = config.role_arn(ACCT, config.node_role)
    assert pe.trust_allows(docs.trust[config.node_role], node_arn)
    assert pe.is_allowed(docs.policies[config.node_role], "sts:AssumeRole", node_arn)
    assert config.pod_default_role not in docs.trust
