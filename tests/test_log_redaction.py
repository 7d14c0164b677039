"""What Airlock's processes log is redacted before it is written: the handlers the proxy and
the decider worker log through filter every record, whichever logger it came from, with the
text of its exception; the Guard API logs neither a caller's query string nor its tool name."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import options
from mitmproxy.addons.termlog import TermLogHandler
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from airlock.addons.guard import guard_app
from airlock.pipeline.redaction import REDACTED, RedactingFilter, redact_logs

SECRET = "sk_live_" + "51PlantedLogSecret0000000000"


@pytest.fixture
def root_handlers() -> Iterator[list[logging.Handler]]:
    """The root logger's handlers as a test leaves them: those it added go, and the filters
    redact_logs added to pytest's own."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield before
    for handler in list(root.handlers):
        if handler not in before:
            root.removeHandler(handler)
        for found in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(found)


def _store_write(statement: str) -> None:
    raise RuntimeError(f"could not write {statement!r}: database is locked")


def test_a_record_of_an_airlock_logger_is_written_redacted_with_its_exception(
    root_handlers: list[logging.Handler],
) -> None:
    """As the decider worker writes (basicConfig's format) and as the proxy's terminal does
    (mitmproxy's handler): the message's arguments and the exception's text, both redacted;
    the rest as a formatter writes it."""
    decider_out, proxy_out = io.StringIO(), io.StringIO()
    plain = logging.StreamHandler(decider_out)
    plain.setFormatter(logging.Formatter("airlock decider: %(message)s"))
    root = logging.getLogger()
    root.addHandler(plain)
    root.addHandler(TermLogHandler(proxy_out))
    redact_logs()

    log = logging.getLogger("airlock.decider.core")
    try:
        _store_write(f"INSERT INTO runs VALUES ('api_key={SECRET}')")
    except RuntimeError as e:
        log.exception("could not record %r for %s", e, f"Bearer {SECRET}")
    log.error("plain %s", "nothing to hide, twice")

    for written in (decider_out.getvalue(), proxy_out.getvalue()):
        assert SECRET not in written
        assert f"Bearer {REDACTED}" in written and f"api_key={REDACTED}" in written
        assert "Traceback (most recent call last)" in written and "in _store_write" in written
        assert "plain nothing to hide, twice" in written
    assert decider_out.getvalue().startswith("airlock decider: could not record RuntimeError(")


def test_the_proxy_and_the_decider_worker_filter_every_handler_they_write_through(
    root_handlers: list[logging.Handler],
) -> None:
    from airlock.console.proxy_master import GateMaster

    async def build() -> None:
        GateMaster(options.Options())

    asyncio.run(build())
    added = [h for h in logging.getLogger().handlers if h not in root_handlers]
    assert len(added) >= 3  # the terminal, the start-up error check, the log events
    for handler in logging.getLogger().handlers:
        assert any(isinstance(f, RedactingFilter) for f in handler.filters), handler


class _FailingApi:
    """A Guard API whose store fails: every call is refused 503 and the fault logged."""

    runtime = SimpleNamespace(
        metrics=SimpleNamespace(
            fail_closed=SimpleNamespace(labels=lambda *_: SimpleNamespace(inc=lambda: None))
        )
    )

    def agent_of(self, header: str) -> str | None:
        return "ops-bot"

    async def guard(self, agent: str, call: Any) -> Any:
        raise RuntimeError(f"database is locked while recording {call.action!r}")

    async def approval(self, agent: str, approval_id: str, wait: float) -> dict[str, Any] | None:
        return None


def test_the_guard_api_logs_no_query_string_and_no_secret_in_a_tool_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def exchange() -> list[HTTPResponse]:
        sockets = bind_sockets(0, "127.0.0.1")
        server = HTTPServer(guard_app(_FailingApi()))  # type: ignore[arg-type]
        server.add_sockets(sockets)
        base = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        client = AsyncHTTPClient(force_instance=True)
        try:
            call = {"tool": f"Bash {SECRET}", "server": "shell", "params": {}}
            return [
                await client.fetch(
                    f"{base}/v1/guard", method="POST", body=json.dumps(call), raise_error=False
                ),
                await client.fetch(
                    f"{base}/v1/approvals/abc?wait=0&token={SECRET}", raise_error=False
                ),
            ]
        finally:
            client.close()
            server.stop()

    with caplog.at_level(logging.INFO):
        refused, unknown = asyncio.run(exchange())
    assert (refused.code, unknown.code) == (503, 404)
    assert SECRET not in caplog.text
    assert f"the Guard API could not decide Bash {REDACTED}: RuntimeError(" in caplog.text
    access = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert any(line.startswith("404 GET /v1/approvals/abc (127.0.0.1) ") for line in access)
    assert not any("?" in line for line in access), access
