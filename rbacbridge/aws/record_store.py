"""Where this install's record lives and how a run changes it.

`RecordKey`: the install's KMS key (found by alias, or pinned by record.kms_key), the record read from its
tags and verified once per command, and the writes (kms:Sign, then kms:TagResource). `Draft`: what this
run will change in the record; setup writes it twice, first before anything is created or associated,
last with the unique ids the creates returned. Format and verification: `record`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from rbacbridge import MANAGED_BY_KEY, MANAGED_BY_VALUE
from rbacbridge.aws.record import (ALIAS_PREFIX, DELETION_WINDOW_DAYS, INSTALL_TAG, KEY_SPEC, KEY_USAGE, KMS_TAGS_PER_KEY,
                                   MESSAGE_TYPE, RECORD_TAG, SIGNING_ALGORITHM, Owned, Pending, Record, RecordFull,
                                   Replaced, _stamp, encode, read, record_tags)
from rbacbridge.config import Config, iam_key
from rbacbridge.errors import RbacbridgeError, UsageError, shown

if TYPE_CHECKING:
    from rbacbridge.aws.client import AwsGateway


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def key_policy(account: str, partition: str) -> dict[str, Any]:
    """The key policy: the account delegates to IAM, so only principals IAM grants kms:Sign can sign."""
    return {"Version": "2012-10-17", "Id": "rbacbridge-record", "Statement": [{
        "Sid": "DelegateToIam", "Effect": "Allow", "Principal": {"AWS": f"arn:{partition}:iam::{account}:root"},
        "Action": "kms:*", "Resource": "*"}]}


class RecordKey:
    """This install's key and its record, read (and verified) once per command."""

    def __init__(self, gw, config: Config, account: str):
        self.gw = gw
        self.install = config.effective_install_id
        self.account = account
        self.partition = config.partition.name
        self.pinned = config.record_kms_key is not None
        self.ref = config.record_kms_key or ALIAS_PREFIX + self.install
        self.arn: str | None = None
        self.state: str | None = None
        self.tags: dict[str, str] = {}
        self.record: Record | None = None
        self._lock = threading.Lock()

    def recorded_name(self, kind: str, name: str) -> str:
        """The name as this install's record spells it (IAM names ignore case), else as configured."""
        return self.record.recorded_name(kind, name) if self.record else name

    @property
    def alias(self) -> str:
        return ALIAS_PREFIX + self.install

    @property
    def exists(self) -> bool:
        return self.arn is not None

    def load(self) -> "RecordKey":
        found = self.gw.get_or_none("kms", "describe_key", ("NotFoundException",), KeyId=self.ref)
        if found is None:
            if self.pinned:
                raise UsageError(f"record.kms_key {shown(self.ref)}: no such KMS key in region {self.gw.config.region}")
            return self
        meta = found["KeyMetadata"]
        self.arn, self.state = meta["Arn"], meta.get("KeyState") or ("Enabled" if meta.get("Enabled") else "Disabled")
        where = f"record.kms_key {shown(self.ref)}" if self.pinned else f"KMS key {self.arn} (alias {self.alias})"
        if meta.get("KeySpec", meta.get("CustomerMasterKeySpec")) != KEY_SPEC or meta.get("KeyUsage") != KEY_USAGE:
            raise UsageError(f"{where} is not an {KEY_SPEC} {KEY_USAGE} key: it cannot sign rbacbridge's record")
        arn_parts = self.arn.split(":")
        if arn_parts[4] != self.account or arn_parts[3] != self.gw.config.region:
            raise UsageError(f"{where} is not in account {self.account}, region {self.gw.config.region}: the record "
                             "lives in the key's tags, which only its own account can read and write")
        if self.state == "PendingDeletion":
            return self
        if self.state != "Enabled":
            raise RbacbridgeError(f"{where} is {self.state}: enable it (aws kms enable-key) to read or write the record")
        self.tags = self._tags()
        public_key = None
        if record_tags(self.install, self.tags):
            public_key = self.gw.call("kms", "get_public_key", KeyId=self.arn)["PublicKey"]
        self.record = read(self.tags, self.install, self.account, self.arn, public_key)
        return self

    def _tags(self) -> dict[str, str]:
        tags: dict[str, str] = {}
        params: dict[str, Any] = {"KeyId": self.arn}
        while True:
            page = self.gw.call("kms", "list_resource_tags", **params)
            tags.update({t["TagKey"]: t["TagValue"] for t in page.get("Tags", [])})
            if not page.get("Truncated") or not page.get("NextMarker"):
                return tags
            params["Marker"] = page["NextMarker"]

    @property
    def created_by_rbacbridge(self) -> bool:
        """Found by rbacbridge's alias and carrying the tags setup gives the key it creates."""
        return (not self.pinned and self.tags.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE
                and self.tags.get(INSTALL_TAG) == self.install)

    def room(self) -> int:
        """How many chunk tags the key can hold for this record (its other tags count against KMS's 50)."""
        others = sum(1 for k in self.tags if not k.startswith(f"{RECORD_TAG}{self.install}:"))
        if not self.exists:
            others = 2  # managed-by and rbacbridge:install, set when setup creates it
        return KMS_TAGS_PER_KEY - others - 1

    def empty_record(self) -> Record:
        return Record(self.install, self.account, self.arn or "")

    def create(self) -> None:
        """CreateKey (tagged, policy delegating to IAM) then its alias; the key exists before anything else."""
        created = self.gw.call("kms", "create_key", KeySpec=KEY_SPEC, KeyUsage=KEY_USAGE,
                               Description=f"rbacbridge: signs the record of install {self.install}",
                               Policy=json.dumps(key_policy(self.account, self.partition)),
                               Tags=[{"TagKey": MANAGED_BY_KEY, "TagValue": MANAGED_BY_VALUE},
                                     {"TagKey": INSTALL_TAG, "TagValue": self.install}])
        self.arn, self.state = created["KeyMetadata"]["Arn"], "Enabled"
        self.tags = {MANAGED_BY_KEY: MANAGED_BY_VALUE, INSTALL_TAG: self.install}
        self.gw.call("kms", "create_alias", AliasName=self.alias, TargetKeyId=self.arn)

    def write(self, record: Record) -> None:
        """Sign and store: every chunk and the signature in one TagResource, then drop surplus chunks
        of a longer earlier record (ignored until then: the signature covers the count)."""
        with self._lock:
            record.key = self.arn or ""
            record.serial = (self.record.serial if self.record else 0) + 1
            record.signed_at = _stamp(now())
            chunks, message = encode(record)
            if len(chunks) > self.room():
                raise RecordFull(f"the record needs {len(chunks)} tags on KMS key {self.arn}, it has room for {self.room()}")
            signed = self.gw.call("kms", "sign", KeyId=self.arn, Message=message, MessageType=MESSAGE_TYPE,
                                  SigningAlgorithm=SIGNING_ALGORITHM)["Signature"]
            prefix = f"{RECORD_TAG}{self.install}:"
            tags = {f"{prefix}{n}": chunk for n, chunk in enumerate(chunks, 1)}
            tags[f"{prefix}sig"] = f"{len(chunks)} {base64.b64encode(signed).decode('ascii')}"
            self.gw.call("kms", "tag_resource", KeyId=self.arn, Tags=[{"TagKey": k, "TagValue": v} for k, v in tags.items()])
            surplus = sorted(k for k in self.tags if k.startswith(prefix) and k not in tags)
            if surplus:
                self.gw.call("kms", "untag_resource", KeyId=self.arn, TagKeys=surplus)
            self.tags = {**{k: v for k, v in self.tags.items() if k not in surplus}, **tags}
            self.record = record.copy()

    def delete(self) -> None:
        """Teardown's last step: schedule the key's deletion, then drop the alias (an interrupted
        teardown leaves the alias on a key pending deletion, which the next teardown finds)."""
        if self.state != "PendingDeletion":
            # By key id: moto (5.2) answers HTTP 500 to ScheduleKeyDeletion by ARN; AWS takes either.
            self.gw.call("kms", "schedule_key_deletion", KeyId=(self.arn or "").rsplit("/", 1)[-1],
                         PendingWindowInDays=DELETION_WINDOW_DAYS)
        self.gw.call("kms", "delete_alias", AliasName=self.alias)


def record_key(ctx, gw: AwsGateway, account: str) -> RecordKey:
    """This install's KMS key and its verified record (RecordInvalid: exit 1, before anything changes)."""
    return RecordKey(gw, ctx.config, account).load()


def _placeholder(prefix: str, seed: str, upper: bool = True) -> str:
    """An id not known yet, as incompressible as the real one will be (the size check must not flatter)."""
    digest = hashlib.sha256(seed.encode()).hexdigest()[:17]
    return prefix + (digest.upper() if upper else digest)


_PLACEHOLDER_PREFIX = {"role": "AROA", "policy": "ANPA", "profile": "AIPA"}


@dataclass
class Draft:
    """What this run will change in the record. Setup writes it twice: first (before anything is created
    or associated) the intents, adoptions and what each instance had; last, the unique ids the creates
    returned and what was deleted. Create steps report their ids through `created`."""

    key: RecordKey
    intents: list[Pending] = field(default_factory=list)  # names this run creates
    claimed: list[tuple[str, str, Owned]] = field(default_factory=list)  # (kind, id, Owned): adopted, or pending accepted
    replaced: dict[str, Replaced] = field(default_factory=dict)
    associations: dict[str, str] = field(default_factory=dict)  # known at plan time (instance already ours)
    removed: list[tuple[str, str]] = field(default_factory=list)  # (kind, id) gone after this run
    results: list[tuple[str, str, Owned]] = field(default_factory=list)  # filled while running
    made_associations: dict[str, str] = field(default_factory=dict)  # filled while running
    kept: list[str] = field(default_factory=list)  # teardown: what the record names that stays
    changes_iam: bool = False  # setup changes a trust, policy or association: the record notes when (Record.changed)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> Record:
        return self.key.record.copy() if self.key.record else self.key.empty_record()

    def intend(self, kind: str, name: str, tenant: str | None) -> None:
        self.intents.append(Pending(kind, name, tenant or "", ""))

    def claim(self, kind: str, unique_id: str, name: str, tenant: str | None) -> None:
        self.claimed.append((kind, unique_id, Owned(name, tenant or "")))

    def created(self, kind: str, unique_id: str, name: str, tenant: str | None) -> None:
        with self._lock:
            self.results.append((kind, unique_id, Owned(name, tenant or "")))

    def associated(self, instance: str, association_id: str) -> None:
        with self._lock:
            self.made_associations[instance] = association_id

    @property
    def first_needed(self) -> bool:
        return bool(self.intents or self.claimed or self.replaced or self.associations)

    @property
    def last_needed(self) -> bool:
        return bool(self.intents or self.removed or self.replaced or self.changes_iam)

    def _claim_into(self, record: Record, kind: str, unique_id: str, owned: Owned) -> None:
        record.owned[kind][unique_id] = owned
        record.pending = [p for p in record.pending if not (p.kind == kind and iam_key(p.name) == iam_key(owned.name))]

    def first(self, at: datetime | None = None) -> Record:
        record = self.base
        stamp = _stamp(at or now())
        for kind, unique_id, owned in self.claimed:
            self._claim_into(record, kind, unique_id, owned)
        for intent in self.intents:
            record.pending = [p for p in record.pending if not (p.kind == intent.kind and iam_key(p.name) == iam_key(intent.name))]
            record.pending.append(replace(intent, at=stamp))
        record.replaced.update(self.replaced)
        for instance in self.replaced:
            record.associations.pop(instance, None)  # about to be replaced: the new id comes with the last write
        record.associations.update(self.associations)
        if self.changes_iam:  # a lower bound until the last write (a setup that stops half-way leaves this one)
            record.changed = stamp
        return record

    def last(self, record: Record) -> Record:
        """Runs only after every other step of the setup succeeded: each intent was created (its id is in
        `results`), so no pending entry is left (one left over from an abandoned run included)."""
        record = record.copy()
        for kind, unique_id, owned in self.results:
            self._claim_into(record, kind, unique_id, owned)
        record.pending = []
        record.associations.update(self.made_associations)
        for kind, unique_id in self.removed:
            record.owned[kind].pop(unique_id, None)
        if self.changes_iam:
            record.changed = _stamp(now())
        return record

    def projected(self) -> Record:
        """The record after this run, with placeholders for the ids not known yet (to check it fits)."""
        record = self.first(datetime(2000, 1, 1, tzinfo=timezone.utc))
        for intent in self.intents:
            self._claim_into(record, intent.kind, _placeholder(_PLACEHOLDER_PREFIX[intent.kind], intent.kind + intent.name),
                             Owned(intent.name, intent.tenant))
        for instance in self.replaced:
            record.associations[instance] = _placeholder("iip-assoc-", instance, upper=False)
        for kind, unique_id in self.removed:
            record.owned[kind].pop(unique_id, None)
        return record

    def write_first(self) -> None:
        self.key.write(self.first())

    def write_last(self) -> None:
        self.key.write(self.last(self.key.record or self.first()))
