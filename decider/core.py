"""The decider: stages 1-3 of every request and every write to the store, in one place.

Under load the proxy's event loop is the bottleneck: one core, with mitmproxy's own work on it.
So the proxy only names the agent and sends the raw request (decider/client.py); the decider
builds the document, maps, decides with its own compiled configuration and budgets' history,
redacts, opens or joins approvals, and writes: decisions, holds, joins, settlements, releases,
outcomes. Each batch of messages received meanwhile is one group commit (the database's own
durability, store/writer.py); a decision is answered once its record is durable.

The same DeciderCore runs in a worker process (the default: decider/worker.py, on another core)
or in a thread of the proxy (decider/client.py InProcessDecider); decider/serve.py is the loop.
"""

from __future__ import annotations

import gc
import logging
import math
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from airlock.decider.messages import (
    DECIDER,
    STORE,
    Answer,
    AnsweredOutcome,
    ApprovalState,
    Committed,
    Configuration,
    Configure,
    Decide,
    DecideCall,
    Decided,
    Envelope,
    Failure,
    Queue,
    RawRequest,
    Recheck,
    Rechecked,
    Remember,
    Reply,
    Settled,
    Setup,
    StoreAddress,
    Unwatch,
    Watch,
)
from airlock.decider.witness import Witness
from airlock.pipeline.document import Document, WireRequest, build_document, minimal_document
from airlock.pipeline.edits import as_approved_edit
from airlock.pipeline.evaluation import Config, Evaluation, evaluate, evaluate_call
from airlock.pipeline.history import RISK_WINDOW, History
from airlock.pipeline.mappings import MCP_CONTEXT, fallback_action
from airlock.pipeline.outcome import answer_ids
from airlock.pipeline.policies import ALLOW, BLOCK, ENFORCE, REQUIRE_APPROVAL, Verdict
from airlock.pipeline.redaction import redact_value
from airlock.pipeline.run_record import (
    RunRecord,
    RunSummary,
    failed_evaluation,
    former_request_hashes,
    let_through,
    request_hash,
    retry_key_of,
    run_row,
    with_mode,
)
from airlock.pipeline.simulation import SIMULATE_MODE, SIMULATED, simulated
from airlock.pipeline.tool_calls import ToolCall, tool_action, tool_document
from airlock.pipeline.yaml_source import replaying_sources, sources_hash
from airlock.store.anchor import Anchoring
from airlock.store.approvals import (
    ABANDONED,
    EXPIRED,
    NOT_SENT,
    UNKNOWN,
    approval_terms,
    expire_overdue_approvals,
    find_approval_for_retry,
    pending_count,
    settle_what_gone_instances_left,
)
from airlock.store.history import (
    PastDecision,
    agent_actions,
    audit_position,
    committed_since,
    past_decisions,
)
from airlock.store.instances import (
    LEASE_SECONDS,
    RETRY_GRACE_SECONDS,
    SILENCE_SECONDS,
    Here,
    end_lease,
    gone_uncleared,
    renew_lease,
)
from airlock.store.keys import bind_to_store, load_or_create_request_key
from airlock.store.locations import default_data_dir
from airlock.store.prepared import PENDING
from airlock.store.records import (
    DecisionRecord,
    HoldRequest,
    Joined,
    OutcomeRecord,
    ReleaseRequest,
    SettleRequest,
    WithdrawRelease,
    joins_reason,
)
from airlock.store.schema import create_schema, open_engine
from airlock.store.seals import Sealer, seal_with
from airlock.store.settlements import SettlementWatch
from airlock.store.writer import GroupWriter, Pending

log = logging.getLogger("airlock.decider")

FAULT = "the decider failed"  # starts the error answered for a message it could not handle
RETRY_SECONDS = 1.0  # how often outcomes the store refused are tried again
PREPARE_SECONDS = 1.0  # how often an unprepared store is tried again (refused meanwhile)
MAX_UNWRITTEN = 10_000  # outcomes kept for another try; the oldest go past it (logged)
_STORE_JOBS = (DecisionRecord, OutcomeRecord, SettleRequest, ReleaseRequest, WithdrawRelease)
_UNAWAITED = (OutcomeRecord, WithdrawRelease)  # the proxy goes on without them: kept, retried


@dataclass
class _Batch:
    """What a batch of messages became: store jobs for one commit, and answers."""

    jobs: list[Pending] = field(default_factory=list)
    # Answers sent once the jobs are written; a callable is given what the write returned.
    results: dict[int, Any] = field(default_factory=dict)
    replies: list[Answer] = field(default_factory=list)  # answers that write nothing


class DeciderCore:
    def __init__(self, store: StoreAddress) -> None:
        self.writer = GroupWriter(open_engine(store.url, store.durability))
        self.writer.lapse_after = self._lapse_after  # holds that end judge others as sweeps do
        self.engine = self.writer.engine
        self.config: Config | None = None
        self.compiled_from: tuple[str, str, Any] | None = None  # what self.config came from
        self.config_hash: str | None = None  # recorded on each run (yaml_source.sources_hash)
        self.missing = "the decider has no configuration"  # why config is None
        self.mode = ENFORCE
        self.instance = ""
        self.history = History()
        self.sync_every = 2.0
        self.cursor = 0  # the audit event up to which other instances' decisions were read
        self.next_sync: float | None = None  # set once the history is loaded
        self.approval_timeout = 600.0  # seconds an approval stays open, unless a rule says
        # Approvals opened in the batch being taken: its writes are committed before the next
        # batch is taken, so later batches find them in the store.
        self.opening: dict[str, ApprovalState] = {}
        self.watch = SettlementWatch(self.engine)
        self.anchor: Anchoring | None = None  # signed checkpoints outside the database
        self.witness: Witness | None = None  # where they are also sent
        self.prepared = False  # tables made, what stopped processes left settled
        self.unprepared: tuple[float, Exception] | None = None  # the last try's time, its error
        self.data_dir: Path | None = None  # None: the default (a store-only test)
        self.request_key: bytes | None = None  # set with the store (store/keys.py)
        self.queue: int | None = None  # approvals pending in the store, every instance's
        self.queue_pushed: int | None = None
        # Outcomes and withdrawals (nobody awaits them) the store could not take: tried again on
        # their own every RETRY_SECONDS, so one that keeps failing never fails the groups behind.
        self.unwritten: list[Pending] = []
        self.retry_at = 0.0
        self.renewing_since: float | None = None  # monotonic: this lease renewed unbroken since
        self.renewed_at: float | None = None  # monotonic: when the last renewal returned
        self.catching_up: str | None = None  # why the store is not prepared yet, as last said
        self.set_up = False  # told who the proxy is and where its data directory is
        self.catch_up_at = 0.0  # monotonic: when the store or history is tried again

    # --- a batch: messages in, answers out ---------------------------------------------------

    def handle(self, batch: list[Envelope]) -> list[Answer]:
        taken = _Batch()
        self.opening.clear()
        for envelope in batch:
            try:
                self._take(taken, envelope.sequence, envelope.message)
            except Exception as e:  # fail closed: the proxy refuses what was not answered
                log.exception("the decider failed on a %s", type(envelope.message).__name__)
                if envelope.sequence:
                    failure = Failure(DECIDER, f"{FAULT}: {e!r}")
                    taken.replies.append(Reply(envelope.sequence, failure))
        answers = taken.replies
        if taken.jobs:
            answers += self._write_durably(taken.jobs, taken.results)
        return answers + self._retry_unwritten()

    def _take(self, taken: _Batch, sequence: int, message: Any) -> None:
        if isinstance(message, Decide):
            self._decide(taken, sequence, message)
        elif isinstance(message, DecideCall):
            self._decide_call(taken, sequence, message)
        elif isinstance(message, Recheck):
            taken.replies.append(Reply(sequence, self._recheck(message)))
        elif isinstance(message, _STORE_JOBS):
            taken.jobs.append(Pending(sequence, message))
        elif isinstance(message, AnsweredOutcome):
            taken.jobs.append(Pending(sequence, self._with_ids(message)))
        elif isinstance(message, Remember):
            self._remember(message.run, message.passed)
        elif isinstance(message, Watch):
            self.watch.watch(message.ids)
        elif isinstance(message, Unwatch):
            self.watch.unwatch(message.id)
        elif isinstance(message, Configure):  # the proxy is told when this fails
            self._reconfigure(message.configuration)
            taken.replies.append(Reply(sequence, None))
        elif isinstance(message, Setup):
            self._setup(message)
        else:
            raise ValueError(f"unknown message {type(message).__name__}")

    def _setup(self, setup: Setup) -> None:
        self.set_up = True
        self.instance, self.sync_every = setup.instance, setup.sync_every
        self.data_dir = Path(setup.anchor_dir) if setup.anchor_dir else None
        try:
            self._configure(setup.configuration)
        except Exception as e:  # every request is refused until a configure succeeds
            self.missing = f"the decider cannot load its configuration: {e}"
            log.error("%s", self.missing)
        # Anchoring first: what preparing the store settles is sealed like any other write.
        self._start_anchoring(setup.anchor_dir, setup.retention_days, setup.witness_url)
        try:
            self._try_preparing()
            self._load_history()
        except Exception as e:  # tried again before a decision; until then, refused
            log.error("cannot prepare the store or load the recent past from it: %s", e)
        self.watch.watch(setup.watched)

    # --- the store: only the decider opens it -------------------------------------------------

    def _prepare_store(self) -> None:
        """Its tables (a newer Airlock adds its columns), the request key it shares with the
        other instances, this instance's lease, and what gone instances left settled, before
        anything is decided."""
        create_schema(self.engine)
        data_dir = self.data_dir or default_data_dir()
        key = load_or_create_request_key(data_dir)
        bind_to_store(self.engine, key, data_dir)
        self.request_key = key
        if self.instance:  # a decider told no instance (a store-only test) holds nothing
            renew_lease(self.engine, self.instance, Here(self.instance))
        self._settle_what_gone_instances_left()
        self.prepared = True

    def _try_preparing(self) -> None:
        """At most once every PREPARE_SECONDS: meanwhile every request is refused with the
        last try's reason, and does not read again the schema of a store other instances share
        (an instance holding the wrong request key, a store down)."""
        now = time.monotonic()
        if self.unprepared is not None and now - self.unprepared[0] < PREPARE_SECONDS:
            raise self.unprepared[1]
        try:
            self._prepare_store()
        except Exception as e:
            self.unprepared = (now, e)
            raise
        self.unprepared = None

    def _lapse_after(self) -> float:
        """How old a lease may be before its instance is taken for gone. After a gap in this
        instance's own renewals (the store unreachable, or a start) every lease may look
        lapsed, others' as this one's: only once this one has renewed unbroken for as long as
        a lease lasts have the others had the time to renew theirs. Until then, instances are
        judged gone only on evidence (stopped, or a dead process here)."""
        held = self.renewing_since
        if held is None or time.monotonic() - held < LEASE_SECONDS:
            return math.inf
        return LEASE_SECONDS

    def _settle_what_gone_instances_left(self, grace: float = 0.0) -> None:
        here = Here(self.instance, grace=grace, lease_seconds=self._lapse_after())
        expired, left = settle_what_gone_instances_left(self.engine, here)
        if expired:
            log.warning("expired %d approvals left by stopped proxy instances", expired)
        if any(left.values()):
            log.warning("runs left without an outcome by stopped proxy instances: %d released "
                        "(outcome unknown: may have been sent), %d held (not sent)",
                        left[UNKNOWN], left[NOT_SENT])  # fmt: skip

    def _keep_lease(self) -> None:
        """On every sync: this instance's lease renewed; what another instance left, once its
        lease lapsed or ended, settled (store/instances.py), once a retry of its held calls had
        time to join them here or elsewhere; approvals past their expiry expired."""
        if not self.instance:
            return
        try:
            renewal = renew_lease(self.engine, self.instance, Here(self.instance))
            now = time.monotonic()
            # Silent since the last renewal returned, measured here too: a renewal that waited
            # inside its own transaction (a lock held long, a stalled connection) reads a short
            # silence in the store.
            silent = now - self.renewed_at if self.renewed_at is not None else 0.0
            self.renewed_at = now
            if self.renewing_since is None or max(renewal.silent_for, silent) > SILENCE_SECONDS:
                self.renewing_since = now  # renewing unbroken from now
            if not renewal.kept:
                log.error("this instance was taken for stopped (its lease lapsed): approvals "
                          "only it held were expired and its runs in flight settled")  # fmt: skip
            lapse = self._lapse_after()
            here = Here(self.instance, grace=RETRY_GRACE_SECONDS, lease_seconds=lapse)
            if gone_uncleared(self.engine, here):
                self._settle_what_gone_instances_left(RETRY_GRACE_SECONDS)
            expire_overdue_approvals(self.engine)
        except Exception as e:
            self.renewing_since = self.renewed_at = None  # a gap: others' leases may lapse too
            log.warning("cannot renew this instance's lease or settle what others left: %s", e)

    # --- writing -----------------------------------------------------------------------------

    def _write_durably(self, group: list[Pending], results: dict[int, Any]) -> list[Answer]:
        """One transaction, committed by the database's own durability (SQLite WAL with
        synchronous=FULL, PostgreSQL's commit), then answered. A job the database refuses fails
        alone (GroupWriter.write_group): its request is refused, the others go on."""
        started = time.perf_counter()
        written = self.writer.write_group(group)
        self._keep_unwritten(group, written)
        answers: list[Answer] = [Committed(time.perf_counter() - started, len(group))]
        for sequence, ok, value in written:
            if not sequence:
                continue
            if not ok:
                answers.append(Reply(sequence, Failure(STORE, value)))
            elif sequence in results:
                answers.append(_answer(sequence, results[sequence], value))
            else:
                answers.append(Reply(sequence, value))
        return answers

    def _keep_unwritten(self, group: list[Pending], written: list[tuple[int, bool, Any]]) -> None:
        failed = [p for p, (_, ok, _) in zip(group, written, strict=True) if not ok]
        unawaited = [p for p in failed if isinstance(p.job, _UNAWAITED)]
        if not unawaited:
            return
        if not self.unwritten:
            self.retry_at = time.monotonic() + RETRY_SECONDS
        self.unwritten += unawaited
        if len(self.unwritten) > MAX_UNWRITTEN:
            dropped = len(self.unwritten) - MAX_UNWRITTEN
            log.error(
                "%d outcomes or withdrawals dropped: the store has refused writes for too long",
                dropped,
            )
            del self.unwritten[:dropped]

    def _retry_unwritten(self, now: bool = False) -> list[Answer]:
        if not self.unwritten or (not now and time.monotonic() < self.retry_at):
            return []
        group, self.unwritten = self.unwritten, []
        answers = self._write_durably(group, {})
        self.retry_at = time.monotonic() + RETRY_SECONDS
        return answers

    # --- configuration ---------------------------------------------------------------------

    def _reconfigure(self, configuration: Configuration) -> None:
        """A reload: the proxy has switched to it already (its requests from now on are
        authenticated with it), so a configuration this decider cannot load leaves none in
        force, not the previous one: every request is refused until the proxy sends one."""
        try:
            self._configure(configuration)
        except Exception as e:
            self.config, self.compiled_from = None, None
            self.missing = f"the decider cannot load the configuration the proxy reloaded: {e}"
            raise

    def _configure(self, configuration: Configuration) -> None:
        self.approval_timeout = configuration.approval_timeout
        compiled_from = (configuration.mappings, configuration.policies, configuration.sources)
        if self.config is not None and compiled_from == self.compiled_from:
            self.mode = configuration.mode  # only the mode changed: a large catalog takes seconds
            return
        with replaying_sources(configuration.sources):  # what the proxy validated, not the disk
            config = Config.load(Path(configuration.mappings), Path(configuration.policies))
        self.mode, self.compiled_from = configuration.mode, compiled_from
        self.config_hash = sources_hash(configuration.sources)
        gc.unfreeze()  # the configuration being replaced may be collected
        self.config = config
        self.history.horizon = max(RISK_WINDOW, config.policies.longest_window)
        # What lives as long as the process is exempt from collection (see gatekeeper).
        gc.collect()
        gc.freeze()

    # --- deciding ----------------------------------------------------------------------------

    def _decide(self, taken: _Batch, sequence: int, decide: Decide) -> None:
        started = time.perf_counter()
        request = wire_request(decide.request)
        if _too_late(decide.refuse_after):
            # The proxy has refused it already (its outcome says so): recorded, not judged.
            document = minimal_document(request, decide.agent)
            evaluation = failed_evaluation(document, TimeoutError(LATE))
            self._record(taken, sequence, decide.id, document, evaluation, started)
            return
        try:
            document = build_document(request, decide.agent)
            evaluation = self._evaluate(document, decide.refusal)
            if decide.edit is not None:
                approved = approval_terms(self.engine, str(decide.edit.get("approval_id")))
                released = self._hash(document, _judged_as_mcp(evaluation.action.context))
                evaluation = as_approved_edit(evaluation, decide.edit, released, approved)
        except Exception as e:  # fail closed, and on record
            document = minimal_document(request, decide.agent)
            evaluation = failed_evaluation(document, e)
        self._record(taken, sequence, decide.id, document, evaluation, started)

    def _recheck(self, recheck: Recheck) -> Rechecked:
        """A held request judged again with the configuration in force, before its release:
        a reload since it was held may BLOCK it now (nothing recorded here: the proxy records
        the refusal as its outcome). A failure to judge it blocks, as for any request."""
        request = wire_request(recheck.request)
        try:
            document = build_document(request, recheck.agent)
            verdict = self._evaluate(document, None).verdict
        except Exception as e:
            verdict = failed_evaluation(minimal_document(request, recheck.agent), e).verdict
        return Rechecked(verdict.decision, verdict.reason, list(verdict.rules))

    def _decide_call(self, taken: _Batch, sequence: int, decide: DecideCall) -> None:
        """A tool call from the Guard API: the same record, queue and chain as a request."""
        started = time.perf_counter()
        document = tool_document(decide.call, decide.agent)
        try:
            if _too_late(decide.refuse_after):  # answered 503 already: recorded, not judged
                raise TimeoutError(LATE)
            evaluation = self._evaluate_call(document, decide.call)
        except Exception as e:  # fail closed, and on record
            evaluation = failed_evaluation(document, e)
        self._record(taken, sequence, decide.id, document, evaluation, started)

    def _record(
        self, taken: _Batch, sequence: int, run_id: str, document: Document,
        evaluation: Evaluation, started: float,
    ) -> None:  # fmt: skip
        decision_ms = (time.perf_counter() - started) * 1000
        known = self.config.agents.agents if self.config is not None else ()
        row = run_row(
            run_id, self.instance, document, evaluation, decision_ms, self.config_hash, known
        )
        stage = evaluation.failed_stage if evaluation.error else None
        if row.decision == REQUIRE_APPROVAL:
            self._hold_or_join(taken, sequence, row, stage, document, evaluation.verdict)
            return
        would_block = row.decision == SIMULATED and row.shadow_decision == BLOCK
        if row.decision == BLOCK or would_block:
            row.outcome, row.status = "blocked", 403
        # Counted now, before the next request is decided: concurrent requests cannot all
        # slip under a budget. (Refused later by the store, it still counts: the safe side.)
        # A simulated write counts too, as it would in the trial it stands for.
        passed = row.decision == ALLOW or (row.decision == SIMULATED and not would_block)
        self._remember(row, passed=passed)
        if passed:
            self._remember_elements(row, evaluation)
        taken.jobs.append(Pending(sequence, DecisionRecord(row)))
        taken.results[sequence] = Decided(row.summary(), stage)

    def _evaluate(self, document: Document, refusal: str | None) -> Evaluation:
        if refusal:
            return Evaluation(
                fallback_action(document), Verdict(BLOCK, refusal, ("control-surface",))
            )
        config = self._ready()
        evaluation = evaluate(document, config, self.history, self._key())
        evaluation = with_mode(evaluation, self.mode)
        return simulated(evaluation, self._simulating(document["agent"]))

    def _ready(self) -> Config:
        """The configuration to decide with, once the store is prepared and the recent past is
        loaded (budgets without their past would let too much through); else why not."""
        if self.config is None:
            raise RuntimeError(self.missing)
        if not self.prepared:
            self._try_preparing()
        if self.next_sync is None:
            self._load_history()
        return self.config

    def _simulating(self, agent: str) -> bool:
        """The whole proxy (--mode simulate), or this agent or one of its roles, is on trial."""
        config = self.config
        return self.mode == SIMULATE_MODE or (config is not None and config.agents.simulates(agent))

    def _evaluate_call(self, document: Document, call: ToolCall) -> Evaluation:
        config = self._ready()
        action = tool_action(call, config.mappings, document)
        evaluation = evaluate_call(action, document["agent"], config, self.history)
        return simulated(with_mode(evaluation, self.mode), self._simulating(document["agent"]))

    # --- approvals ----------------------------------------------------------------------------

    def _hold_or_join(
        self, taken: _Batch, sequence: int, row: RunRecord, stage: str | None,
        document: Document, verdict: Verdict,
    ) -> None:  # fmt: skip
        """Record a decision that needs approval with its approval: a new one, or the one
        already open for the same call, which the request joins (never a second approval)."""
        mcp = _judged_as_mcp(row.context)  # only then is the JSON-RPC id left out
        exact = self._hash(document, mcp)
        key = retry_key_of(document, exact)
        approval = self._joinable(key, row.at)
        if approval is None or approval.request_hash != exact:
            approval, exact = self._joinable_as_before(document, mcp, key, row.at, approval, exact)
        hold = None
        if approval is None:
            hold = self._new_hold(row, exact, key, verdict)
            approval = self.opening[key] = _pending(hold.approval_id, hold.expires_at, exact, False)
        else:
            row.reason = joins_reason(row.reason, approval.id)
        joins = None if hold is not None else approval.id
        holds = hold is not None or approval.request_hash == exact  # else refused 409
        taken.jobs.append(Pending(sequence, DecisionRecord(row, hold, joins, holds)))
        decided = Decided(row.summary(), stage, exact, approval)

        def with_what_the_store_found(written: Any) -> Decided:
            # Another instance opened this call's approval: this hold joined it, or this join
            # was of the approval a hold of the same batch meant to open (records.py).
            if isinstance(written, Joined):
                found = written.approval_id, written.expires_at, written.request_hash
                run = replace(decided.run, reason=joins_reason(row.reason, written.approval_id))
                # An older instance beside this one hashes as Airlock did before
                formers = former_request_hashes(document, self._key(), mcp=mcp)
                former = written.request_hash in formers
                bound = written.request_hash if former else exact
                return Decided(run, stage, bound, _pending(*found, joined=True))
            return decided

        taken.results[sequence] = with_what_the_store_found

    def _joinable_as_before(
        self, document: Document, mcp: bool, key: str, at: float,
        approval: ApprovalState | None, exact: str,
    ) -> tuple[ApprovalState | None, str]:  # fmt: skip
        """An approval opened by an earlier Airlock (a store upgraded, or an older instance
        beside this one) holds the request's hash as that Airlock made it (fields joined by
        newlines; earlier unkeyed; earlier still, without the bound headers): the same request
        joins it, found and compared as that approval was made. Only a request those forms read
        one way has them (run_record.former_request_hashes says what bounds this)."""
        for before in former_request_hashes(document, self._key(), mcp=mcp):
            found = approval
            if found is None:
                former_key = retry_key_of(document, before)
                found = self._joinable(former_key, at) if former_key != key else None
            if found is not None and found.request_hash == before:
                return found, before
        return approval, exact

    def _hash(self, document: Document, mcp: bool) -> str:
        return request_hash(document, self._key(), mcp=mcp)

    def _key(self) -> bytes:
        if self.request_key is None:  # set when the store is prepared, before any decision
            raise RuntimeError("the decider has no request key yet: the store is not prepared")
        return self.request_key

    def _joinable(self, key: str, at: float) -> ApprovalState | None:
        """The approval a request with this retry key, decided at `at`, joins: open, or settled
        and not past its window (approved: released once; denied: refused); None opens a new
        one. `at` as the store's own check (records.py _open_or_join) takes it, not the clock."""
        if key in self.opening:
            return replace(self.opening[key], joined=True)
        found = find_approval_for_retry(self.engine, key)
        if found is None or found.state in (EXPIRED, ABANDONED):
            return None
        if found.expires_at <= at:
            return None  # past its window, the same request again is a new request
        return ApprovalState(
            found.id, found.state, found.reviewer, found.reason, found.expires_at,
            found.request_hash, joined=True,
        )  # fmt: skip

    def _new_hold(self, row: RunRecord, exact: str, key: str, verdict: Verdict) -> HoldRequest:
        return HoldRequest(
            approval_id=uuid.uuid4().hex,  # random: reviewers type a short prefix
            expires_at=row.at + (verdict.hold_timeout or self.approval_timeout),
            request_hash=exact,
            required=verdict.approvals,
            retry_key=key,
            reviewer_roles=tuple(verdict.reviewer_roles),
            reviewer_role_sets=verdict.reviewer_role_sets,  # each rule's, to be met each
        )

    def _with_ids(self, answered: AnsweredOutcome) -> OutcomeRecord:
        """The outcome with the identifiers its answer returned, by the run's mapping
        (`outcome:`), redacted. Reading them can fail; the outcome is written all the same."""
        outcome = answered.outcome
        mapping = self.config.mappings.by_id.get(answered.mapping_id) if self.config else None
        try:
            ids = answer_ids(mapping, outcome.status or 0, answered.headers, answered.body)
        except Exception:
            log.exception("reading the identifiers of run %s's answer failed", outcome.run_id)
            return outcome
        if not ids:
            return outcome
        return replace(outcome, detail={**(outcome.detail or {}), "ids": redact_value(ids)})

    def pushed(self) -> list[Answer]:
        """Settlements of approvals the proxy holds flows for (store/settlements.py), the
        approvals queue's length when it changed, and outcomes the store refused before, once
        they are due to be written again: with no request coming, nothing else would."""
        answers: list[Answer] = [Settled(**found) for found in self.watch.settled()]
        if self.queue is not None and self.queue != self.queue_pushed:
            answers.append(Queue(self.queue))
            self.queue_pushed = self.queue
        return answers + self._retry_unwritten()

    # --- the audit anchor --------------------------------------------------------------------

    def _start_anchoring(self, data_dir: str, retention_days: float, witness: str) -> None:
        if not data_dir or self.anchor is not None:
            if retention_days and not data_dir:
                log.error("retention needs airlock_anchor_dir (to sign its cut): nothing pruned")
            return
        try:
            self.witness = Witness(witness) if witness else None
            publish = self.witness.publish if self.witness else None
            self.anchor = Anchoring(self.engine, Path(data_dir), retention_days, publish)
            seal_with(self.engine, Sealer(self.anchor.key))  # every group it writes, signed
        except Exception as e:  # the chain still verifies on its own; say it is not anchored
            log.error("cannot sign audit checkpoints in %s: %s", data_dir, e)

    def _anchor_tick(self) -> float | None:
        if self.anchor is None:
            return None
        try:
            return self.anchor.tick()
        except Exception as e:
            log.error("cannot write an audit checkpoint: %s", e)
            return None

    def finish(self) -> list[Answer]:
        """The proxy is gone or stopping, everything it sent was taken: a last try for what the
        store refused, a last checkpoint covering everything written, and the store closed."""
        answers = self._retry_unwritten(now=True)
        if self.anchor is not None:
            try:
                self.anchor.checkpoint()
            except Exception as e:
                log.error("cannot write the last audit checkpoint: %s", e)
        if self.witness is not None:
            self.witness.flush()  # the last checkpoint reaches the witness before we exit
        if self.prepared and self.instance:
            try:
                end_lease(self.engine, self.instance)
            except Exception as e:  # the others wait for its lease to lapse instead
                log.error("cannot end this instance's lease: %s", e)
        self.watch.close()
        self.writer.close()
        self.engine.dispose()
        return answers

    # --- the recent past, for budgets, rates and risk ----------------------------------------

    def _remember(self, run: RunRecord | RunSummary | PastDecision, passed: bool) -> None:
        roles = self.config.agents.roles_of(run.agent) if self.config else ()
        self.history.record(run.id, run.agent, run.action, run.at, run.params, passed, roles,
                            run.target)  # fmt: skip

    def _remember_elements(self, row: RunRecord, evaluation: Evaluation) -> None:
        """A JSON-RPC batch let through: each of its calls counts, not only the one that
        decided (recorded as the run)."""
        roles = self.config.agents.roles_of(row.agent) if self.config else ()
        for index, other in enumerate(evaluation.others):
            self.history.record(f"{row.id}.{index}", row.agent, other.action, row.at,
                                other.params, True, roles, other.target)  # fmt: skip

    def _load_history(self) -> None:
        """At start: the recorded past within the longest window."""
        started = time.perf_counter()
        self.cursor = audit_position(self.engine)  # first: later commits are synced
        self._add_to_history(past_decisions(self.engine, time.time() - self.history.horizon))
        for agent, action in agent_actions(self.engine):
            self.history.knows(agent, action)
        self.next_sync = time.monotonic() + self.sync_every
        log.info("history loaded in %.0f ms", (time.perf_counter() - started) * 1000)

    def _add_to_history(self, decisions: list[PastDecision]) -> None:
        for r in decisions:
            passed = let_through(r.decision, r.outcome)
            if passed is not None:
                self._remember(r, passed)

    def wait(self) -> float | None:
        """Seconds until periodic work is due (None: none): watching held approvals (pushed()),
        other instances' decisions, checkpoints, outcomes to write again."""
        waits = [self._sync_history(), self.watch.due(), self._anchor_tick()]
        if self.unwritten:
            waits.append(max(0.0, self.retry_at - time.monotonic()))
        due = [wait for wait in waits if wait is not None]
        return min(due) if due else None

    def _catch_up(self) -> float:
        """The store could not be prepared or the recent past loaded at start (the store was
        down): tried again here as well as by the next decision, so that an idle proxy holding
        flows still takes its lease and renews it (others would take it for gone)."""
        now = time.monotonic()
        if now < self.catch_up_at:
            return self.catch_up_at - now
        self.catch_up_at = now + PREPARE_SECONDS  # a history that fails to load: once a second
        try:
            if not self.prepared:
                self._try_preparing()
            self._load_history()
        except Exception as e:
            if str(e) != self.catching_up:  # said once, not every second
                log.warning("cannot prepare the store or load the recent past yet: %s", e)
            self.catching_up = str(e)
            if self.prepared:  # its lease is renewed meanwhile: this instance is not gone
                self._keep_lease()
            return PREPARE_SECONDS
        self.catching_up = None
        return 0.0  # loaded: the first sync is due

    def _sync_history(self) -> float | None:
        """Other proxy instances on the same database: their decisions count here too, read in
        commit order from a cursor, so nothing committed late is missed."""
        if self.next_sync is None:  # not loaded; before the proxy's setup, not tried at all
            return self._catch_up() if self.set_up else None
        now = time.monotonic()
        if now < self.next_sync:
            return self.next_sync - now
        self.next_sync = now + self.sync_every
        try:
            found, self.cursor = committed_since(self.engine, self.cursor, self.instance)
        except Exception as e:
            log.warning("cannot read other instances' decisions: %s", e)
        else:
            self._add_to_history(found)
        self.history.prune()
        self._keep_lease()
        try:
            self.queue = pending_count(self.engine)
        except Exception as e:
            log.warning("cannot count the approvals waiting: %s", e)
        return self.sync_every


LATE = "it waited past the proxy's limit behind other decisions"


def _too_late(refuse_after: float | None) -> bool:
    """Taken after the proxy stopped waiting for it (and refused it)."""
    return refuse_after is not None and time.time() > refuse_after


def wire_request(raw: RawRequest) -> WireRequest:
    """What a document is built from: method, scheme and path read as mitmproxy reads them
    (UTF-8, undecodable bytes as surrogate escapes), headers as latin-1 text (byte for byte)."""
    return WireRequest(
        _as_mitmproxy_reads(raw.method), _as_mitmproxy_reads(raw.scheme), raw.host, raw.port,
        _as_mitmproxy_reads(raw.path),
        [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw.headers],
        raw.body, _as_mitmproxy_reads(raw.authority), raw.sni,
        tuple(name.decode("latin-1") for name in raw.trailers),
    )  # fmt: skip


def _as_mitmproxy_reads(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _answer(sequence: int, result: Any, written: Any) -> Reply:
    """The answer to a written job: the decider's, given what the write returned when it asks."""
    if not callable(result):
        return Reply(sequence, result)
    try:
        return Reply(sequence, result(written))
    except Exception as e:  # its request is refused; the writer and the others go on
        log.exception("answering job %d failed", sequence)
        return Reply(sequence, Failure(DECIDER, f"{FAULT}: the answer could not be made: {e!r}"))


def _pending(approval_id: str, expires_at: float, request_hash: str, joined: bool) -> ApprovalState:
    """An open approval as the request held for it sees it: opened by it, or joined."""
    return ApprovalState(approval_id, PENDING, None, None, expires_at, request_hash, joined)


def _judged_as_mcp(context: dict[str, Any] | None) -> bool:
    """The request was judged as MCP (pipeline/mappings.py judged_as_mcp marks its action so),
    not merely shaped like it: only then does its approval leave the JSON-RPC id out."""
    return (context or {}).get("protocol") == MCP_CONTEXT["protocol"]
