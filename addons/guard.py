"""The Guard API: tool calls that never cross the proxy (a shell command, a query, an internal
function), judged by the same engine as proxied requests: the same policies, risk, budgets,
approval queue, reviewer console and audit chain.

A listener of its own (`airlock run --guard-port PORT`, loopback by default), JSON over HTTP,
served by tornado (a mitmproxy dependency) on mitmproxy's event loop:
  POST /v1/guard                     {"action", "target", "params"?, "provider"?,
                                      "idempotency_key"?, "context"?} → the decision
  GET  /v1/approvals/{id}?wait=S     long-polls until the approval is settled
  POST /v1/runs/{request_id}/outcome {"status": "succeeded"|"failed", "detail"?}
There is no approve or deny endpoint: an agent has no path to approve itself. An approved call
is released by asking again with the same idempotency key (the retry joins its approval, as an
SDK's retry does on the proxy): the first ask after approval is ALLOW, exactly once. An ALLOW
that never reaches the agent (its connection closed first) released nothing: the release is
withdrawn, and the next ask is released instead.
A call on trial (an agent or role with `simulate: true`, `--mode simulate`, a SIMULATE rule) is
answered SIMULATED, with what it `would` have been: the SDK does not run it.
Agents authenticate as on the proxy: Basic AGENT:KEY, or Bearer AGENT:KEY.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from mitmproxy import ctx
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.web import Application, HTTPError, RequestHandler

from airlock.addons.identity import Identity
from airlock.addons.runtime import STORE_TIMEOUT, Runtime
from airlock.decider.messages import ApprovalState, DecideCall, Decided
from airlock.pipeline.document import MAX_DEPTH, Unreadable, within_depth
from airlock.pipeline.mappings import MAX_NAME, MAX_TARGET
from airlock.pipeline.policies import ALLOW, BLOCK, REQUIRE_APPROVAL
from airlock.pipeline.redaction import redact_text, redacted_prefix
from airlock.pipeline.run_record import SIMULATED, RunSummary
from airlock.pipeline.simulation import NOTE
from airlock.pipeline.tool_calls import ACTION_NAME, ToolCall
from airlock.store.approvals import APPROVED, DENIED
from airlock.store.schema import new_id

log = logging.getLogger("airlock.addons.gatekeeper")

MAX_WAIT = 60.0  # seconds one long-poll may wait
MAX_REMEMBERED = 100_000  # allowed calls whose outcome may still be reported
MAX_DETAIL = 2_000  # characters of an outcome's detail kept on the record
NOT_YOURS = (
    "no call of yours with this request id was allowed here (an outcome is reported once, by "
    "the agent the call was allowed to)"
)
NO_SUCH_APPROVAL = (
    "no call of yours was answered with this approval id here (an approval is waited on by the "
    "agent whose call it holds, through the Airlock that answered it)"
)
MAX_BODY = 1 << 20
OUTCOMES = ("succeeded", "failed")
_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {  # name: (types, required)
    "action": (str, False),  # action, or tool and server
    "tool": (str, False),
    "server": (str, False),
    "target": (str, False),
    "params": (dict, False),
    "provider": ((str, type(None)), False),
    "idempotency_key": ((str, type(None)), False),
    "context": (dict, False),
}

# What the call's names become (its action, provider and target) is judged up to these lengths
# (pipeline/mappings.py): a longer one is refused here, before the decider every agent shares.
_LONGEST = {"action": MAX_NAME, "provider": MAX_NAME, "target": MAX_TARGET}


class BadRequest(Exception):
    """400: what is wrong with the request, naming the field."""


@dataclass(frozen=True, slots=True)
class Release:
    """An approved call released by an answer: what withdrawing it names."""

    approval_id: str
    at: float
    run_id: str


Answer = tuple[int, dict[str, Any], Release | None]  # status, body, the release it carries


class GuardApi:
    def __init__(self, runtime: Runtime, identity: Identity) -> None:
        self.runtime = runtime
        self.identity = identity
        self.server: HTTPServer | None = None
        # Calls answered ALLOW here, by request id, with their agent: only the agent a call was
        # allowed to may report what it did (evidence nobody else can write over).
        self.allowed: OrderedDict[str, str] = OrderedDict()
        # Approvals answered here, with the agent whose call each holds: only that agent may
        # wait on one (an approval id says nothing to anyone else).
        self.approvals: OrderedDict[str, str] = OrderedDict()

    def load(self, loader: Any) -> None:
        loader.add_option(
            "airlock_guard_port",
            int,
            0,
            "Port of the Guard API (JSON over HTTP: tool calls judged like proxied requests); "
            "0: off.",
        )
        loader.add_option(
            "airlock_guard_host", str, "127.0.0.1", "Address the Guard API listens on."
        )

    async def running(self) -> None:
        port = ctx.options.airlock_guard_port
        if not port or self.server is not None:
            return
        self.server = HTTPServer(guard_app(self), max_body_size=MAX_BODY)
        self.server.listen(port, address=ctx.options.airlock_guard_host)
        log.info("Guard API on %s:%d", ctx.options.airlock_guard_host, port)

    async def done(self) -> None:
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()
            self.server = None

    # --- deciding ----------------------------------------------------------------------------

    async def guard(self, agent: str, call: ToolCall) -> Answer:
        runtime = self.runtime
        started = time.perf_counter()
        await runtime.start_decider()
        async with asyncio.timeout(STORE_TIMEOUT):
            decided = await runtime.ask().decide_call(
                DecideCall(new_id(), agent, call), STORE_TIMEOUT
            )
        run = decided.run
        runtime.metrics.count_decision(run.decision, run.action, run.provider)
        runtime.log.decision(run.decision, run, (time.perf_counter() - started) * 1000, "guard")
        if run.decision == SIMULATED:
            return 200, self._simulated(run, run.reason), None
        if run.decision != REQUIRE_APPROVAL or decided.approval is None:
            if run.decision == ALLOW:
                self._allowed(run.id, agent)
            return 200, _answer(run, run.decision, run.reason), None
        approval = decided.approval
        self._remember(self.approvals, approval.id, agent)
        if not approval.joined:
            runtime.notifier.held(run, approval.id, approval.expires_at)
            return 200, _answer(run, REQUIRE_APPROVAL, run.reason, approval), None
        status, answer, release = await self._rejoined(run, approval, decided)
        if answer["decision"] == ALLOW:
            self._allowed(run.id, agent)
        return status, answer, release

    def undelivered(self, release: Release) -> None:
        """The answer that released an approved call never reached its agent (the connection
        closed first): the call did not run. As for a proxied request that never went out
        (holds.py), the release is withdrawn, so the agent's next ask is released rather than
        told it already was; and no outcome can be reported for this run."""
        self.allowed.pop(release.run_id, None)
        self.runtime.ask().withdraw_release(release.approval_id, release.at)
        self.runtime.record_outcome(release.run_id, "undelivered", None)

    def _allowed(self, request_id: str, agent: str) -> None:
        self._remember(self.allowed, request_id, agent)

    @staticmethod
    def _remember(found: OrderedDict[str, str], key: str, agent: str) -> None:
        found[key] = agent
        found.move_to_end(key)
        if len(found) > MAX_REMEMBERED:
            found.popitem(last=False)

    def outcome(self, agent: str, request_id: str, status: str, detail: str | None) -> bool:
        """Record what an allowed call did; False when it was not allowed to this agent here."""
        if self.allowed.get(request_id) != agent:
            return False
        del self.allowed[request_id]  # reported once
        kept = {"detail": redacted_prefix(detail, MAX_DETAIL)} if detail else None
        self.runtime.record_outcome(request_id, status, None, detail=kept)
        return True

    async def _rejoined(self, run: RunSummary, approval: ApprovalState, decided: Decided) -> Answer:
        """The same call again (its idempotency key): released once approved, refused once
        denied, still pending otherwise."""
        runtime = self.runtime
        if approval.request_hash != decided.request_hash:
            runtime.record_outcome(run.id, "key_reused", 409)
            reason = "this idempotency key was used for a different call; use a new key"
            return 409, _answer(run, BLOCK, reason, approval), None
        if approval.state == DENIED:
            runtime.record_outcome(run.id, "denied", 403)
            why = f": {approval.reason}" if approval.reason else ""
            return 200, _answer(run, BLOCK, f"denied by {approval.reviewer}{why}", approval), None
        if approval.state != APPROVED:
            return 200, _answer(run, REQUIRE_APPROVAL, run.reason, approval), None
        released = await runtime.release(approval.id, run.id)
        if not released.won:
            runtime.record_outcome(run.id, "duplicate", 409)
            reason = "this call was approved and has already been released once"
            return 409, _answer(run, BLOCK, reason, approval), None
        runtime.remember(replace(run, at=released.at or time.time()), passed=True)  # from now
        approved = f"approved by {approval.reviewer}"
        if run.simulated:  # a trial that asked a reviewer anyway: approved, and still not run
            return 200, self._simulated(run, f"simulated ({approved})", approval), None
        release = Release(approval.id, released.at, run.id) if released.at is not None else None
        return 200, _answer(run, ALLOW, approved, approval), release

    def _simulated(
        self, run: RunSummary, reason: str, approval: ApprovalState | None = None
    ) -> dict[str, Any]:
        """A call on trial is never run: SIMULATED (the SDK skips it), or BLOCK when it would
        have been blocked, as a simulated HTTP write is refused."""
        if run.shadow_decision == BLOCK:
            return _answer(run, BLOCK, reason, approval)
        self.runtime.record_outcome(run.id, "simulated", None, detail={"note": NOTE})
        answer = _answer(run, SIMULATED, reason, approval)
        answer["would"] = run.shadow_decision or REQUIRE_APPROVAL
        return answer

    async def approval(self, agent: str, approval_id: str, wait: float) -> dict[str, Any] | None:
        """The approval's state once settled or after `wait` seconds; None when no call of this
        agent's was answered with it here."""
        if self.approvals.get(approval_id) != agent:
            return None
        settled = await self.runtime.wait_settled(approval_id, min(wait, MAX_WAIT))
        if settled is None:
            return {"id": approval_id, "state": "PENDING"}
        return {"id": approval_id, "state": settled.state, "reviewer": settled.reviewer,
                "reason": settled.reason}  # fmt: skip

    def agent_of(self, header: str) -> str | None:
        """Basic AGENT:KEY as on the proxy, or Bearer AGENT:KEY; None when they are wrong."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token:
            header = "Basic " + base64.b64encode(token.strip().encode()).decode()
        return self.identity.identify(header)


def guard_app(api: GuardApi) -> Application:
    """The Guard API's routes, logged by _access_log."""
    routes = [
        (r"/v1/guard", _Guard, {"api": api}),
        (r"/v1/approvals/([0-9a-f]{8,64})", _Approval, {"api": api}),
        (r"/v1/runs/([0-9a-f]{8,64})/outcome", _Outcome, {"api": api}),
    ]
    return Application(routes, log_function=_access_log)


_ACCESS_LOG = logging.getLogger("tornado.access")


def _access_log(handler: RequestHandler) -> None:
    """Tornado's access line without the query string, which carries what the caller put there
    (`?wait=0&token=…`), and with the path redacted: tornado logs the URI as sent. At tornado's
    levels (mitmproxy shows only WARNING and above: a 4xx or 5xx answer)."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if not _ACCESS_LOG.isEnabledFor(level):
        return
    request = handler.request
    _ACCESS_LOG.log(
        level, "%d %s %s (%s) %.2fms", status, request.method, redact_text(request.path),
        request.remote_ip, 1000 * request.request_time(),
    )  # fmt: skip


def _answer(
    run: RunSummary, decision: str, reason: str, approval: ApprovalState | None = None
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "decision": decision, "reason": reason, "rules": run.rules, "risk": run.risk,
        "risk_factors": run.risk_factors, "request_id": run.id, "action": run.action,
    }  # fmt: skip
    if approval is not None:
        answer["approval_id"] = approval.id
        answer["expires_at"] = approval.expires_at
    return answer


def tool_call(body: bytes) -> ToolCall:
    """The request's JSON, checked field by field (BadRequest names the field)."""
    try:
        fields = within_depth(json.loads(body))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not JSON: {e}") from None
    except (RecursionError, Unreadable):  # as a proxied body: every later stage recurses
        raise BadRequest(f"the body nests deeper than {MAX_DEPTH} levels") from None
    if not isinstance(fields, dict):
        raise BadRequest("the body must be a JSON object")
    for name, value in fields.items():
        if name not in _FIELDS:
            raise BadRequest(f"unknown field {name!r} (expected: {', '.join(_FIELDS)})")
        types, _ = _FIELDS[name]
        if not isinstance(value, types):
            raise BadRequest(f"field {name!r} has the wrong type ({type(value).__name__})")
    _named(fields)
    for name, limit in _LONGEST.items():
        value = fields.get(name)
        if isinstance(value, str) and len(value) > limit:
            raise BadRequest(f"field {name!r} has {len(value)} characters: at most {limit}")
    if "action" in fields and not ACTION_NAME.match(fields["action"]):
        raise BadRequest(
            f"field 'action' must be a canonical action name like run_shell or "
            f"mcp.github.create_issue, not {fields['action'][:60]!r}"
        )
    key = fields.get("idempotency_key")
    if key is not None and not 0 < len(key) <= 200:
        raise BadRequest("field 'idempotency_key' must be 1 to 200 characters")
    return ToolCall(
        fields.get("action") or fields["tool"], fields.get("target", ""),
        fields.get("params", {}), fields.get("provider"), key, fields.get("context", {}),
        fields.get("server"),
    )  # fmt: skip


def _named(fields: dict[str, Any]) -> None:
    """A call names its action (and target), or a server's tool that the mappings name."""
    if "action" in fields:
        for name in ("tool", "server"):
            if name in fields:
                raise BadRequest(f"field {name!r} cannot be combined with 'action'")
        if "target" not in fields:
            raise BadRequest("field 'target' is required")
        return
    if "tool" not in fields or "server" not in fields:
        raise BadRequest("field 'action' is required (or 'tool' and 'server')")
    for name in ("tool", "server"):
        if not 0 < len(fields[name]) <= MAX_NAME:
            raise BadRequest(f"field {name!r} must be 1 to {MAX_NAME} characters")


# --- tornado's handlers ------------------------------------------------------------------------


class _Handler(RequestHandler):
    api: GuardApi
    agent: str
    gone = False  # the client closed the connection before its answer

    def initialize(self, api: GuardApi) -> None:
        self.api = api

    def on_connection_close(self) -> None:
        self.gone = True
        super().on_connection_close()

    def prepare(self) -> None:
        agent = self.api.agent_of(self.request.headers.get("Authorization", ""))
        if agent is None:
            self.set_header("WWW-Authenticate", 'Basic realm="airlock"')
            self._error(401, "credentials are missing or wrong (Basic or Bearer AGENT:KEY)")
            return
        self.agent = agent

    def _error(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish({"error": message})

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish({"error": self._reason})


class _Guard(_Handler):
    async def post(self) -> None:
        try:
            call = tool_call(self.request.body)
        except BadRequest as e:
            self._error(400, str(e))
            return
        try:
            status, answer, release = await self.api.guard(self.agent, call)
        except Exception as e:  # fail closed: nothing ran, and the caller is told
            log.error(  # the tool's name is the caller's free text, the error may quote it
                "the Guard API could not decide %s: %s",
                redact_text(call.action),
                redact_text(repr(e)),
            )
            self.api.runtime.metrics.fail_closed.labels("guard").inc()
            self._error(503, "Airlock could not decide or record this call; it must not run")
            return
        self.set_status(status)
        if not await self._delivered(answer) and release is not None:
            self.api.undelivered(release)

    async def _delivered(self, answer: dict[str, Any]) -> bool:
        """False when the client left before its answer could be written. Once written, it
        may have been read (and the call run): it counts as delivered."""
        if self.gone:
            return False  # tornado's own finish, after this, writes nowhere
        try:
            await self.finish(answer)
        except StreamClosedError:
            return False
        return True


class _Approval(_Handler):
    async def get(self, approval_id: str) -> None:
        try:
            wait = float(self.get_query_argument("wait", "0"))
        except ValueError:
            raise HTTPError(400, reason="wait must be a number of seconds") from None
        found = await self.api.approval(self.agent, approval_id, max(0.0, wait))
        if found is None:
            self._error(404, NO_SUCH_APPROVAL)
            return
        self.finish(found)


class _Outcome(_Handler):
    async def post(self, run_id: str) -> None:
        try:
            fields = json.loads(self.request.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._error(400, "the body is not JSON")
            return
        status = fields.get("status") if isinstance(fields, dict) else None
        if status not in OUTCOMES or set(fields) - {"status", "detail"}:
            self._error(400, 'expected {"status": "succeeded"|"failed", "detail"?}')
            return
        detail = fields.get("detail")
        if detail is not None and not isinstance(detail, str):
            self._error(400, "'detail' must be a string")
            return
        if not self.api.outcome(self.agent, run_id, status, detail):
            self._error(404, NOT_YOURS)
            return
        self.set_status(202)
        self.finish({"recorded": True})
