"""The secret corpus through the running proxy: planted in headers, query strings, JSON, forms,
URLs and XML, and found nowhere Airlock keeps or shows anything (the database and its WAL, the
console, `pending --json`, webhooks, metrics)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from airlock.console.standins import Upstream
from tests.e2e.test_gate import airlock, eventually, pending
from tests.helpers.proxy import Proxy
from tests.secret_corpus import CORPUS
from tests.test_notify import Receiver
from tests.test_redaction import corpus_requests

pytestmark = pytest.mark.e2e


def test_no_planted_secret_is_kept_or_shown_anywhere(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    hook = Receiver()
    try:
        proxy = start_proxy("--hold-timeout", "1", "--webhook", hook.url)
        session = proxy.session()
        for method, path, headers, body, kind in corpus_requests():
            answer = session.request(
                method, f"https://api.example.com{path}", data=body,
                headers={**dict(headers), "Content-Type": kind}, timeout=30,
            )  # fmt: skip
            assert answer.status_code == 503  # an unknown write, held for approval: pending
        held = eventually(lambda: len(pending(proxy)) == 3 and len(hook.messages) >= 3)
        assert held, "the three requests were not all held and notified"
        listed = airlock("pending", "--json", "--db", proxy.db_url).stdout
        metrics = requests.get(f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=5).text
    finally:
        hook.server.shutdown()
    db = Path(proxy.db_url.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    places = {
        "database": stored.decode("utf-8", "replace"),
        "console": proxy.output(),
        "pending --json": listed,
        "webhooks": str(hook.messages),
        "metrics": metrics,
    }
    leaks = [
        (kind, place)
        for kind, _, value in CORPUS
        for place, text in places.items()
        if value in text
    ]
    assert leaks == []
    # Not vacuous: the bodies and headers around the secrets were stored and shown.
    assert "hooks.example.com" in places["database"] and "x-upstream-auth" in places["database"]
    assert "[CARD …4242]" in places["database"]
    assert upstream.count("/v1/") == 0  # held, nothing forwarded
