"""Compressed bodies are decoded within limits, in the decider and on the proxy's event loop: a
bomb costs what the limit allows, never what it inflates to (every flow waits behind it)."""

from __future__ import annotations

import gzip
import json
import random
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import brotli
import pytest
import zstandard
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from airlock.addons.outcomes import mcp_outcome
from airlock.addons.refusals import mcp_body
from airlock.pipeline.document import (
    MAX_DECODED_BODY,
    MAX_ENCODED_BODY,
    MAX_MEMBERS,
    Unreadable,
    build_document,
    decoded_body,
    readable_content,
)
from airlock.pipeline.run_record import RunSummary

MiB = 1 << 20


def peak_mib(work: Callable[[], Any]) -> float:
    """What `work` allocated at most, in MiB (Python's allocations, decoders' output included)."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1] / MiB
    finally:
        tracemalloc.stop()


def refused(raw: bytes, encoding: str) -> None:
    with pytest.raises(Unreadable, match="decodes to more than"):
        decoded_body(raw, encoding)


@pytest.fixture(scope="module")
def brotli_bomb() -> bytes:
    # ~200 bytes; 16 MiB meta-blocks of ~11 bytes each (window 24): the densest the encoder makes
    return brotli.compress(bytes(128 * MiB), quality=5, lgwin=24)


def test_a_brotli_bomb_is_stopped_at_the_limit(brotli_bomb: bytes) -> None:
    """Brotli 1.1 decodes whatever one call is given: fed 1 KiB, these 200 bytes were 128 MiB
    at once (a 986-byte one, 600 MiB: 1.3 GB in the decider)."""
    assert len(brotli_bomb) < 1024
    peak = peak_mib(lambda: refused(brotli_bomb, "br"))
    assert peak < 5 * MAX_DECODED_BODY / MiB  # the limit, a step past it, the decoder's copy


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("br", lambda data: brotli.compress(data, quality=5)),
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("zstd", lambda data: zstandard.ZstdCompressor().compress(data)),
    ],
)
def test_ordinary_compressed_bodies_are_read(encoding: str, compress: Callable[..., bytes]) -> None:
    payload = json.dumps([{"id": f"obj_{i}", "amount": i} for i in range(20_000)]).encode()
    assert decoded_body(compress(payload), encoding) == payload
    request = tutils.treq(
        host="api.example.com", path=b"/v1/things", content=compress(b'{"amount": 900}'),
        headers=[(b"content-type", b"application/json"), (b"content-encoding", encoding.encode())],
    )  # fmt: skip
    assert build_document(request, "a")["body"] == {"amount": 900}


def test_gzip_members_are_counted() -> None:
    """Each member cost a copy of the rest of the body: 1 MiB of empty members took 6.6 s."""
    member = gzip.compress(b"ab")
    assert decoded_body(member * MAX_MEMBERS, "gzip") == b"ab" * MAX_MEMBERS
    with pytest.raises(Unreadable, match=f"more than {MAX_MEMBERS} compressed members"):
        decoded_body(member * (MAX_MEMBERS + 1), "gzip")
    assert decoded_body(member * (MAX_MEMBERS + 1), "gzip", strict=False)[:2] == b"\x1f\x8b"


def test_a_compressed_body_over_the_limit_as_sent_is_not_decoded() -> None:
    """A JSON body is refused; an upload is recorded as sent (its hash, its size)."""
    large = gzip.compress(random.Random(1).randbytes(MAX_ENCODED_BODY))  # incompressible
    assert len(large) > MAX_ENCODED_BODY
    with pytest.raises(Unreadable, match="compressed"):
        decoded_body(large, "gzip")
    assert decoded_body(large, "gzip", strict=False) is large


def test_the_decoded_limit_holds_at_its_edge() -> None:
    assert len(decoded_body(gzip.compress(bytes(MAX_DECODED_BODY)), "gzip")) == MAX_DECODED_BODY
    refused(gzip.compress(bytes(MAX_DECODED_BODY + 1)), "gzip")
    refused(zstandard.ZstdCompressor().compress(bytes(MAX_DECODED_BODY + 1)), "zstd")
    refused(brotli.compress(bytes(MAX_DECODED_BODY + 1)), "br")


# --- on the proxy's event loop ----------------------------------------------------------------

GZIP_BOMB = gzip.compress(bytes(256 * MiB), 9)  # 250 KB


def mcp_flow(request_body: bytes, answer: bytes, request_encoding: str = "") -> http.HTTPFlow:
    flow = tflow.tflow(resp=True)
    flow.request.headers["content-type"] = "application/json"
    if request_encoding:
        flow.request.headers["content-encoding"] = request_encoding
    flow.request.raw_content = request_body
    flow.response = tutils.tresp(
        headers=http.Headers(content_type="application/json", content_encoding="gzip"),
        content=b"",
    )
    flow.response.raw_content = answer
    return flow


CALL = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "arguments": {}}}
).encode()


def test_an_mcp_answer_is_read_within_the_limit() -> None:
    """mitmproxy's get_content() inflated a 3 MB gzip answer to 3 GB on the event loop (7.7 s
    during which no flow moved)."""
    answer = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}).encode()
    assert mcp_outcome(mcp_flow(CALL, gzip.compress(answer))) is not None
    flow = mcp_flow(CALL, GZIP_BOMB)
    assert peak_mib(lambda: mcp_outcome(flow)) < 8
    assert mcp_outcome(flow) is None


def test_a_refused_mcp_bomb_is_not_decoded_to_answer_it() -> None:
    flow = mcp_flow(GZIP_BOMB, b"", "gzip")
    run = RunSummary("r", "BLOCK", "mcp.call", [], protocol="mcp")
    assert peak_mib(lambda: mcp_body(flow, run)) < 8
    assert mcp_body(flow, run) is None
    assert mcp_body(mcp_flow(CALL, b""), run)["method"] == "tools/call"


def test_readable_content_gives_none_past_its_limit() -> None:
    message = tutils.tresp(headers=http.Headers(content_encoding="gzip"), content=b"")
    message.raw_content = gzip.compress(b"x" * 100)
    assert readable_content(message) == b"x" * 100
    assert readable_content(message, limit=99) is None
    message.raw_content = b"not gzip"
    assert readable_content(message) is None
