"""Webhooks for reviewers: a POST when a request is held and when its approval is settled.

Targets are `URL` (generic JSON) or `slack:URL` (a Slack incoming webhook). Messages go straight
to the target, never through any proxy (the proxy's own environment is ignored), in the
background: a flow never waits for a webhook. Each message is tried up to 4 times with backoff
(1, 2, 4 s), each target's in the order they happened; failures are logged and counted. Only
redacted values are sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import unicodedata
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from airlock.console.untrusted import query_text, visible
from airlock.pipeline.run_record import RunSummary

log = logging.getLogger(__name__)

ATTEMPTS = 4
FIRST_BACKOFF = 1.0
TIMEOUT = 5.0
MAX_WAITING = 1000  # messages queued for one target (one that is down): then new ones drop
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


@dataclass(frozen=True)
class Target:
    url: str
    slack: bool

    @classmethod
    def parse(cls, spec: str) -> Target:
        if spec.startswith("slack:"):
            return cls(spec.removeprefix("slack:"), True)
        return cls(spec, False)


class Notifier:
    def __init__(self, specs: Sequence[str], on_failure: Callable[[str], None]) -> None:
        self.targets = [Target.parse(spec) for spec in specs]
        self.on_failure = on_failure
        self._tasks: set[asyncio.Task[None]] = set()
        self._last: dict[Target, asyncio.Task[None]] = {}  # each target's latest delivery
        self._waiting: dict[Target, int] = {}

    def held(self, run: RunSummary, approval_id: str, expires_at: float) -> None:
        """The run carries its query string as stored (redacted), which its params may not
        read: `?amount=9900000` changes what is approved."""
        details = {"approval_id": approval_id, "expires_at": expires_at}
        self._send("held", run, details)

    def settled(self, run: RunSummary, approval_id: str, state: str, reviewer: str | None,
                reason: str | None) -> None:  # fmt: skip
        details = {"approval_id": approval_id, "state": state, "reviewer": reviewer,
                   "reason": reason}  # fmt: skip
        self._send("settled", run, details)

    def _send(self, event: str, run: RunSummary, details: dict[str, Any]) -> None:
        if not self.targets:
            return
        message = {
            "event": event,
            "request_id": run.id,
            "agent": run.agent,
            "action": run.action,
            "provider": run.provider,
            "target": run.target,
            "query": run.query or {},
            "params": run.params,
            "risk": run.risk,
            "decision_reason": run.reason,
            "rules": run.rules,
            **details,
        }
        for target in self.targets:
            if self._waiting.get(target, 0) >= MAX_WAITING:
                shown = shown_url(target.url)
                log.warning("webhook %s: %d messages wait already, one dropped", shown, MAX_WAITING)
                self.on_failure(shown)
                continue
            self._waiting[target] = self._waiting.get(target, 0) + 1
            previous = self._last.get(target)
            task = asyncio.get_running_loop().create_task(self._in_turn(previous, target, message))
            self._last[target] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _in_turn(
        self, previous: asyncio.Task[None] | None, target: Target, message: dict[str, Any]
    ) -> None:
        """Each target gets its messages in the order they happened: "held" before "approved",
        even when the first is being retried."""
        try:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            await self._deliver(target, message)
        finally:
            self._waiting[target] -= 1

    async def _deliver(self, target: Target, message: dict[str, Any]) -> None:
        body = json.dumps(slack_text(message) if target.slack else message).encode()
        delay = FIRST_BACKOFF
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await asyncio.to_thread(_post, target.url, body)
                return
            except Exception as e:
                if attempt == ATTEMPTS:
                    shown = shown_url(target.url)
                    log.warning("webhook %s failed %d times: %s", shown, attempt, e)
                    self.on_failure(shown)
                    return
                await asyncio.sleep(delay)
                delay *= 2

    async def drain(self, timeout: float = 5.0) -> None:
        """Give messages under way a moment at shutdown."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


def shown_url(url: str) -> str:
    """A webhook URL as logs and metric labels show it: scheme and host. Its path is often the
    secret (a Slack incoming webhook's is)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with _DIRECT.open(request, timeout=TIMEOUT) as response:
        if response.status >= 300:
            raise OSError(f"HTTP {response.status}")


def slack_text(message: dict[str, Any]) -> dict[str, str]:
    """Slack incoming-webhook JSON. The first line is Airlock's alone: the approval's id and the
    commands to run. What the agent chose (action, agent, target, params; a reason may quote
    them) follows, each in a code span with Slack's `&`, `<`, `>` escaped, no line breaks and no
    backticks: it cannot mention @channel, make a link, bold a word or add a line of its own."""
    what = (
        f"{slack_code(message['action'])} by {slack_code(message['agent'])}"
        f" → {slack_code(message['target'])}"
    )  # a reason too: it may quote what the agent sent, and Slack links a bare URL
    if query := query_text(message.get("query")):
        what += f" query {slack_code(query)}"
    if message["event"] == "held":
        short = message["approval_id"][:8]
        text = (
            f":raised_hand: Held for approval {short} (risk {message.get('risk')}): "
            f"`airlock approve {short}` or `airlock deny {short} --reason ...`\n"
            f"Request: {what}\nWhy: {slack_code(message['decision_reason'])}"
        )
    else:
        by = f" by {slack_code(message['reviewer'])}" if message.get("reviewer") else ""
        text = f":white_check_mark: {message['state']}{by}: approval {message['approval_id'][:8]}"
        text += f"\nRequest: {what}"
        if message.get("reason"):
            text += f"\nReason: {slack_code(message['reason'])}"
    return {"text": text}


SLACK_FIELD = 300  # characters of one field shown; the generic webhook carries all of it
_REORDERING = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def slack_plain(value: object) -> str:
    """Text for Slack mrkdwn on one line: `&`, `<` and `>` escaped as Slack documents (no
    mention, no link), control characters, line breaks and bidirectional overrides made
    spaces, other invisible format characters (a zero-width space) written as their escape,
    cut at SLACK_FIELD."""
    text = "" if value is None else str(value)
    text = "".join(
        " " if ch in _REORDERING or unicodedata.category(ch) in ("Cc", "Zl", "Zp") else visible(ch)
        for ch in text
    )
    if len(text) > SLACK_FIELD:
        text = text[:SLACK_FIELD] + "…"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_code(value: object) -> str:
    """A value as a code span: no formatting, no bare link; its own backticks become `'`."""
    shown = slack_plain(value).replace("`", "'") or " "
    return f"`{shown}`"
