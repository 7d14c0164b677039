"""An anchor for the audit chain outside the database: signed checkpoints.

Whoever can write the database can rewrite the whole chain consistently, or cut its tail; the
chain alone cannot tell. So the decider signs, every CHECKPOINT_SECONDS while the chain grows
and when it stops, a checkpoint of the chain's head with an Ed25519 key the database never
holds, and writes it to the data directory: `checkpoints/latest` (and one file per position).
`airlock audit verify` then checks the chain against the latest checkpoint and the public key:
a chain shorter than the checkpoint (cut), or whose event at that position has another hash
(rewritten), is caught. Events after the latest checkpoint are vouched for by the chain alone
until the next one.

The checkpoint is a C2SP signed note in the tlog-checkpoint format: origin line, size (the
head's position), root (the head's hash, base64), a blank line, then `— <key name> <base64 of
the 4-byte key id and the signature>`; the key id is the first 4 bytes of SHA-256 over the key
name, a newline, the Ed25519 algorithm byte (0x01) and the public key.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from airlock.store.retention import DAY, prune
from airlock.store.schema import AuditCut, AuditEvent, AuditHead, AuditSeal

KEY_FILE, PUBLIC_FILE = "keys/audit-ed25519.pem", "keys/audit-ed25519.pub"
CHECKPOINTS = "checkpoints"
CUT = "cut"  # the signed retention cut, in CHECKPOINTS
CHECKPOINT_SECONDS = 10.0
PRUNE_SECONDS = 3600.0  # how often retention looks for records past the window
log = logging.getLogger(__name__)
KEY_NAME = "airlock-audit"
ORIGIN = "airlock.audit/v1"
SEALS_FROM = "seals-from "
_ED25519 = b"\x01"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int  # the position of the chain's head when it was signed
    root: str  # the head's hash, hex
    seals_from: int | None = None  # where the writers' seals begin (store/seals.py)


def load_or_create_key(data_dir: Path) -> Ed25519PrivateKey:
    """The signing key, made on first use beside the CA (mode 0600), never in the database."""
    path = Path(data_dir) / KEY_FILE
    if path.is_file():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 key")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
    (Path(data_dir) / PUBLIC_FILE).write_text(public_key_text(key.public_key()) + "\n")
    return key


def public_key_text(public: Ed25519PublicKey) -> str:
    """What auditors are given: the key's name and its raw public key, base64."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{KEY_NAME}+{base64.b64encode(raw).decode()}"


def read_public_key(text: str) -> Ed25519PublicKey:
    name, _, encoded = text.strip().partition("+")  # base64 may hold "+" too
    if name != KEY_NAME:
        raise ValueError(f"not an Airlock audit public key (expected {KEY_NAME}+BASE64)")
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(encoded))


def note_key_id(public: Ed25519PublicKey) -> bytes:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(KEY_NAME.encode() + b"\n" + _ED25519 + raw).digest()[:4]


def sign_checkpoint(
    key: Ed25519PrivateKey, size: int, root_hex: str, seals_from: int | None = None
) -> str:
    """`seals_from` goes in an extension line (C2SP allows lines after the root): removing
    the seals from the database is then caught too."""
    body = f"{ORIGIN}\n{size}\n{base64.b64encode(bytes.fromhex(root_hex)).decode()}\n"
    if seals_from is not None:
        body += f"{SEALS_FROM}{seals_from}\n"
    signature = key.sign(body.encode())
    stamp = base64.b64encode(note_key_id(key.public_key()) + signature).decode()
    return f"{body}\n\u2014 {KEY_NAME} {stamp}\n"


def open_checkpoint(text: str, public: Ed25519PublicKey) -> Checkpoint:
    """The checkpoint a note vouches for, once its signature checks out with this key."""
    body, separator, signatures = text.partition("\n\n")
    if not separator:
        raise ValueError("not a signed note: no blank line before the signatures")
    body += "\n"
    for line in signatures.splitlines():
        prefix = f"\u2014 {KEY_NAME} "
        if not line.startswith(prefix):
            continue
        stamp = base64.b64decode(line[len(prefix) :])
        if stamp[:4] != note_key_id(public):
            continue
        try:
            public.verify(stamp[4:], body.encode())
        except InvalidSignature:
            raise ValueError("the checkpoint's signature does not match its content") from None
        origin, size, root, *extensions = body.splitlines()
        sealed = [
            int(line[len(SEALS_FROM) :]) for line in extensions if line.startswith(SEALS_FROM)
        ]
        return Checkpoint(origin, int(size), base64.b64decode(root).hex(), next(iter(sealed), None))
    raise ValueError("the checkpoint carries no signature by this public key")


@contextmanager
def reading(store: Engine | Connection) -> Iterator[Connection]:
    """A connection to read the store with: a Connection given is used as it is (its
    transaction, so its snapshot: store/audit.py audit_snapshot), an Engine's is opened."""
    if isinstance(store, Connection):
        yield store
        return
    with store.connect() as conn:
        yield conn


def write_cut(data_dir: Path, note: str) -> Path:
    """A copy of the signed cut retention made (store/retention.py keeps it in
    `audit_cut.note`): `checkpoints/cut`, for tools older than that column."""
    folder = Path(data_dir) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"cut.{os.getpid()}.tmp"
    partial.write_text(note)
    os.replace(partial, folder / CUT)
    return folder / CUT


def cut_note(store: Engine | Connection, data_dir: Path) -> str | None:
    """The signed checkpoint of retention's cut: the one stored with the prune; for a cut made
    before it was stored there, the data directory's `checkpoints/cut`. None: no cut, or no
    note of it."""
    with reading(store) as conn:
        cut = conn.execute(select(AuditCut.note)).first()
    if cut is None:
        return None
    if cut[0] is not None:
        return cut[0]
    written = Path(data_dir) / CHECKPOINTS / CUT
    return written.read_text() if written.is_file() else None


def signed_cut(
    store: Engine | Connection, data_dir: Path, keys: Sequence[Ed25519PublicKey]
) -> Checkpoint | None:
    """The retention cut its note vouches for (`cut_note`), once signed by one of the keys;
    None when there is no note, or none of the keys signed it."""
    note = cut_note(store, data_dir)
    for key in keys if note is not None else ():
        try:
            return open_checkpoint(note, key)
        except ValueError:
            continue
    return None


def cut_against(store: Engine | Connection, signed: Checkpoint | None) -> str | None:
    """Why the chain's start is not one a signed retention cut vouches for, or None."""
    with reading(store) as conn:
        cut = conn.execute(select(AuditCut.seq, AuditCut.hash)).first()
    if cut is None:
        return None
    if signed is None or (signed.size, signed.root) != (cut[0], cut[1]):
        return (f"the chain starts after event {cut[0]}, but no signed retention cut vouches "
                "for that: events were deleted from its start")  # fmt: skip
    return None


def retention_cut(store: Engine | Connection) -> tuple[int, str] | None:
    """Where retention cut the chain (the last pruned event's position and hash), or None."""
    with reading(store) as conn:
        cut = conn.execute(select(AuditCut.seq, AuditCut.hash)).first()
    return (cut[0], cut[1]) if cut else None


def write_checkpoint(data_dir: Path, note: str, size: int) -> Path:
    """Atomically: neither `latest` nor a position's file is ever half written (a full disk
    left an empty one). A `latest` further along is kept: a reviewer's command and the decider
    may both sign checkpoints in one data directory."""
    folder = Path(data_dir) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    _write_whole(folder / f"{size:012d}.checkpoint", note)
    if _size_of(folder / "latest") > size:
        return folder / "latest"
    _write_whole(folder / "latest", note)
    return folder / "latest"


def _write_whole(path: Path, text: str) -> None:
    """Written beside it, then renamed over it: a write cut short leaves no file behind."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _size_of(note: Path) -> int:
    """The position an unopened checkpoint names (0 if none can be read): only to order them."""
    try:
        return int(note.read_text().split("\n", 2)[1])
    except (OSError, ValueError, IndexError):
        return 0


def chain_against(store: Engine | Connection, checkpoint: Checkpoint) -> str | None:
    """Why the database's chain is not the one the checkpoint signed, or None. A checkpoint at
    or before retention's cut names pruned events (a store idle longer than the window loses
    them all): it holds if it is the cut, or predates it."""
    with reading(store) as conn:
        head = conn.execute(select(AuditHead.seq)).scalar()
        at_size = conn.execute(
            select(AuditEvent.hash).where(AuditEvent.seq == checkpoint.size)
        ).scalar()
    cut = retention_cut(store)
    if cut is not None and checkpoint.size <= cut[0]:  # its events were pruned
        if checkpoint.size == cut[0] and checkpoint.root != cut[1]:
            return (f"the chain was rewritten: event {checkpoint.size}, where retention cut it, "
                    "is not the one the signed checkpoint vouches for")  # fmt: skip
        return None  # it predates the cut, which cut_against checks against its signed note
    if head is None or head < checkpoint.size:
        return (f"the chain was cut: a signed checkpoint vouches for {checkpoint.size} events, "
                f"the database holds {head or 0}")  # fmt: skip
    if at_size != checkpoint.root:
        return (f"the chain was rewritten: event {checkpoint.size} is not the one the signed "
                "checkpoint vouches for")  # fmt: skip
    return None


def head_of(engine: Engine) -> tuple[int, str]:
    with engine.connect() as conn:
        row = conn.execute(select(AuditHead.seq, AuditHead.hash)).first()
    return (row[0], row[1]) if row else (0, "")


class Anchoring:
    """What the decider runs: a checkpoint every CHECKPOINT_SECONDS while the chain grows, and
    one when it stops (`checkpoint()`); with a retention window, a prune at start and hourly,
    whose cut it signs."""

    def __init__(
        self, engine: Engine, data_dir: Path, retention_days: float = 0,
        publish: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        """`publish`: also hands each checkpoint to a witness (decider/witness.py)."""
        self.engine, self.data_dir = engine, Path(data_dir)
        self.publish = publish
        self.key = load_or_create_key(self.data_dir)
        self.signed = 0  # the chain position of the last checkpoint written
        self.seals_from: int | None = None  # the first sealed event, once there is one
        self.due = time.monotonic() + CHECKPOINT_SECONDS
        self.retention = retention_days * DAY
        self.prune_due = time.monotonic()  # at the first tick

    def tick(self) -> float:
        now = time.monotonic()
        if self.retention and now >= self.prune_due:
            self.prune_due = now + PRUNE_SECONDS
            self.prune()
        if now >= self.due:
            self.checkpoint()
            self.due = now + CHECKPOINT_SECONDS
        return self.due - now

    def prune(self) -> None:
        pruned = prune(self.engine, time.time() - self.retention, self._sign_cut)
        if pruned is not None:
            try:  # a copy, for older tools: the store holds the signed cut (audit_cut.note)
                if pruned.note is not None:
                    write_cut(self.data_dir, pruned.note)
            except OSError as e:
                log.warning("checkpoints/cut not written (the store holds the signed cut): %s", e)
            log.info("retention pruned %d runs and %d events (chain now starts after event %d)",
                     pruned.runs, pruned.events, pruned.cut)  # fmt: skip

    def _sign_cut(self, seq: int, hash_hex: str) -> str:
        return sign_checkpoint(self.key, seq, hash_hex)

    def checkpoint(self) -> None:
        size, root = head_of(self.engine)
        if size > self.signed:
            note = sign_checkpoint(self.key, size, root, self._seals_from())
            write_checkpoint(self.data_dir, note, size)
            self.signed = size
            if self.publish is not None:
                self.publish(note)

    def _seals_from(self) -> int | None:
        if self.seals_from is None:
            with self.engine.connect() as conn:
                self.seals_from = conn.execute(select(func.min(AuditSeal.from_seq))).scalar()
        return self.seals_from
