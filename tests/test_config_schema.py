"""`rbacbridge config-schema`: the JSON Schema of rbacbridge.yaml, built from the loader's option table.

Checked here: it is a valid draft 2020-12 schema; docs/config-schema.json (what editors are pointed at by
examples/rbacbridge.yaml's modeline) is exactly the command's output; the shipped files pass both the schema
and the loader; invalid documents fail both; and over every setting and tenant key with a spread of values,
the schema never refuses what `rbacbridge.config.load` accepts (the loader keeps the last word).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from rbacbridge import config
from rbacbridge.config_schema import config_schema, schema_json
from rbacbridge.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "docs" / "config-schema.json"
VALIDATOR = jsonschema.Draft202012Validator(config_schema())


def loads(tmp_path: Path, text: str) -> bool:
    """Whether rbacbridge.config.load accepts the file (a refusal is a UsageError: exit 2)."""
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        config.load(path)
    except UsageError:
        return False
    return True


def test_the_command_prints_a_draft_2020_12_schema_equal_to_the_committed_file():
    out = subprocess.run([sys.executable, "-m", "rbacbridge", "config-schema"], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout == schema_json()
    schema = json.loads(out.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert COMMITTED.read_text(encoding="utf-8") == out.stdout, "regenerate: rbacbridge config-schema > docs/config-schema.json"


def test_every_setting_and_tenant_key_is_described_with_its_default():
    schema = config_schema()
    for option in config.SCHEMA:
        section, _, key = option.path.rpartition(".")
        where = schema["properties"][section]["properties"] if section else schema["properties"]
        assert where[key] == {"$ref": f"#/$defs/{option.path}"}
        definition = schema["$defs"][option.path]
        assert definition["description"].startswith(option.help)
        if option.default is not None:
            assert json.loads(json.dumps(definition["default"])) == json.loads(json.dumps(option.default)), option.path
    for section in {o.path.rpartition(".")[0] for o in config.SCHEMA} - {""}:
        assert schema["properties"][section]["additionalProperties"] is False
    tenant = schema["properties"]["tenants"]["items"]
    assert list(tenant["properties"]) == list(config.TENANT_KEYS)
    assert tenant["additionalProperties"] is False and tenant["required"] == ["name", "namespaces", "role"]
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["nodes.via"]["enum"] == list(config.NODE_VIA)


def test_examples_modeline_points_at_the_committed_schema():
    first = (REPO / "examples" / "rbacbridge.yaml").read_text(encoding="utf-8").splitlines()[0]
    match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    assert match, first
    assert (REPO / "examples" / match.group(1)).resolve() == COMMITTED


@pytest.mark.parametrize("path", ["examples/rbacbridge.yaml", "templates/scenarios/abc.yaml"])
def test_shipped_files_pass_the_schema_and_the_loader(path, tmp_path):
    text = (REPO / path).read_text(encoding="utf-8")
    assert list(VALIDATOR.iter_errors(yaml.safe_load(text))) == []
    assert loads(tmp_path, text)


INVALID = {
    "unknown setting": "aws:\n  regoin: us-east-1\n",
    "unknown section": "kube2iamm:\n  port: 8282\n",
    "port not a number": "kube2iam:\n  port: http\n",
    "port out of range": "kube2iam:\n  port: 70000\n",
    "via not a choice": "nodes:\n  via: telnet\n",
    "boolean not a boolean": "kube2iam:\n  debug: maybe\n",
    "account id too short": "account_id: 12345\n",
    "instance id": "instances: [i-xyz]\n",
    "section is a list": "aws: [us-east-1]\n",
    "seconds zero": "kubernetes:\n  rollout_timeout: 0\n",
    "toleration with Exists and a value": "kube2iam:\n  tolerations:\n    - {operator: Exists, value: gpu}\n",
    "toleration unknown field": "kube2iam:\n  tolerations:\n    - {operator: Exists, colour: red}\n",
    "empty tenants": "tenants:\n",
    "tenant without role": "tenants:\n  - name: a\n    namespaces: [a]\n",
    "tenant unknown key": "tenants:\n  - {name: a, namespaces: [a], role: a-s3, bucket: x}\n",
    "tenant namespaces empty": "tenants:\n  - {name: a, namespaces: [], role: a-s3}\n",
    "tenant namespace twice": "tenants:\n  - {name: a, namespaces: [a, a], role: a-s3}\n",
    "existing role not an ARN": "tenants:\n  - {name: a, namespaces: [a], role: {existing: a-s3}}\n",
    "tenants and a legacy key": "iam:\n  pod_role: x-s3\ntenants:\n  - {name: a, namespaces: [a], role: a-s3}\n",
    "not a mapping": "- account_id\n",
}


@pytest.mark.parametrize("name", INVALID)
def test_invalid_documents_fail_the_schema_and_the_loader(name, tmp_path):
    text = INVALID[name]
    assert list(VALIDATOR.iter_errors(yaml.safe_load(text))), f"the schema accepts {name}"
    assert not loads(tmp_path, text), f"the loader accepts {name}"


VALUES = [None, "", True, False, "true", "false", "yes", 0, 1, 64, 300, 8282, 65536, -1, 2.5, 86401, "8282", "2.5",
          "abc", "auto", "ssh", "dedicated", "node", "Client-A", "client-a", "nettech-helm-test", "lanre.k8s.dev",
          "us-west-2", "mars", "i-0123456789abcdef0", "123456789012", 123456789012, "http://127.0.0.1:5000",
          "http://user:pw@127.0.0.1", "10.0.0.1", "::1", "cali+", "ec2-user", "alias/mine", "x" * 70,
          "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore", "arn:aws:iam::111122223333:role/team/b",
          "nettech-helm-test/logs/*", "node-a:2222", "8181, 8282", [], ["a"], ["i-0123456789abcdef0"], [8181, 8282],
          ["10.0.0.1", "node-a:2222"], ["a", "a"], {}, {"a": 1}, {"existing": "arn:aws:iam::111122223333:role/x"},
          [{"operator": "Exists"}], [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}],
          [{"operator": "Exists", "value": "v"}], [{}], [{"key": "k", "tolerationSeconds": "30"}]]


def _nested(path: str, value) -> dict:
    section, _, key = path.rpartition(".")
    return {section: {key: value}} if section else {key: value}


def _documents():
    for option in config.SCHEMA:
        for value in VALUES:
            yield option.path, _nested(option.path, value)
    base = {"name": "client-a", "namespaces": ["client-a"], "role": "client-a-s3", "read": ["nettech-helm-test"]}
    for key in config.TENANT_KEYS:
        for value in VALUES:
            yield f"tenants[].{key}", {"tenants": [{**base, key: value}]}


def test_the_schema_never_refuses_what_the_loader_accepts(tmp_path):
    refused_by_schema = 0
    wrong = []
    for where, document in _documents():
        text = yaml.safe_dump(document, sort_keys=False)
        schema_ok = VALIDATOR.is_valid(yaml.safe_load(text))
        refused_by_schema += not schema_ok
        if not schema_ok and loads(tmp_path, text):
            wrong.append(f"{where}: {text.strip()!r}")
    assert not wrong, "the schema refuses what the loader accepts:\n" + "\n".join(wrong[:20])
    # the schema does check: it refuses a good part of these values (a schema of {} would refuse none)
    assert refused_by_schema > len(VALUES) * len(config.SCHEMA) // 3, refused_by_schema
