"""The audit trail out of the database, for auditors and SIEMs, and checked again offline.

An export is the chain itself: every event (decision, outcome, approval, vote) in chain order
with its position, its hash and the hash before it, streamed (constant memory for millions of
events). What it carries was redacted before it was ever stored. `verify_export` recomputes
each hash from the exported event and checks that the events link up, without the database.
"""

from __future__ import annotations

import base64
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
from airlock.store.schema import GENESIS_HASH, AuditEvent, AuditSeal
from airlock.store.seals import OfflineSeals

FORMATS = ("jsonl", "csv", "ocsf")
CSV_COLUMNS = (
    "seq", "time", "kind", "run_id", "agent", "action", "operation", "decision", "reason",
    "outcome", "state", "reviewer", "prev_hash", "hash", "payload",
)  # fmt: skip
BATCH = 2000  # events fetched at a time
# Header lines saying where an export starts: {"starts": "genesis"} (event 1), or a time slice
# {"slice": {"since": …, "until": …}}, which may start anywhere; after a retention cut, the
# signed {"cut": …} line says it.
STARTS, GENESIS, SLICE = "starts", "genesis", "slice"


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
    cut: str | None = None, sliced: dict[str, str | None] | None = None,
    from_genesis: bool = False,
) -> int:  # fmt: skip
    """`checkpoint`: the latest signed checkpoint (store/anchor.py), written first in a JSON-lines
    export so that `verify --export --public-key` anchors it offline. Then where the export
    starts: `sliced` (its --since and --until) for a time slice, which starts and ends anywhere;
    else the signed retention `cut`, or `from_genesis` when nothing was ever pruned, so that
    an export with its first events removed does not verify."""
    if fmt not in FORMATS:
        raise ValueError(f"format is one of {', '.join(FORMATS)}, not {fmt!r}")
    written = 0
    if fmt == "jsonl":
        for header in _headers(checkpoint, cut, sliced, from_genesis):
            out.write(json.dumps(header, ensure_ascii=False) + "\n")
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


def _headers(
    checkpoint: str | None, cut: str | None, sliced: dict[str, str | None] | None,
    from_genesis: bool,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    if checkpoint:
        yield {"checkpoint": checkpoint}
    if sliced is not None:
        yield {SLICE: sliced}
    if cut:
        yield {"cut": cut}
    elif from_genesis and sliced is None:
        yield {STARTS: GENESIS}


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
    starts: str | None = None  # where a whole export starts, once checked
    sliced: str | None = None  # a time slice: which (it need not start or end anywhere)

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class _Headers:
    """What the lines before the events said."""

    carries: bool = False  # a checkpoint line
    signed: Checkpoint | None = None  # it, checked with a key given
    unchecked: Checkpoint | None = None  # it, read without a key
    cut: Checkpoint | None = None  # the retention cut line, checked (with a key) or read
    cut_checked: bool = False
    genesis: bool = False
    sliced: dict[str, Any] | None = None

    @property
    def read(self) -> bool:
        return self.carries or self.cut is not None or self.genesis or self.sliced is not None


def verify_export(
    lines: Iterable[str], keys: Sequence[Ed25519PublicKey] = (), checkpoint: str | None = None
) -> ExportCheck:
    """A JSON-lines export, checked offline: each event's hash is recomputed from its content
    and each names the one before it. A whole export starts at event 1 (after the all-zero
    genesis hash) or right after the signed retention cut it carries; a time slice says so,
    and starts where it starts. With the audit public keys (one per instance): a whole export
    carries the signed checkpoint (on its first line, once), or `checkpoint` (a signed note the
    auditor holds) is given in its place; it must match the event it vouches for, and the
    export must reach it; the seals it carries must cover it, group after group, from where
    sealing began to its last event (so events after the checkpoint, or an older checkpoint put
    in, vouch for nothing rewritten). Without keys, a checkpoint it carries is read unchecked,
    and the export must still reach the event it names."""
    count, first, prev_hash, prev_seq = 0, None, None, None
    heads = _Headers()
    matched = False
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
            if not isinstance(event, dict) or "class_uid" in event:
                raise _NotJsonLines
            if "seq" not in event and event.keys() & _HEADER_KEYS:
                problem = _header(heads, event, number, keys, after_events=count > 0)
                if problem:
                    return ExportCheck(count, first, prev_seq, problem)
                continue
            chain_format = event.get("format")
            payload = (jcs if chain_format == CHAIN_FORMAT else canonical_json)(event["payload"])
            digest = chain_hash(event["prev_hash"], event["seq"], event["at"], event["kind"],
                                event["run_id"], payload, chain_format)  # fmt: skip
        except _BadCheckpoint as e:
            return ExportCheck(count, first, prev_seq, f"the export's checkpoint: {e}")
        except _NotJsonLines:
            return ExportCheck(count, first, prev_seq, _not_json_lines(number))
        except (ValueError, KeyError, TypeError) as e:
            if number == 1:
                return ExportCheck(count, first, prev_seq, _not_json_lines(number))
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
        if prev_hash is None:
            problem = _start(heads, event)
            if problem:
                return ExportCheck(count, first, prev_seq, problem)
        for anchor in (heads.signed, given):
            if anchor is not None and event["seq"] == anchor.size:
                if event["hash"] != anchor.root:
                    return ExportCheck(count, first, prev_seq,
                                       f"event {anchor.size} is not the one the signed checkpoint "
                                       "vouches for: the chain was rewritten")  # fmt: skip
                matched = matched or anchor is (given or heads.signed)
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
    check = ExportCheck(count, first, prev_seq, None, sliced=_slice_said(heads.sliced),
                        starts=_starts_said(heads, first))  # fmt: skip
    anchor = given or heads.signed
    if seals is not None and first is not None and prev_seq is not None:
        sealing_from = min(
            (c.seals_from for c in (heads.signed, given) if c and c.seals_from is not None),
            default=None,
        )
        problem = seals.at_end(first, prev_seq, sealing_from)
        if problem:
            return replace(check, problem=problem)
        check = replace(check, sealed=_sealed(seals, first, prev_seq, sealing_from))
    if not keys and heads.unchecked is not None and (prev_seq or 0) < heads.unchecked.size:
        return replace(check, problem=(
            f"the export ends at event {prev_seq or 0}, but the checkpoint it carries names "
            f"{heads.unchecked.size} events: events were removed from its end (give --public-key "
            "to check the checkpoint's signature too)"))  # fmt: skip
    if keys and anchor is None and heads.sliced is None:
        return replace(check, problem=(
            "it carries no signed checkpoint, and it is not a slice: a whole export carries "
            "the latest on its first line, so it was removed (made before the first checkpoint "
            "was signed: export it again, or give the auditor's --checkpoint)"))  # fmt: skip
    return _anchored(check, anchor, heads.carries or given is not None, matched, bool(keys))


_HEADER_KEYS = frozenset({"checkpoint", "cut", STARTS, SLICE})


def _header(
    heads: _Headers, line: dict[str, Any], number: int, keys: Sequence[Ed25519PublicKey],
    after_events: bool,
) -> str | None:  # fmt: skip
    """Read one line before the events into `heads`, or say why it is not where it may be."""
    if "checkpoint" in line:
        if heads.read or after_events:  # read first, it vouches for every event that follows
            return (f"line {number} is a checkpoint: an export carries one, on its first line "
                    "(this one was moved or added)")  # fmt: skip
        heads.carries = True
        heads.signed = _opened(line["checkpoint"], keys)
        heads.unchecked = None if keys else _unchecked(line["checkpoint"])
    elif "cut" in line:
        if heads.cut is not None or heads.genesis or after_events:
            return f"line {number} is a retention cut: an export carries one, before its events"
        heads.cut = _opened(line["cut"], keys) if keys else _unchecked(line["cut"])
        heads.cut_checked = bool(keys)
        if heads.cut is None:
            return f"line {number} is a retention cut that is not a signed note"
    elif after_events or heads.genesis or heads.sliced is not None:
        return (f"line {number} says where the export starts: an export says it once, before "
                "its events")  # fmt: skip
    elif line.get(STARTS) == GENESIS and heads.cut is None:
        heads.genesis = True
    elif isinstance(line.get(SLICE), dict):
        heads.sliced = line[SLICE]
    else:
        return f"line {number} is not an exported event nor a header an export carries"
    return None


def _start(heads: _Headers, event: dict[str, Any]) -> str | None:
    """Why the export's first event is not where it says it starts: right after the retention
    cut it carries, else (a whole export) the chain's first event. A slice starts anywhere."""
    if heads.cut is not None:
        return _after_cut(heads.cut, event, heads.cut_checked)
    if heads.sliced is not None:
        return None
    if event["seq"] != 1:
        return (f"the export starts at event {event['seq']}, not at the chain's first event nor "
                "right after a signed retention cut: events were removed from its start (a time "
                "slice, made with --since or --until, says it is one)")  # fmt: skip
    if event["prev_hash"] != GENESIS_HASH:
        return ("event 1 does not start the chain: the hash before it is not the all-zero "
                "genesis hash")  # fmt: skip
    return None


def _after_cut(cut: Checkpoint, event: dict[str, Any], checked: bool = True) -> str | None:
    """Why the export's first event is not the one right after the retention cut it carries."""
    said = "signed retention cut" if checked else "retention cut (its signature unchecked)"
    if event["seq"] <= cut.size:
        return (f"event {event['seq']} is in the export, but the {said} says events up to "
                f"{cut.size} were pruned")  # fmt: skip
    if event["seq"] > cut.size + 1 or event["prev_hash"] != cut.root:
        return (f"event {event['seq']} does not follow the {said} at event {cut.size}: events "
                "were deleted from the chain's start, or from the export's")  # fmt: skip
    return None


def _starts_said(heads: _Headers, first: int | None) -> str | None:
    if first is None:
        return None
    if heads.cut is not None:
        said = "signed retention cut" if heads.cut_checked else "retention cut"
        return f"it starts after the {said} at event {heads.cut.size}"
    return None if heads.sliced is not None else "it starts at the chain's first event"


def _slice_said(sliced: dict[str, Any] | None) -> str | None:
    if sliced is None:
        return None
    bounds = [f"{name} {sliced[name]}" for name in ("since", "until") if sliced.get(name)]
    return (f"a time slice ({', '.join(bounds) or 'unbounded'}): it shows these events intact, "
            "not that the trail is whole")  # fmt: skip


class _NotJsonLines(Exception):
    pass


def _not_json_lines(number: int) -> str:
    return (f"line {number} is not an exported event: only JSON-lines exports (`airlock audit "
            "export`, --format jsonl, the default) can be verified; a CSV or OCSF export does "
            "not carry what the check needs")  # fmt: skip


def _unchecked(note: Any) -> Checkpoint | None:
    """A signed note's position and hash, read without checking its signature (no key given):
    enough to see an export that stops short of what it names."""
    try:
        origin, size, root = str(note).split("\n")[:3]
        return Checkpoint(origin, int(size), base64.b64decode(root, validate=True).hex())
    except (ValueError, TypeError):
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
