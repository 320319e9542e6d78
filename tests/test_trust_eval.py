"""The stand-ins' small trust reader (tests/trust_eval.py): what it allows, and that it never allows more."""

from __future__ import annotations

import json

from tests.trust_eval import trust_allows

PROVIDER = "arn:aws:iam::123456789012:oidc-provider/oidc.example.com/id/ABC"
SUB = "oidc.example.com/id/ABC:sub"


def _doc(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _web(condition: dict, effect: str = "Allow") -> dict:
    return {"Effect": effect, "Principal": {"Federated": PROVIDER}, "Action": "sts:AssumeRoleWithWebIdentity", "Condition": condition}


def allows(document, sub: str) -> bool:
    return trust_allows(document, ("Federated", PROVIDER), "sts:AssumeRoleWithWebIdentity", {SUB: sub})[0]


def test_string_equals_and_like():
    assert allows(_doc(_web({"StringEquals": {SUB: "system:serviceaccount:a:app"}})), "system:serviceaccount:a:app")
    assert not allows(_doc(_web({"StringEquals": {SUB: "system:serviceaccount:a:app"}})), "system:serviceaccount:a:other")
    assert allows(_doc(_web({"StringLike": {SUB: "system:serviceaccount:a:*"}})), "system:serviceaccount:a:other")
    assert allows(_doc(_web({"StringEquals": {SUB: ["x", "system:serviceaccount:a:app"]}})), "system:serviceaccount:a:app")


def test_deny_wins_and_unknown_operators_grant_nothing():
    allow = _web({"StringLike": {SUB: "*"}})
    assert not allows(_doc(allow, _web({"StringEquals": {SUB: "bad"}}, effect="Deny")), "bad")
    assert allows(_doc(allow, _web({"StringEquals": {SUB: "bad"}}, effect="Deny")), "good")
    assert not allows(_doc(_web({"ForAnyValue:StringLike": {SUB: "*"}})), "good")


def test_principal_action_and_text_documents():
    other = {"Effect": "Allow", "Principal": {"Federated": PROVIDER + "X"}, "Action": "sts:AssumeRoleWithWebIdentity"}
    assert not allows(_doc(other), "s")
    assert not allows(_doc({"Effect": "Allow", "Principal": {"Federated": PROVIDER}, "Action": "sts:AssumeRole"}), "s")
    assert allows(json.dumps(_doc({"Effect": "Allow", "Principal": {"Federated": PROVIDER}, "Action": "sts:*"})), "s")
    assert allows(_doc(_web({"StringEqualsIfExists": {"absent:key": "v"}})), "s")
    assert not allows(_doc(_web({"StringEquals": {"absent:key": "v"}})), "s")
