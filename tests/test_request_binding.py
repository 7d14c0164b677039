"""What binds an approval to its request (pipeline/run_record.py request_hash, retry_key_of,
former_request_hashes; decider/core.py _hold_or_join): no two different requests share a hash,
a vendor's body shaped like JSON-RPC keeps its id, and the hash forms of earlier Airlocks join
only the approvals they made, for requests they read one way."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import tutils
from sqlalchemy import update

from airlock.addons.runtime import raw_request
from airlock.decider.core import DeciderCore
from airlock.decider.messages import Decide, Envelope
from airlock.pipeline.document import Document, build_document
from airlock.pipeline.run_record import former_request_hashes, request_hash, retry_key_of
from airlock.store.approvals import APPROVED, resolve_approval
from airlock.store.schema import Approval
from tests.test_decider import core, replies, setup, setup_with, store  # noqa: F401

KEY = bytes(range(32))  # a request key (store/keys.py)

# Review M3: the path is percent-decoded and a text body is text, so either can hold a newline.
# Joined by newlines, A's body read as B's path and body.
A = ("/v1/ok", b"X\n{}\nBB")
B = ("/v1/ok%0A%7B%7D%0AX", b"BB")
LAMBDA = "lambda.us-east-1.amazonaws.com"
INVOKE = "/2015-03-31/functions/fn/invocations"


def sent(
    path: str, body: bytes, host: str = "api.example.com", **headers: str
) -> tutils.http.Request:
    return tutils.treq(
        method=b"POST", scheme=b"https", host=host, port=443, authority=b"", path=path.encode(),
        headers=[(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
        content=body,
    )  # fmt: skip


def document(path: str, body: bytes, agent: str = "bot", **headers: str) -> Document:
    return build_document(sent(path, body, **headers), agent)


def jsonrpc(call_id: int) -> bytes:
    return b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"x"}}' % call_id


def test_a_path_holding_newlines_is_not_read_as_another_body() -> None:
    a, b = document(*A, content_type="text/plain"), document(*B, content_type="text/plain")
    assert (a["path"], b["path"]) == ("/v1/ok", "/v1/ok\n{}\nX")  # what the review sent
    assert request_hash(a, KEY) != request_hash(b, KEY)
    assert retry_key_of(a, request_hash(a, KEY)) != retry_key_of(b, request_hash(b, KEY))


BASE = {"method": "POST", "scheme": "https", "host": "h", "port": 443, "path": "/v1/ok",
        "query": {}, "body": {"a": 1}, "body_format": "json", "agent": "bot",
        "headers": {}}  # fmt: skip


@pytest.mark.parametrize(
    ("one", "two"),
    [
        ({"body": "X\nY", "body_format": "text"},
         {"body": "X", "body_format": "text", "agent": "Y\nbot"}),
        ({"body": "{}\n{}", "body_format": "text"},
         {"path": "/v1/ok\n{}", "body": "{}", "body_format": "text"}),
        ({}, {"body": '{"a": 1}', "body_format": "text"}),
        ({"body": None, "body_format": "empty"}, {"body": "", "body_format": "text"}),
    ],
    ids=["body-read-as-agent", "path-read-as-query", "text-that-is-the-json", "empty-text"],
)  # fmt: skip
def test_no_two_different_requests_hash_alike(one: dict[str, Any], two: dict[str, Any]) -> None:
    """Pairs that joined by newlines (and a text body written as it is, a parsed one as JSON)
    made the same text."""
    assert request_hash({**BASE, **one}, KEY) != request_hash({**BASE, **two}, KEY)


def test_a_vendor_body_shaped_like_json_rpc_keeps_its_id() -> None:
    """A Lambda Invoke's payload is the function's: its id is part of what was approved. Only a
    request judged as MCP (mcp=True, from the decider) leaves the id out."""
    one, two = (build_document(sent(INVOKE, jsonrpc(n), host=LAMBDA), "bot") for n in (1, 2))
    assert request_hash(one, KEY) != request_hash(two, KEY)
    assert request_hash(one, KEY, mcp=True) == request_hash(two, KEY, mcp=True)
    assert former_request_hashes(one, KEY) != former_request_hashes(two, KEY)


def test_former_forms_are_not_given_for_a_request_they_read_another_way() -> None:
    a, b = document(*A, content_type="text/plain"), document(*B, content_type="text/plain")
    assert former_request_hashes(b, KEY) == former_request_hashes(a, KEY) == ()
    plain = document("/v1/ok", b"BB", content_type="text/plain")
    assert len(set(former_request_hashes(plain, KEY))) == 4
    assert request_hash(plain, KEY) not in former_request_hashes(plain, KEY)
    listed = document("/v1/ok", b"BB", agent='[["content-type", "text/plain"]]')
    assert former_request_hashes(listed, KEY) == ()


def held(
    path: str, body: bytes, run_id: str, host: str = "api.example.com", **headers: str
) -> Decide:
    return Decide(run_id, "bot", None, raw_request(sent(path, body, host, **headers), None))


def approve(core: DeciderCore, approval_id: str) -> None:  # noqa: F811
    assert resolve_approval(core.engine, approval_id, APPROVED, "alice", None).state == APPROVED


def test_an_approved_request_is_not_released_for_another_that_hashed_alike_before(
    core: DeciderCore,  # noqa: F811
) -> None:
    """Review M3 in the decider: A approved; B, sent with A's Idempotency-Key, finds A's
    approval and is refused (409 at the proxy), not released; A itself still is."""
    headers = {"content_type": "text/plain", "idempotency_key": "same-key"}
    first = replies(core.handle([Envelope(0, setup()), Envelope(1, held(*A, "run-a", **headers))]))
    approval = first[1].approval
    approve(core, approval.id)
    other = replies(core.handle([Envelope(2, held(*B, "run-b", **headers))]))[2]
    assert other.approval.id == approval.id
    assert other.request_hash != other.approval.request_hash  # the proxy answers 409
    again = replies(core.handle([Envelope(3, held(*A, "run-a2", **headers))]))[3]
    assert again.request_hash == again.approval.request_hash == approval.request_hash


def test_an_approval_an_earlier_airlock_opened_is_not_released_for_a_request_read_another_way(
    core: DeciderCore,  # noqa: F811
) -> None:
    """A's approval as the Airlock before this one made it (fields joined by newlines, keyed),
    open when the store is upgraded: B, which that form reads as A, is refused (before, its
    former form matched). So is A's own retry (no former form for fields holding newlines:
    the safe side), while a request that form reads one way still joins its approval."""
    headers = {"content_type": "text/plain", "idempotency_key": "upgraded-key"}
    plain = ("/v1/ok", b"BB")
    first = replies(core.handle([Envelope(0, setup()), Envelope(1, held(*A, "run-a", **headers))]))
    approval = first[1].approval
    a = build_document(sent(*A, **headers), "bot")
    b = build_document(sent(*B, **headers), "bot")
    assert former_request_hashes(a, core.request_key) == ()  # A has no former form either
    joined = "\n".join(["POST", "https", "api.example.com", "443", a["path"], "{}",
                        a["body"], "bot", '[["content-type", "text/plain"]]'])  # fmt: skip
    before = hmac.new(core.request_key, joined.encode(), hashlib.sha256).hexdigest()
    assert before == hmac.new(core.request_key, "\n".join(
        ["POST", "https", "api.example.com", "443", b["path"], "{}", b["body"], "bot",
         '[["content-type", "text/plain"]]']).encode(), hashlib.sha256).hexdigest()  # fmt: skip
    with core.engine.begin() as conn:  # as the Airlock before this one wrote it
        conn.execute(update(Approval).where(Approval.id == approval.id).values(request_hash=before))
    approve(core, approval.id)
    other = replies(core.handle([Envelope(2, held(*B, "run-b", **headers))]))[2]
    assert other.approval.id == approval.id and other.request_hash != before  # 409

    keyed = {**headers, "idempotency_key": "plain-key"}
    opened = replies(core.handle([Envelope(4, held(*plain, "run-p", **keyed))]))[4].approval
    former = former_request_hashes(build_document(sent(*plain, **keyed), "bot"), core.request_key)
    with core.engine.begin() as conn:
        conn.execute(
            update(Approval).where(Approval.id == opened.id).values(request_hash=former[0])
        )
    approve(core, opened.id)
    retried = replies(core.handle([Envelope(5, held(*plain, "run-p2", **keyed))]))[5]
    assert (retried.approval.id, retried.request_hash) == (opened.id, former[0])


def test_a_vendor_request_shaped_like_json_rpc_is_not_released_with_another_id(
    core: DeciderCore,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A Lambda Invoke held and approved: the same invocation (boto3's invocation id) with
    another JSON-RPC id in its payload is another payload, refused (409); before, the id was
    left out of the hash by the body's shape and it was released."""
    rule = "rules:\n  - {id: hold-invoke, when: {action: invoke_function},\n"
    rule += "     decision: REQUIRE_APPROVAL}\n"
    configured, _ = setup_with(tmp_path, {"hold.yaml": rule})
    same = {"amz_sdk_invocation_id": "inv-1"}

    def invoke(call_id: int, run_id: str) -> Decide:
        return held(INVOKE, jsonrpc(call_id), run_id, LAMBDA, **same)

    opened = replies(core.handle([Envelope(0, configured), Envelope(1, invoke(1, "r1"))]))[1]
    approve(core, opened.approval.id)
    other = replies(core.handle([Envelope(2, invoke(2, "r2"))]))[2]
    assert other.approval.id == opened.approval.id
    assert other.request_hash != other.approval.request_hash  # the proxy answers 409
    again = replies(core.handle([Envelope(3, invoke(1, "r3"))]))[3]
    assert again.request_hash == again.approval.request_hash


# The document is a reading of the request: these pairs read alike and the upstream tells them
# apart. An approval binds the bytes sent (the target's and the body's digests).
ACL = (
    '<AccessControlPolicy><AccessControlList><Grant><Grantee xmlns:xsi="http://www.w3.org/2001/'
    'XMLSchema-instance" xsi:type="{}"><ID>abc</ID></Grantee><Permission>FULL_CONTROL'
    "</Permission></Grant></AccessControlList></AccessControlPolicy>"
)
READ_ALIKE = {
    "invalid-utf8": (("/bucket/fn.zip", b"PK\x03\x04\xff\xfe"),
                     ("/bucket/fn.zip", b"PK\x03\x04\xfe\xff"), "application/octet-stream"),
    "xml-attributes": (("/bucket/k?acl", ACL.format("CanonicalUser").encode()),
                       ("/bucket/k?acl", ACL.format("Group").encode()), "application/xml"),
    "encoded-slash": (("/bucket/a%2Fb", b"x"), ("/bucket/a/b", b"x"), "text/plain"),
    "dot-segments": (("/bucket/b", b"x"), ("/bucket/x/../b", b"x"), "text/plain"),
}  # fmt: skip


@pytest.mark.parametrize(("a", "b", "content_type"), READ_ALIKE.values(), ids=READ_ALIKE.keys())
def test_requests_that_read_alike_do_not_hash_alike(
    a: tuple[str, bytes], b: tuple[str, bytes], content_type: str
) -> None:
    one, two = document(*a, content_type=content_type), document(*b, content_type=content_type)
    read = ("path", "query", "body", "body_format")
    assert [one[k] for k in read] == [two[k] for k in read]  # read alike
    assert request_hash(one, KEY) != request_hash(two, KEY)
    assert request_hash(one, KEY) == request_hash(document(*a, content_type=content_type), KEY)
    # An earlier form read them alike: the one read another way than sent has none. (The plain
    # path keeps its own: it joins an approval made for the path it reads as, which is what
    # the reviewer saw, and is sent as read.)
    misread = [d for d in (one, two) if d.get("path_rewritten") or "\ufffd" in str(d["body"])]
    misread += [d for d in (one, two) if d["body_format"] == "xml"]
    assert misread and all(former_request_hashes(d, KEY) == () for d in misread)


def test_the_body_binds_as_sent_not_as_decoded() -> None:
    """Two gzip encodings of one body (the header's mtime differs): the upstream receives (S3
    stores) the bytes as sent."""
    one, two = (gzip.compress(b'{"a": 1}', mtime=t) for t in (1, 2))
    a = document("/v1/ok", one, content_type="application/json", content_encoding="gzip")
    b = document("/v1/ok", two, content_type="application/json", content_encoding="gzip")
    assert a["body"] == b["body"] == {"a": 1}
    assert request_hash(a, KEY) != request_hash(b, KEY)


def test_an_mcp_call_with_a_new_id_binds_as_before_and_a_lossy_one_binds_its_bytes() -> None:
    """Judged as MCP, a retry with a new JSON-RPC id (and other whitespace) is the same call;
    a body whose parse is not exact (not UTF-8, a number past a double) binds its bytes."""
    spaced = b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "x"}}'
    first, again = document("/mcp", jsonrpc(1)), document("/mcp", spaced)
    assert first["body_sha256"] != again["body_sha256"]
    assert request_hash(first, KEY, mcp=True) == request_hash(again, KEY, mcp=True)
    assert request_hash(first, KEY) != request_hash(again, KEY)
    for one, two in ((b"\xff", b"\xfe"), (b"1e400", b"1e500")):
        pair = [
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","v":"%s"}}' % one
            if one == b"\xff" or one == b"\xfe"
            else b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","v":%s}}'
            % one,
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","v":"%s"}}' % two
            if two == b"\xfe"
            else b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","v":%s}}'
            % two,
        ]
        a, b = (document("/mcp", body, content_type="application/json") for body in pair)
        assert a["body"] == b["body"]  # read alike
        assert request_hash(a, KEY, mcp=True) != request_hash(b, KEY, mcp=True)


def test_the_digests_bind_in_memory_and_are_not_stored() -> None:
    """Unkeyed, a stored digest of a small body would let a reader of the store test guesses
    of a field the record redacts (a password in a form): they are dropped with raw_path."""
    from airlock.pipeline.redaction import redact_document

    doc = document(*READ_ALIKE["encoded-slash"][0], content_type="text/plain")
    assert doc["body_sha256"] == hashlib.sha256(b"x").hexdigest()
    assert doc["target_sha256"] == hashlib.sha256(b"/bucket/a%2Fb").hexdigest()
    stored = redact_document(doc)
    assert not {"body_sha256", "target_sha256", "raw_path"} & set(stored)
    assert stored["path_rewritten"] is True


KMS = "kms.us-east-1.amazonaws.com"


def test_headers_that_choose_the_operation_are_bound_and_an_attempts_own_are_not() -> None:
    """KMS CancelKeyDeletion and ScheduleKeyDeletion send the same body; S3's x-amz-acl makes a
    PutObject public: approving one must not release the other (review of 4d27b41)."""
    body = b'{"KeyId":"alias/prod"}'

    def kms(target: str, date: str = "20261206T070000Z") -> Document:
        headers = {"X-Amz-Target": target, "X-Amz-Date": date,
                   "Content-Type": "application/x-amz-json-1.1"}  # fmt: skip
        return build_document(sent("/", body, host=KMS, **headers), "bot")

    cancel, schedule = (
        kms("TrentService.CancelKeyDeletion"),
        kms("TrentService.ScheduleKeyDeletion"),
    )
    assert request_hash(cancel, KEY) != request_hash(schedule, KEY)
    retried = kms("TrentService.CancelKeyDeletion", date="20261206T070005Z")  # signed anew
    assert request_hash(cancel, KEY) == request_hash(retried, KEY)
    private, public = (
        document("/bucket/k", b"x"),
        document("/bucket/k", b"x", x_amz_acl="public-read"),
    )
    assert request_hash(private, KEY) != request_hash(public, KEY)
    tool = {"Content-Type": "application/json"}
    one, two = (document("/mcp", jsonrpc(1), mcp_name=name, **tool) for name in ("read", "drop"))
    assert request_hash(one, KEY, mcp=True) != request_hash(two, KEY, mcp=True)


@pytest.mark.parametrize(("a", "b", "content_type"), READ_ALIKE.values(), ids=READ_ALIKE.keys())
def test_an_approval_does_not_release_a_request_that_reads_alike(
    core: DeciderCore,  # noqa: F811
    a: tuple[str, bytes],
    b: tuple[str, bytes],
    content_type: str,
) -> None:
    """A approved; B, sent with A's Idempotency-Key, reads as A but is other bytes: it finds
    A's approval and is refused (409 at the proxy), not released; A itself still is."""
    headers = {"content_type": content_type, "idempotency_key": "same-key"}
    first = replies(core.handle([Envelope(0, setup()), Envelope(1, held(*a, "run-a", **headers))]))
    approval = first[1].approval
    approve(core, approval.id)
    other = replies(core.handle([Envelope(2, held(*b, "run-b", **headers))]))[2]
    assert other.approval.id == approval.id
    assert other.request_hash != other.approval.request_hash  # the proxy answers 409
    again = replies(core.handle([Envelope(3, held(*a, "run-a2", **headers))]))[3]
    assert again.request_hash == again.approval.request_hash == approval.request_hash


def test_an_approval_of_the_form_before_joins_only_a_request_it_reads_one_way(
    core: DeciderCore,  # noqa: F811
) -> None:
    """An approval as 4d27b41's Airlock made it (/3: the document's fields, no digests), open
    at the upgrade: the same plain request joins it; a binary upload, which that form read
    with U+FFFD, has no such form and is held anew rather than released for other bytes."""
    plain = ("/v1/ok", b"BB")
    keyed = {"content_type": "text/plain", "idempotency_key": "three-key"}
    opened = replies(core.handle([Envelope(0, setup()), Envelope(1, held(*plain, "p", **keyed))]))
    formers = former_request_hashes(build_document(sent(*plain, **keyed), "bot"), core.request_key)
    with core.engine.begin() as conn:
        conn.execute(
            update(Approval).where(Approval.id == opened[1].approval.id)
            .values(request_hash=formers[0])
        )  # fmt: skip
    approve(core, opened[1].approval.id)
    retried = replies(core.handle([Envelope(2, held(*plain, "p2", **keyed))]))[2]
    assert (retried.approval.id, retried.request_hash) == (opened[1].approval.id, formers[0])

    a, b, content_type = READ_ALIKE["invalid-utf8"]
    binary = {"content_type": content_type, "idempotency_key": "binary-key"}
    opened = replies(core.handle([Envelope(3, held(*a, "u", **binary))]))
    b_doc = build_document(sent(*b, **binary), "bot")
    assert former_request_hashes(b_doc, core.request_key) == ()
    as_three = hmac.new(core.request_key, json.dumps(
        ["airlock-request-hash/3", "POST", "https", "api.example.com", 443, b_doc["path"], {},
         "text", b_doc["body"], "bot", [["content-type", content_type]]],
        sort_keys=True, ensure_ascii=True, separators=(",", ":"),
    ).encode(), hashlib.sha256).hexdigest()  # fmt: skip
    with core.engine.begin() as conn:  # A's approval as /3 made it: B read alike then
        conn.execute(
            update(Approval).where(Approval.id == opened[3].approval.id)
            .values(request_hash=as_three)
        )  # fmt: skip
    approve(core, opened[3].approval.id)
    other = replies(core.handle([Envelope(4, held(*b, "u2", **binary))]))[4]
    assert other.approval.id == opened[3].approval.id and other.request_hash != as_three  # 409
