"""How the proxy and its writer process talk: length-prefixed JSON frames over a socket pair.

Each job travels as one frame `[seq, kind, fields]`; seq 0 means nobody awaits the result. The
writer answers `[seq, ok, value]` per awaited job, and `["commit", seconds, size]` per group.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict
from typing import Any

import orjson

from store.records import (
    DecisionRecord,
    HoldRequest,
    OutcomeRecord,
    ReleaseRequest,
    Settlement,
    SettleRequest,
)

_LENGTH = struct.Struct("!I")


class StoreError(RuntimeError):
    """A write the store refused or could not make; the message says why."""


def frame(message: Any) -> bytes:
    try:
        body = orjson.dumps(message)
    except (TypeError, orjson.JSONEncodeError):  # integers beyond 64 bits, lone surrogates
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode()
    return _LENGTH.pack(len(body)) + body


def unframe(buffer: bytearray) -> list[Any]:
    """Every complete frame at the start of buffer, decoded and removed from it."""
    return [decode(f) for f in split_frames(buffer)]


def split_frames(buffer: bytearray) -> list[bytes]:
    """Every complete frame (length prefix included) at the start of buffer, removed from it;
    a partial one stays."""
    frames, start = [], 0
    while len(buffer) - start >= _LENGTH.size:
        (length,) = _LENGTH.unpack_from(buffer, start)
        end = start + _LENGTH.size + length
        if end > len(buffer):
            break
        frames.append(bytes(buffer[start:end]))
        start = end
    del buffer[:start]
    return frames


def decode(whole_frame: bytes) -> Any:
    body = whole_frame[_LENGTH.size :]
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


# --- jobs ------------------------------------------------------------------------------------


def job_fields(job: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(job, DecisionRecord):
        return "decision", {"run": job.run, "hold": asdict(job.hold) if job.hold else None}
    return type(job).__name__, asdict(job)


def job_from(kind: str, fields: dict[str, Any]) -> Any:
    if kind == "decision":
        hold = fields["hold"]
        if hold is not None:
            hold = HoldRequest(**{**hold, "reviewer_roles": tuple(hold["reviewer_roles"])})
        return DecisionRecord(fields["run"], hold)
    return _PLAIN_JOBS[kind](**fields)


_PLAIN_JOBS: dict[str, type] = {
    cls.__name__: cls for cls in (OutcomeRecord, SettleRequest, ReleaseRequest)
}


def result_value(result: Any) -> Any:
    return asdict(result) if isinstance(result, Settlement) else result


def result_from(kind: str, value: Any) -> Any:
    return Settlement(**value) if kind == "SettleRequest" and value is not None else value
