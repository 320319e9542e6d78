"""The migration's record: which phase it is in, what each phase replaced and what it created, signed with the
install's KMS key (the key of rbacbridge's own record, `rbacbridge.aws.record_store`; created when absent).

It lives beside the install's record, in the key's tags `rbacbridge:migration:<install id>:1..n` and `:sig`,
signed as `rbacbridge-migration/v1 install=<id> chunks=<n> sha256=<hex>` (a statement no install record uses,
so neither signature can be replayed as the other). Only principals IAM lets call kms:Sign on the key can write
one that verifies: rollback restores trust policies from it, and deletes only ServiceAccounts whose uid it
names, or the OIDC provider it says the dual phase created. Tags and labels are never evidence.

Content (canonical JSON, zlib, base64, 256-character chunks):

    phase       the last phase applied or being applied: dual | cutover | finish
    state       running (a phase started and has not finished: re-run it) | done
    target, issuer, cluster_name, dual_at (when dual started: "restarted since dual" is measured from it)
    provider    {"arn", "created": true|false, "intent": stamp}   the IRSA OIDC provider
    trust       role name -> {"dual": trust before dual, "finish": trust before finish}
    accounts    "ns/name" -> {"uid": uid|null, "created": bool, "intent": stamp, "annotated": bool}
    workloads   "Kind ns/name" -> {"from": SA before cutover, "to": SA after, "restarted_at": stamp}
    associations "ns/name" -> {"id": the Pod Identity association dual made | null, "intent": stamp}
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from rbacbridge.aws.record import MIGRATION_TAG
from rbacbridge.errors import RbacbridgeError

VERSION = 1
TAG = MIGRATION_TAG  # + "<install id>:sig" and "<install id>:<n>"
PHASES = ("dual", "cutover", "finish")
CLOCK_SKEW = timedelta(minutes=5)
CREATE_WINDOW = timedelta(hours=1)
_MAX_BODY = 1 << 20


class MigrationRecordInvalid(RbacbridgeError):
    """The migration record does not verify: nothing changes on its strength (exit 1)."""


def stamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def created_after_intent(intent: str | None, created: Any) -> bool:
    """Was an object AWS or Kubernetes says was created at `created` the one whose creation was signed at `intent`?"""
    if not intent:
        return False
    if isinstance(created, str):
        try:
            created = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            return False
    if not isinstance(created, datetime):
        return False
    created = created if created.tzinfo else created.replace(tzinfo=timezone.utc)
    at = parse_stamp(intent)
    return at - CLOCK_SKEW <= created <= at + CREATE_WINDOW


@dataclass
class MigrationRecord:
    install: str
    account: str
    target: str
    phase: str = "dual"
    state: str = "running"
    issuer: str | None = None
    cluster_name: str | None = None
    dual_at: str = ""
    provider: dict[str, Any] = field(default_factory=dict)
    trust: dict[str, dict[str, Any]] = field(default_factory=dict)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    associations: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"v": VERSION, "install": self.install, "account": self.account, "target": self.target,
                "phase": self.phase, "state": self.state, "issuer": self.issuer, "cluster_name": self.cluster_name,
                "dual_at": self.dual_at, "provider": self.provider, "trust": self.trust, "accounts": self.accounts,
                "workloads": self.workloads, "associations": self.associations}

    @classmethod
    def from_json(cls, data: Any) -> "MigrationRecord":
        if not isinstance(data, dict) or data.get("v") != VERSION:
            raise MigrationRecordInvalid(f"migration record content is malformed: not a version {VERSION} record")
        for name, kind in (("install", str), ("account", str), ("target", str), ("phase", str), ("state", str),
                           ("dual_at", str), ("provider", dict), ("trust", dict), ("accounts", dict), ("workloads", dict)):
            if not isinstance(data.get(name), kind):
                raise MigrationRecordInvalid(f"migration record content is malformed: field {name}")
        if data["phase"] not in PHASES or data["state"] not in ("running", "done"):
            raise MigrationRecordInvalid("migration record content is malformed: phase or state")
        return cls(data["install"], data["account"], data["target"], data["phase"], data["state"], data.get("issuer"),
                   data.get("cluster_name"), data["dual_at"], data["provider"], data["trust"], data["accounts"],
                   data["workloads"], data.get("associations") if isinstance(data.get("associations"), dict) else {})


def _statement(install: str, chunks: int, payload: str) -> bytes:
    digest = hashlib.sha256(payload.encode("ascii")).hexdigest()
    return f"rbacbridge-migration/v{VERSION} install={install} chunks={chunks} sha256={digest}".encode("ascii")


class MigrationStore:
    """The migration record on the install's KMS key (`key`: rbacbridge.aws.record_store.RecordKey, loaded)."""

    def __init__(self, key):
        self.key = key
        self.prefix = f"{TAG}{key.install}:"
        self.record: MigrationRecord | None = None

    def load(self) -> "MigrationStore":
        from rbacbridge.aws.record import _signature_valid

        mine = {k[len(self.prefix):]: v for k, v in self.key.tags.items() if k.startswith(self.prefix)}
        if not mine:
            return self
        where = f"migration record of install {self.key.install} on KMS key {self.key.arn}"
        count_text, _, signature = mine.get("sig", "").partition(" ")
        if not re.fullmatch(r"[1-9][0-9]{0,2}", count_text) or not signature:
            raise MigrationRecordInvalid(f"{where} does not verify: its signature tag is missing or malformed")
        count = int(count_text)
        if any(str(n) not in mine for n in range(1, count + 1)):
            raise MigrationRecordInvalid(f"{where} does not verify: a chunk is missing")
        payload = "".join(mine[str(n)] for n in range(1, count + 1))
        public_key = self.key.gw.call("kms", "get_public_key", KeyId=self.key.arn)["PublicKey"]
        if not _signature_valid(public_key, signature, _statement(self.key.install, count, payload)):
            raise MigrationRecordInvalid(f"{where} does not verify: the signature does not match its content "
                                         "(changed by someone without kms:Sign on the key)")
        try:
            inflater = zlib.decompressobj()
            body = inflater.decompress(base64.b64decode(payload, validate=True), _MAX_BODY)
            data = json.loads(body)
        except (ValueError, zlib.error) as exc:
            raise MigrationRecordInvalid(f"{where} is signed but unreadable: {exc}") from None
        record = MigrationRecord.from_json(data)
        if (record.install, record.account) != (self.key.install, self.key.account):
            raise MigrationRecordInvalid(f"{where} does not verify: it names another install or account")
        self.record = record
        return self

    def write(self, record: MigrationRecord) -> None:
        from rbacbridge.aws.record import KMS_TAG_VALUE_MAX, MESSAGE_TYPE, SIGNING_ALGORITHM, RecordFull

        if not self.key.exists:
            self.key.create()
        body = json.dumps(record.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        payload = base64.b64encode(zlib.compress(body, 9)).decode("ascii")
        chunks = [payload[n:n + KMS_TAG_VALUE_MAX] for n in range(0, len(payload), KMS_TAG_VALUE_MAX)]
        others = sum(1 for k in self.key.tags if not k.startswith(self.prefix))
        if len(chunks) + 1 + others > 50:
            raise RecordFull(f"the migration record needs {len(chunks) + 1} tags on KMS key {self.key.arn}, "
                             f"it has room for {50 - others}")
        signed = self.key.gw.call("kms", "sign", KeyId=self.key.arn, Message=_statement(self.key.install, len(chunks), payload),
                                  MessageType=MESSAGE_TYPE, SigningAlgorithm=SIGNING_ALGORITHM)["Signature"]
        tags = {f"{self.prefix}{n}": chunk for n, chunk in enumerate(chunks, 1)}
        tags[f"{self.prefix}sig"] = f"{len(chunks)} {base64.b64encode(signed).decode('ascii')}"
        self.key.gw.call("kms", "tag_resource", KeyId=self.key.arn, Tags=[{"TagKey": k, "TagValue": v} for k, v in tags.items()])
        surplus = sorted(k for k in self.key.tags if k.startswith(self.prefix) and k not in tags)
        if surplus:
            self.key.gw.call("kms", "untag_resource", KeyId=self.key.arn, TagKeys=surplus)
        self.key.tags = {**{k: v for k, v in self.key.tags.items() if k not in surplus}, **tags}
        self.record = MigrationRecord.from_json(json.loads(body))

    def erase(self) -> None:
        """After a rollback from dual: nothing of the migration is left, so neither is its record."""
        mine = sorted(k for k in self.key.tags if k.startswith(self.prefix))
        if mine:
            self.key.gw.call("kms", "untag_resource", KeyId=self.key.arn, TagKeys=mine)
        self.key.tags = {k: v for k, v in self.key.tags.items() if k not in mine}
        self.record = None


def open_store(ctx, aws_gw, account: str) -> MigrationStore:
    from rbacbridge.aws.record_store import record_key

    return MigrationStore(record_key(ctx, aws_gw, account)).load()
