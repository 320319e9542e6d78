"""The record of one install: what it created (by unique id) and what it replaced, signed with a KMS key.

Threat model, format and limits: docs/ownership.md. In short: the record is canonical JSON, compressed,
base64, cut into 256-character tag values on the install's KMS key (ECC_NIST_P256, SIGN_VERIFY), with a
signature tag covering the chunk count and a hash of the chunks. Only principals IAM lets call kms:Sign
on that key (the operator, `rbacbridge permissions`) can write a record that verifies; anyone who can
only tag (IAM, EC2, even the key) can at most make it fail to verify, which stops setup and teardown.

A resource is this install's only when the verified record names its unique id (RoleId, PolicyId,
InstanceProfileId), or names it as pending (setup recorded the intent to create it) and AWS's CreateDate
falls in the window after that intent (`accept_pending`). Tags are never evidence of ownership.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import zlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from rbacbridge import MANAGED_BY_KEY, MANAGED_BY_VALUE
from rbacbridge.config import Config, iam_key
from rbacbridge.errors import RbacbridgeError, UsageError, shown

RECORD_VERSION = 1
KEY_SPEC = "ECC_NIST_P256"
KEY_USAGE = "SIGN_VERIFY"
SIGNING_ALGORITHM = "ECDSA_SHA_256"
# The signed message is a short statement holding the chunks' hash, signed as RAW (KMS hashes it with
# SHA-256). Not MessageType DIGEST: moto ignores it and hashes the digest again, so a signature moto makes
# would not verify locally the way AWS's does; RAW behaves the same on both.
MESSAGE_TYPE = "RAW"
ALIAS_PREFIX = "alias/rbacbridge/"
INSTALL_TAG = "rbacbridge:install"
RECORD_TAG = "rbacbridge:record:"  # + "<install id>:sig" and "<install id>:<n>", n = 1..chunks
KMS_TAGS_PER_KEY = 50
KMS_TAG_VALUE_MAX = 256
DELETION_WINDOW_DAYS = 7
# A pending create is accepted when AWS's CreateDate is at most CLOCK_SKEW before the signed intent
# (SigV4 refuses requests signed more than 5 minutes off AWS's clock) and at most CREATE_WINDOW after it.
CLOCK_SKEW = timedelta(minutes=5)
CREATE_WINDOW = timedelta(hours=1)
KINDS = ("role", "policy", "profile")
_PLURAL = {"role": "roles", "policy": "policies", "profile": "profiles"}
_MAX_BODY = 1 << 20

# AWS's unique ids are AROA / ANPA / AIPA + 17 upper-case letters and digits; moto's differ in form.
_PROFILE_ID = re.compile(r"[A-Za-z0-9]{16,64}")
_UNIQUE_ID = {"role": _PROFILE_ID, "policy": _PROFILE_ID, "profile": _PROFILE_ID}
_NAME = re.compile(r"[A-Za-z0-9_+=,.@-]{1,128}")
_TENANT = re.compile(r"|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_INSTANCE = re.compile(r"i-[0-9a-f]{8,17}")
_ASSOCIATION = re.compile(r"iip-assoc-[0-9a-f]{8,17}")
_PROFILE_ARN = re.compile(r"arn:aws[a-z-]*:iam::[0-9]{12}:instance-profile/(?:[A-Za-z0-9_+=,.@-]+/)*[A-Za-z0-9_+=,.@-]{1,128}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


class RecordInvalid(RbacbridgeError):
    """The record on the key does not verify: nothing is changed on its strength (exit 1)."""


class RecordFull(RbacbridgeError):
    pass


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def accept_pending(intent_at: str, create_date: Any) -> bool:
    """Is a resource AWS says was created at `create_date` the one whose creation was signed at `intent_at`?"""
    if not isinstance(create_date, datetime):
        return False
    created = create_date if create_date.tzinfo else create_date.replace(tzinfo=timezone.utc)
    intent = _parse_stamp(intent_at)
    return intent - CLOCK_SKEW <= created <= intent + CREATE_WINDOW


# --- the record --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owned:
    """A resource the install created (or adopted): its name when recorded, and the tenant it serves."""

    name: str
    tenant: str = ""


@dataclass(frozen=True)
class Pending:
    """Setup's signed intent to create a resource of this name (its unique id is not known yet)."""

    kind: str
    name: str
    tenant: str
    at: str


@dataclass(frozen=True)
class Replaced:
    """What an instance had before setup associated the install's profile, as EC2 reported it then."""

    association_id: str | None = None
    profile_id: str | None = None
    profile_arn: str | None = None
    unknown: bool = False  # recorded by `setup --adopt` while it already held the profile: nothing is given back

    @property
    def had_none(self) -> bool:
        return self.association_id is None and not self.unknown

    @property
    def profile_name(self) -> str:
        return self.profile_arn.rsplit("/", 1)[-1] if self.profile_arn else "none"

    def storable(self) -> bool:
        if self.association_id is None:
            return True
        return (_ASSOCIATION.fullmatch(self.association_id) is not None and _PROFILE_ID.fullmatch(self.profile_id or "") is not None
                and _PROFILE_ARN.fullmatch(self.profile_arn or "") is not None)

    def to_json(self) -> list[str]:
        if self.unknown:
            return ["?"]
        if self.association_id is None:
            return []
        return [self.association_id, self.profile_id or "", self.profile_arn or ""]


@dataclass
class Record:
    install: str
    account: str
    key: str  # ARN of the key that signs it
    serial: int = 0
    signed_at: str = ""
    owned: dict[str, dict[str, Owned]] = field(default_factory=lambda: {k: {} for k in KINDS})  # kind -> unique id -> Owned
    associations: dict[str, str] = field(default_factory=dict)  # instance -> association id setup made
    replaced: dict[str, Replaced] = field(default_factory=dict)  # instance -> what it had before
    pending: list[Pending] = field(default_factory=list)

    def copy(self) -> "Record":
        return replace(self, owned={k: dict(v) for k, v in self.owned.items()}, associations=dict(self.associations),
                       replaced=dict(self.replaced), pending=list(self.pending))

    def owner(self, kind: str, unique_id: str | None) -> Owned | None:
        return self.owned[kind].get(unique_id or "")

    def pending_for(self, kind: str, name: str) -> Pending | None:
        return next((p for p in self.pending if p.kind == kind and iam_key(p.name) == iam_key(name)), None)

    def recorded_name(self, kind: str, name: str) -> str:
        """The name as the record has it (IAM names ignore case; lookups use the recorded spelling)."""
        for owned in self.owned[kind].values():
            if iam_key(owned.name) == iam_key(name):
                return owned.name
        pending = self.pending_for(kind, name)
        return pending.name if pending else name

    def to_json(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION, "install": self.install, "account": self.account, "key": self.key,
            "serial": self.serial, "at": self.signed_at,
            **{_PLURAL[kind]: {i: [o.name, o.tenant] for i, o in sorted(self.owned[kind].items())} for kind in KINDS},
            "associations": dict(sorted(self.associations.items())),
            "replaced": {i: r.to_json() for i, r in sorted(self.replaced.items())},
            "pending": [[p.kind, p.name, p.tenant, p.at] for p in self.pending],
        }

    @classmethod
    def from_json(cls, data: Any) -> "Record":
        """Strictly: every field present with its type and form (a signed record is still checked)."""
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise RecordInvalid(f"record content is malformed: {what}")

        need(isinstance(data, dict) and data.get("v") == RECORD_VERSION, f"not a version {RECORD_VERSION} record")
        for name, kind in (("install", str), ("account", str), ("key", str), ("serial", int), ("at", str),
                           ("roles", dict), ("policies", dict), ("profiles", dict), ("associations", dict),
                           ("replaced", dict), ("pending", list)):
            need(isinstance(data.get(name), kind) and not isinstance(data.get(name), bool), f"field {name}")
        record = cls(data["install"], data["account"], data["key"], data["serial"], data["at"])
        for kind in KINDS:
            for unique_id, value in data[_PLURAL[kind]].items():
                need(_UNIQUE_ID[kind].fullmatch(unique_id) is not None and isinstance(value, list) and len(value) == 2
                     and all(isinstance(v, str) for v in value) and _NAME.fullmatch(value[0]) is not None
                     and _TENANT.fullmatch(value[1]) is not None, f"{kind} {unique_id!r}")
                record.owned[kind][unique_id] = Owned(value[0], value[1])
        for instance, association in data["associations"].items():
            need(_INSTANCE.fullmatch(instance) is not None and isinstance(association, str)
                 and _ASSOCIATION.fullmatch(association) is not None, f"association of {instance!r}")
            record.associations[instance] = association
        for instance, value in data["replaced"].items():
            need(_INSTANCE.fullmatch(instance) is not None and isinstance(value, list), f"replaced entry of {instance!r}")
            if value == ["?"]:
                record.replaced[instance] = Replaced(unknown=True)
                continue
            entry = Replaced(*value) if len(value) == 3 and all(isinstance(v, str) for v in value) else None
            need(value == [] or (entry is not None and entry.storable()), f"replaced entry of {instance!r}")
            record.replaced[instance] = entry or Replaced()
        for item in data["pending"]:
            need(isinstance(item, list) and len(item) == 4 and all(isinstance(v, str) for v in item) and item[0] in KINDS
                 and _NAME.fullmatch(item[1]) is not None and _TENANT.fullmatch(item[2]) is not None
                 and _TIME.fullmatch(item[3]) is not None, f"pending entry {item!r}")
            record.pending.append(Pending(*item))
        return record


def statement(install: str, chunks: int, payload: str) -> bytes:
    """The message the key signs: the install, how many chunks, and the hash of their concatenation."""
    digest = hashlib.sha256(payload.encode("ascii")).hexdigest()
    return f"rbacbridge-record/v{RECORD_VERSION} install={install} chunks={chunks} sha256={digest}".encode("ascii")


def encode(record: Record) -> tuple[list[str], bytes]:
    """The record's chunks (tag values, in order) and the statement to sign."""
    body = json.dumps(record.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    payload = base64.b64encode(zlib.compress(body, 9)).decode("ascii")
    chunks = [payload[n:n + KMS_TAG_VALUE_MAX] for n in range(0, len(payload), KMS_TAG_VALUE_MAX)]
    return chunks, statement(record.install, len(chunks), payload)


def record_tags(install: str, tags: dict[str, str]) -> dict[str, str]:
    """The key's tags that belong to this install's record (suffix -> value)."""
    prefix = f"{RECORD_TAG}{install}:"
    return {k[len(prefix):]: v for k, v in tags.items() if k.startswith(prefix)}


def read(tags: dict[str, str], install: str, account: str, key_arn: str, public_key: bytes | None) -> Record | None:
    """The verified record, None when the key holds none for this install; RecordInvalid otherwise."""
    mine = record_tags(install, tags)
    if not mine:
        return None
    where = f"record of install {install} on KMS key {key_arn}"
    if "sig" not in mine:
        raise RecordInvalid(f"{where} does not verify: its signature tag {RECORD_TAG}{install}:sig is missing")
    count_text, _, signature_text = mine["sig"].partition(" ")
    if not re.fullmatch(r"[1-9][0-9]{0,2}", count_text) or not signature_text:
        raise RecordInvalid(f"{where} does not verify: its signature tag is malformed")
    count = int(count_text)
    missing = [str(n) for n in range(1, count + 1) if str(n) not in mine]
    if missing:
        raise RecordInvalid(f"{where} does not verify: chunk {missing[0]} of {count} is missing")
    payload = "".join(mine[str(n)] for n in range(1, count + 1))
    if public_key is None or not _signature_valid(public_key, signature_text, statement(install, count, payload)):
        raise RecordInvalid(f"{where} does not verify: the signature does not match its content "
                            "(changed by someone without kms:Sign on the key, or signed by another key)")
    try:
        inflater = zlib.decompressobj()
        body = inflater.decompress(base64.b64decode(payload, validate=True), _MAX_BODY)
        if inflater.unconsumed_tail:
            raise ValueError("too large")
        data = json.loads(body)
    except (ValueError, zlib.error) as exc:
        raise RecordInvalid(f"{where} is signed but unreadable: {exc}") from None
    record = Record.from_json(data)
    for what, found, wanted in (("install", record.install, install), ("account", record.account, account),
                                ("key", record.key, key_arn)):
        if found != wanted:
            raise RecordInvalid(f"{where} does not verify: it names {what} {shown(found)}, not {shown(wanted)} "
                                "(a record copied from elsewhere)")
    return record


def _signature_valid(public_key: bytes, signature_text: str, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        signature = base64.b64decode(signature_text, validate=True)
        key = load_der_public_key(public_key)
    except ValueError:
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        return False
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


# --- the key -----------------------------------------------------------------------------------


def key_policy(account: str) -> dict[str, Any]:
    """The key policy: the account delegates to IAM, so only principals IAM grants kms:Sign can sign."""
    return {"Version": "2012-10-17", "Id": "rbacbridge-record", "Statement": [{
        "Sid": "DelegateToIam", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
        "Action": "kms:*", "Resource": "*"}]}


class RecordKey:
    """This install's key and its record, read (and verified) once per command."""

    def __init__(self, gw, config: Config, account: str):
        self.gw = gw
        self.install = config.effective_install_id
        self.account = account
        self.pinned = config.record_kms_key is not None
        self.ref = config.record_kms_key or ALIAS_PREFIX + self.install
        self.arn: str | None = None
        self.state: str | None = None
        self.tags: dict[str, str] = {}
        self.record: Record | None = None
        self._lock = threading.Lock()

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
                               Policy=json.dumps(key_policy(self.account)),
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


# --- a run's changes to the record -------------------------------------------------------------


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
        return bool(self.intents or self.removed or self.replaced)

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


def old_claims(profile_tags: list[dict] | None, ec2_tags: dict[str, str]) -> dict[str, str]:
    """What an unsigned record of an earlier version says each instance had (instance -> ARN or "none").
    Never acted on: teardown quotes it so that the operator can give a profile back by hand."""
    tags = {t["Key"]: t["Value"] for t in profile_tags or []}
    claims = dict(ec2_tags)
    for key, value in tags.items():
        if not key.startswith(RECORD_TAG) or not re.fullmatch(r"[1-9][0-9]{0,2}", key[len(RECORD_TAG):]):
            continue
        for token in value.split():
            parts = token.split("=")
            if len(parts) == 2 and parts[1] == "none":
                claims[parts[0]] = "none"
            elif len(parts) == 3:
                claims[parts[0]] = tags.get(f"rbacbridge:profile:{parts[2]}", f"profile id {parts[2]}")
    return claims


def has_old_record(profile_tags: list[dict] | None) -> bool:
    return any(t["Key"].startswith(("rbacbridge:record:", "rbacbridge:profile:", "rbacbridge:tenant:")) for t in profile_tags or [])

