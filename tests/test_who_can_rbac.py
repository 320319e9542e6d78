"""RBAC as the authorizer reads it (rbacbridge.audit.who_can.rbac), on plain objects."""

from __future__ import annotations

from rbacbridge.audit.who_can.rbac import caps_of_rules, cluster_role_rules, groups_of, read_rbac


def rule(verbs, resources, groups=("",), names=()):
    out = {"apiGroups": list(groups), "resources": list(resources), "verbs": list(verbs)}
    if names:
        out["resourceNames"] = list(names)
    return out


def test_pod_running_permissions():
    assert list(caps_of_rules([rule(["create"], ["pods"])]).run) == ["create pods"]
    assert list(caps_of_rules([rule(["patch"], ["cronjobs"], ["batch"])]).run) == ["patch cronjobs"]
    assert list(caps_of_rules([rule(["*"], ["*"], ["apps"])]).run) == [
        f"{v} {r}" for r in ("deployments", "replicasets", "statefulsets", "daemonsets") for v in ("create", "update", "patch")]
    # create cannot be limited by name: a create rule with resourceNames grants nothing (RBAC docs)
    assert not caps_of_rules([rule(["create"], ["pods"], names=["x"])])
    assert list(caps_of_rules([rule(["update"], ["deployments"], ["apps"], names=["web"])]).run) == ["update deployments (named: web)"]
    assert not caps_of_rules([rule(["get", "list"], ["pods", "deployments"], ["", "apps"])])
    assert not caps_of_rules([rule(["create"], ["deployments"], ["extensions"])])  # another group


def test_exec_and_namespace_edits():
    assert list(caps_of_rules([rule(["create"], ["*/exec"])]).exec) == ["create pods/exec"]  # "*/sub" matches subresources
    assert not caps_of_rules([rule(["create"], ["pods"])]).exec  # "pods" is not "pods/exec"
    caps = caps_of_rules([rule(["patch"], ["namespaces"], names=["team-a"])])
    assert list(caps.edit_namespace) == ["patch namespaces (named: team-a)"] and caps.edit_names == {"team-a"}
    assert caps_of_rules([rule(["*"], ["*"], ["*"])]).admin
    assert not caps_of_rules([rule(["*"], ["*"], ["*"], names=["x"])]).admin


def test_aggregation_follows_labels_and_expressions_to_a_fixed_point():
    roles = [
        {"metadata": {"name": "top"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-top": "true"}}]}},
        {"metadata": {"name": "middle", "labels": {"to-top": "true"}},
         "aggregationRule": {"clusterRoleSelectors": [{"matchExpressions": [{"key": "tier", "operator": "In", "values": ["low"]}]}]}},
        {"metadata": {"name": "leaf", "labels": {"tier": "low"}}, "rules": [rule(["create"], ["pods"])]},
        {"metadata": {"name": "other", "labels": {"tier": "high"}}, "rules": [rule(["create"], ["jobs"], ["batch"])]},
    ]
    rules = cluster_role_rules(roles)
    assert rules["middle"] == [rule(["create"], ["pods"])] and rules["top"] == [rule(["create"], ["pods"])]


def test_groups_and_bindings():
    assert groups_of(("ServiceAccount", "ci/deployer")) == ["system:serviceaccounts:ci", "system:serviceaccounts", "system:authenticated"]
    assert groups_of(("User", "system:anonymous")) == ["system:unauthenticated"]
    binding = {"metadata": {"name": "b", "namespace": "team"}, "roleRef": {"kind": "ClusterRole", "name": "runner"},
               "subjects": [{"kind": "Group", "name": "system:serviceaccounts:team"}]}
    rbac = read_rbac([], [{"metadata": {"name": "runner"}, "rules": [rule(["create"], ["pods"])]}], [binding], [])
    grants = rbac.effective(("ServiceAccount", "team/builder"))  # through its namespace's group
    assert [(g.namespace, g.binding) for g in grants] == [("team", "RoleBinding team/b -> ClusterRole runner")]
    assert rbac.effective(("ServiceAccount", "other/builder")) == []
    missing = dict(binding, roleRef={"kind": "ClusterRole", "name": "gone"})
    assert read_rbac([], [], [missing], []).grants == {}  # a binding to a missing role grants nothing
