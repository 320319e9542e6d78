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
import zlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from rbacbridge.config import iam_key
from rbacbridge.errors import RbacbridgeError, shown

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
MIGRATION_TAG = "rbacbridge:migration:"  # `rbacbridge migrate`'s record on the same key (rbacbridge.migrate.record)
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


def _stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def changed_at(record: "Record | None") -> datetime | None:
    """When setup last changed a trust or policy, as its record says (None: it does not say)."""
    return _parse_stamp(record.changed) if record is not None and record.changed else None


def accept_pending(intent_at: str, create_date: Any) -> bool:
    """Is a resource AWS says was created at `create_date` the one whose creation was signed at `intent_at`?"""
    if not isinstance(create_date, datetime):
        return False
    created = create_date if create_date.tzinfo else create_date.replace(tzinfo=timezone.utc)
    intent = _parse_stamp(intent_at)
    return intent - CLOCK_SKEW <= created <= intent + CREATE_WINDOW


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
    # When setup last changed a trust or policy (or an association): verify's settle window starts there
    # (verify.settle). "" in records written before it was kept; optional in the format, version unchanged.
    changed: str = ""

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
            **({"changed": self.changed} if self.changed else {}),
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
        if "changed" in data:
            need(isinstance(data["changed"], str) and _TIME.fullmatch(data["changed"]) is not None, "field changed")
            record.changed = data["changed"]
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
