"""A real moto server over HTTP (not the decorator), and helpers to inspect the state left in it."""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import boto3
import botocore.loaders
import botocore.session
import pytest

from rbacbridge.aws import AwsGateway
from rbacbridge.config import Config
from rbacbridge.planner import Context

ACCOUNT = "123456789012"
MUTATING_PREFIXES = ("Create", "Delete", "Update", "Attach", "Detach", "Put", "Add", "Remove", "Tag", "Untag",
                     "Associate", "Disassociate", "Replace", "SetDefault")


@lru_cache(maxsize=1)
def _shared_loader():
    return botocore.loaders.create_loader()


def is_mutating(operation: str) -> bool:
    return operation.startswith(MUTATING_PREFIXES)


@pytest.fixture(scope="session")
def moto_url():
    """One moto server per test run (trust decided as AWS does), its answers checked once before any test
    believes them: a backend that answers a known-answer probe unlike AWS ends the run with that one line."""
    from rbacbridge.sandbox_backend import BackendMismatch, check_backend, start_moto

    server, url = start_moto()
    try:
        if os.environ.get("RBACBRIDGE_TESTS_SKIP_BACKEND_CHECK") != "1":  # ci/newest: see which tests a release breaks
            check_backend(url)
    except BackendMismatch as exc:
        server.stop()
        pytest.exit(f"error: {exc}", returncode=3)
    yield url
    server.stop()


@dataclass
class Sandbox:
    url: str
    calls: list[tuple[str, str, dict]] = field(default_factory=list)
    _clients: dict = field(default_factory=dict)

    def session(self, record: bool = True) -> boto3.Session:
        core = botocore.session.get_session()
        core.register_component("data_loader", _shared_loader())  # parse service models once per run
        session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
                                botocore_session=core)
        if record:
            session.events.register("before-parameter-build", self._record)
        return session

    def _record(self, model, params, **_):
        self.calls.append((model.service_model.service_name, model.name, params))

    def client(self, service: str):
        if service not in self._clients:
            self._clients[service] = self.session(record=False).client(service, endpoint_url=self.url, region_name="us-east-1")
        return self._clients[service]

    @property
    def mutating_calls(self) -> list[tuple[str, str, dict]]:
        return [c for c in self.calls if is_mutating(c[1])]

    def config(self, **values) -> Config:
        return Config(**{"account_id": ACCOUNT, "endpoint_url": self.url, **values})

    def context(self, config: Config | None = None, session: boto3.Session | None = None, **kw) -> Context:
        config = config or self.config()
        gateway = AwsGateway(config, session=session or self.session())
        return Context(config=config, parts=("aws",), gateways={"aws": gateway}, **kw)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ENDPOINT_URL=self.url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                   AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
                   PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return env

    def new_instance(self, previous_profile: str | None = None) -> str:
        ec2 = self.client("ec2")
        instance = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        if previous_profile:
            iam = self.client("iam")
            iam.create_instance_profile(InstanceProfileName=previous_profile)
            ec2.associate_iam_instance_profile(InstanceId=instance, IamInstanceProfile={"Name": previous_profile})
        return instance

    def snapshot(self) -> dict:
        """Everything the AWS part could touch, as plain data, to compare before/after."""
        iam, ec2 = self.client("iam"), self.client("ec2")
        roles = {r["RoleName"]: r for r in iam.list_roles()["Roles"]}
        return {
            "roles": {n: {"trust": r["AssumeRolePolicyDocument"],
                          "attached": sorted(p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=n)["AttachedPolicies"])}
                      for n, r in roles.items()},
            "policies": sorted(p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]),
            "profiles": {p["InstanceProfileName"]: [r["RoleName"] for r in p["Roles"]]
                         for p in iam.list_instance_profiles()["InstanceProfiles"]},
            "associations": sorted((a["InstanceId"], a["IamInstanceProfile"]["Arn"])
                                   for a in ec2.describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"]
                                   if a["State"] in ("associated", "associating")),
            "instance_tags": sorted((i["InstanceId"], t["Key"], t["Value"])
                                    for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
                                    for t in i.get("Tags", [])),
        }


def recorded_actions(url: str, location, run):
    """The Query API actions (`Action=` of each request body) moto's recorder saw while `run()` ran:
    (actions, what run returned). `location`: where this in-process moto writes its log."""
    import base64
    import urllib.parse

    from moto.moto_api import recorder

    recorder._location = str(location)  # the stand-in's own setting
    post = lambda path: urllib.request.urlopen(urllib.request.Request(url + path, data=b"", method="POST"))  # noqa: E731
    post("/moto-api/recorder/reset-recording")
    post("/moto-api/recorder/start-recording")
    try:
        done = run()
    finally:
        post("/moto-api/recorder/stop-recording")
    actions = []
    for line in Path(location).read_text().splitlines():
        entry = json.loads(line)
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode()
        actions += urllib.parse.parse_qs(body).get("Action", [])
    return actions, done


def reset_moto(url: str) -> None:
    request = urllib.request.Request(f"{url}/moto-api/reset", data=b"", method="POST")
    urllib.request.urlopen(request).read()


@pytest.fixture
def sandbox(moto_url, monkeypatch):
    reset_moto(moto_url)
    monkeypatch.setenv("RBACBRIDGE_RETRY_BASE_SECONDS", "0.001")
    return Sandbox(moto_url)


def policy_document(iam, name: str) -> dict:
    arn = f"arn:aws:iam::{ACCOUNT}:policy/{name}"
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
    return json.loads(document) if isinstance(document, str) else document


INSTALL = "nettech-instance-profile"  # the default install id: the default instance profile's name
ALIAS = f"alias/rbacbridge/{INSTALL}"


def record_key(sandbox, alias: str = ALIAS) -> dict | None:
    """The KMS key behind an install's alias (describe_key's KeyMetadata), or None."""
    kms = sandbox.client("kms")
    try:
        return kms.describe_key(KeyId=alias)["KeyMetadata"]
    except kms.exceptions.NotFoundException:
        return None


def key_tags(sandbox, key_id: str) -> dict[str, str]:
    return {t["TagKey"]: t["TagValue"] for t in sandbox.client("kms").list_resource_tags(KeyId=key_id)["Tags"]}


def signed_record(sandbox, install: str = INSTALL, alias: str | None = None) -> dict | None:
    """An install's record read the way an operator could with the AWS CLI (list-resource-tags, join the
    chunks, base64 -d | zlib-flate -uncompress), its signature checked by KMS itself (kms verify):
    independent of rbacbridge's reader. None when the key holds no record."""
    import base64
    import hashlib
    import zlib

    key = record_key(sandbox, alias or f"alias/rbacbridge/{install}")
    if key is None:
        return None
    tags = key_tags(sandbox, key["KeyId"])
    prefix = f"rbacbridge:record:{install}:"
    if f"{prefix}sig" not in tags:
        return None
    count, signature = tags[f"{prefix}sig"].split(" ")
    payload = "".join(tags[f"{prefix}{n}"] for n in range(1, int(count) + 1))
    message = f"rbacbridge-record/v1 install={install} chunks={count} sha256={hashlib.sha256(payload.encode()).hexdigest()}"
    verdict = sandbox.client("kms").verify(KeyId=key["KeyId"], Message=message.encode(), MessageType="RAW",
                                           Signature=base64.b64decode(signature), SigningAlgorithm="ECDSA_SHA_256")
    assert verdict["SignatureValid"], "the record's signature does not verify"
    return json.loads(zlib.decompress(base64.b64decode(payload)))


def kms_state(sandbox) -> dict:
    """rbacbridge's aliases and every key's state (what teardown must leave: no alias, keys pending deletion)."""
    kms = sandbox.client("kms")
    aliases = sorted(a["AliasName"] for a in kms.list_aliases()["Aliases"] if a["AliasName"].startswith("alias/rbacbridge/"))
    keys = {k["KeyId"]: kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]["KeyState"] for k in kms.list_keys()["Keys"]}
    return {"aliases": aliases, "keys": keys}
