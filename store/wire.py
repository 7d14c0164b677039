"""How the proxy and its writer process talk: length-prefixed frames over a socket pair.

A job travels as one frame: a binary head (its sequence number, 0 when nobody awaits the result,
and its flag) and JSON `[kind, fields]`. The flag says whether the frame is a store job or is for
the process that hosts the writer (the gate's decider, addons/decider.py), which turns it into
jobs before the store sees it. The writer answers in JSON: `["commit", seconds, size]` per
group, and `[seq, ok, value]` per awaited job that has a value or failed.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict
from typing import Any

import orjson

from airlock.store.records import (
    DecisionRecord,
    HoldRequest,
    Joined,
    OutcomeRecord,
    ReleaseRequest,
    Settlement,
    SettleRequest,
)

_LENGTH = struct.Struct("!I")
_JOB_HEAD = struct.Struct("!QB")  # sequence number, flag (after the length)
STORED, HOSTED = 0, 2  # flags: a store job, a message for the writer's host
_BODY = _LENGTH.size + _JOB_HEAD.size


class StoreError(RuntimeError):
    """A write the store refused or could not make; the message says why."""


def frame(message: Any) -> bytes:
    body = _json(message)
    return _LENGTH.pack(len(body)) + body


def _json(message: Any) -> bytes:
    try:
        return orjson.dumps(message)
    except (TypeError, orjson.JSONEncodeError):  # integers beyond 64 bits, lone surrogates
        return json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode()


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
    return _loads(whole_frame[_LENGTH.size :])


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


# --- jobs ------------------------------------------------------------------------------------


def job_frame(sequence: int, job: Any) -> bytes:
    body = _json(job_fields(job))
    return _LENGTH.pack(_JOB_HEAD.size + len(body)) + _JOB_HEAD.pack(sequence, STORED) + body


def job_head(whole_frame: bytes) -> tuple[int, int]:
    """(sequence, flag) of a job frame, without decoding its JSON."""
    sequence, flag = _JOB_HEAD.unpack_from(whole_frame, _LENGTH.size)
    return sequence, flag


def hosted_frame(sequence: int, message: Any, tail: bytes = b"") -> bytes:
    """A frame for the writer's host process: JSON, then raw bytes (a request body) as they are."""
    body = _json(message)
    size = _JOB_HEAD.size + _LENGTH.size + len(body) + len(tail)
    head = _JOB_HEAD.pack(sequence, HOSTED) + _LENGTH.pack(len(body))
    return _LENGTH.pack(size) + head + body + tail


def hosted_message(whole_frame: bytes) -> tuple[Any, bytes]:
    """(JSON message, raw tail) of a hosted frame."""
    (length,) = _LENGTH.unpack_from(whole_frame, _BODY)
    start = _BODY + _LENGTH.size
    return _loads(whole_frame[start : start + length]), whole_frame[start + length :]


def decode_job(whole_frame: bytes) -> tuple[int, Any]:
    """(sequence, job) of a job frame."""
    sequence, _ = _JOB_HEAD.unpack_from(whole_frame, _LENGTH.size)
    kind, fields = _loads(whole_frame[_BODY:])
    return sequence, job_from(kind, fields)


def job_fields(job: Any) -> tuple[str, dict[str, Any]]:
    # vars, not asdict: the records are flat, and asdict deep-copies (~7 µs a job).
    if isinstance(job, DecisionRecord):
        hold = vars(job.hold) if job.hold else None
        return "decision", {"run": job.run, "hold": hold, "joins": job.joins}
    return type(job).__name__, vars(job)


def job_from(kind: str, fields: dict[str, Any]) -> Any:
    if kind == "decision":
        hold = fields["hold"]
        if hold is not None:
            hold = HoldRequest(**{**hold, "reviewer_roles": tuple(hold["reviewer_roles"])})
        return DecisionRecord(fields["run"], hold, fields.get("joins"))
    return _PLAIN_JOBS[kind](**fields)


_PLAIN_JOBS: dict[str, type] = {
    cls.__name__: cls for cls in (OutcomeRecord, SettleRequest, ReleaseRequest)
}


def result_value(result: Any) -> Any:
    return asdict(result) if isinstance(result, Settlement | Joined) else result


def result_from(kind: str, value: Any) -> Any:
    return Settlement(**value) if kind == "SettleRequest" and value is not None else value
