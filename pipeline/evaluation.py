"""Stages 2 and 3 together, failing closed: whatever goes wrong becomes a BLOCK that says why.

A pure function of (document, compiled config): the proxy, `airlock explain` and the tests all
call the same code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from airlock.pipeline.agents import AgentRegistry, load_agents, load_reviewers
from airlock.pipeline.consistency import configuration_problems, reviewer_role_problems
from airlock.pipeline.document import Document, normalise_host
from airlock.pipeline.history import History, WithEarlier
from airlock.pipeline.mappings import (
    Action,
    MappingError,
    MappingIndex,
    fallback_action,
    load_mappings,
    overlong,
    within_limits,
)
from airlock.pipeline.mcp import header_problem, is_batch
from airlock.pipeline.policies import (
    BLOCK,
    RESTRICTIVENESS,
    PolicySet,
    Verdict,
    load_policies,
)
from airlock.pipeline.redaction import redact_authority
from airlock.pipeline.risk import Risk, score
from airlock.pipeline.undo import linked_run

MAX_HOST = 253  # characters of a DNS name (RFC 1035): a longer host is no server's


@dataclass(frozen=True)
class Config:
    mappings: MappingIndex
    policies: PolicySet
    agents: AgentRegistry = field(default_factory=AgentRegistry)

    @classmethod
    def load(cls, mappings_dir: Path, policies_dir: Path) -> Config:
        """Load and check together: what the files must agree on (pipeline/consistency.py) is
        a load error, the first one found; `airlock check` lists them all."""
        config = cls(
            load_mappings(mappings_dir), load_policies(policies_dir), load_agents(policies_dir)
        )
        problems = configuration_problems(config.mappings, config.policies, config.agents)
        problems += reviewer_role_problems(config.policies.rules, load_reviewers(policies_dir))
        if problems:
            raise problems[0]
        return config


@dataclass(frozen=True)
class Evaluation:
    action: Action
    verdict: Verdict
    error: str | None = None  # set when a stage failed and the request was blocked for it
    failed_stage: str | None = None
    risk: Risk | None = None
    # A JSON-RPC batch's other calls (the action above is the one that decided): each counts
    # in budgets and rates when the batch is let through.
    others: tuple[Action, ...] = ()


def evaluate(
    document: Document, config: Config, history: History | None = None,
    undo_key: bytes | None = None,
) -> Evaluation:  # fmt: skip
    """`history` is the decider's view of the recent past (budgets, rates, risk); offline callers
    (explain, test) pass none and see an empty past. `undo_key`: the request key, which signs
    the link `airlock undo` puts on its requests (pipeline/undo.py)."""
    problem = request_problem(document)
    if problem:
        return _failed("request", fallback_action(document), ValueError(problem))
    undo_of = document["headers"].get(UNDO_OF)
    if undo_of:  # `airlock undo` sent it: the run it undoes, on record with this one
        evaluation = evaluate({**document, "headers": _without(document["headers"], UNDO_OF)},
                              config, history)  # fmt: skip
        run_id = linked_run(undo_key, undo_of, document)
        if run_id is None:  # an agent's own, or another Airlock's: judged, refused, said why
            verdict = Verdict(BLOCK, _UNSIGNED_UNDO, ("undo-link",))
            return replace(evaluation, verdict=verdict)
        context = {**evaluation.action.context, "undo_of": run_id}
        return replace(evaluation, action=replace(evaluation.action, context=context))
    try:  # MCP only where the host makes it so: the vendor's operation comes first
        messages = config.mappings.mcp_messages(document)
    except MappingError as e:
        return _failed("mapping", e.action or fallback_action(document), e)
    if messages is None:
        return _evaluate_one(document, config, history)
    mismatch = header_problem(document["headers"], messages)
    if is_batch(document) and len(messages) > MAX_BATCH:
        refusal = f"a JSON-RPC batch of {len(messages)} calls: at most {MAX_BATCH} are judged"
        return _failed("request", fallback_action(document), ValueError(refusal))
    if is_batch(document):
        evaluation = _evaluate_batch(document, messages, config, history)
    else:
        evaluation = _evaluate_one(document, config, history)
    if mismatch:
        verdict = Verdict(BLOCK, f"{mismatch}: what is judged must be what runs", ("mcp-headers",))
        return replace(evaluation, verdict=verdict)
    return evaluation


# Calls judged in one JSON-RPC batch: each is decided as a request of its own (~0.1 ms), by
# the one decider every agent shares; MCP clients send a few at most (the 2025-06-18 revision
# dropped batches). 30,000 pings fit in the 1 MiB a body may have.
MAX_BATCH = 100
UNDO_OF = "x-airlock-undo-of"  # set by `airlock undo`; never forwarded (addons/gatekeeper.py)
_UNSIGNED_UNDO = (
    "X-Airlock-Undo-Of is Airlock's own header, signed by `airlock undo` with this Airlock's "
    "request key; this request's is not (send undos with `airlock undo RUN --execute`, with the "
    "proxy's --data-dir)"
)


def _without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key != name}


def _evaluate_batch(
    document: Document, messages: list[dict[str, Any]], config: Config, history: History | None
) -> Evaluation:
    """A JSON-RPC batch, element by element: the most restrictive decision is the batch's (one
    BLOCK blocks it all), and its reason names the element that decided."""
    roles = config.agents.roles_of(document["agent"])
    past = WithEarlier(history, roles) if history is not None else None
    evaluations = []
    for message in messages:
        evaluation = _evaluate_one({**document, "body": message}, config, past or history)
        evaluations.append(evaluation)
        if past is not None:  # the next element's budgets and rates count this one
            action = evaluation.action
            past.add(action.action, action.params, action.target)
    decisive = max(evaluations, key=lambda e: RESTRICTIVENESS[e.verdict.decision])
    where = f"call {evaluations.index(decisive) + 1} of {len(messages)} in a JSON-RPC batch"
    action = decisive.action
    context = {**action.context, "batch": [e.action.action for e in evaluations]}
    verdict = decisive.verdict
    return replace(
        decisive,
        action=replace(action, context=context),
        verdict=replace(verdict, reason=f"{where} ({action.action}): {verdict.reason}"),
        others=tuple(e.action for e in evaluations if e is not decisive),
    )


def _evaluate_one(
    document: Document, config: Config, history: History | WithEarlier | None
) -> Evaluation:
    try:
        action = config.mappings.map(document)
    except MappingError as e:
        return _failed("mapping", e.action or fallback_action(document), e)
    except Exception as e:
        return _failed("mapping", fallback_action(document), e)
    agent = document["agent"]
    refusal = config.agents.standing_refusal(agent)
    if refusal:
        return Evaluation(action, Verdict(BLOCK, refusal, ("agent-identity",)))
    refusal = config.agents.egress_refusal(agent, document["host"])
    if refusal:
        return Evaluation(action, Verdict(BLOCK, refusal, ("egress-profile",)))
    try:
        risk = score(action, agent, history)
        roles = config.agents.roles_of(agent)
        verdict = config.policies.decide(action, agent, roles, risk.score, history)
    except Exception as e:
        return _failed("policy", action, e)
    return Evaluation(action, verdict, risk=risk)


def request_problem(document: Document) -> str | None:
    """A request that cannot be judged as what it really is is refused before mapping: one that
    names another host than the one it goes to (Host header, HTTP/2 :authority, absolute URL),
    one that asks to leave HTTP (WebSocket, h2c: what follows would not be judged), one that
    Airlock could not read exactly."""
    if "request_error" in document:
        return str(document["request_error"])
    if len(document["host"]) > MAX_HOST:
        length = len(document["host"])
        return f"the host name has {length} characters: DNS names have at most {MAX_HOST}"
    upgrade = document["headers"].get("upgrade")
    handshake = next((n for n in document["headers"] if n.startswith("sec-websocket-")), None)
    if upgrade is not None or handshake is not None:
        asked = f"Upgrade: {upgrade[:40]!r}" if upgrade is not None else handshake
        return (
            f"protocol upgrades are refused ({asked}): Airlock judges each HTTP request, and "
            "the messages of a WebSocket or other protocol would pass unjudged"
        )
    folded = next((n for n, v in document["headers"].items() if "\n" in v or "\r" in v), None)
    if folded:
        return (
            f"the {folded!r} header is folded over several lines (obsolete line folding, "
            "RFC 9112 section 5.2): the upstream could read a header Airlock did not judge"
        )
    for name, named in (("Host header", document["headers"].get("host")),
                         (":authority", document.get("authority"))):  # fmt: skip
        if named is None or (name == ":authority" and not named):
            continue  # no Host header (HTTP/2), no authority (HTTP/1 origin-form)
        if _host_of(named) != document["host"].strip("[]"):
            return (
                f"the {name} {redact_authority(named)!r} does not name the host the request "
                f"goes to ({document['host']!r})"
            )
    return None


_AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::[0-9]{1,5})?\Z")


def _host_of(authority: str) -> str | None:
    """`Host.Example:443` → `host.example`; `[::1]:8080` → `::1`; None for anything that is not
    host[:port] (user info, a bad port, an empty value: upstreams read those differently)."""
    match = _AUTHORITY.match(authority.strip())
    if match is None:
        return None
    return normalise_host(match.group(1).strip("[]"))


def _failed(stage: str, action: Action, error: Exception) -> Evaluation:
    message = f"{stage} failed: {error}"
    return Evaluation(action, Verdict(BLOCK, f"blocked because {message}", ()), message, stage)


def evaluate_call(
    action: Action, agent: str, config: Config, history: History | None
) -> Evaluation:
    """A tool call the agent names itself (the Guard API): nothing to map, and no host to
    limit, but the same policies, risk, budgets and rates as a request through the proxy."""
    refusal = config.agents.standing_refusal(agent)
    if refusal:
        return Evaluation(action, Verdict(BLOCK, refusal, ("agent-identity",)))
    # A `tool:` mapping can make a target of the call's arguments: the same limits as a
    # request's, or the decider every agent shares would work in proportion to them.
    problem = overlong(action)
    if problem:
        return _failed("mapping", within_limits(action), MappingError(problem))
    try:
        risk = score(action, agent, history)
        roles = config.agents.roles_of(agent)
        verdict = config.policies.decide(action, agent, roles, risk.score, history)
    except Exception as e:
        return _failed("policy", action, e)
    return Evaluation(action, verdict, risk=risk)
