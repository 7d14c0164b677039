"""End to end: an approval releases the request the reviewer saw and no other, whatever its
fields hold (review M3: a path and a text body that, joined by newlines, hashed alike)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from airlock.console.standins import Upstream
from tests.e2e.test_gate import airlock, eventually, pending
from tests.helpers.proxy import Proxy

pytestmark = pytest.mark.e2e


def test_an_approval_does_not_release_another_request_that_hashed_alike(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    """A (`POST /v1/ok`, body `X\\n{}\\nBB`) is approved; B (`POST /v1/ok%0A%7B%7D%0AX`, body
    `BB`), sent as A's retry with its Idempotency-Key, is refused and never reaches the
    upstream; A's own retry is then released, once."""
    proxy = start_proxy("--hold-timeout", "1")
    session = proxy.session(agent="bot")
    session.headers.update({"Content-Type": "text/plain", "Idempotency-Key": "same-key"})
    first = session.post("https://api.example.com/v1/ok", data=b"X\n{}\nBB")
    assert first.status_code == 503  # held, then "approval pending"
    approval = first.headers["X-Airlock-Approval-Id"]
    assert eventually(lambda: [p for p in pending(proxy) if p["id"] == approval])
    approved = airlock("approve", approval, "--reviewer", "alice", *proxy.store)
    assert approved.returncode == 0, approved.stderr

    other = session.post("https://api.example.com/v1/ok%0A%7B%7D%0AX", data=b"BB")

    assert other.status_code == 409, other.text
    assert "used for a different request" in other.json()["reason"]
    assert upstream.count("/v1/ok%0A") == 0
    retried = session.post("https://api.example.com/v1/ok", data=b"X\n{}\nBB")
    assert retried.status_code == 200
    assert [(r.path, r.body) for r in upstream.received] == [("/v1/ok", b"X\n{}\nBB")]


def test_an_approved_upload_does_not_release_other_bytes_that_read_alike(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    """A binary upload (a Lambda zip, an S3 object) is approved; another whose bytes differ only
    where they are not UTF-8 (the document reads both with U+FFFD), sent as its retry, is
    refused and never reaches the upstream; the approved bytes are then released, once."""
    proxy = start_proxy("--hold-timeout", "1")
    session = proxy.session(agent="bot")
    session.headers.update(
        {"Content-Type": "application/octet-stream", "Idempotency-Key": "upload-key"}
    )
    approved_bytes, other_bytes = b"PK\x03\x04\xff\xfe", b"PK\x03\x04\xfe\xff"
    first = session.put("https://api.example.com/bucket/fn.zip", data=approved_bytes)
    assert first.status_code == 503  # held, then "approval pending"
    approval = first.headers["X-Airlock-Approval-Id"]
    assert eventually(lambda: [p for p in pending(proxy) if p["id"] == approval])
    approved = airlock("approve", approval, "--reviewer", "alice", *proxy.store)
    assert approved.returncode == 0, approved.stderr

    other = session.put("https://api.example.com/bucket/fn.zip", data=other_bytes)

    assert other.status_code == 409, other.text
    assert "used for a different request" in other.json()["reason"]
    assert upstream.received == []
    retried = session.put("https://api.example.com/bucket/fn.zip", data=approved_bytes)
    assert retried.status_code == 200
    assert [(r.path, r.body) for r in upstream.received] == [("/bucket/fn.zip", approved_bytes)]
