"""kube2iam's role matching (rbacbridge.audit.who_can.matching) against kube2iam's own examples.

Sources (jtblin/kube2iam at 4c4a2b4, ryanuber/go-glob at 51a8f68), cited per case:
- README.md "Namespace Restrictions": `["role-arn"]`, glob `["my-custom-path/*"]`, regexp `["my-custom-path/.*"]`
  with --namespace-restriction-format=regexp, and the note that another account's role needs the full ARN.
- mappings/mapper_test.go TestCheckRoleForNamespace: the glob and regexp cases quoted by their `test:` names.
- mappings/mapper.go checkRoleForNamespace (default role always allowed; restrictions off allow all) and
  iam/arn.go RoleARN (`arn:` prefix kept, case-insensitively; anything else gets the base ARN).
- cmd/main.go: --base-role-arn gets a trailing `/`.
- go-glob glob_test.go: `*` only, any run of characters.
"""

from __future__ import annotations

import pytest

from rbacbridge.audit.who_can.matching import (GLOB, REGEXP, Kube2iamSettings, allowed_patterns, glob_match, normalise_base,
                                               regexp_match, role_arn, settings_from_flags)

BASE = "arn:aws:iam::123456789012:role/"  # mapper_test.go defaultBaseRole
DEFAULT = BASE + "default-role"


def restricted(fmt: str = GLOB, default: str | None = DEFAULT) -> Kube2iamSettings:
    return Kube2iamSettings(restrictions=True, format=fmt, base_arn=BASE, default_role_arn=default)


# --- iam/arn.go RoleARN, cmd/main.go base ARN ------------------------------------------------------------

def test_role_names_get_the_base_arn_and_full_arns_stay():
    # mapper_test.go TestExtractRoleARN: "explicit-role" -> base + name; a full ARN of account 999999999999 stays
    assert role_arn("explicit-role", BASE) == BASE + "explicit-role"
    assert role_arn("arn:aws:iam::999999999999:role/explicit-arn", BASE) == "arn:aws:iam::999999999999:role/explicit-arn"
    assert role_arn("ARN:aws:iam::999999999999:role/x", BASE) == "ARN:aws:iam::999999999999:role/x"  # strings.ToLower
    assert role_arn("path/explicit-role", BASE) == BASE + "path/explicit-role"


def test_base_role_arn_gets_its_trailing_slash():
    # cmd/main.go: `if !strings.HasSuffix(s.BaseRoleARN, "/") { s.BaseRoleARN += "/" }`
    assert normalise_base("arn:aws:iam::123456789012:role") == BASE
    assert normalise_base(BASE) == BASE
    assert normalise_base(None) is None


# --- README.md "Namespace Restrictions" ----------------------------------------------------------------------

def test_readme_exact_role():
    # README: iam.amazonaws.com/allowed-roles: ["role-arn"] lets the aws-cli pod (annotated role-arn) run
    settings = restricted(default=None)
    assert settings.allows(["role-arn"], settings.pod_role("role-arn"))
    assert not settings.allows(["role-arn"], settings.pod_role("other-role"))


def test_readme_glob_allows_every_role_under_a_path():
    # README: ["my-custom-path/*"] allows all roles prefixed with my-custom-path/
    settings = restricted()
    assert settings.allows(["my-custom-path/*"], BASE + "my-custom-path/reader")
    assert settings.allows(["my-custom-path/*"], BASE + "my-custom-path/deeper/writer")  # go-glob's * crosses "/"
    assert not settings.allows(["my-custom-path/*"], BASE + "other-path/reader")


def test_readme_regexp_format():
    # README: --namespace-restriction-format=regexp with ["my-custom-path/.*"]
    settings = restricted(REGEXP)
    assert settings.allows(["my-custom-path/.*"], BASE + "my-custom-path/reader")
    assert not settings.allows(["my-custom-path/.*"], BASE + "other-path/reader")


def test_readme_other_account_needs_the_full_arn():
    # README note: a role in a different account must be listed with its full ARN in allowed-roles
    other = "arn:aws:iam::999999999999:role/shared"
    settings = restricted()
    assert not settings.allows(["shared"], other)
    assert settings.allows([other], other)


# --- mappings/mapper_test.go TestCheckRoleForNamespace --------------------------------------------------------

@pytest.mark.parametrize("case, patterns, role, fmt, expected", [
    ("Restrictions enabled, default partial", None, DEFAULT, GLOB, True),
    ("Restrictions enabled, partial arn in annotation", ["explicit-role"], BASE + "explicit-role", GLOB, True),
    ("Restrictions enabled, no annotations", allowed_patterns(""), BASE + "explicit-role", GLOB, False),
    ("Restrictions enabled, multiple annotations, no match", ["explicit-role", "explicit-role2"], BASE + "test-role", GLOB, False),
    ("Restrictions enabled, multiple annotations, matches exact 1st", ["explicit-role", "explicit-role2"], BASE + "explicit-role", GLOB, True),
    ("Restrictions enabled, multiple annotations, matches exact 2nd", ["explicit-role2", "explicit-role"], BASE + "explicit-role", GLOB, True),
    ("Restrictions enabled, partial glob in annotation", ["path/*"], BASE + "path/explicit-role", GLOB, True),
    ("Restrictions enabled, full arn in annotation", [BASE + "explicit-role"], BASE + "explicit-role", GLOB, True),
    ("Restrictions enabled, full arn with glob in annotation", [BASE + "path/*-role"], BASE + "path/explicit-role", GLOB, True),
    ("Restrictions enabled, full arn not in annotation", [BASE + "explicit-role"], BASE + "test-role", GLOB, False),
    ("Restrictions enabled, multiple annotations, matches glob 1st", ["glob-*", "explicit-role"], BASE + "glob-role", GLOB, True),
    ("Restrictions enabled, multiple annotations, matches glob 2nd", ["explicit-role", "glob-*"], BASE + "glob-role", GLOB, True),
    ("Restrictions enabled (regexp), default full arn", None, DEFAULT, REGEXP, True),
    ("Restrictions enabled (regexp), partial arn in annotation", ["explicit-role"], BASE + "explicit-role", REGEXP, True),
    ("Restrictions enabled (regexp), partial regexp in annotation", ["path/.*"], BASE + "path/explicit-role", REGEXP, True),
    ("Restrictions enabled (regexp), full arn in annotation", [BASE + "explicit-role"], BASE + "explicit-role", REGEXP, True),
    ("Restrictions enabled (regexp), full arn with regexp in annotation", [BASE + "path/.*-role"], BASE + "path/explicit-role", REGEXP, True),
    ("Restrictions enabled (regexp), full arn not in annotation", [BASE + "explicit-role"], BASE + "test-role", REGEXP, False),
])
def test_kube2iam_mapper_cases(case, patterns, role, fmt, expected):
    assert restricted(fmt).allows(patterns, role) is expected, case


def test_restrictions_off_allow_every_role():
    # mapper.go: `if !r.namespaceRestriction || roleArn == r.defaultRoleARN { return true }`
    assert Kube2iamSettings(restrictions=False, base_arn=BASE).allows(None, BASE + "anything")


# --- what the config usually means, and what kube2iam really does -----------------------------------------

def test_regexp_is_a_search_not_a_full_match():
    # mapper.go uses regexp.MatchString: unanchored. `app` (made base + "app") also allows app-admin;
    # an anchored entry gets the base ARN in front of its ^ and then matches nothing.
    settings = restricted(REGEXP, default=None)
    assert settings.allows(["app"], BASE + "app-admin")
    assert settings.allows(["app"], "arn:aws:iam::123456789012:role/app")
    assert not settings.allows(["^app$"], BASE + "app")
    assert settings.allows([BASE + "app$"], BASE + "app") and not settings.allows([BASE + "app$"], BASE + "app-admin")
    assert settings.allows(["a.p"], BASE + "axp")  # "." is any character


def test_glob_has_only_the_star():
    # go-glob: "?" and "[" are literal, "*" may match nothing or anything (glob_test.go "this*", "**test**")
    assert glob_match("this*", "this") and glob_match("**test**", "a test b")
    assert not glob_match("ro?e", "role") and glob_match("ro?e", "ro?e")
    assert not glob_match("[ab]pp", "app") and glob_match("a*b*b", "abxb") and not glob_match("a*b*b", "ab")
    assert glob_match("", "") and not glob_match("", "x")  # go-glob TestEmptyPattern


def test_go_refuses_what_re2_cannot_compile():
    # RE2 has no lookahead: kube2iam logs an error and the entry allows nothing
    assert not regexp_match("(?!admin).*", "arn:aws:iam::1:role/x")
    assert not regexp_match("(unclosed", "anything")


def test_allowed_roles_annotation_decoding():
    # namespace.go GetNamespaceRoleAnnotation: JSON list of strings; an empty value is no restriction list
    assert allowed_patterns('["a", "b-*"]') == ["a", "b-*"]
    assert allowed_patterns(None) is None and allowed_patterns("") is None
    assert allowed_patterns("a,b") == [] and allowed_patterns('{"a": 1}') == [] and allowed_patterns('[1]') == []


def test_settings_from_daemonset_flags():
    flags = {"base-role-arn": "arn:aws:iam::123456789012:role", "default-role": "k8s-default",
             "namespace-restrictions": "true", "namespace-restriction-format": "REGEXP"}
    settings = settings_from_flags(flags, "DaemonSet kube-system/kube2iam")
    assert (settings.restrictions, settings.format, settings.base_arn, settings.default_role_arn) == \
        (True, REGEXP, BASE, BASE + "k8s-default")
    auto = settings_from_flags({"auto-discover-default-role": "true"}, "ds", node_role_arn=BASE + "k8s-node",
                               account="123456789012")
    assert (auto.restrictions, auto.format, auto.base_arn, auto.default_role_arn) == (False, GLOB, BASE, BASE + "k8s-node")
    assert settings_from_flags({}, "ds").default_role_arn is None
