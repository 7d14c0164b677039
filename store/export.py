"""The audit trail out of the database, for auditors and SIEMs, and checked again offline.

An export is the chain itself: every event (decision, outcome, approval, vote) in chain order
with its position, its hash and the hash before it, streamed (constant memory for millions of
events). What it carries was redacted before it was ever stored. `verify_export` recomputes
each hash from the exported event and checks that the events link up, without the database.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from airlock.store.anchor import Checkpoint, open_checkpoint
from airlock.store.audit import CHAIN_FORMAT, canonical_json, chain_hash, jcs
from airlock.store.schema import AuditEvent, AuditSeal
from airlock.store.seals import OfflineSeals

FORMATS = ("jsonl", "csv", "ocsf")
CSV_COLUMNS = (
    "seq", "time", "kind", "run_id", "agent", "action", "operation", "decision", "reason",
    "outcome", "state", "reviewer", "prev_hash", "hash", "payload",
)  # fmt: skip
BATCH = 2000  # events fetched at a time


def events(
    engine: Engine, since: float | None = None, until: float | None = None
) -> Iterator[dict[str, Any]]:
    """Events in chain order, one batch in memory at a time: from the first at or after `since`
    to the last before `until`, every position between. Events are not in time order along the
    chain (a decision carries its request's arrival, an outcome its answer's), and a slice with
    gaps would not verify."""
    seal = (AuditSeal.from_seq, AuditSeal.key_id, AuditSeal.signature)
    query = (
        select(AuditEvent, *seal)
        .outerjoin(AuditSeal, AuditSeal.to_seq == AuditEvent.seq)
        .order_by(AuditEvent.seq)
    )
    if since is not None:
        first = select(func.min(AuditEvent.seq)).where(AuditEvent.at >= since)
        query = query.where(AuditEvent.seq >= first.scalar_subquery())
    if until is not None:
        last = select(func.max(AuditEvent.seq)).where(AuditEvent.at < until)
        query = query.where(AuditEvent.seq <= last.scalar_subquery())
    with engine.connect() as conn:
        rows = conn.execution_options(stream_results=True, yield_per=BATCH).execute(query)
        for event in rows:  # the event's columns, then its seal's (None: no group ends here)
            record = {
                "seq": event.seq,
                "at": event.at,
                "time": datetime.fromtimestamp(event.at, UTC).isoformat(),
                "kind": event.kind,
                "run_id": event.run_id,
                "payload": json.loads(event.payload),
                "prev_hash": event.prev_hash,
                "hash": event.hash,
                "format": event.format,  # how its hash is made (store/audit.py)
            }
            if event.from_seq is not None:  # the last event of a group: its writer's seal
                record["seal"] = {"from_seq": event.from_seq, "key_id": event.key_id,
                                  "signature": event.signature}  # fmt: skip
            yield record


def write_export(
    records: Iterable[dict[str, Any]], out: TextIO, fmt: str, checkpoint: str | None = None,
    cut: str | None = None,
) -> int:  # fmt: skip
    """`checkpoint`: the latest signed checkpoint (store/anchor.py), written first in a JSON-lines
    export so that `verify --export --public-key` anchors it offline; `cut`: the signed
    retention cut, next, which vouches for where the chain starts."""
    if fmt not in FORMATS:
        raise ValueError(f"format is one of {', '.join(FORMATS)}, not {fmt!r}")
    written = 0
    if fmt == "jsonl" and checkpoint:
        out.write(json.dumps({"checkpoint": checkpoint}, ensure_ascii=False) + "\n")
    if fmt == "jsonl" and cut:
        out.write(json.dumps({"cut": cut}, ensure_ascii=False) + "\n")
    if fmt in ("jsonl", "ocsf"):
        for record in records:
            if fmt == "ocsf":
                if record["kind"] != "decision":
                    continue  # an OCSF event per decision; approvals and outcomes stay in jsonl
                record = ocsf_api_activity(record)
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            written += 1
        return written
    rows = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore")
    rows.writeheader()
    for record in records:
        rows.writerow(_flat(record))
        written += 1
    return written


# OCSF 1.3: API Activity (class 6003, category Application Activity), one per decision.
_ACTIVITY = {"POST": 1, "PUT": 3, "PATCH": 3, "DELETE": 4, "GET": 2, "HEAD": 2}  # create, …
_DISPOSITION = {"ALLOW": (1, "Allowed"), "BLOCK": (2, "Blocked"),
                "REQUIRE_APPROVAL": (14, "Delayed")}  # fmt: skip


def ocsf_api_activity(record: dict[str, Any]) -> dict[str, Any]:
    """A decision event as an OCSF API Activity event: the decision as its disposition, the
    chain position and hashes and Airlock's own fields under `unmapped`."""
    payload = record["payload"]
    activity = _ACTIVITY.get(str(payload.get("method")), 99)
    disposition_id, disposition = _DISPOSITION.get(payload.get("decision"), (99, "Other"))
    return {
        "class_uid": 6003,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity,
        "type_uid": 6003 * 100 + activity,
        "time": int(record["at"] * 1000),
        "severity_id": 1,
        "status_id": 2 if payload.get("decision") == "BLOCK" else 1,
        "disposition_id": disposition_id,
        "disposition": disposition,
        "message": payload.get("reason"),
        "actor": {"user": {"name": payload.get("agent"), "type": "Service"}},
        "api": {
            "operation": payload.get("operation") or payload.get("action"),
            "service": {"name": payload.get("provider")},
        },
        "http_request": {
            "http_method": payload.get("method"),
            "url": {"hostname": payload.get("host"), "path": payload.get("path")},
        },
        "metadata": {
            "version": "1.3.0",
            "product": {"name": "Airlock", "vendor_name": "Airlock"},
            "uid": record["run_id"],
        },
        "unmapped": {
            "seq": record["seq"], "hash": record["hash"], "prev_hash": record["prev_hash"],
            "action": payload.get("action"), "rules": payload.get("rules"),
            "risk": payload.get("risk"), "params": payload.get("params"),
            "target": payload.get("target"),
        },
    }  # fmt: skip


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    """A CSV row: the fields people filter on, then the whole payload as JSON."""
    payload = record["payload"]
    return {
        **{key: record[key] for key in ("seq", "time", "kind", "run_id", "prev_hash", "hash")},
        **{key: payload.get(key) for key in ("agent", "action", "operation", "decision",
                                             "reason", "outcome", "state", "reviewer")},
        "payload": canonical_json(payload),
    }  # fmt: skip


@dataclass(frozen=True)
class ExportCheck:
    events: int
    first: int | None  # chain position of the first exported event
    last: int | None
    problem: str | None
    anchored: str | None = None  # what the export's signed checkpoint says, once checked
    sealed: str | None = None  # what its seals say, once checked (with keys)

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_export(
    lines: Iterable[str], keys: Sequence[Ed25519PublicKey] = (), checkpoint: str | None = None
) -> ExportCheck:
    """A JSON-lines export, checked offline: each event's hash is recomputed from its content
    and each names the one before it. An export of a slice starts where the slice starts.
    With the audit public keys (one per instance): the signed checkpoint the export carries (on
    its first line, once), or `checkpoint` (a signed note the auditor holds) in its place,
    must match the event it vouches for, and the export must reach it; the seals it carries must
    cover it, group after group, from where sealing began to its last event (so events after
    the checkpoint, or an older checkpoint put in, vouch for nothing rewritten); a signed
    retention cut it carries must be where it starts."""
    count, first, prev_hash, prev_seq = 0, None, None, None
    signed: Checkpoint | None = None
    cut: Checkpoint | None = None
    carries = matched = False
    seals = OfflineSeals(list(keys)) if keys else None
    try:
        given = _opened(checkpoint, keys) if checkpoint is not None else None
    except _BadCheckpoint as e:
        return ExportCheck(0, None, None, f"the checkpoint given: {e}")
    if checkpoint is not None and given is None:
        return ExportCheck(0, None, None, "the checkpoint given: no public key to check it with")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            if "checkpoint" in event:
                if carries or count or cut:  # read first, it vouches for every event that follows
                    return ExportCheck(count, first, prev_seq,
                                       f"line {number} is a checkpoint: an export carries one, on "
                                       "its first line (this one was moved or added)")  # fmt: skip
                carries = True
                signed = _opened(event["checkpoint"], keys)
                continue
            if "cut" in event:
                if count or cut:
                    return ExportCheck(count, first, prev_seq,
                                       f"line {number} is a retention cut: an export carries one, "
                                       "before its events")  # fmt: skip
                cut = _opened(event["cut"], keys)
                continue
            chain_format = event.get("format")
            payload = (jcs if chain_format == CHAIN_FORMAT else canonical_json)(event["payload"])
            digest = chain_hash(event["prev_hash"], event["seq"], event["at"], event["kind"],
                                event["run_id"], payload, chain_format)  # fmt: skip
        except _BadCheckpoint as e:
            return ExportCheck(count, first, prev_seq, f"the export's checkpoint: {e}")
        except (ValueError, KeyError, TypeError) as e:
            return ExportCheck(
                count, first, prev_seq, f"line {number} is not an exported event: {e}"
            )
        if digest != event["hash"]:
            return ExportCheck(count, first, prev_seq,
                               f"event {event['seq']} (line {number}) was edited: its hash does "
                               "not match its content")  # fmt: skip
        if prev_hash is not None and (event["prev_hash"], event["seq"]) != (
            prev_hash,
            prev_seq + 1,
        ):
            return ExportCheck(count, first, prev_seq,
                               f"event {event['seq']} (line {number}) does not follow event "
                               f"{prev_seq}: events were removed, added or reordered")  # fmt: skip
        if prev_hash is None and cut is not None:
            problem = _after_cut(cut, event)
            if problem:
                return ExportCheck(count, first, prev_seq, problem)
        for anchor in (signed, given):
            if anchor is not None and event["seq"] == anchor.size:
                if event["hash"] != anchor.root:
                    return ExportCheck(count, first, prev_seq,
                                       f"event {anchor.size} is not the one the signed checkpoint "
                                       "vouches for: the chain was rewritten")  # fmt: skip
                matched = matched or anchor is (given or signed)
        try:
            unsealed = (
                seals.check(event["seq"], event["hash"], event.get("seal")) if seals else None
            )
        except (KeyError, TypeError, ValueError) as e:
            unsealed = f"event {event['seq']} (line {number}) carries a seal that is not one: {e}"
        if unsealed:
            return ExportCheck(count, first, prev_seq, unsealed)
        first = event["seq"] if first is None else first
        prev_hash, prev_seq = event["hash"], event["seq"]
        count += 1
    check = ExportCheck(count, first, prev_seq, None)
    anchor = given or signed
    if seals is not None and first is not None and prev_seq is not None:
        sealing_from = min(
            (c.seals_from for c in (signed, given) if c and c.seals_from is not None), default=None
        )
        problem = seals.at_end(first, prev_seq, sealing_from)
        if problem:
            return replace(check, problem=problem)
        check = replace(check, sealed=_sealed(seals, first, prev_seq, sealing_from))
    check = _anchored(check, anchor, carries or given is not None, matched, bool(keys))
    if check.ok and cut is not None and first == cut.size + 1:
        said = f"it starts after the signed retention cut at event {cut.size}"
        check = replace(check, anchored=f"{check.anchored}; {said}" if check.anchored else said)
    return check


def _after_cut(cut: Checkpoint, event: dict[str, Any]) -> str | None:
    """Why the export's first event does not follow the signed retention cut it carries."""
    if event["seq"] <= cut.size:
        return (f"event {event['seq']} is in the export, but the signed retention cut says "
                f"events up to {cut.size} were pruned")  # fmt: skip
    if event["seq"] == cut.size + 1 and event["prev_hash"] != cut.root:
        return (f"event {event['seq']} does not follow the signed retention cut at event "
                f"{cut.size}: events were deleted from the chain's start")  # fmt: skip
    return None


def _sealed(seals: OfflineSeals, first: int, last: int, sealing_from: int | None) -> str:
    if seals.covered is None:
        return "not sealed: it carries no seal (written before seals)"
    start = max(first, sealing_from if sealing_from is not None else seals.first_from or first)
    return f"sealed: every event from #{start} to #{last} carries its writer's seal"


class _BadCheckpoint(Exception):
    pass


def _opened(note: Any, keys: Sequence[Ed25519PublicKey]) -> Checkpoint | None:
    """The checkpoint, signed by one of the keys (None without keys)."""
    problems = []
    for key in keys:
        try:
            return open_checkpoint(str(note), key)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise _BadCheckpoint("; ".join(dict.fromkeys(problems)))
    return None


def _anchored(
    check: ExportCheck, signed: Checkpoint | None, carries: bool, matched: bool, keyed: bool
) -> ExportCheck:
    """`matched`: the event at the checkpoint's position was read and is the one signed."""
    if not keyed:
        said = "it carries a signed checkpoint: give --public-key to check it" if carries else None
        return replace(check, anchored=said)
    if signed is None:  # an export with --until, or made before the first checkpoint
        return replace(check, anchored="not anchored: it carries no signed checkpoint")
    if check.last is None or check.last < signed.size:
        return replace(check, problem=(
            f"the export ends at event {check.last or 0}, but its signed checkpoint vouches for "
            f"{signed.size}: events were removed from its end"))  # fmt: skip
    if check.first is not None and check.first > signed.size:
        return replace(check, anchored=f"its checkpoint (event {signed.size}) is before this slice")
    if not matched:
        return replace(check, problem=f"event {signed.size}, which the signed checkpoint vouches "
                       "for, was not checked against it")  # fmt: skip
    return replace(check, anchored=f"the signed checkpoint at event {signed.size} matches (the "
                   f"export runs to event {check.last})")  # fmt: skip
