"""The upstream stand-ins the tests and the demo route vendors to (console/standins.py)."""

from __future__ import annotations

import json

import pytest

from airlock.console.standins import Received, default_responder


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/v1/charges", "charge"), ("/", "object"), ("/?delete=", "object"), ("/bucket", "object")],
)
def test_any_path_gets_an_object_back(path: str, kind: str) -> None:
    """An S3 DeleteBucket (`/`) or DeleteObjects (`/?delete=`) raised IndexError and the
    connection dropped, which an SDK retried as a 502 (found by review)."""
    status, _, body = default_responder(Received("DELETE", "s3.amazonaws.com", path, {}, b""))
    assert status == 200 and json.loads(body)["object"] == kind
