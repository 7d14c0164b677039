"""The messages on the socket between the proxy and its worker process: msgpack, one object per
message (msgpack delimits them itself), each dataclass an extension type carrying its class name
and field values. Bytes stay bytes; text keeps mitmproxy's surrogate escapes (undecodable bytes
of a path or header); integers beyond 64 bits, which JSON bodies can hold, travel as text."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from airlock.decider import messages
from airlock.pipeline.run_record import RunRecord, RunSummary
from airlock.pipeline.tool_calls import ToolCall
from airlock.store.records import (
    DecisionRecord,
    HoldRequest,
    Joined,
    OutcomeRecord,
    ReleaseRequest,
    Settlement,
    SettleRequest,
)

_DATACLASS, _BIG_INT = 1, 2
_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        messages.StoreAddress, messages.Configuration, messages.Setup, messages.Configure,
        messages.RawRequest, messages.Decide, messages.ApprovalState, messages.Decided,
        messages.Remember, messages.Watch, messages.Unwatch, messages.Envelope,
        messages.Failure, messages.Reply, messages.Committed, messages.Settled,
        DecisionRecord, HoldRequest, OutcomeRecord, SettleRequest, ReleaseRequest, Settlement,
        Joined, RunRecord, RunSummary, messages.DecideCall, ToolCall,
    )
}  # fmt: skip
_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _TYPES.values()
}
_ERRORS = "surrogatepass"  # a lone surrogate is mitmproxy's escape for an undecodable byte


def _default(value: Any) -> Any:
    names = _FIELDS.get(type(value))
    if names is not None:
        fields = [type(value).__name__, *(getattr(value, name) for name in names)]
        return msgpack.ExtType(_DATACLASS, _packer().pack(fields))
    if isinstance(value, int):  # beyond 64 bits
        return msgpack.ExtType(_BIG_INT, str(value).encode())
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot send a {type(value).__name__} to the decider")


def _ext(code: int, data: bytes) -> Any:
    if code == _BIG_INT:
        return int(data)
    if code != _DATACLASS:
        raise ValueError(f"unknown msgpack extension {code}")
    name, *values = msgpack.unpackb(data, **_UNPACK)
    return _TYPES[name](*values)


_UNPACK: dict[str, Any] = {
    "ext_hook": _ext,
    "unicode_errors": _ERRORS,
    "strict_map_key": False,
    "raw": False,
}


def _packer() -> msgpack.Packer:
    return msgpack.Packer(default=_default, unicode_errors=_ERRORS)


def pack(value: Any) -> bytes:
    return _packer().pack(value)


def pack_all(values: list[Any]) -> bytes:
    packer = _packer()
    return b"".join(packer.pack(value) for value in values)


class Reader:
    """Messages out of a byte stream, as they complete."""

    def __init__(self) -> None:
        self._unpacker = msgpack.Unpacker(max_buffer_size=1 << 30, **_UNPACK)

    def feed(self, data: bytes) -> list[Any]:
        self._unpacker.feed(data)
        return list(self._unpacker)
