"""What the proxy and its decider say to each other: typed messages, bytes as bytes.

The proxy sends Envelopes (a message and the sequence number its answer comes back with; 0 when
nobody awaits one). The decider answers with Replies, and also sends what nobody asked for: a
Committed per group commit (for metrics) and a Settled per watched approval a reviewer settled.
Store jobs the proxy makes itself (a decision it refused on its own, an outcome, a settlement,
a release from its side or its withdrawal) are store.records' dataclasses, sent as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airlock.pipeline.run_record import RunSummary
from airlock.pipeline.tool_calls import ToolCall
from airlock.store.records import (
    DecisionRecord,
    OutcomeRecord,
    ReleaseRequest,
    SettleRequest,
    WithdrawRelease,
)

Sources = dict[str, dict[str, Any]]  # the texts a configuration was compiled from


@dataclass(frozen=True, slots=True)
class StoreAddress:
    """Which store the decider writes, and what a commit survives (store/schema.py)."""

    url: str
    durability: str


@dataclass(frozen=True, slots=True)
class Configuration:
    """The files the proxy loaded and validated, as it read them: a decider (re)started later
    must not pick up edits on disk that were never loaded (or are broken)."""

    mappings: str
    policies: str
    sources: Sources
    mode: str
    approval_timeout: float


@dataclass(frozen=True, slots=True)
class Setup:
    """First after every start: who the proxy is, what to decide with, what it holds."""

    instance: str
    sync_every: float  # seconds between reads of other instances' decisions
    anchor_dir: str  # data directory whose key signs audit checkpoints ("" for none)
    retention_days: float
    configuration: Configuration
    watched: list[str]  # approvals the proxy holds flows for
    witness_url: str = ""  # where each signed checkpoint is also POSTed ("" for nowhere)


@dataclass(frozen=True, slots=True)
class Configure:
    """A reload: answered once the decider decides with it (or with why it cannot)."""

    configuration: Configuration


@dataclass(frozen=True, slots=True)
class RawRequest:
    """A request as mitmproxy holds it: the bytes on the wire, not a mitmproxy object."""

    method: bytes
    scheme: bytes
    host: str
    port: int
    path: bytes
    authority: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    sni: str = ""  # the TLS server name the client asked for (the upstream is sent the same)
    trailers: list[bytes] = field(default_factory=list)  # names of HTTP/2 trailer fields


@dataclass(frozen=True, slots=True)
class Decide:
    """Document, map, decide and record one request."""

    id: str
    agent: str
    refusal: str | None  # set when the proxy already refuses it (a request to Airlock itself)
    request: RawRequest
    # A held request a reviewer approved with an edit, rewritten: decided again as that
    # approval (pipeline/edits.py), with the edit, who made it and the proposed request's hash.
    edit: dict[str, Any] | None = None
    # When the proxy stops waiting and refuses it (time.time()): taken later, behind a backlog,
    # it is recorded as refused without being judged, and the backlog drains at that pace.
    refuse_after: float | None = None


@dataclass(frozen=True, slots=True)
class Recheck:
    """A held request about to be released after a reload: judged again with the configuration
    now in force, nothing recorded (the proxy records the outcome). Answered with Rechecked."""

    agent: str
    request: RawRequest


@dataclass(frozen=True, slots=True)
class Rechecked:
    decision: str
    reason: str
    rules: list[str]


@dataclass(frozen=True, slots=True)
class DecideCall:
    """Decide and record one tool call from the Guard API (pipeline/tool_calls.py)."""

    id: str
    agent: str
    call: ToolCall
    refuse_after: float | None = None  # as Decide's: the Guard API answered 503 by then


@dataclass(frozen=True, slots=True)
class AnsweredOutcome:
    """An outcome with the upstream's answer as received, for the decider to read the
    identifiers it returned (the run's mapping's `outcome:`): parsing a JSON answer cost the
    proxy's event loop about 40-80 µs per request (`make bench`)."""

    outcome: OutcomeRecord
    mapping_id: str
    headers: list[tuple[bytes, bytes]]
    body: bytes  # as received: its Content-Encoding is undone by the decider, within limits


@dataclass(frozen=True, slots=True)
class ApprovalState:
    """The approval a request that needs one is held for: opened by it, or joined."""

    id: str
    state: str
    reviewer: str | None
    reason: str | None
    expires_at: float
    request_hash: str
    joined: bool  # opened earlier (a retry, or the same call sent to another instance)


@dataclass(frozen=True, slots=True)
class Decided:
    """A decision, durable in the store."""

    run: RunSummary
    failed_stage: str | None = None  # the stage whose failure blocked it (metrics)
    request_hash: str | None = None  # with an approval: the exact request it is bound to
    approval: ApprovalState | None = None


@dataclass(frozen=True, slots=True)
class Remember:
    """A held request once settled counts in budgets: passed, or refused (for risk)."""

    run: RunSummary
    passed: bool


@dataclass(frozen=True, slots=True)
class Watch:
    ids: list[str]


@dataclass(frozen=True, slots=True)
class Unwatch:
    id: str


Message = (
    Setup | Configure | Decide | DecideCall | Recheck | Remember | Watch | Unwatch
    | DecisionRecord | OutcomeRecord | AnsweredOutcome | SettleRequest | ReleaseRequest
    | WithdrawRelease
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Envelope:
    sequence: int  # 0: nobody awaits an answer
    message: Message


# --- from the decider --------------------------------------------------------------------------

STORE, DECIDER = "store", "decider"  # who failed an answer


@dataclass(frozen=True, slots=True)
class Failure:
    by: str  # STORE: the write was refused or not made; DECIDER: a fault in deciding
    message: str


@dataclass(frozen=True, slots=True)
class Reply:
    sequence: int
    value: Any  # the answer, or a Failure


@dataclass(frozen=True, slots=True)
class Committed:
    """One group commit: how long it took and how many jobs it held."""

    seconds: float
    size: int


@dataclass(frozen=True, slots=True)
class Queue:
    """The approvals waiting for a reviewer in the store, from every instance (pushed when the
    count changes, read with the other instances' decisions)."""

    pending: int


@dataclass(frozen=True, slots=True)
class Settled:
    """A watched approval was settled (by a reviewer, another instance, or its expiry)."""

    id: str
    state: str
    reviewer: str | None
    reason: str | None


Answer = Reply | Committed | Settled
