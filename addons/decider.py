"""The decider: stages 1-3 of every request and its record, in the store writer's process.

Under load the proxy's event loop is the bottleneck: one core, with mitmproxy's own work on it.
So the gate (addons/gatekeeper.py) only names the agent and sends the raw request here; this
process, on another core, builds the document, maps, decides with its own compiled config and
budgets' history, redacts, and hands the record to the store writer it hosts. The answer comes
once the record is durable, as it did before (measured in README's Performance).

Started by the gate as `python -m addons.decider FD` (store/writer.py). Messages, [kind, fields]
in store/wire.py's hosted frames:
  setup      the configuration (the texts of the files the proxy loaded, pipeline/yaml_source.py),
             mode, the proxy's instance name, how often to read other instances' decisions;
             first after the database URL, at every start
  configure  the configuration and mode, after the proxy reloaded them
  decide     one request (the body is the frame's tail). Answered {"run": summary} once its
             record is durable; REQUIRE_APPROVAL also with its approval: the one it opened, or
             the one open for the same call (a retry, or the call sent to another instance)
  remember   a held request once settled, for budgets: {"run": ..., "passed": bool}
  watch      approvals the proxy holds flows for: {"ids": [...]}; each settlement is pushed to
             the proxy as ["settled", {"id", "state", "reviewer", "reason"}] (store/settlements.py)
  unwatch    a hold that ended: {"id": ...}
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from mitmproxy import http

from airlock.pipeline.document import (
    Document,
    WireRequest,
    build_document,
    latin1_headers,
    minimal_document,
)
from airlock.pipeline.evaluation import Config, Evaluation, evaluate
from airlock.pipeline.history import RISK_WINDOW, History
from airlock.pipeline.mappings import fallback_action
from airlock.pipeline.policies import ALLOW, BLOCK, ENFORCE, OFF, REQUIRE_APPROVAL, Shadow, Verdict
from airlock.pipeline.redaction import redact_document, redact_text, redact_value
from airlock.pipeline.yaml_source import replaying_sources, sources_hash
from airlock.store.anchor import Anchoring
from airlock.store.approvals import (
    ABANDONED,
    EXPIRED,
    find_approval_for_retry,
)
from airlock.store.history import (
    PastDecision,
    agent_actions,
    audit_position,
    committed_since,
    past_decisions,
)
from airlock.store.prepared import PENDING
from airlock.store.records import DecisionRecord, HoldRequest, Joined
from airlock.store.settlements import SettlementWatch
from airlock.store.wire import HOSTED, hosted_message, job_frame, job_head
from airlock.store.writer import GroupWriter
from airlock.store.writer_process import Taken, main

log = logging.getLogger("airlock.decider")

FAULT = "the decider failed"  # starts the error answered for a message it could not handle

MAX_STORED_BODY = 64 * 1024
MAX_STORED_TEXT = 4096  # characters of one param value kept in the record
MAX_STORED_ITEMS = 1000  # items of one list param kept in the record
# What the proxy needs of a recorded decision: its answer, console line, metrics and outcome.
SUMMARY_KEYS = (
    "id", "at", "agent", "provider", "action", "operation", "target", "params", "decision",
    "reason", "rules", "risk", "shadow_decision", "shadow_rules", "error",
)  # fmt: skip


class Decider:
    """The writer's host (store/writer_process.py Host): decide messages become records."""

    def __init__(self, writer: GroupWriter) -> None:
        self.engine = writer.engine
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
        self.opening: dict[str, dict[str, Any]] = {}
        self.watch = SettlementWatch(self.engine)
        self.anchor: Anchoring | None = None  # signed checkpoints outside the database

    def take(self, frames: list[bytes]) -> Taken:
        taken = Taken([])
        self.opening.clear()
        for whole_frame in frames:
            sequence, flag = job_head(whole_frame)
            if flag != HOSTED:
                taken.frames.append(whole_frame)
                continue
            kind = "unreadable"
            try:
                (kind, fields), tail = hosted_message(whole_frame)
                self._handle(taken, sequence, kind, fields, tail)
            except Exception as e:  # fail closed: the proxy refuses what was not answered
                log.exception("the decider failed on a %s message", kind)
                if sequence:
                    taken.answers.append((sequence, False, f"{FAULT}: {e!r}"))
        return taken

    def _handle(
        self, taken: Taken, sequence: int, kind: str, fields: dict[str, Any], tail: bytes
    ) -> None:
        if kind == "decide":
            self._decide(taken, sequence, fields, tail)
        elif kind == "remember":
            self._remember(fields["run"], fields["passed"])
        elif kind == "watch":
            self.watch.watch(fields["ids"])
        elif kind == "unwatch":
            self.watch.unwatch(fields["id"])
        elif kind == "configure":  # the proxy is told when this fails
            self._configure(fields)
            taken.answers.append((sequence, True, None))
        elif kind == "setup":
            self.instance, self.sync_every = fields["instance"], fields["sync_every"]
            try:
                self._configure(fields)
            except Exception as e:  # every request is refused until a configure succeeds
                self.missing = f"the decider cannot load its configuration: {e}"
                log.error("%s", self.missing)
            self._load_history_or_say_why()
            self._start_anchoring(fields.get("anchor_dir"), fields.get("retention_days", 0))
        else:
            raise ValueError(f"unknown message {kind!r}")

    # --- configuration ---------------------------------------------------------------------

    def _configure(self, fields: dict[str, Any]) -> None:
        self.approval_timeout = fields.get("approval_timeout", self.approval_timeout)
        compiled_from = (fields["mappings"], fields["policies"], fields["sources"])
        if self.config is not None and compiled_from == self.compiled_from:
            self.mode = fields["mode"]  # only the mode changed: a large catalog takes seconds
            return
        with replaying_sources(fields["sources"]):  # what the proxy validated, not the disk
            config = Config.load(Path(fields["mappings"]), Path(fields["policies"]))
        self.mode, self.compiled_from = fields["mode"], compiled_from
        self.config_hash = sources_hash(fields["sources"])
        gc.unfreeze()  # the configuration being replaced may be collected
        self.config = config
        self.history.horizon = max(RISK_WINDOW, config.policies.longest_window)
        # What lives as long as the process is exempt from collection (see gatekeeper).
        gc.collect()
        gc.freeze()

    # --- deciding ----------------------------------------------------------------------------

    def _decide(self, taken: Taken, sequence: int, fields: dict[str, Any], body: bytes) -> None:
        started = time.perf_counter()
        request = _request(fields, body)
        try:
            document = build_document(request, fields["agent"])
            evaluation = self._evaluate(document, fields["refusal"])
        except Exception as e:  # fail closed, and on record
            document = minimal_document(request, fields["agent"])
            evaluation = failed_evaluation(document, e)
        decision_ms = (time.perf_counter() - started) * 1000
        row = run_row(
            fields["id"], self.instance, document, evaluation, decision_ms, self.config_hash
        )
        stage = evaluation.failed_stage if evaluation.error else None
        if row["decision"] == REQUIRE_APPROVAL:
            self._hold_or_join(taken, sequence, row, stage, document, evaluation.verdict)
            return
        if row["decision"] == BLOCK:
            row.update(outcome="blocked", status=403)
        # Counted now, before the next request is decided: concurrent requests cannot all
        # slip under a budget. (Refused later by the store, it still counts: the safe side.)
        self._remember(row, passed=row["decision"] == ALLOW)
        taken.frames.append(job_frame(sequence, DecisionRecord(row)))
        summary = {key: row[key] for key in SUMMARY_KEYS}
        taken.results[sequence] = {"run": summary, "failed_stage": stage, "recorded": True}

    # --- approvals ----------------------------------------------------------------------------

    def _hold_or_join(
        self, taken: Taken, sequence: int, row: dict[str, Any], stage: str | None,
        document: Document, verdict: Verdict,
    ) -> None:  # fmt: skip
        """Record a decision that needs approval with its approval: a new one, or the one
        already open for the same call, which the request joins (never a second approval)."""
        exact = request_hash(document)
        key = retry_key_of(document, exact)
        approval = self._joinable(key)
        hold = None
        if approval is None:
            hold = self._new_hold(row, exact, key, verdict)
            approval = self.opening[key] = _approval_of(hold, joined=False)
        else:
            row["reason"] = f"{row['reason']} (a retry: joins approval {approval['id']})"
        joins = None if hold is not None else approval["id"]
        taken.frames.append(job_frame(sequence, DecisionRecord(row, hold, joins)))
        answer = {"run": {key: row[key] for key in SUMMARY_KEYS}, "failed_stage": stage,
                  "recorded": True, "request_hash": exact, "approval": approval}  # fmt: skip

        def with_what_the_store_found(written: Any) -> dict[str, Any]:
            if isinstance(written, Joined):  # another instance opened this call's approval
                return answer | {"approval": _joined(written)}
            return answer

        taken.results[sequence] = with_what_the_store_found

    def _joinable(self, key: str) -> dict[str, Any] | None:
        """The approval a request with this retry key joins: open, or settled and not past
        its window (approved: released once; denied: refused); None opens a new one."""
        if key in self.opening:
            return {**self.opening[key], "joined": True}
        found = find_approval_for_retry(self.engine, key)
        if found is None or found.state in (EXPIRED, ABANDONED):
            return None
        if found.expires_at <= time.time():
            return None  # past its window, the same request again is a new request
        return {
            "id": found.id, "state": found.state, "reviewer": found.reviewer,
            "reason": found.reason, "expires_at": found.expires_at,
            "request_hash": found.request_hash, "joined": True,
        }  # fmt: skip

    def _new_hold(self, row: dict[str, Any], exact: str, key: str, verdict: Verdict) -> HoldRequest:
        return HoldRequest(
            approval_id=uuid.uuid4().hex,  # random: reviewers type a short prefix
            expires_at=row["at"] + (verdict.hold_timeout or self.approval_timeout),
            request_hash=exact,
            required=verdict.approvals,
            retry_key=key,
            reviewer_roles=tuple(verdict.reviewer_roles),
        )

    def _start_anchoring(self, data_dir: str | None, retention_days: float) -> None:
        if not data_dir or self.anchor is not None:
            if retention_days and not data_dir:
                log.error("retention needs airlock_anchor_dir (to sign its cut): nothing pruned")
            return
        try:
            self.anchor = Anchoring(self.engine, Path(data_dir), retention_days)
        except Exception as e:  # the chain still verifies on its own; say it is not anchored
            log.error("cannot sign audit checkpoints in %s: %s", data_dir, e)

    def done(self) -> None:
        """The writer is stopping: a last checkpoint covers everything it wrote."""
        if self.anchor is not None:
            try:
                self.anchor.checkpoint()
            except Exception as e:
                log.error("cannot write the last audit checkpoint: %s", e)

    def pushed(self) -> list[Any]:
        return [["settled", settlement] for settlement in self.watch.settled()]

    def _evaluate(self, document: Document, refusal: str | None) -> Evaluation:
        if refusal:
            return Evaluation(
                fallback_action(document), Verdict(BLOCK, refusal, ("control-surface",))
            )
        if self.config is None:
            raise RuntimeError(self.missing)
        if self.next_sync is None:  # budgets without their past would let too much through
            self._load_history()
        return with_mode(evaluate(document, self.config, self.history), self.mode)

    # --- the recent past, for budgets, rates and risk ----------------------------------------

    def _remember(self, run: dict[str, Any], passed: bool) -> None:
        self._count(run["id"], run["agent"], run["action"], run["at"], run["params"], passed,
                    run["target"])  # fmt: skip

    def _count(
        self, run_id: str, agent: str, action: str, at: float, params: dict[str, Any],
        passed: bool, target: str | None,
    ) -> None:  # fmt: skip
        roles = self.config.agents.roles_of(agent) if self.config else ()
        self.history.record(run_id, agent, action, at, params, passed, roles, target)

    def _load_history_or_say_why(self) -> None:
        try:
            self._load_history()
        except Exception as e:  # tried again before the next decision
            log.error("cannot load the recent past from the store: %s", e)

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
                self._count(r.id, r.agent, r.action, r.at, r.params, passed, r.target)

    def tick(self) -> float | None:
        """Due work: watching held approvals (pushed()), and other instances' decisions."""
        waits = [self._sync_history(), self.watch.due(), self._anchor_tick()]
        due = [wait for wait in waits if wait is not None]
        return min(due) if due else None

    def _anchor_tick(self) -> float | None:
        if self.anchor is None:
            return None
        try:
            return self.anchor.tick()
        except Exception as e:
            log.error("cannot write an audit checkpoint: %s", e)
            return None

    def _sync_history(self) -> float | None:
        """Other proxy instances on the same database: their decisions count here too, read in
        commit order from a cursor, so nothing committed late is missed."""
        if self.next_sync is None:
            return None  # not loaded: the next decision tries again, and fails closed
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
        return self.sync_every


def _request(fields: dict[str, Any], body: bytes) -> WireRequest:
    """The request as mitmproxy held it: it travels as latin-1 text, byte for byte."""
    return WireRequest(
        _as_mitmproxy_reads(fields["method"]), _as_mitmproxy_reads(fields["scheme"]),
        fields["host"], fields["port"], _as_mitmproxy_reads(fields["path"]), fields["headers"],
        body, _as_mitmproxy_reads(fields.get("authority", "")),
    )  # fmt: skip


def _as_mitmproxy_reads(latin1: str) -> str:
    return latin1.encode("latin-1").decode("utf-8", "surrogateescape")


def request_fields(request: http.Request) -> dict[str, Any]:
    """What the decider needs of a request besides its body (the proxy's side of `_request`).
    Latin-1, not mitmproxy's UTF-8 with escapes: JSON cannot carry those escapes."""
    data = request.data
    return {
        "host": request.host,
        "port": request.port,
        "method": data.method.decode("latin-1"),
        "scheme": data.scheme.decode("latin-1"),
        "path": data.path.decode("latin-1"),
        "authority": data.authority.decode("latin-1"),
        "headers": latin1_headers(request),
    }


def _approval_of(hold: HoldRequest, joined: bool) -> dict[str, Any]:
    return {
        "id": hold.approval_id, "state": PENDING, "reviewer": None, "reason": None,
        "expires_at": hold.expires_at, "request_hash": hold.request_hash, "joined": joined,
    }  # fmt: skip


def _joined(found: Joined) -> dict[str, Any]:
    return {
        "id": found.approval_id, "state": PENDING, "reviewer": None, "reason": None,
        "expires_at": found.expires_at, "request_hash": found.request_hash, "joined": True,
    }  # fmt: skip


# --- pure helpers, shared with the gate --------------------------------------------------------


def with_mode(evaluation: Evaluation, mode: str) -> Evaluation:
    """Shadow mode decides and records, enforcing nothing; off decides nothing."""
    if mode == ENFORCE or evaluation.error:
        return evaluation  # a failed stage blocks even in shadow mode: nothing unjudged
    verdict = evaluation.verdict
    if mode == OFF:
        allowed = Verdict(ALLOW, "policies are off (airlock_mode=off)", ())
    else:
        would = Shadow(verdict.decision, verdict.reason, verdict.rules)
        allowed = Verdict(ALLOW, "shadow mode (airlock_mode=shadow)", (), shadow=would)
    return replace(evaluation, verdict=allowed)


def failed_evaluation(document: Document, error: Exception) -> Evaluation:
    reason = redact_text(f"blocked because Airlock failed: {error!r}")
    return Evaluation(fallback_action(document), Verdict(BLOCK, reason, ()), repr(error), "gate")


def let_through(decision: str, outcome: str | None) -> bool | None:
    """True: its request went (or is going) out, and counts against budgets. False: refused
    (a denial, for the risk score). None: neither yet, or not a decision on the request
    (an attempt answered 'pending', a duplicate retry, a store failure)."""
    if outcome in ("forwarded", "unknown") or (decision == ALLOW and outcome is None):
        return True  # "unknown": released when its proxy stopped, so it may have gone out
    if decision == BLOCK or outcome in ("blocked", "denied", "expired", "abandoned"):
        return False
    return None


def retry_key_of(document: Document, exact_hash: str) -> str:
    """What stays the same across an SDK's retries of one call, scoped to the agent: Stripe's
    Idempotency-Key, boto3's invocation id, EC2's ClientToken; else the request hash."""
    headers = document["headers"]
    body = document["body"] if isinstance(document["body"], dict) else {}
    for key in (
        headers.get("idempotency-key"),
        headers.get("amz-sdk-invocation-id"),
        body.get("ClientToken"),
    ):
        if key:
            return f"{document['agent']}:{document['host']}:{key}"[:300]
    return f"{document['agent']}:{exact_hash}"[:300]


def request_hash(document: Document) -> str:
    """Binds an approval to the exact request: method, URL, normalised body, agent."""
    body = document["body"]
    normalised = body if isinstance(body, str) else json.dumps(body, sort_keys=True)
    query = json.dumps(document["query"], sort_keys=True)
    material = "\n".join(
        [
            document["method"],
            document["scheme"],
            document["host"],
            str(document["port"]),
            document["path"],
            query,
            normalised or "",
            document["agent"],
        ]
    )
    return hashlib.sha256(material.encode()).hexdigest()


def capped(value: Any) -> Any:
    """What a record keeps of a param: policies decided on the whole value; the store keeps a
    string over MAX_STORED_TEXT as its start, length and hash, and a list over MAX_STORED_ITEMS
    as its first items and a count (a 50 MB param once grew the store by 299 MB)."""
    if isinstance(value, str):
        if len(value) <= MAX_STORED_TEXT:
            return value
        digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
        return f"{value[:256]}… [{len(value)} characters, sha256 {digest}]"
    if isinstance(value, dict):
        return {key: capped(item) for key, item in value.items()}
    if isinstance(value, list):
        kept = [capped(item) for item in value[:MAX_STORED_ITEMS]]
        if len(value) > MAX_STORED_ITEMS:
            kept.append(f"… [{len(value) - MAX_STORED_ITEMS} more items, {len(value)} in all]")
        return kept
    return value


def run_row(
    run_id: str, instance: str, document: Document, evaluation: Evaluation, decision_ms: float,
    config_hash: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The runs table's row of a decision, redacted."""
    action, verdict = evaluation.action, evaluation.verdict
    if document["body_size"] > MAX_STORED_BODY:  # not stored, so not worth redacting
        document = {**document, "body": f"[body of {document['body_size']} bytes not stored]"}
    stored = capped(redact_document(document))  # overlong headers or paths too
    return {
        "id": run_id,
        "at": time.time(),
        "instance": instance,
        "agent": document["agent"],
        "method": document["method"],
        "host": document["host"],
        "path": stored["path"],
        "provider": action.provider,
        "action": action.action,
        "category": action.category,
        "sensitivity": action.sensitivity,
        "target": redact_text(action.target),
        "mapping_id": action.mapping_id,
        "operation": action.operation,
        "params": capped(redact_value(action.params)),
        "context": capped(redact_value(action.context)),
        "undo": action.undo,
        "request": stored,
        "decision": verdict.decision,
        "reason": redact_text(verdict.reason),
        "rules": list(verdict.rules),
        "risk": evaluation.risk.score if evaluation.risk else None,
        "risk_factors": evaluation.risk.as_json() if evaluation.risk else None,
        "shadow_decision": verdict.shadow.decision if verdict.shadow else None,
        "shadow_rules": list(verdict.shadow.rules) if verdict.shadow else None,
        "error": redact_text(evaluation.error) if evaluation.error else None,
        "decision_ms": decision_ms,
        "config_hash": config_hash,
        "outcome": None,
        "status": None,
        "upstream_ms": None,
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv, Decider))
