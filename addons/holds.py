"""Requests held for a reviewer: the live flow waits until its approval is settled (pushed by
the decider, store/settlements.py), then is released once, refused, or answered "pending" so
the SDK's retry joins the same approval. A client that leaves abandons its hold; at shutdown
held flows are answered 503 + Retry-After and their approvals expire. Either way, an approval
another live instance holds a flow for stays open for it: it belongs to the call, not to the
instance that first held it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from mitmproxy import connection, ctx, http

from airlock.addons.refusals import Refusals, mcp_body
from airlock.addons.runtime import STORE_TIMEOUT, Runtime, header_dict, raw_request
from airlock.addons.simulations import Simulations
from airlock.decider.messages import ApprovalState, Decide, Recheck, Rechecked, Settled
from airlock.pipeline.document import MAX_DECODED_BODY, readable_content
from airlock.pipeline.edits import edited_body, query_edits
from airlock.pipeline.mcp import keepalive_stream, resumable_call, sse_event
from airlock.pipeline.policies import ALLOW, BLOCK, REQUIRE_APPROVAL
from airlock.pipeline.run_record import RunSummary
from airlock.store.approvals import ABANDONED, APPROVED, DENIED, EXPIRED
from airlock.store.prepared import PENDING
from airlock.store.records import Released
from airlock.store.schema import new_id

log = logging.getLogger("airlock.addons.gatekeeper")

SHUTTING_DOWN = "SHUTTING_DOWN"  # settles a held flow at shutdown; the approval is EXPIRED
LEFT = "LEFT"  # settles an abandoned hold whose approval stays open for other instances' holds
SHUTDOWN_ANSWER = 5.0  # seconds done() waits for held flows' 503s to be on their way
PENDING_RETRY_AFTER = 2  # seconds an SDK is told to wait before retrying a pending approval
Settlement = tuple[str, str | None, str | None]  # (state, reviewer, reason)


LEG_GRACE = 15.0  # seconds a kept-alive MCP call's client has to resume its stream


@dataclass
class Stream:
    """A held MCP tool call kept alive on an event stream its client resumes (pipeline/mcp.py):
    what is needed to take the call up again on the client's next leg."""

    agent: str
    request: http.Request  # the call as judged: what a resumed leg forwards once approved
    token: Any  # the client's progress token, or True
    window_end: float
    expires_at: float
    legs: int = 0


@dataclass
class Hold:
    approval_id: str
    agent: str
    flow: http.HTTPFlow | None  # None between the legs of a kept-alive stream
    settled: asyncio.Future[Settlement]
    stream: Stream | None = None


class Holds:
    def __init__(self, runtime: Runtime, refusals: Refusals) -> None:
        self.runtime = runtime
        self.refusals = refusals
        self.simulations = Simulations(runtime, refusals)
        self.held: dict[str, Hold] = {}
        self.streams: dict[str, tuple[Hold, RunSummary]] = {}  # by the event id legs end with
        # The holds each client's leaving abandons, looked up rather than scanned: with 10,000
        # held, a scan per disconnect took 14 s of the event loop every flow shares.
        self._by_client: dict[str, set[str]] = {}
        self._per_agent: Counter[str] = Counter()  # held here now, for airlock_max_held_per_agent
        self._stopping = False
        self._answering: dict[int, asyncio.Event] = {}  # held flows being answered at shutdown
        runtime.watched = lambda: list(self.held)
        runtime.on_settled = self._settled

    # --- holding -----------------------------------------------------------------------------

    async def rejoin(
        self,
        flow: http.HTTPFlow,
        run: RunSummary,
        joined: ApprovalState,
        run_request_hash: str | None,
    ) -> None:
        """A retry of a request waiting for (or granted) approval: never a second approval."""
        approval = {"id": joined.id, "state": joined.state}
        if joined.request_hash != run_request_hash:
            # Same idempotency key, different request: an approval is bound to the exact one.
            self.runtime.record_outcome(run.id, "key_reused", 409)
            self.refusals.refuse(
                flow, run, "this idempotency key was used for a different request that is "
                "waiting for (or got) approval; use a new key", approval=approval, status=409,
            )  # fmt: skip
        elif joined.state == DENIED:
            self.runtime.record_outcome(run.id, "denied", 403)
            reason = f": {joined.reason}" if joined.reason else ""
            self.refusals.refuse(
                flow, run, f"denied by {joined.reviewer}{reason}", approval=approval
            )
        elif joined.state == APPROVED:
            await self._release(flow, run, joined.id)
        elif joined.id in self.held:  # the first attempt is still held: one per approval
            self._answer_pending(flow, run, joined.id, joined.expires_at)
        else:
            await self.hold(flow, run, joined.id, joined.expires_at)

    async def hold(
        self, flow: http.HTTPFlow, run: RunSummary, approval_id: str, expires_at: float
    ) -> None:
        """Hold for at most the hold window (shorter than SDK timeouts); then, if the approval
        is still open, answer "pending" so the SDK retries and the retry joins it. An agent
        with airlock_max_held_per_agent requests held already is answered "pending" at once:
        one agent in a loop cannot take the proxy's memory from every other."""
        runtime = self.runtime
        limit = ctx.options.airlock_max_held_per_agent
        if limit and self._per_agent[run.agent] >= limit:
            self._answer_pending(flow, run, approval_id, expires_at, f"{limit} of this agent's "
                                 "requests are held already, so this one is not")  # fmt: skip
            return
        settled: asyncio.Future[Settlement] = asyncio.get_running_loop().create_future()
        hold = self.held[approval_id] = Hold(approval_id, run.agent, None, settled)
        self._per_agent[run.agent] += 1
        self._track(hold, flow)
        runtime.metrics.held_flows.inc()
        runtime.ask().watch([approval_id])  # its settlement is pushed: _settled
        if flow.client_conn.timestamp_end is not None or flow.error is not None:
            # The client left while the decision was being committed.
            runtime.spawn(self._abandon(hold))
        window_end = min(expires_at, time.time() + ctx.options.airlock_hold_timeout)
        hold.stream = self._stream_of(flow, run, window_end, expires_at)
        await self._wait(hold, flow, run, window_end, expires_at)

    async def _wait(
        self, hold: Hold, flow: http.HTTPFlow, run: RunSummary, window_end: float,
        expires_at: float,
    ) -> None:  # fmt: skip
        """One attempt (or one leg of a kept-alive stream) waits for the settlement."""
        leg_end = window_end
        if hold.stream is not None:
            leg_end = min(window_end, time.time() + ctx.options.airlock_mcp_keepalive)
        try:
            settlement = await asyncio.wait_for(
                asyncio.shield(hold.settled), timeout=max(0.0, leg_end - time.time())
            )
        except TimeoutError:
            if leg_end < window_end:
                self._keep_alive(hold, flow, run)
                return
            self._end(hold.approval_id)
            if window_end < expires_at:
                self._answer_pending(flow, run, hold.approval_id, expires_at)
                return
            settlement = await self._settle_here(hold.approval_id, EXPIRED)
        except BaseException:
            self._end(hold.approval_id)
            raise
        self._end(hold.approval_id)
        await self._settled_hold(flow, run, hold.approval_id, settlement)

    def _end(self, approval_id: str) -> None:
        """The hold is over: no flow waits for this approval here any more."""
        hold = self.held.pop(approval_id, None)
        if hold is None:
            return
        self._track(hold, None)
        self._per_agent[hold.agent] -= 1
        if not self._per_agent[hold.agent]:
            del self._per_agent[hold.agent]
        self.runtime.metrics.held_flows.dec()
        if self.runtime.decider is not None:
            self.runtime.decider.unwatch(approval_id)

    # --- MCP calls kept alive on a stream the client resumes ---------------------------------

    def _stream_of(
        self, flow: http.HTTPFlow, run: RunSummary, window_end: float, expires_at: float
    ) -> Stream | None:
        body = mcp_body(flow, run)
        if body is None:
            return None
        token = resumable_call(header_dict(flow.request.headers), body)
        if token is None:
            return None
        return Stream(run.agent, flow.request.copy(), token, window_end, expires_at)

    def _keep_alive(self, hold: Hold, flow: http.HTTPFlow, run: RunSummary) -> None:
        """End this leg: a progress notification and a priming event; the client resumes the
        stream (GET, Last-Event-ID) and the call waits on its next leg (resume)."""
        stream = hold.stream
        assert stream is not None
        stream.legs += 1
        event_id = f"airlock-{uuid.uuid4().hex}"
        self.streams[event_id] = (hold, run)
        self._track(hold, None)  # between legs: the client comes back
        short = hold.approval_id[:8]
        message = f"waiting for a reviewer: approval {short} (airlock approve {short})"
        flow.metadata["airlock_answered"] = True
        flow.response = http.Response.make(
            200,
            keepalive_stream(event_id, stream.token, stream.legs, message),
            {"Content-Type": "text/event-stream", "Cache-Control": "no-store",
             "X-Airlock-Decision": run.decision, "X-Airlock-Approval-Id": hold.approval_id},
        )  # fmt: skip
        self.runtime.spawn(self._unless_resumed(hold, stream.legs, event_id))

    async def _unless_resumed(self, hold: Hold, leg: int, event_id: str) -> None:
        """A client that does not come back for its stream has left: its hold is abandoned."""
        await asyncio.sleep(LEG_GRACE)
        if hold.flow is None and hold.stream is not None and hold.stream.legs == leg:
            self.streams.pop(event_id, None)
            await self._abandon(hold)
            self._end(hold.approval_id)

    def resumable(self, flow: http.HTTPFlow, agent: str) -> tuple[Hold, RunSummary] | None:
        """The held call a client resumes (GET with the Last-Event-ID a leg ended with)."""
        if flow.request.method != "GET":  # before the header: a lookup that fails costs more
            return None
        event_id = flow.request.headers.get("last-event-id", "")
        if not event_id.startswith("airlock-"):
            return None
        found = self.streams.get(event_id)
        if found is None or found[0].stream is None or found[0].stream.agent != agent:
            return None
        del self.streams[event_id]
        return found

    async def resume(self, flow: http.HTTPFlow, hold: Hold, run: RunSummary) -> None:
        """The next leg: the resumed stream stands for the held call (what is forwarded once
        approved is the call as judged), and its answer is an event on the stream."""
        stream = hold.stream
        assert stream is not None
        flow.request = stream.request.copy()
        flow.metadata.update(
            airlock=run.id, airlock_recorded=True, airlock_protocol="mcp", airlock_sse=True
        )
        if hold.settled.done() and hold.approval_id not in self.held:
            # Settled and answered meanwhile (abandoned): nothing to resume, nothing to send.
            self.refusals.refuse(flow, run, "this call's wait for a reviewer has ended; send it "
                                 "again", approval={"id": hold.approval_id})  # fmt: skip
            return
        self._track(hold, flow)
        log.info("approval %s: the MCP client resumed its stream (leg %d)",
                 hold.approval_id[:8], stream.legs + 1)  # fmt: skip
        await self._wait(hold, flow, run, stream.window_end, stream.expires_at)

    def _as_event(self, flow: http.HTTPFlow) -> None:
        """A resumed stream's answer (Airlock's or the server's JSON) as an event on it."""
        response = flow.response
        if response is None or not flow.metadata.get("airlock_sse"):
            return
        if "json" in response.headers.get("content-type", ""):
            content = readable_content(response, MAX_DECODED_BODY)
            if content is None:  # a bomb: not decoded on the event loop every flow shares
                log.warning("a resumed MCP stream's answer is not readable within %d bytes: "
                            "sent as received", MAX_DECODED_BODY)  # fmt: skip
                return
            response.content = sse_event(content.decode("utf-8", "replace"))
            response.headers["Content-Type"] = "text/event-stream"

    async def _settled_hold(
        self, flow: http.HTTPFlow, run: RunSummary, approval_id: str, settled: Settlement
    ) -> None:
        state, reviewer, reason = settled
        runtime = self.runtime
        if state == SHUTTING_DOWN:
            runtime.record_outcome(run.id, "expired", 503)
            self.refusals.refuse(
                flow, run, "Airlock is shutting down; retry shortly (the retry joins this call's "
                "approval if another Airlock still holds it, else asks a new one)", status=503,
                headers={"Retry-After": "5"},
            )  # fmt: skip
            return
        if state == LEFT:
            self._left(flow, run, approval_id)
            return
        runtime.notifier.settled(run, approval_id, state, reviewer, reason)
        runtime.metrics.approvals_settled.labels(state).inc()
        runtime.metrics.time_to_decision.observe(max(0.0, time.time() - run.at))
        runtime.log.decision(
            state, run, (time.time() - run.at) * 1000, note=f"by {reviewer}" if reviewer else ""
        )
        if state == APPROVED:
            if flow.client_conn.timestamp_end is not None or flow.error is not None:
                return  # the client left: keep the approval for its retry, release nothing
            await self._release(flow, run, approval_id)
            return
        runtime.remember(run, passed=False)
        outcome = {DENIED: "denied", EXPIRED: "expired", ABANDONED: "abandoned"}[state]
        runtime.record_outcome(run.id, outcome, 403)
        if state == DENIED:
            message = f"denied by {reviewer}: {reason}" if reason else f"denied by {reviewer}"
        else:
            message = "approval timed out" if state == EXPIRED else "client disconnected"
        self.refusals.refuse(flow, run, message, approval={"id": approval_id, "state": state})

    def _left(self, flow: http.HTTPFlow, run: RunSummary, approval_id: str) -> None:
        """The client left; the approval stays open for another instance's held flow (settled
        there, not here): this attempt is abandoned as when it ends the approval."""
        runtime = self.runtime
        note = "the approval stays open for another instance holding it"
        runtime.log.decision(ABANDONED, run, (time.time() - run.at) * 1000, note=note)
        runtime.remember(run, passed=False)
        runtime.record_outcome(run.id, "abandoned", 403)
        self.refusals.refuse(
            flow, run, "client disconnected", approval={"id": approval_id, "state": PENDING}
        )

    async def _release(self, flow: http.HTTPFlow, run: RunSummary, approval_id: str) -> None:
        """Forward an approved request exactly once, whichever attempt gets here first; never
        one whose agent a reload has disabled or removed while it was held (the approval is
        left unreleased)."""
        config = self.runtime.config
        revoked = config.agents.standing_refusal(run.agent) if config is not None else None
        if revoked:
            self.runtime.record_outcome(run.id, "agent_refused", 403)
            self.refusals.refuse(
                flow, run, f"approved, but not sent: {revoked}",
                approval={"id": approval_id, "state": APPROVED},
            )  # fmt: skip
            return
        if await self._blocked_since(flow, run, approval_id):
            return
        released = await self.runtime.release(approval_id, run.id)
        if released.won and run.simulated:  # a trial: approved, and answered by Airlock
            self.simulations.answer(flow, replace(run, shadow_decision=REQUIRE_APPROVAL))
            return
        if released.won and released.edit:
            await self._release_edited(flow, run, approval_id, released)
            return
        if released.won:
            self._forwarding(flow, approval_id, released)
            # Counted from its release: a rate over the last minute must see what went out in
            # it, however long ago the request was held.
            self.runtime.remember(replace(run, at=released.at or time.time()), passed=True)
            return
        self.runtime.record_outcome(run.id, "duplicate", 409)
        self.refusals.refuse(
            flow, run, "this request was approved and has already been forwarded once",
            approval={"id": approval_id, "state": APPROVED}, status=409,
        )  # fmt: skip

    async def _blocked_since(self, flow: http.HTTPFlow, run: RunSummary, approval_id: str) -> bool:
        """A reload since the request was held: judged again with the configuration now in
        force, as its retry would be, and refused (its approval left unreleased) if that BLOCKs
        it. An approval covers what a reviewer saw the rules ask; a rule an operator has since
        made a BLOCK (an emergency freeze) stops what is still queued too."""
        now = self.runtime.config_hash()
        if run.config_hash is None or now is None or run.config_hash == now:
            return False
        recheck = Recheck(run.agent, raw_request(flow.request, flow.client_conn.sni))
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                again = await self.runtime.ask().recheck(recheck)
        except Exception as e:  # fail closed: not judged again, not sent
            again = Rechecked(BLOCK, f"it could not be judged again after a reload: {e}", [])
        if again.decision != BLOCK:
            return False
        self.runtime.record_outcome(
            run.id, "blocked_after_reload", 403, detail={"reason": again.reason,
                                                         "rules": again.rules},
        )  # fmt: skip
        self.refusals.refuse(
            flow, replace(run, rules=[*run.rules, *again.rules]),
            f"approved, but the configuration reloaded since blocks it: {again.reason}",
            approval={"id": approval_id, "state": APPROVED},
        )  # fmt: skip
        return True

    async def _release_edited(
        self, flow: http.HTTPFlow, run: RunSummary, approval_id: str, released: Released
    ) -> None:
        """A reviewer approved it with an edit: rewrite the request as its SDK encoded it,
        decide the edited request again (recorded as its own run, linked to this one), and
        forward that once, unless it is now blocked."""
        edited_id = new_id()
        try:  # whatever fails from here on, nothing went out: the release is withdrawn
            decide = self._edited(flow, run, approval_id, released, edited_id)
            async with asyncio.timeout(STORE_TIMEOUT):
                decided = await self.runtime.ask().decide(decide)
        except BaseException:
            self._withdraw(approval_id, released)
            raise
        flow.metadata["airlock"] = edited_id  # what happens next is the edited run's outcome
        if decided.run.decision != ALLOW:
            self._withdraw(approval_id, released)
            self.runtime.record_outcome(run.id, "edit_refused", 403)
            self.refusals.refuse(flow, decided.run, f"the edited request: {decided.run.reason}")
            return
        self.runtime.record_outcome(run.id, "edited", None, detail={"released_as": edited_id})
        self._forwarding(flow, approval_id, released)
        self.runtime.remember(decided.run, passed=True)

    @staticmethod
    def _edited(
        flow: http.HTTPFlow, run: RunSummary, approval_id: str, released: Released, edited_id: str
    ) -> Decide:
        """The request rewritten with the reviewer's edit, as its SDK encodes it, to be decided
        again as that approval."""
        edit = released.edit or {}
        request = flow.request
        if any(where[0] == "body" for where in edit.get("locations", {}).values()):
            # its params were read from it, so it decodes within MAX_PARSED_BODY
            content = readable_content(request)
            if content is None:
                raise ValueError("the edited request's body cannot be read within the limits")
            request.content = edited_body(request.headers.get("content-type", ""), content, edit)
        for name, value in query_edits(edit).items():
            request.query[name] = value
        context = {**edit, "approval_id": approval_id, "run_id": run.id,
                   "proposed_hash": released.request_hash}  # fmt: skip
        return Decide(edited_id, run.agent, None, raw_request(request, flow.client_conn.sni),
                      edit=context)  # fmt: skip

    @staticmethod
    def _forwarding(flow: http.HTTPFlow, approval_id: str, released: Released) -> None:
        """This attempt goes out; if it does not reach the upstream after all (error below),
        its release is withdrawn."""
        flow.metadata["airlock_released"] = time.time()
        if released.at is not None:  # plain values: mitmproxy can save the flow
            flow.metadata["airlock_release"] = [approval_id, released.at]

    def _withdraw(self, approval_id: str, released: Released) -> None:
        """Nothing was forwarded after all (the edited request was refused, or its decision did
        not come): the release is undone, so a retry is decided again rather than told it went
        out once."""
        if released.at is not None:
            self.runtime.ask().withdraw_release(approval_id, released.at)

    def _answer_pending(
        self, flow: http.HTTPFlow, run: RunSummary, approval_id: str, expires_at: float,
        why_not_held: str = "",
    ) -> None:  # fmt: skip
        """503 + Retry-After (and Stripe-Should-Retry): the SDK retries by itself, and the
        retry joins this approval; when it gives up, its error says what is going on."""
        self.runtime.record_outcome(
            run.id, "pending", 503, detail={"not_held": why_not_held} if why_not_held else None
        )
        left = max(0, int(expires_at - time.time()))
        note = f" ({why_not_held})" if why_not_held else ""
        self.refusals.refuse(
            flow, run,
            f"approval pending: a reviewer must approve {approval_id} (airlock approve "
            f"{approval_id[:8]}); retry the same request to continue ({left} s left){note}",
            approval={"id": approval_id, "state": "PENDING", "expires_at": expires_at},
            status=503,
            headers={"Retry-After": str(PENDING_RETRY_AFTER), "Stripe-Should-Retry": "true"},
        )  # fmt: skip

    async def _settle_here(
        self, approval_id: str, state: str, reason: str | None = None, leaving: bool = False
    ) -> Settlement:
        """End an approval from the proxy's side; if a reviewer got there first, theirs stands.
        leaving: only this instance's hold ends (its client left, it shuts down); while another
        live instance holds the approval, it stays PENDING (store/approvals.py leave_approval)."""
        if reason is None:
            reason = "approval timed out" if state == EXPIRED else "client disconnected while held"
        runtime = self.runtime
        instance = runtime.instance if leaving else None
        settlement = await asyncio.wait_for(
            runtime.ask().settle(approval_id, state, reason, time.time(), instance), STORE_TIMEOUT
        )
        return settlement.state, settlement.reviewer, settlement.reason

    # --- settlements, pushed by the decider; clients that leave --------------------------------

    def _settled(self, settled: Settled) -> None:
        """The decider saw a watched approval settled (store/settlements.py)."""
        if self._stopping:
            return
        hold = self.held.get(settled.id)
        if hold is not None and not hold.settled.done():
            hold.settled.set_result((settled.state, settled.reviewer, settled.reason))

    def _track(self, hold: Hold, flow: http.HTTPFlow | None) -> None:
        """The flow that now waits for the hold (None: none, between legs or once it ended)."""
        if hold.flow is not None:
            mine = self._by_client.get(hold.flow.client_conn.id)
            if mine is not None:
                mine.discard(hold.approval_id)
                if not mine:
                    del self._by_client[hold.flow.client_conn.id]
        hold.flow = flow
        if flow is not None:
            self._by_client.setdefault(flow.client_conn.id, set()).add(hold.approval_id)

    def client_disconnected(self, client: connection.Client) -> None:
        for approval_id in list(self._by_client.get(client.id, ())):
            hold = self.held.get(approval_id)
            if hold is not None and hold.flow is not None and not hold.settled.done():
                self.runtime.spawn(self._abandon(hold))

    def error(self, flow: http.HTTPFlow) -> None:
        """An HTTP/2 stream reset ends one request, not the connection."""
        self._answered_at_shutdown(flow)
        self._unless_sent(flow)
        for approval_id in list(self._by_client.get(flow.client_conn.id, ())):
            hold = self.held.get(approval_id)
            if hold is not None and hold.flow is flow and not hold.settled.done():
                self.runtime.spawn(self._abandon(hold))

    def _unless_sent(self, flow: http.HTTPFlow) -> None:
        """A released attempt that never reached the upstream: its client left while it was
        released (mitmproxy drops the request once the hook returns; an HTTP/2 reset is
        delivered only then), or the upstream could not be reached. Nothing went out: the
        release is withdrawn, so the SDK's retry is released rather than told 409. Once
        connected it may have gone out, and the release stands."""
        release = flow.metadata.pop("airlock_release", None)
        server = flow.server_conn
        if release is None or flow.response is not None:
            return
        if server is not None and server.timestamp_tcp_setup is not None:
            return
        approval_id, at = release
        self.runtime.ask().withdraw_release(approval_id, at)

    async def _abandon(self, hold: Hold) -> None:
        try:
            result = await self._settle_here(hold.approval_id, ABANDONED, leaving=True)
        except Exception as e:
            log.error("could not mark approval %s abandoned: %s", hold.approval_id, e)
            result = (ABANDONED, None, None)
        if result[0] == PENDING:  # left to another instance's held flow
            result = (LEFT, None, None)
        if not hold.settled.done():
            hold.settled.set_result(result)

    # --- shutdown ----------------------------------------------------------------------------

    def response(self, flow: http.HTTPFlow) -> None:
        self._as_event(flow)
        self._answered_at_shutdown(flow)

    def _answered_at_shutdown(self, flow: http.HTTPFlow) -> None:
        if (answered := self._answering.get(id(flow))) is not None:
            answered.set()

    async def done(self) -> None:
        """Held requests are answered 503 + Retry-After (not reset) and their approvals end
        EXPIRED (nobody can approve what will never be sent), before the decider stops; one
        that another live instance holds a flow for stays open for it."""
        self._stopping = True  # the expiries below come back pushed: held flows get 503s
        holds = [hold for hold in self.held.values() if not hold.settled.done()]
        with contextlib.suppress(Exception):
            await asyncio.gather(
                *(self._settle_here(h.approval_id, EXPIRED, "proxy shut down", leaving=True)
                  for h in holds),
                return_exceptions=True,
            )  # fmt: skip
        self._answering = {id(hold.flow): asyncio.Event() for hold in holds if hold.flow}
        for hold in holds:
            if not hold.settled.done():
                hold.settled.set_result((SHUTTING_DOWN, None, None))
        # mitmproxy cancels what is left once every addon's done() returned: wait until each
        # held flow's 503 went through the response hook (on its way to the client).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(e.wait() for e in self._answering.values())), SHUTDOWN_ANSWER
            )
