"""`airlock review`: the reviewer console, a full-screen terminal app on the store.

It talks to the store only (never to a proxy), so it works with any number of proxy instances
on SQLite or PostgreSQL. The queue refreshes twice a second; the detail pane previews the write
before it happens: action and params, risk with each factor, the rules that fired, the
environment, the redacted request, this agent's recent history, and how to undo it.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from pathlib import Path
from typing import Any

from rich.text import Text
from sqlalchemy.engine import Engine
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Input, Label, Static

from airlock.console.redacted import hidden_warning
from airlock.console.untrusted import cut, params_text, query_text, shown, visible
from airlock.pipeline.edits import EditError, plan_edit
from airlock.pipeline.mappings import load_mappings
from airlock.store.approvals import (
    APPROVED,
    DENIED,
    REASON_FROM_RISK,
    ApprovalError,
    PendingApproval,
    pending_approvals,
    resolve_approval,
    run_of_approval,
)
from airlock.store.history import RecordedDecision, recorded_decisions
from airlock.store.locations import shipped

HIGH_RISK = REASON_FROM_RISK  # asked for up front; the store refuses an approval without it
BODY_SHOWN = 4000  # characters of the request's body in the detail pane; then a marker
DIALOG_PARAMS = 600  # characters of the params a confirmation repeats
_DECISION_STYLE = {"ALLOW": "green", "BLOCK": "red", "REQUIRE_APPROVAL": "yellow"}


class ReasonScreen(ModalScreen[str | None]):
    """Asks why. Enter confirms (the text, maybe empty; refused while empty when a reason is
    required); Escape cancels (None)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str | Text, required: bool) -> None:
        super().__init__()
        self.title_text = title if isinstance(title, Text) else Text(title)
        self.required = required

    def compose(self) -> ComposeResult:
        with Vertical(id="reason-box"):
            yield Label(self.title_text, id="reason-title")
            yield Input(placeholder="reason (Enter to confirm, Esc to cancel)", id="reason")
            yield Label("", id="reason-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        reason = event.value.strip()
        if self.required and not reason:
            self.query_one("#reason-error", Label).update("A reason is required here.")
            return
        self.dismiss(reason)

    def action_cancel(self) -> None:
        self.dismiss(None)


class HistoryScreen(Screen[None]):
    """Recent decisions of every agent, newest first."""

    BINDINGS = [Binding("escape,h", "app.pop_screen", "Back")]

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="history", cursor_type="row", zebra_stripes=True)
        yield Footer()

    async def on_mount(self) -> None:
        table = self.query_one("#history", DataTable)
        # What was decided and what came of it first: at 80 columns the target is what goes.
        table.add_columns("when", "decision", "outcome", "risk", "agent", "action", "target")
        runs = await asyncio.to_thread(lambda: list(recorded_decisions(self.engine, limit=200)))
        for run in reversed(runs):
            table.add_row(
                time.strftime("%H:%M:%S", time.localtime(run.at)),
                Text(run.decision, style=_DECISION_STYLE.get(run.decision, "")),
                Text(run.outcome or ""),
                Text("" if run.risk is None else str(run.risk)),
                shown(run.agent),  # a str cell is read as markup: `[/x]` in a target ends the app
                shown(run.action),
                shown(run.target),
            )


class QueueTable(DataTable[Any]):
    """The queue. A row becomes the reviewer's choice only when they move to it (keys, mouse,
    `Chosen`): a refresh that rebuilds the rows never chooses for them."""

    class Chosen(Message):
        def __init__(self, approval_id: str | None) -> None:
            super().__init__()
            self.approval_id = approval_id

    def cursor_key(self) -> str | None:
        if self.row_count == 0:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return None if key is None else str(key)

    def _chose(self) -> None:
        self.post_message(self.Chosen(self.cursor_key()))

    def action_cursor_up(self) -> None:
        super().action_cursor_up()
        self._chose()

    def action_cursor_down(self) -> None:
        super().action_cursor_down()
        self._chose()

    def action_page_up(self) -> None:
        super().action_page_up()
        self._chose()

    def action_page_down(self) -> None:
        super().action_page_down()
        self._chose()

    def action_scroll_top(self) -> None:
        super().action_scroll_top()
        self._chose()

    def action_scroll_bottom(self) -> None:
        super().action_scroll_bottom()
        self._chose()

    def on_click(self, event: events.Click) -> None:
        """Called before DataTable's own handler moves the cursor to the row clicked."""
        row = event.style.meta.get("row", -1)
        if 0 <= row < self.row_count and event.style.meta.get("column", -1) >= 0:
            self.post_message(self.Chosen(str(self.ordered_rows[row].key.value)))


class ReviewApp(App[None]):
    """Held requests, one keypress from a decision."""

    TITLE = "Airlock review"
    CSS_PATH = "review.tcss"
    BINDINGS = [
        Binding("a", "approve", "Approve"),
        Binding("e", "edit", "Edit+approve"),
        Binding("d", "deny", "Deny"),
        Binding("slash", "filter", "Filter"),
        Binding("h", "history", "History"),
        Binding("r", "refresh", "Refresh"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self, engine: Engine, reviewer: str, refresh_seconds: float = 0.5, reviewers: Any = None,
        mappings: Path | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.mappings_dir = mappings
        self.engine = engine
        self.reviewer = reviewer
        self.reviewers = reviewers
        self.refresh_seconds = refresh_seconds
        self.items: dict[str, PendingApproval] = {}
        self.filter_text = ""
        # The approval the reviewer is looking at, by id (never by row: rows move as others
        # settle). `gone`: the id of one that left the queue while chosen, by another's hand;
        # nothing is decided until the reviewer chooses again.
        self.chosen: str | None = None
        self.gone: str | None = None
        self.decided_here: set[str] = set()  # leaving the queue, they take no one by surprise

    def compose(self) -> ComposeResult:
        yield Header()
        yield QueueTable(id="queue", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="detail-pane"):
            yield Static("No request is waiting.", id="detail")
        yield Static("", id="status")
        yield Input(placeholder="filter: agent, action or target (Enter to apply)", id="filter")
        yield Footer()

    async def on_mount(self) -> None:
        self.sub_title = f"reviewing as {self.reviewer}"
        # Kept, not queried later: while a dialog or the history is open, the app's queries
        # look at that screen, and the queue goes on refreshing underneath.
        self.queue = table = self.query_one("#queue", QueueTable)
        self.detail = self.query_one("#detail", Static)
        self.status = self.query_one("#status", Static)
        self.status.display = False
        self.filter_box = self.query_one("#filter", Input)
        table.add_column("id", key="id", width=8)
        table.add_column("agent", key="agent")
        table.add_column("action", key="action")
        table.add_column("target", key="target")
        table.add_column("risk", key="risk", width=4)
        table.add_column("left", key="left", width=5)
        self.filter_box.display = False
        await self.refresh_queue()
        self.set_interval(self.refresh_seconds, self.refresh_queue)

    # --- the queue ----------------------------------------------------------------------------

    async def refresh_queue(self, expected: bool = False) -> None:
        """Rows as the store has them. The chosen approval keeps the cursor wherever its row
        moves; if it left the queue by someone else's hand, nothing is chosen until the
        reviewer chooses (`expected`: the reviewer's filter took it away)."""
        items = await asyncio.to_thread(pending_approvals, self.engine)
        self.items = {item.id: item for item in items if self._shown(item)}
        table = self.queue
        if self.chosen is not None and self.chosen not in self.items:
            if not expected and self.chosen not in self.decided_here:
                self.gone = self.chosen
                self._say(f"Approval {self.chosen[:8]} left the queue (settled, expired or "
                          "abandoned elsewhere): nothing is selected; choose a request (↑/↓ or "
                          "click) before approving or denying.")  # fmt: skip
            self.chosen = None
        table.clear()
        now = time.time()
        for item in self.items.values():
            risk = "" if item.risk is None else str(item.risk)
            style = "bold red" if (item.risk or 0) >= HIGH_RISK else ""
            table.add_row(
                Text(item.id[:8]),
                shown(item.agent),  # a str cell is read as markup: `[/x]` in a target ends the app
                shown(item.action),
                shown(item.target),
                Text(risk, style=style),
                Text(f"{max(0, item.expires_at - now):.0f}s"),
                key=item.id,
            )
        if self.chosen is None and self.gone is None and self.items:
            self.chosen = next(iter(self.items))  # at the start, after one's own decision
        if self.chosen is not None:
            table.move_cursor(row=table.get_row_index(self.chosen))
        await self.show_detail()

    def _say(self, text: str) -> None:
        """The status line under the detail: why nothing happened, or what to do."""
        self.status.update(Text(text, style="bold yellow"))
        self.status.display = bool(text)

    async def on_queue_table_chosen(self, event: QueueTable.Chosen) -> None:
        self.chosen = event.approval_id if event.approval_id in self.items else None
        if self.chosen is not None:
            self.gone = None
            self._say("")
        await self.show_detail()

    def _shown(self, item: PendingApproval) -> bool:
        needle = self.filter_text.lower()
        return not needle or any(
            needle in field.lower() for field in (item.agent, item.action, item.target, item.id)
        )

    def selected_id(self) -> str | None:
        """The approval the reviewer chose, while it is in the queue and under the cursor."""
        if self.chosen not in self.items or self.queue.cursor_key() != self.chosen:
            return None
        return self.chosen

    async def show_detail(self) -> None:
        detail = self.detail
        approval_id = self.selected_id()
        if approval_id is None:
            if self.gone is not None:
                detail.update(f"Approval {self.gone[:8]} left the queue. Choose a request.")
            else:
                detail.update("No request is waiting." if not self.filter_text
                              else "Nothing matches.")  # fmt: skip
            return
        item = self.items[approval_id]
        history = await asyncio.to_thread(
            lambda: list(recorded_decisions(self.engine, limit=6, agent=item.agent))
        )
        detail.update(render_detail(item, history))

    # --- deciding -----------------------------------------------------------------------------

    def _decidable(self) -> str | None:
        """The chosen approval's id, or None, saying why nothing can be decided."""
        approval_id = self.selected_id()
        if approval_id is None and self.gone is not None:
            self._say(f"Not decided: approval {self.gone[:8]}, which you were looking at, left "
                      "the queue. Choose a request (↑/↓ or click) first.")  # fmt: skip
        return approval_id

    def action_approve(self) -> None:
        approval_id = self._decidable()
        if approval_id is None:
            return
        item = self.items[approval_id]
        high_risk = (item.risk or 0) >= HIGH_RISK
        title = _about(
            "Approve", item, f"risk {item.risk}: a reason is required" if high_risk else ""
        )
        self.push_screen(
            ReasonScreen(title, required=high_risk),
            lambda reason: None if reason is None else self._decide(approval_id, APPROVED, reason),
        )

    def action_deny(self) -> None:
        approval_id = self._decidable()
        if approval_id is None:
            return
        item = self.items[approval_id]
        self.push_screen(
            ReasonScreen(_about("Deny", item, "why?"), required=True),
            lambda reason: self._decide(approval_id, DENIED, reason) if reason else None,
        )

    def action_edit(self) -> None:
        """Change params, then approve: the edited request is what is released."""
        approval_id = self._decidable()
        if approval_id is None:
            return
        item = self.items[approval_id]
        title = _about("Edit", item, "PARAM=VALUE … (e.g. amount=50000)")
        self.push_screen(
            ReasonScreen(title, required=True),
            lambda text: None if not text else self._edit_then_approve(approval_id, text),
        )

    def _edit_then_approve(self, approval_id: str, text: str) -> None:
        item = self.items.get(approval_id)
        if item is None:
            self._say(f"Not decided: approval {approval_id[:8]} left the queue.")
            return
        high_risk = (item.risk or 0) >= HIGH_RISK
        self.push_screen(
            ReasonScreen(_about("Approve", item, f"with {visible(text)}?"), required=high_risk),
            lambda reason: None if reason is None else self.run_worker(
                self._resolve(approval_id, APPROVED, reason or None, text), exclusive=False
            ),
        )  # fmt: skip

    def _decide(self, approval_id: str, state: str, reason: str) -> None:
        self.run_worker(self._resolve(approval_id, state, reason or None), exclusive=False)

    async def _resolve(
        self, approval_id: str, state: str, reason: str | None, edit: str | None = None
    ) -> None:
        self.decided_here.add(approval_id)
        try:
            settled = await asyncio.to_thread(self._settle, approval_id, state, reason, edit)
        except (ApprovalError, ValueError) as e:  # an edit's EditError is a ValueError
            self.notify(visible(e), severity="error", timeout=6, markup=False)
        else:
            if settled.state == "PENDING":
                self.notify(
                    f"approved: {settled.votes} of {settled.required} reviewers; still held"
                )
            else:
                self.notify(f"{settled.state.lower()} {approval_id[:8]}")
        await self.refresh_queue()

    def _settle(self, approval_id: str, state: str, reason: str | None, edit: str | None) -> Any:
        """One code path with `airlock approve` (the same store function and checks)."""
        planned = None
        if edit is not None:
            run = run_of_approval(self.engine, approval_id)
            mappings = load_mappings(self.mappings_dir or shipped("mappings"))
            mapping = mappings.by_id.get(run["mapping_id"] or "")
            planned = plan_edit(mapping, run["request"] or {}, assignments(edit))
        return resolve_approval(
            self.engine, approval_id, state, self.reviewer, reason, self.reviewers, planned
        )

    # --- filter, history, refresh -------------------------------------------------------------

    def action_filter(self) -> None:
        self.filter_box.display = True
        self.filter_box.focus()

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "filter":
            return
        self.filter_text = event.value.strip()
        event.input.display = bool(self.filter_text)
        self.queue.focus()
        await self.refresh_queue(expected=True)

    def action_history(self) -> None:
        self.push_screen(HistoryScreen(self.engine))

    async def action_refresh(self) -> None:
        await self.refresh_queue()


def _about(verb: str, item: PendingApproval, ask: str = "") -> Text:
    """What a dialog decides, every character as sent: `Approve create_charge → cus_1[/x]
    (approval 3f9c0a1b)`, its params and query, and a warning when redaction hides values."""
    text = Text(f"{verb} {visible(item.action)} → {visible(item.target)} (approval {item.id[:8]})")
    params = params_text(item.params, DIALOG_PARAMS)
    text.append("\n" + cut(params or "no params", DIALOG_PARAMS))
    if query := query_text((item.request or {}).get("query")):
        text.append(f"\nquery: {cut(query, DIALOG_PARAMS)}")
    if warning := _hidden(item):
        text.append(f"\n{warning}", style="bold yellow")
    text.append(f"\n{ask or '?'}")
    return text


def _hidden(item: PendingApproval) -> str:
    return hidden_warning(item.request, item.params, item.target, item.context)


def assignments(text: str) -> dict[str, str]:
    """`amount=50000 description="a b"` → {"amount": "50000", "description": "a b"}."""
    found = {}
    for item in shlex.split(text):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise EditError(f"{item!r}: expected PARAM=VALUE")
        found[name] = value
    return found


def render_detail(item: PendingApproval, history: list[RecordedDecision]) -> Text:
    """The preview of the write a reviewer is about to allow or refuse."""
    text = Text()
    left = max(0, item.expires_at - time.time())
    request = item.request or {}

    def section(title: str) -> None:
        text.append(f"\n{title}\n", style="bold underline")

    text.append(visible(item.action), style="bold")
    text.append(f"  {visible(item.provider)} → {visible(item.target)}\n")
    if warning := _hidden(item):
        text.append(warning + "\n", style="bold yellow")
    if item.operation:
        text.append(f"operation {item.operation}\n")
    text.append(f"agent {visible(item.agent)} · {item.category}, {item.sensitivity} · ")
    text.append(f"held {time.time() - item.created_at:.0f}s, {left:.0f}s left\n")
    if item.required > 1:
        voters = visible(", ".join(item.voters)) or "nobody yet"
        text.append(f"needs {item.required} reviewers; approved by {voters}\n", style="yellow")
    section("Why it is held")
    text.append(f"{visible(item.reason)}\nrules: {', '.join(item.rules) or 'none'}\n")
    section("Params")
    for name, value in item.params.items():
        text.append(f"  {visible(name)} = {json.dumps(value)}\n")
    query = query_text(request.get("query"))
    if query:  # what goes out whether or not a param reads it
        text.append(f"  query: {query}\n", style="bold")
    if item.edit:  # what goes out if approved; a reviewer agrees by making the same edit
        by, version = visible(item.edit.get("by")), item.edit.get("version")
        text.append(f"edited by {by} (version {version}), released instead:\n", style="yellow")
        for name, value in item.edit["params"].items():
            text.append(f"  {visible(name)} = {json.dumps(value)}\n", style="yellow")
    if item.context:
        text.append(f"environment/context: {json.dumps(item.context)}\n")
    section(f"Risk {item.risk if item.risk is not None else '—'}")
    for factor in item.risk_factors or []:
        text.append(f"  {factor['points']:+d}  {factor['factor']}: {visible(factor['detail'])}\n")
    section("Undo")
    if item.undo:
        text.append(f"  {item.undo.get('action')}: {visible(item.undo.get('description', ''))}\n")
        if item.undo.get("params"):
            text.append(f"  {json.dumps(item.undo['params'])}\n")
        if item.undo.get("sends"):
            text.append(f"  can be undone once it has run: airlock undo {item.run_id[:12]} "
                        f"sends {item.undo['sends']}\n", style="green")  # fmt: skip
        else:
            text.append("  no compensating request is known: undo by hand\n", style="yellow")
    else:
        text.append("  no known way to undo this\n", style="red")
    section("Request (redacted)")
    text.append(visible(f"{request.get('method', item.method)} {item.host}{item.path}"))
    text.append(query + "\n")
    for name, value in (request.get("headers") or {}).items():
        text.append(f"  {visible(name)}: {visible(value)}\n", style="dim")
    body = request.get("body")
    if body not in (None, ""):
        rendered = json.dumps(body, indent=2) if not isinstance(body, str) else visible(body, True)
        text.append(cut(rendered, BODY_SHOWN) + "\n")
    section(f"Recent history of {visible(item.agent)}")
    if not history:
        text.append("  nothing recorded before\n")
    for run in reversed(history):
        stamp = time.strftime("%H:%M:%S", time.localtime(run.at))
        text.append(f"  {stamp} ")
        text.append(f"{run.decision:<16}", style=_DECISION_STYLE.get(run.decision, ""))
        text.append(f" {visible(run.action)} → {visible(run.target)}\n")
    return text
