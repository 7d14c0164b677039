"""The gate: each request is documented, mapped, decided, recorded, then forwarded, refused or held.

mitmproxy loads it through the script addons/gate.py, as small addons like its own, each one
concern: the runtime (options, configuration, the decider, reload: runtime.py), streams that
are not HTTP requests (streams.py), the agent's identity (identity.py), Airlock's own addresses
(control_surface.py), the request path (Gate, here), held requests (holds.py), what a write
replaces (priors.py), outcomes (outcomes.py) and the Guard API for tool calls that are not HTTP
requests (guard.py).
Documenting, mapping, deciding and recording happen in the decider (airlock.decider: a worker
process beside mitmproxy by default), off the event loop that every flow shares.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from mitmproxy import http

from airlock.addons.control_surface import OwnSurface
from airlock.addons.guard import GuardApi
from airlock.addons.holds import Holds
from airlock.addons.identity import ANONYMOUS, Identity
from airlock.addons.metrics import Metrics
from airlock.addons.outcomes import Outcomes
from airlock.addons.priors import Priors
from airlock.addons.refusals import Refusals
from airlock.addons.routing import Routing
from airlock.addons.runtime import STORE_TIMEOUT, Runtime, pop_header, raw_request
from airlock.addons.simulations import Simulations
from airlock.addons.streams import Streams, target
from airlock.decider.client import DeciderFault
from airlock.decider.messages import Decide, Decided
from airlock.pipeline.document import minimal_document, oversized_head
from airlock.pipeline.evaluation import UNDO_OF, evaluate
from airlock.pipeline.policies import BLOCK, REQUIRE_APPROVAL
from airlock.pipeline.run_record import (
    RunRecord,
    RunSummary,
    failed_evaluation,
    run_row,
)
from airlock.pipeline.simulation import SIMULATED
from airlock.store.records import DecisionRecord
from airlock.store.schema import new_id

log = logging.getLogger(__name__)


class Gate:
    """The request path: nothing is forwarded before its decision is durable, and any fault on
    the way refuses the request (fail closed), on record when the store can take it."""

    def __init__(
        self, runtime: Runtime, identity: Identity, surface: OwnSurface, holds: Holds,
        refusals: Refusals,
    ) -> None:  # fmt: skip
        self.runtime = runtime
        self.identity = identity
        self.surface = surface
        self.holds = holds
        self.refusals = refusals
        self.simulations = Simulations(runtime, refusals)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A head past the limits (MAX_HEADER_FIELDS, MAX_HEAD) is refused as it arrives, and
        recorded with only its request line: the decider never reads its headers (50,000 of
        them stalled every agent for 10 s)."""
        request = flow.request
        problem = oversized_head(request.method, request.path, request.data.headers.fields)
        if problem is None or flow.response is not None:
            return
        log.warning("refused %s %s: %s", request.method, target(flow), problem)
        self.runtime.metrics.fail_closed.labels("request").inc()
        await self.runtime.start_decider()
        run_id = new_id()
        flow.metadata["airlock"] = run_id
        credentials = request.headers.get("proxy-authorization", "")
        document = {
            **minimal_document(request, self.identity.agent_of(flow, credentials) or ANONYMOUS),
            "request_error": problem,
        }
        config = self.runtime.config  # a request_error is refused before config is read
        error = ValueError(problem)
        evaluation = evaluate(document, config) if config else failed_evaluation(document, error)
        row = run_row(
            run_id, self.runtime.instance, document, evaluation, 0.0, self.runtime.config_hash()
        )
        row.outcome, row.status = "blocked", 431
        recorded = await self._record(row)
        reason = evaluation.verdict.reason
        self.refusals.refuse(flow, row.summary(), reason, status=431, recorded=recorded)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return  # answered by another addon: nothing will be forwarded
        for key in ("airlock", "airlock_recorded", "airlock_released", "airlock_release",
                    "airlock_answered"):  # fmt: skip
            flow.metadata.pop(key, None)  # a replayed flow is judged afresh
        try:
            await self._gate(flow)
            if flow.response is None and "airlock_released" not in flow.metadata:
                _unless_client_left(flow)
        except Exception as e:  # fail closed: a fault in Airlock must never let a request by
            await self._refuse_after_fault(flow, e)

    async def _gate(self, flow: http.HTTPFlow) -> None:
        started = time.perf_counter()
        await self.runtime.start_decider()
        run_id = new_id()
        flow.metadata["airlock"] = run_id
        # Proxy credentials are for Airlock: never forwarded, whether sent before the tunnel or
        # inside it.
        credentials = pop_header(flow.request.headers, "proxy-authorization")
        agent = self.identity.agent_of(flow, credentials)
        if agent is None:
            await self.identity.refuse(flow, credentials)
            return
        resumed = self.holds.resumable(flow, agent)
        if resumed is not None:  # an MCP client resuming the stream of its held call
            await self.holds.resume(flow, *resumed)
            return
        decided = await self._decide(flow, run_id, agent)
        pop_header(flow.request.headers, UNDO_OF)  # Airlock's own link, judged and recorded
        if decided is None:
            return
        run = decided.run
        flow.metadata["airlock_recorded"] = True
        if run.protocol:
            flow.metadata["airlock_protocol"] = run.protocol  # its outcome is read as such
        if run.mapping_id:
            flow.metadata["airlock_mapping"] = run.mapping_id  # its `outcome:` reads the answer
        # Counted and printed right after the request is on its way, not before.
        asyncio.get_running_loop().call_soon(
            self._report, run, decided.failed_stage, time.perf_counter() - started
        )
        await self._enforce(flow, decided)

    async def _enforce(self, flow: http.HTTPFlow, decided: Decided) -> None:
        run, approval = decided.run, decided.approval
        if run.decision == BLOCK:
            self.refusals.refuse(flow, run, run.reason)
        elif run.decision == SIMULATED:
            self.simulations.answer(flow, run)
        elif run.decision != REQUIRE_APPROVAL:
            flow.metadata["airlock_released"] = time.time()
        elif approval is None:
            raise RuntimeError("the decider answered REQUIRE_APPROVAL without an approval")
        elif approval.joined:
            await self.holds.rejoin(flow, run, approval, decided.request_hash)
        else:
            self.runtime.notifier.held(run, approval.id, approval.expires_at)
            await self.holds.hold(flow, run, approval.id, approval.expires_at)

    async def _decide(self, flow: http.HTTPFlow, run_id: str, agent: str) -> Decided | None:
        """The decider decides and records (airlock.decider); None when that failed and the
        request was refused. A request for approval comes back with its approval."""
        request = flow.request
        refusal = await self.surface.refusal(request.host, request.port)
        try:
            return await self.runtime.ask().decide(
                Decide(run_id, agent, refusal, raw_request(request, flow.client_conn.sni)),
                STORE_TIMEOUT,
            )
        except DeciderFault:
            raise  # not the store: refused as a fault of the gate, and recorded if it can be
        except Exception as e:
            self._refuse_unrecorded(flow, self._failed_run(request, run_id, agent, e), e)
            return None

    def _report(self, run: RunSummary, failed_stage: str | None, seconds: float) -> None:
        """Metrics and the console line of a recorded decision."""
        metrics = self.runtime.metrics
        metrics.count_decision(run.decision, run.action, run.provider)
        metrics.decision_seconds.observe(seconds)
        if failed_stage:
            metrics.fail_closed.labels(failed_stage).inc()
        note = ""
        if run.shadow_decision:
            metrics.count_shadow(run.shadow_decision, run.action, run.provider)
            note = f"shadow: would {run.shadow_decision} ({','.join(run.shadow_rules)})"
        self.runtime.log.decision(run.decision, run, seconds * 1000, note)

    # --- when Airlock itself fails ------------------------------------------------------------

    async def _refuse_after_fault(self, flow: http.HTTPFlow, error: Exception) -> None:
        """Refuse, and leave a record of it: an outcome if the decision was recorded, else a
        minimal BLOCK run of its own."""
        log.error("gate failed on %s %s: %r", flow.request.method, target(flow), error)
        self.runtime.metrics.fail_closed.labels("gate").inc()
        # The cause stays in the log and the record: it can name internal hosts and ports.
        reason = f"blocked because Airlock failed ({type(error).__name__}; see Airlock's log)"
        run_id = flow.metadata.get("airlock") or new_id()
        run = RunSummary(run_id, BLOCK, "unknown", [])
        recorded = bool(flow.metadata.get("airlock_recorded"))
        if recorded:
            self.runtime.record_outcome(run_id, "error", 403)
        else:
            recorded = await self._record_failed_run(flow, run_id, error)
        self.refusals.refuse(flow, run, reason, recorded=recorded)

    async def _record_failed_run(self, flow: http.HTTPFlow, run_id: str, error: Exception) -> bool:
        """A minimal BLOCK run for a request refused after a fault; False if the store failed
        too (then the refusal carries no request id: it would name nothing on record)."""
        try:
            row = self._failed_run(flow.request, run_id, ANONYMOUS, error)
        except Exception as e:
            log.error("could not record the refusal of request %s: %s", run_id, e)
            return False
        row.outcome, row.status = "blocked", 403
        return await self._record(row)

    async def _record(self, row: RunRecord) -> bool:
        """Record a refusal's run; False if the store failed (then its refusal names no id)."""
        try:
            await asyncio.wait_for(self.runtime.ask().record(DecisionRecord(row)), STORE_TIMEOUT)
        except Exception as e:
            log.error("could not record the refusal of request %s: %s", row.id, e)
            return False
        return True

    def _failed_run(
        self, request: http.Request, run_id: str, agent: str, error: Exception
    ) -> RunRecord:
        """The record of a request refused because Airlock failed: only what cannot fail to
        read."""
        document = minimal_document(request, agent)
        evaluation = failed_evaluation(document, error)
        return run_row(
            run_id, self.runtime.instance, document, evaluation, 0.0, self.runtime.config_hash()
        )

    def _refuse_unrecorded(self, flow: http.HTTPFlow, record: RunRecord, error: Exception) -> None:
        """The store failed: nothing may pass unrecorded, so refuse and say why. The decision
        may still have been committed (a late commit, a decider that died before answering):
        its outcome says the request was refused, if it is there to take one."""
        timed_out = isinstance(error, TimeoutError)
        if timed_out:
            error = TimeoutError(f"the store did not answer within {STORE_TIMEOUT:.0f} s")
        outcome = "store_timeout" if timed_out else "store_failed"
        self.runtime.record_outcome(record.id, outcome, 403)
        self.runtime.metrics.fail_closed.labels("store").inc()
        log.error("store unavailable, request %s blocked: %s", record.id, error)
        run = replace(record.summary(), decision=BLOCK, rules=[])
        self.runtime.log.decision(BLOCK, run, 0.0, note="store unavailable")
        # Only Airlock's own timeout is shown to the agent: a driver's error names the database.
        shown = error if isinstance(error, TimeoutError) else "the store failed (see Airlock's log)"
        reason = f"blocked because the decision could not be recorded: {shown}"
        self.refusals.refuse(flow, run, reason, recorded=False)


def _unless_client_left(flow: http.HTTPFlow) -> None:
    """A request the gate neither answered nor released goes on to the upstream: that is a
    fault, unless its client left (mitmproxy then sends nothing: an approved hold whose client
    is gone is kept for the retry)."""
    if flow.client_conn.timestamp_end is None and flow.error is None:
        raise RuntimeError("the gate ended without answering or releasing the request")


class Airlock:
    """Airlock's addons, in the order mitmproxy calls them (nested: mitmproxy traverses
    `addons`). The runtime comes last so that at shutdown held flows are answered (holds) before
    the decider stops."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.runtime = Runtime(self.metrics)
        self.refusals = Refusals()
        self.streams = Streams(self.metrics)
        self.identity = Identity(self.runtime)
        self.surface = OwnSurface()
        self.holds = Holds(self.runtime, self.refusals)
        self.gate = Gate(self.runtime, self.identity, self.surface, self.holds, self.refusals)
        self.priors = Priors(self.runtime)  # after the gate: reads for writes it released
        self.outcomes = Outcomes(self.runtime)
        self.guard = GuardApi(self.runtime, self.identity)
        self.addons = [
            self.streams, self.identity, self.surface, self.gate, self.priors, self.holds,
            self.outcomes, self.guard, self.runtime,
        ]  # fmt: skip


def airlock_addons() -> list[Any]:
    """Everything Airlock adds to a mitmproxy, in the order mitmproxy should call them."""
    metrics = Metrics()
    return [metrics, Routing(), Airlock(metrics)]
