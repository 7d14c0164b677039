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
from airlock.store.schema import AuditEvent

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
    query = select(AuditEvent).order_by(AuditEvent.seq)
    if since is not None:
        first = select(func.min(AuditEvent.seq)).where(AuditEvent.at >= since)
        query = query.where(AuditEvent.seq >= first.scalar_subquery())
    if until is not None:
        last = select(func.max(AuditEvent.seq)).where(AuditEvent.at < until)
        query = query.where(AuditEvent.seq <= last.scalar_subquery())
    with engine.connect() as conn:
        rows = conn.execution_options(stream_results=True, yield_per=BATCH).execute(query)
        for event in rows:
            yield {
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


def write_export(
    records: Iterable[dict[str, Any]], out: TextIO, fmt: str, checkpoint: str | None = None
) -> int:
    """`checkpoint`: the latest signed checkpoint (store/anchor.py), written first in a JSON-lines
    export so that `verify --export --public-key` anchors it offline."""
    if fmt not in FORMATS:
        raise ValueError(f"format is one of {', '.join(FORMATS)}, not {fmt!r}")
    written = 0
    if fmt == "jsonl" and checkpoint:
        out.write(json.dumps({"checkpoint": checkpoint}, ensure_ascii=False) + "\n")
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

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_export(lines: Iterable[str], keys: Sequence[Ed25519PublicKey] = ()) -> ExportCheck:
    """A JSON-lines export, checked offline: each event's hash is recomputed from its content
    and each names the one before it. An export of a slice starts where the slice starts.
    With the audit public keys (one per instance), the signed checkpoint the export carries (on
    its first line, once), signed by one of them, must match the event it vouches for, and the
    export must reach it (an export cut short is refused)."""
    count, first, prev_hash, prev_seq = 0, None, None, None
    signed: Checkpoint | None = None
    carries = matched = False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            if "checkpoint" in event:
                if carries or count:  # read first, it vouches for every event that follows
                    return ExportCheck(count, first, prev_seq,
                                       f"line {number} is a checkpoint: an export carries one, on "
                                       "its first line (this one was moved or added)")  # fmt: skip
                carries = True
                signed = _opened(event["checkpoint"], keys)
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
        if signed is not None and event["seq"] == signed.size:
            if event["hash"] != signed.root:
                return ExportCheck(count, first, prev_seq,
                                   f"event {signed.size} is not the one the signed checkpoint "
                                   "vouches for: the chain was rewritten")  # fmt: skip
            matched = True
        first = event["seq"] if first is None else first
        prev_hash, prev_seq = event["hash"], event["seq"]
        count += 1
    check = ExportCheck(count, first, prev_seq, None)
    return _anchored(check, signed, carries, matched, bool(keys))


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
    return replace(check, anchored=f"the signed checkpoint at event {signed.size} matches")
