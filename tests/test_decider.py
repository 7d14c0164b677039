"""The decider in-process (addons/decider.py): what it makes of the gate's messages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import tutils

from airlock.addons.decider import Decider, _request, request_fields
from airlock.pipeline.document import build_document
from airlock.pipeline.evaluation import Config
from airlock.pipeline.yaml_source import recording_sources
from airlock.store.schema import create_schema, open_engine
from airlock.store.wire import decode_job, hosted_frame, hosted_message
from airlock.store.writer import GroupWriter, Pending
from tests.helpers.proxy import PROJECT_ROOT


@pytest.fixture
def decider(tmp_path: Path) -> Iterator[Decider]:
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    create_schema(engine)
    writer = GroupWriter(engine)
    yield Decider(writer)
    writer.close()
    engine.dispose()


def charge(amount: int) -> tuple[dict[str, Any], bytes]:
    request = tutils.treq(
        method=b"POST", scheme=b"https", host="api.stripe.com", port=443, authority=b"",
        path=b"/v1/charges", headers=[(b"content-type", b"application/x-www-form-urlencoded")],
        content=f"amount={amount}&currency=usd".encode(),
    )  # fmt: skip
    fields = request_fields(request) | {"id": f"run-{amount}", "agent": "a", "refusal": None}
    return fields, request.raw_content or b""


def setup_message() -> bytes:
    mappings, policies = PROJECT_ROOT / "mappings", PROJECT_ROOT / "policies"
    with recording_sources() as sources:
        Config.load(mappings, policies)
    setup = {
        "instance": "test-1",
        "sync_every": 60.0,
        "mappings": str(mappings),
        "policies": str(policies),
        "sources": sources,
        "mode": "enforce",
    }
    return hosted_frame(0, ["setup", setup])


def test_decisions_become_records_answered_once_written(decider: Decider) -> None:
    small, large = charge(500), charge(5_000_000)
    taken = decider.take(
        [setup_message(), hosted_frame(1, ["decide", small[0]], small[1]),
         hosted_frame(2, ["decide", large[0]], large[1])]
    )  # fmt: skip
    assert taken.answers == []
    records = [decode_job(f) for f in taken.frames]
    assert [(seq, job.run["decision"]) for seq, job in records] == [(1, "ALLOW"), (2, "BLOCK")]
    assert records[1][1].run["outcome"] == "blocked"
    assert "stripe-charge-too-large" in taken.results[2]["run"]["rules"]
    assert "request" not in taken.results[1]["run"]  # the proxy gets a summary, not the document


def test_a_request_for_approval_is_recorded_with_the_approval_it_opens(decider: Decider) -> None:
    fields, body = charge(150_000)
    taken = decider.take([setup_message(), hosted_frame(7, ["decide", fields], body)])
    [(sequence, record)] = [decode_job(f) for f in taken.frames]
    assert (sequence, record.run["decision"]) == (7, "REQUIRE_APPROVAL")
    assert record.run["request"]["body"] == {"amount": "150000", "currency": "usd"}
    answer = taken.results[7](None)  # what the proxy gets once the write found no other
    assert record.hold is not None and answer["approval"]["id"] == record.hold.approval_id
    assert (answer["approval"]["state"], answer["approval"]["joined"]) == ("PENDING", False)
    assert answer["request_hash"] == record.hold.request_hash and len(answer["request_hash"]) == 64


def test_the_same_call_twice_opens_one_approval(decider: Decider) -> None:
    """In one batch (sent at once), and in the next (the first is committed by then)."""
    first, body = charge(150_000)
    again = first | {"id": "run-again"}
    taken = decider.take([setup_message(), hosted_frame(1, ["decide", first], body),
                          hosted_frame(2, ["decide", again], body)])  # fmt: skip
    opened, joined = (decode_job(f)[1] for f in taken.frames)
    assert opened.hold is not None and joined.hold is None
    assert taken.results[2](None)["approval"]["id"] == opened.hold.approval_id
    assert f"joins approval {opened.hold.approval_id}" in joined.run["reason"]
    GroupWriter(decider.engine).write_group([Pending(*decode_job(f)) for f in taken.frames])

    later = decider.take([hosted_frame(3, ["decide", first | {"id": "run-3"}], body)])
    [(_, third)] = [decode_job(f) for f in later.frames]
    assert third.hold is None
    assert later.results[3](None)["approval"] == taken.results[1](None)["approval"] | {
        "joined": True
    }


def test_without_configuration_a_request_is_blocked_and_recorded(decider: Decider) -> None:
    fields, body = charge(500)
    taken = decider.take([hosted_frame(1, ["decide", fields], body)])  # no setup came
    [(_, record)] = [decode_job(f) for f in taken.frames]
    assert record.run["decision"] == "BLOCK"
    assert "no configuration" in record.run["reason"]
    assert taken.results[1]["failed_stage"] == "gate"


def test_a_message_the_decider_cannot_read_is_refused_not_dropped(decider: Decider) -> None:
    taken = decider.take([hosted_frame(5, ["decide", {"id": "x"}]), hosted_frame(6, ["?", {}])])
    assert [(seq, ok) for seq, ok, _ in taken.answers] == [(5, False), (6, False)]
    assert taken.frames == []


def test_the_request_crosses_to_the_decider_byte_for_byte() -> None:
    request = tutils.treq(
        method=b"PATCH", path=b"/a%20b/\xc3\xa9?q=\xff", authority=b"",
        headers=[(b"X-Raw", b"\xfe\x00v"), (b"x-raw", b"second")], content=b"\x00\x01",
    )  # fmt: skip
    sent = hosted_frame(1, ["decide", request_fields(request)], request.raw_content or b"")
    (_, fields), tail = hosted_message(sent)
    crossed = _request(fields, tail)

    assert (crossed.method, crossed.path) == (request.method, request.path)
    as_sent = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in crossed.headers]
    assert as_sent == list(request.headers.fields)
    assert (crossed.host, crossed.port, crossed.raw_content) == (
        request.host, request.port, b"\x00\x01",
    )  # fmt: skip
    assert build_document(crossed, "a") == build_document(request, "a")


def test_budgets_never_decide_without_their_past(tmp_path: Path) -> None:
    """The recent past could not be read (here: no tables yet): decisions fail closed, and the
    decider tries again before each one instead of deciding on an empty history."""
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    writer = GroupWriter(engine)
    decider = Decider(writer)
    fields, body = charge(500)
    try:
        decider.take([setup_message()])
        assert decider.next_sync is None
        blocked = decider.take([hosted_frame(1, ["decide", fields], body)])
        create_schema(engine)
        allowed = decider.take([hosted_frame(2, ["decide", fields], body)])
    finally:
        writer.close()
        engine.dispose()
    [(_, record)] = [decode_job(f) for f in blocked.frames]
    assert record.run["decision"] == "BLOCK"
    assert "Airlock failed" in record.run["reason"]
    assert allowed.results[2]["run"]["decision"] == "ALLOW"


def test_a_record_keeps_large_values_as_their_start_length_and_hash(decider: Decider) -> None:
    """Policies see the whole value; the store keeps a bounded record of it."""
    import hashlib
    import json

    from airlock.store.records import DecisionRecord

    description = "d" * 500_000
    request = tutils.treq(
        method=b"POST", scheme=b"https", host="api.stripe.com", port=443, authority=b"",
        path=b"/v1/charges", headers=[(b"content-type", b"application/x-www-form-urlencoded"),
                                      (b"x-trace", b"t" * 100_000)],
        content=f"amount=5&currency=usd&description={description}".encode(),
    )  # fmt: skip
    fields = request_fields(request) | {"id": "run-big", "agent": "a", "refusal": None}
    taken = decider.take(
        [setup_message(), hosted_frame(1, ["decide", fields], request.raw_content or b"")]
    )
    [(_, job)] = [decode_job(frame) for frame in taken.frames]
    assert isinstance(job, DecisionRecord)
    stored = json.dumps(job.run)
    assert len(stored) < 100_000, len(stored)
    assert job.run["decision"] == "ALLOW"
    text = job.run["params"]["description"]
    digest = hashlib.sha256(description.encode()).hexdigest()
    assert text.startswith("d" * 256) and f"[500000 characters, sha256 {digest}]" in text
    assert "[100000 characters, sha256 " in job.run["request"]["headers"]["x-trace"]
