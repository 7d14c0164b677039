"""Seals: each group of audit events a writer commits is signed, in the same transaction, with
the audit key (Ed25519, kept in the data directory, never in the database).

A checkpoint (anchor.py) signs the chain's head every few seconds, but whatever head it finds:
an event forged at the head between two checkpoints would be signed with the rest. A seal is
made by the writer of the events it covers, over their span: `from_seq..to_seq` and the hash of
the last. `airlock audit verify` with the public key then asks that the seals tile the chain
from where sealing began to its head, each one signed and matching its last event: an event
appended by someone who can write the database but does not hold the key lies in no seal.

Signing costs one Ed25519 signature per group (not per event), inside the group's transaction
(`make bench-audit`: 48 µs on the 2-core development machine, beside a commit's fdatasync).
"""

from __future__ import annotations

import base64
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from airlock.store.anchor import note_key_id, reading
from airlock.store.schema import AuditCut, AuditHead, AuditSeal

SEAL_ORIGIN = "airlock.audit/seal/v1"
# What a reviewer's command writes (store/approvals.py): a span of only these in no seal is most
# likely one run without the key, named so; it is still reported, as any unsealed span.
REVIEWER_KINDS = frozenset({"vote", "approval", "edit"})


def key_id(public: Ed25519PublicKey) -> str:
    """The key's id as its checkpoints carry it (a C2SP note's key id), in hex."""
    return note_key_id(public).hex()


def seal_message(first: int, last: int, last_hash: str) -> bytes:
    return f"{SEAL_ORIGIN}\n{first}\n{last}\n{last_hash}\n".encode()


@dataclass(frozen=True)
class Sealer:
    key: Ed25519PrivateKey
    key_id: str = field(init=False)  # once: 8 µs a group to derive again

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", key_id(self.key.public_key()))

    def seal(self, first: int, last: int, last_hash: str) -> dict[str, Any]:
        """The row that seals events first..last."""
        signature = self.key.sign(seal_message(first, last, last_hash))
        return {"to_seq": last, "from_seq": first, "key_id": self.key_id,
                "signature": base64.b64encode(signature).decode()}  # fmt: skip


# By the engine's pool: engine.execution_options() makes another Engine object on the same pool.
_SEALERS: weakref.WeakKeyDictionary[Any, Sealer] = weakref.WeakKeyDictionary()


def seal_with(engine: Engine, sealer: Sealer) -> None:
    """Every group written through this engine is sealed from now on."""
    _SEALERS[engine.pool] = sealer


def sealer_for(engine: Engine) -> Sealer | None:
    return _SEALERS.get(engine.pool)


# --- verification ----------------------------------------------------------------------------


class Seals:
    """The seals of a chain, checked as verify walks its events."""

    def __init__(self, conn: Connection, keys: list[Ed25519PublicKey]) -> None:
        self.keys = {key_id(key): key for key in keys}
        rows = conn.execute(select(AuditSeal).order_by(AuditSeal.from_seq)).all()
        self.by_last = {row.to_seq: row for row in rows}
        self.starts = [row.from_seq for row in rows]
        self.next_from: int | None = None  # where the next seal must begin
        self.since: list[tuple[int, str]] = []  # (seq, kind) since the last seal, the first
        self.unsealed: list[str] = []  # each span of events in no seal, in chain order

    def check(self, seq: int, kind: str, digest: str) -> str | None:
        """Why the event at seq, or the seal ending there, breaks the chain, or None. A span
        of events before that seal in no seal is noted in `unsealed`, and the walk goes on: it
        is not a break of the chain, and what comes after it must still be checked."""
        if not self.starts or seq < self.starts[0]:
            return None  # written before sealing began (vouched by checkpoints)
        if self.next_from is None:
            self.next_from = self.starts[0]
        if len(self.since) < 100_000:  # enough to say what they were
            self.since.append((seq, kind))
        seal = self.by_last.get(seq)
        if seal is None:
            return None
        if seal.from_seq < self.next_from:
            return (f"the seal of events #{seal.from_seq}..#{seq} overlaps the seal before it, "
                    f"which ends at #{self.next_from - 1}: the seals were rewritten")  # fmt: skip
        if seal.from_seq > self.next_from:
            self._note_unsealed(seal.from_seq - 1)
        key = self.keys.get(seal.key_id)
        if key is None:
            return (f"event #{seq} is sealed with key {seal.key_id}, which was not given: pass "
                    "its --public-key")  # fmt: skip
        try:
            key.verify(base64.b64decode(seal.signature), seal_message(seal.from_seq, seq, digest))
        except InvalidSignature:
            return (f"the seal of events #{seal.from_seq}..#{seq} (ending with {kind}) does not "
                    "match them: they were rewritten, or the seal forged")  # fmt: skip
        self.next_from = seq + 1
        self.since.clear()
        return None

    def _note_unsealed(self, last: int) -> None:
        """Events next_from..last lie in no seal: say so, naming what they were."""
        assert self.next_from is not None
        kinds = Counter(kind for seq, kind in self.since if seq <= last)
        said = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
        if kinds and kinds.keys() <= REVIEWER_KINDS:
            who = ("a reviewer's decision written without the audit key (approve, deny or "
                   "review run without it), or forged by someone without it")  # fmt: skip
        else:
            who = "appended by someone who does not hold the audit key"
        self.unsealed.append(f"events #{self.next_from}..#{last} ({said}) lie in no seal: {who}")
        self.since = [(seq, kind) for seq, kind in self.since if seq > last]

    def at_head(self, head: int) -> str | None:
        """Why the chain's end breaks the seals (a cut), or None; its last events in no seal
        are noted in `unsealed`."""
        beyond = max(self.by_last, default=0)
        if beyond > head:
            return (f"the chain was cut: a seal vouches for events up to #{beyond}, the chain "
                    f"ends at #{head}")  # fmt: skip
        if self.next_from is not None and self.next_from <= head:
            self._note_unsealed(head)
        return None


def seals_removed(store: Engine | Connection, seals_from: int) -> str | None:
    """A signed checkpoint says sealing began at `seals_from`: the seals from there must be in
    the database (retention deletes only seals whose events it pruned)."""
    with reading(store) as conn:
        first = conn.execute(select(func.min(AuditSeal.from_seq))).scalar()
        cut = conn.execute(select(AuditCut.seq)).scalar() or 0
        head = conn.execute(select(AuditHead.seq)).scalar() or 0
    start = max(seals_from, cut + 1)  # the first event kept that a seal must cover
    if head >= start and (first is None or first > start):
        return (f"sealing began at event #{seals_from} (a signed checkpoint says so), but the "
                "seals from there were removed")  # fmt: skip
    return None


def no_seals(store: Engine | Connection) -> str | None:
    """Why a chain with events and not one seal is not vouched for by its writers, or None.
    Without a signed checkpoint (which says where sealing began), wiping every seal would go
    unnoticed: only a store written wholly before seals has none (`audit verify --before-seals`)."""
    with reading(store) as conn:
        sealed = conn.execute(select(func.count()).select_from(AuditSeal)).scalar()
        cut = conn.execute(select(AuditCut.seq)).scalar() or 0
        head = conn.execute(select(AuditHead.seq)).scalar() or 0
    if not sealed and head > cut:
        return (f"events #{cut + 1}..#{head} carry no seal, and no event does: the seals were "
                "removed (or the store was written before seals: --before-seals)")  # fmt: skip
    return None


class OfflineSeals:
    """The seals an export carries (store/export.py: on the last event of each group), checked
    as verify_export reads it, without the database: from where sealing began to the export's
    last event the groups must follow one another, each signed by a key given and matching."""

    def __init__(self, keys: list[Ed25519PublicKey]) -> None:
        self.keys = {key_id(key): key for key in keys}
        self.first_from: int | None = None  # where the export's first seal begins
        self.covered: int | None = None  # the last event the seals read so far cover

    def check(self, seq: int, digest: str, seal: dict[str, Any] | None) -> str | None:
        """Why the event at seq, and its seal if it ends a group, are not as sealed, or None."""
        if seal is None:
            return None
        first = int(seal["from_seq"])
        if self.covered is not None and first != self.covered + 1:
            return self._unsealed(self.covered + 1, first - 1)
        key = self.keys.get(seal["key_id"])
        if key is None:
            return (f"event #{seq} is sealed with key {seal['key_id']}, which was not given: "
                    "pass its --public-key")  # fmt: skip
        try:
            key.verify(base64.b64decode(seal["signature"]), seal_message(first, seq, digest))
        except (InvalidSignature, ValueError):
            return (f"the seal of events #{first}..#{seq} does not match them: they were "
                    "rewritten, or the seal forged")  # fmt: skip
        self.first_from = first if self.first_from is None else self.first_from
        self.covered = seq
        return None

    def at_end(self, first: int, last: int, sealing_from: int | None) -> str | None:
        """Why events first..last are not all sealed from where sealing began (a signed
        checkpoint's `seals-from`, else the export's first seal), or None."""
        start = sealing_from if sealing_from is not None else self.first_from
        if start is None or max(start, first) > last:
            return None
        start = max(start, first)
        if self.first_from is None or self.covered is None:
            return self._unsealed(start, last)
        if self.first_from > start:
            return self._unsealed(start, self.first_from - 1)
        if self.covered < last:
            return self._unsealed(self.covered + 1, last)
        return None

    def _unsealed(self, first: int, last: int) -> str:
        return (f"events #{first}..#{last} lie in no seal: written by someone who does not hold "
                "the audit key, or their seals were removed from the export")  # fmt: skip


def any_seal(store: Engine | Connection) -> bool:
    """Whether any group of the chain is sealed: then a writer without the key leaves a span
    that `verify` with the key reports."""
    with reading(store) as conn:
        return conn.execute(select(AuditSeal.to_seq).limit(1)).first() is not None
