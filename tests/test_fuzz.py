"""Property-based tests: any bytes an agent sends become a document and a storable record, or a
clear refusal; never an exception, never text a database cannot store.

Hypothesis generates the requests; each property is what the gate relies on: the decider builds
the document from the raw request, evaluates it, redacts it and frames the record for the store.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airlock.decider.messages import Envelope
from airlock.decider.wire import Reader, pack
from airlock.pipeline.document import MAX_DEPTH, WireRequest, build_document, parse_body
from airlock.pipeline.evaluation import Config, evaluate
from airlock.pipeline.redaction import redact_document
from airlock.pipeline.run_record import run_row
from airlock.store.jsontext import to_json
from airlock.store.records import DecisionRecord

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG = Config.load(PROJECT_ROOT / "mappings", PROJECT_ROOT / "policies")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONTENT_TYPES = ["", "application/json", "application/x-www-form-urlencoded", "application/xml",
                 "text/plain", "application/x-amz-json-1.0", "multipart/form-data"]  # fmt: skip
ENCODINGS = ["", "gzip", "deflate", "br", "zstd", "identity", "x-gzip", "bogus"]
HOSTS = ["api.stripe.com", "s3.amazonaws.com", "bucket.s3.us-east-1.amazonaws.com", "slack.com",
         "api.github.com", "api.openai.com", "example.com"]  # fmt: skip


def as_mitmproxy_reads(raw: bytes) -> str:
    """What mitmproxy (and the decider) make of request-line bytes."""
    return raw.decode("utf-8", "surrogateescape")


def json_bodies() -> st.SearchStrategy[bytes]:
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    values = st.recursive(leaves, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner))
    return values.map(lambda v: json.dumps(v).encode())


def form_bodies() -> st.SearchStrategy[bytes]:
    keys = st.text(alphabet="ab[]0.1", min_size=1, max_size=12)
    pairs = st.lists(st.tuples(keys, st.text(max_size=8)), max_size=8)
    return pairs.map(lambda kv: "&".join(f"{k}={v}" for k, v in kv).encode())


def bodies() -> st.SearchStrategy[bytes]:
    return st.binary(max_size=300) | json_bodies() | form_bodies() | st.just(b"<a><b>1</b></a>")


@st.composite
def requests(draw: st.DrawFn) -> WireRequest:
    path = b"/" + draw(st.binary(max_size=60))
    headers = draw(st.lists(st.tuples(st.text(alphabet=st.characters(max_codepoint=255),
                                              min_size=1, max_size=12),
                                      st.text(alphabet=st.characters(max_codepoint=255),
                                              max_size=40)), max_size=5))  # fmt: skip
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    encoding = draw(st.sampled_from(ENCODINGS))
    body = draw(bodies())
    if encoding in ("gzip", "x-gzip") and draw(st.booleans()):
        body = gzip.compress(body)
    elif encoding == "deflate" and draw(st.booleans()):
        body = zlib.compress(body)
    if content_type:
        headers.append(("content-type", content_type))
    if encoding:
        headers.append(("content-encoding", encoding))
    return WireRequest(
        as_mitmproxy_reads(draw(st.sampled_from([b"GET", b"POST", b"DELETE", b"P\xffST"]))),
        "https", draw(st.sampled_from(HOSTS)), 443, as_mitmproxy_reads(path), headers, body,
        as_mitmproxy_reads(draw(st.sampled_from([b"", b"api.stripe.com", b"\xff.example"]))),
    )  # fmt: skip


def storable(value: Any) -> None:
    """Every string encodes as UTF-8: what SQLite and PostgreSQL need (no lone surrogates)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for key, item in value.items():
            storable(key)
            storable(item)
    elif isinstance(value, list | tuple):
        for item in value:
            storable(item)


@FUZZ
@given(requests())
def test_any_request_becomes_a_storable_document_and_a_decision(request: WireRequest) -> None:
    document = build_document(request, "fuzz-agent")
    storable(document)
    evaluation = evaluate(document, CONFIG)
    assert evaluation.verdict.decision in ("ALLOW", "BLOCK", "REQUIRE_APPROVAL")
    if "request_error" in document:
        assert evaluation.verdict.decision == "BLOCK"


@FUZZ
@given(requests())
def test_any_decision_becomes_a_record_the_store_can_take(request: WireRequest) -> None:
    document = build_document(request, "fuzz-agent")
    row = run_row("0" * 32, "fuzz", document, evaluate(document, CONFIG), 0.1)
    storable(row.as_row())
    storable(redact_document(document))
    json.loads(to_json(row.as_row()))
    [crossed] = Reader().feed(pack(Envelope(7, DecisionRecord(row))))  # to the worker process
    assert crossed.sequence == 7 and crossed.message.run == row


NESTABLE = ["application/json", "application/xml", "application/x-www-form-urlencoded"]


@pytest.mark.parametrize("kind", NESTABLE)
def test_nesting_past_the_limit_is_a_clear_refusal(kind: str) -> None:
    depth = 1000
    body = {
        "application/json": b"[" * depth + b"]" * depth,
        "application/xml": b"<a>" * depth + b"</a>" * depth,
        "application/x-www-form-urlencoded": b"a" + b"[b]" * depth + b"=1",
    }[kind]
    document = build_document(
        WireRequest("POST", "https", "api.stripe.com", 443, "/v1/charges",
                    [("content-type", kind)], body),
        "agent",
    )  # fmt: skip
    assert f"nested deeper than {MAX_DEPTH} levels" in document["request_error"]
    assert evaluate(document, CONFIG).verdict.decision == "BLOCK"


def test_nesting_within_the_limit_is_parsed() -> None:
    body = b"[" * (MAX_DEPTH - 1) + b"1" + b"]" * (MAX_DEPTH - 1)
    parsed, kind, error = parse_body("application/json", body)
    assert (kind, error) == ("json", None)
    assert json.dumps(parsed) == body.decode()
