"""The reviewer console, driven with Textual's pilot against a real store."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from textual.widgets import DataTable, Static

from airlock.console.review import HistoryScreen, ReasonScreen, ReviewApp
from airlock.store.records import DecisionRecord, HoldRequest
from airlock.store.schema import Approval, create_schema, open_engine
from tests.test_store import run_row, write


@pytest.fixture
def store(tmp_path: Path) -> Engine:
    engine = open_engine(f"sqlite:///{tmp_path / 'review.db'}")
    create_schema(engine)
    return engine


def hold(
    engine: Engine,
    risk: int = 40,
    agent: str = "billing-bot",
    action: str = "create_charge",
    **params: Any,
) -> str:
    row = run_row(
        "REQUIRE_APPROVAL",
        agent=agent,
        action=action,
        risk=risk,
        params=params or {"amount": 150000, "currency": "usd"},
        undo={"action": "create_refund", "description": "refund the charge"},
        request={"method": "POST", "headers": {"authorization": "Bearer [REDACTED]"},
                 "body": {"amount": "150000"}},
    )  # fmt: skip
    approval_id = uuid.uuid4().hex
    write(engine, DecisionRecord(row, HoldRequest(approval_id, time.time() + 120, "h" * 64)))
    return approval_id


def state_of(engine: Engine, approval_id: str) -> tuple[str, str | None, str | None]:
    with engine.connect() as conn:
        row = conn.execute(select(Approval).where(Approval.id == approval_id)).one()
    return row.state, row.reviewer, row.reason


async def settle(pilot: Any, engine: Engine, approval_id: str, state: str) -> None:
    for _ in range(100):
        await pilot.pause(0.05)
        if state_of(engine, approval_id)[0] == state:
            return
    raise AssertionError(f"{approval_id} never became {state}")


def test_queue_detail_and_approve_at_80_by_24(store: Engine) -> None:
    approval_id = hold(store, risk=40)

    async def scenario() -> None:
        app = ReviewApp(store, "alice", refresh_seconds=0.1)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.2)
            table = app.query_one("#queue", DataTable)
            assert table.row_count == 1
            detail = str(app.query_one("#detail", Static).render())
            for expected in ("create_charge", "amount = 150000", "Risk 40", "create_refund",
                             "Bearer [REDACTED]", "Why it is held",
                             "operation stripe.PostCharges"):  # fmt: skip
                assert expected in detail, expected
            await pilot.press("a")
            assert isinstance(app.screen, ReasonScreen)
            await pilot.press("enter")  # low risk: no reason needed
            await settle(pilot, store, approval_id, "APPROVED")
            await pilot.pause(0.2)
            assert app.query_one("#queue", DataTable).row_count == 0

    asyncio.run(scenario())
    assert state_of(store, approval_id) == ("APPROVED", "alice", None)


def test_deny_and_high_risk_approvals_need_a_reason(store: Engine) -> None:
    risky = hold(store, risk=85)
    other = hold(store, risk=10, agent="ops-bot")

    async def scenario() -> None:
        app = ReviewApp(store, "bob", refresh_seconds=0.1)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await pilot.press("a")  # the first row is the risky one (oldest first)
            await pilot.pause(0.35)  # the queue keeps refreshing under the dialog
            await pilot.press("enter")
            assert isinstance(app.screen, ReasonScreen)  # refused: a reason is required
            assert "required" in str(app.screen.query_one("#reason-error").render())
            await pilot.press("escape")
            assert state_of(store, risky)[0] == "PENDING"
            await pilot.press("down", "d")
            await pilot.press("enter")  # deny without a reason: refused too
            assert isinstance(app.screen, ReasonScreen)
            for key in "not today":
                await pilot.press("space" if key == " " else key)
            await pilot.press("enter")
            await settle(pilot, store, other, "DENIED")
            await pilot.press("up", "a")
            for key in "checked":
                await pilot.press(key)
            await pilot.press("enter")
            await settle(pilot, store, risky, "APPROVED")

    asyncio.run(scenario())
    assert state_of(store, other) == ("DENIED", "bob", "not today")
    assert state_of(store, risky) == ("APPROVED", "bob", "checked")


def test_filter_history_and_live_updates(store: Engine) -> None:
    hold(store, agent="billing-bot")

    async def scenario() -> None:
        app = ReviewApp(store, "carol", refresh_seconds=0.1)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.2)
            await asyncio.to_thread(hold, store, 40, "ops-bot", "delete_table")  # while open
            await pilot.pause(0.4)
            assert app.query_one("#queue", DataTable).row_count == 2
            await pilot.press("slash")
            for key in "ops":
                await pilot.press(key)
            await pilot.press("enter")
            await pilot.pause(0.2)
            assert app.query_one("#queue", DataTable).row_count == 1
            await pilot.press("h")
            assert isinstance(app.screen, HistoryScreen)
            await pilot.pause(0.2)
            history = app.screen.query_one("#history", DataTable)
            assert history.row_count == 2
            # At 80 columns the outcome is on screen, however long the targets are.
            columns = list(history.columns.values())
            labels = [str(c.label) for c in columns]
            before = labels.index("outcome") + 1
            assert sum(c.get_render_width(history) for c in columns[:before]) <= 80
            await pilot.press("escape")
            assert not isinstance(app.screen, HistoryScreen)

    asyncio.run(scenario())


def test_a_screenshot_can_be_saved(store: Engine, tmp_path: Path) -> None:
    hold(store, risk=72)

    async def scenario() -> str:
        app = ReviewApp(store, "alice", refresh_seconds=0.1)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.3)
            return app.save_screenshot(filename="review.svg", path=str(tmp_path))

    saved = Path(asyncio.run(scenario()))
    svg = saved.read_text()
    assert svg.startswith("<svg") and "Airlock" in svg and "billing-bot" in svg


def test_markup_and_escapes_from_a_request_are_shown_as_sent(store: Engine) -> None:
    """A Stripe id `cus_1%5B%2Fx%5D` is the target `customers/cus_1[/x]`: read as markup it
    ended the queue, the dialog and the history for every reviewer."""
    target = "customers/cus_1[/x] [bold]\x1b[2J"
    row = run_row("REQUIRE_APPROVAL", agent="mal[/]lory", action="read_docs[/b]", target=target,
                  reason="held [red]x[/red]", params={"note": "[/i]"},
                  request={"method": "DELETE", "headers": {"x-note": "[/s]\x1b[1A"}})  # fmt: skip
    approval_id = uuid.uuid4().hex
    write(store, DecisionRecord(row, HoldRequest(approval_id, time.time() + 120, "h" * 64)))
    write(store, DecisionRecord(run_row("ALLOW", agent="mal[/]lory", target=target)))

    async def scenario() -> None:
        app = ReviewApp(store, "alice", refresh_seconds=0.1)
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.pause(0.3)
            queue = app.query_one("#queue", DataTable)
            cells = [str(cell) for cell in queue.get_row_at(0)]
            assert cells[1:4] == [
                "mal[/]lory",
                "read_docs[/b]",
                "customers/cus_1[/x] [bold]\\x1b[2J",
            ]
            detail = str(app.query_one("#detail", Static).render())
            for sent in ("customers/cus_1[/x] [bold]\\x1b[2J", "held [red]x[/red]", "note = ",
                         "x-note: [/s]\\x1b[1A", "Recent history of mal[/]lory"):  # fmt: skip
                assert sent in detail, sent
            assert "\x1b" not in detail
            await pilot.press("a")
            assert isinstance(app.screen, ReasonScreen)
            title = str(app.screen.query_one("#reason-title").render())
            assert "Approve read_docs[/b] → customers/cus_1[/x]" in title
            await pilot.press("escape")
            await pilot.press("h")
            await pilot.pause(0.3)
            assert isinstance(app.screen, HistoryScreen)
            history = app.screen.query_one("#history", DataTable)
            assert history.row_count == 2
            assert "customers/cus_1[/x] [bold]\\x1b[2J" in [str(c) for c in history.get_row_at(0)]
            await pilot.press("escape")
            await pilot.pause(0.3)  # the queue refreshed again, and the app is still up

    asyncio.run(scenario())
    assert state_of(store, approval_id)[0] == "PENDING"


def test_a_request_that_leaves_the_queue_is_not_replaced_by_the_next_under_the_cursor(
    store: Engine,
) -> None:
    """Review: the reviewer reads X; X is settled elsewhere (or its agent leaves); the refresh
    put the cursor on the next row, and `a` approved Y, never read. The choice is kept by id:
    it follows its row as others leave, and once it is gone nothing is decided until the
    reviewer chooses again."""
    from airlock.store.approvals import DENIED, resolve_approval

    first, second, third = (hold(store, agent=f"bot-{n}") for n in range(3))

    async def scenario() -> None:
        app = ReviewApp(store, "alice", refresh_seconds=0.1)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            await pilot.press("down")  # the reviewer reads the second
            await pilot.pause(0.1)
            await asyncio.to_thread(resolve_approval, store, first, DENIED, "bob", "no")
            await pilot.pause(0.4)
            assert app.query_one("#queue", DataTable).row_count == 2
            await pilot.press("a")  # the row moved up: the choice went with it
            assert isinstance(app.screen, ReasonScreen)
            assert f"(approval {second[:8]})" in str(app.screen.query_one("#reason-title").render())
            await pilot.press("escape")

            await asyncio.to_thread(resolve_approval, store, second, DENIED, "bob", "no")
            await pilot.pause(0.4)
            assert app.query_one("#queue", DataTable).row_count == 1
            for key in ("a", "d", "e"):
                await pilot.press(key)
                assert not isinstance(app.screen, ReasonScreen), key
            status = str(app.query_one("#status", Static).render())
            assert f"approval {second[:8]}" in status and "Choose a request" in status
            assert f"Approval {second[:8]} left the queue" in str(
                app.query_one("#detail", Static).render()
            )
            await pilot.press("up", "a")  # chosen again: decided as usual
            assert isinstance(app.screen, ReasonScreen)
            assert f"(approval {third[:8]})" in str(app.screen.query_one("#reason-title").render())
            await pilot.press("escape")

    asyncio.run(scenario())
    assert state_of(store, third)[0] == "PENDING"


def test_detail_and_dialog_show_the_query_hidden_values_params_and_a_cut_body(
    store: Engine,
) -> None:
    """Review: the query string was shown nowhere, values hidden by redaction went unsaid, the
    body was cut at 4,000 characters without a sign, and the dialog named action and target
    only."""
    sql = "DELETE FROM sessions WHERE [REDACTED]=[REDACTED]"
    row = run_row("REQUIRE_APPROVAL", action="http.write", target="api.example.com",
                  params={"method": "POST", "path": "/v1/payouts", "meta": {"to": "[/b]x"}},
                  request={"method": "POST",
                           "query": {"destination": ["acct_ATTACKER"], "amount": ["9900000"]},
                           "headers": {"authorization": "Bearer [REDACTED]"},
                           "body": {"sql": sql, "pad": "z" * 5000}})  # fmt: skip
    approval_id = uuid.uuid4().hex
    write(store, DecisionRecord(row, HoldRequest(approval_id, time.time() + 120, "h" * 64)))
    warning = "⚠ 2 values hidden by redaction — Airlock cannot show them; deny if they could matter"
    query = "?destination=acct_ATTACKER&amount=9900000"

    async def scenario() -> None:
        app = ReviewApp(store, "alice", refresh_seconds=0.1)
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.pause(0.3)
            detail = str(app.query_one("#detail", Static).render())
            assert (
                f"query: {query}" in detail and f"POST api.stripe.com/v1/charges{query}" in detail
            )
            assert warning in detail
            assert "more characters]" in detail and "z" * 5000 not in detail
            await pilot.press("a")
            assert isinstance(app.screen, ReasonScreen)
            title = str(app.screen.query_one("#reason-title").render())
            assert f"Approve http.write → api.example.com (approval {approval_id[:8]})" in title
            assert 'method=POST path=/v1/payouts meta={"to":"[/b]x"}' in title
            assert f"query: {query}" in title and warning in title
            await pilot.press("escape")

    asyncio.run(scenario())
