"""A decision as the store keeps it: the run record (the runs table's row, redacted and capped),
the summary the proxy gets of it, and the keys that bind an approval to its request. Pure: the
decider and the gate's own refusals use it."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import time
from collections.abc import Container
from dataclasses import dataclass, field, fields, replace
from typing import Any

from airlock.pipeline.document import Document
from airlock.pipeline.evaluation import Evaluation
from airlock.pipeline.mappings import MAX_NAME, MAX_TARGET, fallback_action, shortened
from airlock.pipeline.mcp import jsonrpc_messages, without_ids
from airlock.pipeline.policies import ALLOW, BLOCK, ENFORCE, OFF, Shadow, Verdict
from airlock.pipeline.redaction import redact_document, redact_text, redact_value
from airlock.pipeline.sensitive import members_of, scrub

MAX_STORED_BODY = 64 * 1024
MAX_STORED_TEXT = 4096  # characters of one param value kept in the record
MAX_STORED_ITEMS = 1000  # items of one list param kept in the record


@dataclass(slots=True)
class RunSummary:
    """What the proxy needs of a recorded decision: its answer, console line, metrics, outcome
    and the budgets it counts in once settled."""

    id: str
    decision: str
    action: str
    rules: list[str]
    reason: str = ""
    at: float = 0.0
    agent: str = ""
    provider: str = ""
    operation: str | None = None
    target: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    risk: int | None = None
    shadow_decision: str | None = None
    shadow_rules: list[str] | None = None
    error: str | None = None
    risk_factors: Any = None
    protocol: str | None = None  # "mcp": answers and outcomes are JSON-RPC (pipeline/mcp.py)
    mapping_id: str | None = None  # its mapping's `outcome:` reads what the response returned
    simulated: bool = False  # held in a simulated trial: once approved, answered by Airlock
    config_hash: str | None = None  # the configuration that decided it
    # Its query string as stored (redacted): what a notification shows beside the target, as
    # params may not read it (`?amount=9900000` changes what a reviewer approves).
    query: dict[str, Any] | None = None


@dataclass(slots=True)
class RunRecord:
    """One row of the runs table, already redacted and capped."""

    id: str
    at: float
    instance: str
    agent: str
    method: str
    host: str
    path: str
    provider: str
    action: str
    category: str
    sensitivity: str
    target: str | None
    mapping_id: str | None
    operation: str | None
    params: dict[str, Any]
    context: dict[str, Any]
    undo: Any
    request: Any  # the redacted request document
    decision: str
    reason: str
    rules: list[str]
    risk: int | None
    risk_factors: Any
    shadow_decision: str | None
    shadow_rules: list[str] | None
    error: str | None
    decision_ms: float
    config_hash: str | None = None
    outcome: str | None = None  # known at decision time for a block
    status: int | None = None
    upstream_ms: float | None = None
    outcome_detail: dict[str, Any] | None = None  # what the call did (an MCP tool's result)

    def summary(self) -> RunSummary:
        return RunSummary(
            self.id, self.decision, self.action, self.rules, self.reason, self.at, self.agent,
            self.provider, self.operation, self.target, self.params, self.risk,
            self.shadow_decision, self.shadow_rules, self.error, self.risk_factors,
            (self.context or {}).get("protocol"), self.mapping_id,
            bool((self.context or {}).get("simulated")), self.config_hash,
            (self.request or {}).get("query") or None,
        )  # fmt: skip

    def as_row(self) -> dict[str, Any]:
        """Column → value, for the store."""
        return {name: getattr(self, name) for name in _RUN_COLUMNS}


_RUN_COLUMNS = tuple(f.name for f in fields(RunRecord))


SIMULATED = "SIMULATED"  # the decision of a simulated write (pipeline/simulation.py)
SIMULATE_MODE = "simulate"  # `airlock run --mode simulate`: every agent's writes simulated


def with_mode(evaluation: Evaluation, mode: str) -> Evaluation:
    """Shadow mode decides and records, enforcing nothing; off decides nothing. (Simulation
    decides and enforces: pipeline/simulation.py answers its writes.)"""
    if mode in (ENFORCE, SIMULATE_MODE) or evaluation.error:
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
    if decision == SIMULATED:  # nothing went out; it counts as the agent's trial would
        return outcome != "blocked"
    if outcome in ("forwarded", "unknown", "ambiguous") or (decision == ALLOW and outcome is None):
        # "unknown": released when its proxy stopped; "ambiguous": its connection failed after
        # it was sent. Either may have gone out.
        return True
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
            return f"{_agent_key(document['agent'])}:{document['host']}:{key}"[:300]
    return f"{_agent_key(document['agent'])}:{exact_hash}"[:300]


def _agent_key(agent: str) -> str:
    """The agent's name in a stored key: as it is, or, when it reads as a secret (without an
    agents file, a client that put its key where the name goes), a digest that still tells
    agents apart."""
    if redact_text(agent) == agent:
        return agent
    digest = hashlib.sha256(agent.encode("utf-8", "surrogateescape")).hexdigest()
    return f"agent-sha256:{digest[:32]}"


# Headers that change who acts, on whose account, or how the body is read: an approval binds
# them, so a retry that joins it with other credentials or another account is not released.
# Named rather than "all but the volatile ones": SDKs vary other headers on every attempt
# (dates, signatures, retry counts, telemetry, cookies a load balancer rotates), and a retry
# must still join its approval.
BOUND_HEADERS = (
    "authorization", "x-api-key", "api-key", "x-goog-api-key", "stripe-account",
    "stripe-context", "openai-organization", "openai-project", "content-type",
    "content-encoding", "x-http-method-override", "x-http-method", "x-method-override",
)  # fmt: skip
# Schemes whose credentials are the same on every attempt: bound whole.
_STABLE_SCHEMES = frozenset({"bearer", "basic", "token", "bot"})
_KEY_FIELDS = re.compile(r'(?:Credential|oauth_consumer_key|oauth_token)="?([^",\s]+)')


def request_hash(document: Document, key: bytes, *, mcp: bool = False) -> str:
    """Binds an approval to the exact request: method, URL, the request target as sent, how its
    body was read and the body's bytes as sent, agent, and the headers that say whose request it
    is and how its body reads (BOUND_HEADERS). The document is a reading of the request, not the
    request: bytes that are not UTF-8 read as U+FFFD, XML loses its attributes, `%2F` reads as
    `/` and dot segments are resolved, so two requests the upstream tells apart can read alike.
    Their digests (pipeline/document.py: target_sha256, body_sha256) bind what goes upstream:
    an edited request's too, built from the bytes the proxy rewrote and will forward.

    `mcp`: the request was judged as MCP (pipeline/mappings.py judged_as_mcp); only then is the
    JSON-RPC id left out, calling the same tool again being a retry of the same call (a vendor's
    body that merely looks like JSON-RPC keeps it). The bytes differ by the id, so such a body
    binds as parsed, without its id, instead of its digest: the parse is exact for JSON that
    repeats no key (one that does is refused), holds no U+FFFD and no number past a double's
    range; two spellings of one number (1.0e0, 1.00) read as one, as the server's parser reads
    them. A body that fails that binds its bytes, id and all (a retry with another id is held
    anew: the safe side). Keyed (HMAC-SHA256, store/keys.py): without the key, the stored hash
    tells nothing about the credentials or body fields it covers, and guesses of them cannot be
    tested against it.

    The fields are hashed as one JSON array (sorted keys, ASCII, no whitespace), which writes
    each field whole and escaped: no two different field lists give the same text. (Joined by
    newlines, as before, a path holding `\\n{}\\n` and a shorter body read as another path and
    body.) Not RFC 8785 (store/audit.py jcs): it makes large integers and lone surrogates text,
    so 2**60 and "1152921504606846976" would hash alike; only Airlock recomputes this hash."""
    body, digest = _bound_body(document, mcp)
    material = _json_array(
        _FORMAT, document["method"], document["scheme"], document["host"], document["port"],
        document["path"], document["query"], document.get("target_sha256"),
        document.get("body_format"), body, digest, document["agent"],
        _bound_headers(document.get("headers", {})),
        _operation_headers(document.get("headers", {})),
    )  # fmt: skip
    return hmac.new(key, material.encode(), hashlib.sha256).hexdigest()


# The forms before it: former_request_hashes. /3 (2026-12-06): the same array without the
# target's and the body's digests, the body as read.
_FORMAT = "airlock-request-hash/4"
_FORMAT_3 = "airlock-request-hash/3"


def _json_array(*fields: Any, allow_nan: bool = True) -> str:
    return json.dumps(
        list(fields), sort_keys=True, ensure_ascii=True, separators=(",", ":"), allow_nan=allow_nan
    )


def _bound_body(document: Document, mcp: bool) -> tuple[Any, str | None]:
    """(the body as read, its digest as sent): what binds the body. The digest alone where there
    is one; a call judged as MCP whose JSON parses exactly, the body without its id (see
    request_hash); a document built from no bytes (a Guard API call), its body."""
    digest = document.get("body_sha256")
    if mcp and jsonrpc_messages(document) is not None:
        body = without_ids(document["body"])
        return (body, None) if _exact_json(body) else (body, digest)
    return (document["body"], None) if digest is None else (None, digest)


def _exact_json(body: Any) -> bool:
    """The parsed JSON stands for its bytes: no U+FFFD (bytes that were not UTF-8 read as one)
    and no number that overflowed (1e400 and 1e500 both read as infinity)."""
    try:
        return "\\ufffd" not in _json_array(body, allow_nan=False)
    except ValueError:
        return False


def former_request_hashes(document: Document, key: bytes, *, mcp: bool = False) -> tuple[str, ...]:
    """request_hash as earlier Airlocks made it: the JSON array without the target's and body's
    digests, the body as read (/3, from 2026-12-06); its fields joined by newlines: keyed (from
    2026-12-06), unkeyed with the bound headers (2026-12-05), unkeyed without them (earlier).
    Only to join the approvals those Airlocks opened (a store upgraded while some were open, an
    older instance beside this one: decider/core.py _joinable_as_before); never stored.

    Each reads the document, not the request: an approval made that way for one request matches
    another that reads alike (review M3: joined by newlines, a path or text body that holds one
    reads as other fields; any of them: bytes that are not UTF-8, XML attributes, `%2F` and dot
    segments). What bounds that:
    - these forms match only approvals an earlier Airlock made: each begins with its own format
      tag or none (/3's array, request_hash's /4), and the newline-joined texts hold at least
      seven newlines, the arrays none. So: those open when the store was upgraded, until they
      expire or are released, and those of an older instance still running beside this one
      (README: upgrade the instances on one store together);
    - a request those forms could read as another has none (): one with a newline in a field
      joined as text (method, scheme, host, path, text body, agent), with U+FFFD anywhere (bytes
      that were not UTF-8, or may have been), an XML body, a number past a double's range, or
      a path read as another path would be (`%2F`, dot segments, doubled slashes: the
      document's path_rewritten); nor an agent whose name starts like a JSON list (in the
      oldest form it could stand for the headers of the next). It joins only an approval made
      as request_hash makes it, and is otherwise refused or held anew. Any other request reads
      as its fields one way only, so only an approval made for the same fields has it.
    Otherwise a former form binds what it bound (the oldest, not the content type). It leaves
    the JSON-RPC id out only for a request judged as MCP now: a vendor's body those Airlocks
    read as JSON-RPC by its shape no longer joins their approval (refused: the safe side)."""
    if not _read_one_way(document):
        return ()
    bound = _bound_headers(document.get("headers", {}))
    try:
        array = _json_array(
            _FORMAT_3, document["method"], document["scheme"], document["host"],
            document["port"], document["path"], document["query"], document.get("body_format"),
            _parsed_body(document, mcp), document["agent"], bound, allow_nan=False,
        )  # fmt: skip
    except ValueError:  # a number past a double's range: read as another would be
        return ()
    if "\\ufffd" in array:
        return ()
    with_headers = _newline_joined(document, json.dumps(bound), mcp)
    return (
        hmac.new(key, array.encode(), hashlib.sha256).hexdigest(),
        hmac.new(key, with_headers, hashlib.sha256).hexdigest(),
        hashlib.sha256(with_headers).hexdigest(),
        hashlib.sha256(_newline_joined(document, None, mcp)).hexdigest(),
    )


def _parsed_body(document: Document, mcp: bool) -> Any:
    """The body as the former forms bound it: as read, without the JSON-RPC id if judged MCP."""
    body = document["body"]
    if mcp and jsonrpc_messages(document) is not None:
        return without_ids(body)
    return body


def _read_one_way(document: Document) -> bool:
    body = document["body"]
    joined = (document["method"], document["scheme"], document["host"], document["path"],
              body if isinstance(body, str) else "", document["agent"])  # fmt: skip
    return (
        not any("\n" in field for field in joined)
        and not document["agent"].startswith("[")
        and document.get("body_format") != "xml"
        and not document.get("path_rewritten")
    )


def _newline_joined(document: Document, headers: str | None, mcp: bool) -> bytes:
    """What a former form hashed (former_request_hashes), as those Airlocks wrote it."""
    body = _parsed_body(document, mcp)
    normalised = body if isinstance(body, str) else json.dumps(body, sort_keys=True)
    query = json.dumps(document["query"], sort_keys=True)
    return "\n".join(
        [
            document["method"],
            document["scheme"],
            document["host"],
            str(document["port"]),
            document["path"],
            query,
            normalised or "",
            document["agent"],
            *([] if headers is None else [headers]),
        ]
    ).encode("utf-8", "surrogatepass")  # those Airlocks failed on lone surrogates: any form does


# Headers that choose the operation or what it does, besides the URL and body: X-Amz-Target
# (KMS CancelKeyDeletion and ScheduleKeyDeletion send the same body), MCP's method and tool, S3's
# x-amz-acl, x-amz-copy-source and the like. What changes between an SDK's attempts is left out.
_OPERATION_HEADERS = ("mcp-method", "mcp-name")
_ATTEMPT_HEADERS = frozenset(
    {"x-amz-date", "x-amz-security-token", "x-amz-content-sha256", "x-amz-user-agent"}
)


def _operation_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
    """Bound in the current form only: the forms before it did not, and an approval they made
    is matched as they made it (former_request_hashes)."""
    return sorted(
        (name, value)
        for name, value in headers.items()
        if name in _OPERATION_HEADERS
        or (name.startswith("x-amz-") and name not in _ATTEMPT_HEADERS)
    )


def _bound_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
    bound = []
    for name in BOUND_HEADERS:
        value = headers.get(name)
        if value is not None:
            bound.append((name, _credential_of(value) if name == "authorization" else value))
    return bound


def _credential_of(authorization: str) -> str:
    """Whose credential an Authorization header carries, without what each attempt signs anew:
    Bearer, Basic and the like whole; of a signature scheme its key (AWS SigV4/SigV4a: the
    access key, region and service, not the date; OAuth 1.0a: consumer key and token; Azure
    SharedKey: the account); of a scheme Airlock does not know, only its name."""
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() in _STABLE_SCHEMES or not rest:
        return authorization
    if scheme.lower().startswith("sharedkey"):
        return f"{scheme} {rest.partition(':')[0]}"
    keys = _KEY_FIELDS.findall(rest)
    if scheme.startswith("AWS4-"):  # Credential=KEY/DATE/REGION/SERVICE/aws4_request
        keys = [re.sub(r"/\d{8}/", "/", key) for key in keys]
    return " ".join([scheme, *keys])


def capped(value: Any) -> Any:
    """What a record keeps of a param: policies decided on the whole value; the store keeps a
    string over MAX_STORED_TEXT as its start, length and hash, and a list or an object over
    MAX_STORED_ITEMS as its first items and a count (a 50 MB param once grew the store by
    299 MB)."""
    return value if _fits(value) else _texts_capped(pruned(value))


def _fits(value: Any, items: int = MAX_STORED_ITEMS) -> bool:
    """capped(value) would be value itself: true of nearly every request, found by one walk
    that copies nothing (pruned and _texts_capped copy all they walk: a third of run_row)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if len(node) > MAX_STORED_TEXT:
                return False
        elif isinstance(node, dict):
            if len(node) > items:
                return False
            stack.extend(node.values())
        elif isinstance(node, list):
            if len(node) > items:
                return False
            stack.extend(node)
    return True


def _stored(value: Any, secrets: list[str]) -> Any:
    """A param or the context as recorded: cut to size (lists and objects before redacting,
    texts after: see pruned), redacted, and without what the vendor marks sensitive."""
    if not _fits(value):
        value = pruned(value)  # its lists and objects end with a note: one item over the cut
    redacted = scrub(redact_value(value), secrets)
    return redacted if _fits(redacted, MAX_STORED_ITEMS + 1) else _texts_capped(redacted)


def pruned(value: Any) -> Any:
    """capped's cut of lists and objects alone: taken before redacting, which then walks only
    what is stored (40,000 tool arguments took 1.1 s). Strings are cut after: cut first, a
    secret split in two could be missed."""
    if isinstance(value, dict):
        if len(value) <= MAX_STORED_ITEMS:
            return {key: pruned(item) for key, item in value.items()}
        kept = {key: pruned(value[key]) for key in itertools.islice(value, MAX_STORED_ITEMS)}
        kept["…"] = f"[{len(value) - MAX_STORED_ITEMS} more keys, {len(value)} in all]"
        return kept
    if isinstance(value, list):
        kept_items = [pruned(item) for item in value[:MAX_STORED_ITEMS]]
        if len(value) > MAX_STORED_ITEMS:
            kept_items.append(
                f"… [{len(value) - MAX_STORED_ITEMS} more items, {len(value)} in all]"
            )
        return kept_items
    return value


def _texts_capped(value: Any) -> Any:
    if isinstance(value, str):
        if len(value) <= MAX_STORED_TEXT:
            return value
        digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
        return f"{value[:256]}… [{len(value)} characters, sha256 {digest}]"
    if isinstance(value, dict):
        return {key: _texts_capped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_texts_capped(item) for item in value]
    return value


def _risk_factors(evaluation: Evaluation, secrets: list[str]) -> Any:
    """Redacted like the rest: their details quote the action, the target and the agent, which
    a request names (an MCP tool called `fetch_sk_live_…` was stored as sent; found by review)."""
    if evaluation.risk is None:
        return None
    return scrub(redact_value(evaluation.risk.as_json()), secrets)


def run_row(
    run_id: str, instance: str, document: Document, evaluation: Evaluation, decision_ms: float,
    config_hash: str | None = None, known_agents: Container[str] = (),
) -> RunRecord:  # fmt: skip
    """The run record of a decision, redacted. The agent's name too, unless the agents file
    knows it (`known_agents`): without an agents file it is whatever the proxy credentials
    said, and a client that put its key where the name goes would have it stored."""
    action, verdict = evaluation.action, evaluation.verdict
    if document["body_size"] > MAX_STORED_BODY:  # not stored, so not worth redacting
        document = {**document, "body": f"[body of {document['body_size']} bytes not stored]"}
    stored = redact_document(document)
    # What the vendor's API description marks sensitive (an SSM SecureString's Value), out of
    # the stored request, and its values out of whatever else carries them (params, target).
    # After redact_document: what it left is what is looked for (the same text, redacted the
    # same way, in params), and it reads no "[REDACTED]" (a text starting '[' it tries as JSON).
    sensitive, secrets = members_of(action.operation), []
    if sensitive is not None:
        stored, secrets = sensitive.redact(stored)
    stored = capped(stored)  # overlong headers or paths too
    agent = document["agent"]
    if agent not in known_agents:
        agent = stored["agent"] = redact_text(agent)
    return RunRecord(
        id=run_id,
        at=time.time(),
        instance=instance,
        agent=agent,
        method=document["method"],
        host=redact_text(document["host"]),
        path=stored["path"],
        # A Guard API call names its own provider and tool: text from the caller, redacted.
        # Cut first (as a refusal records them; mapping refuses longer ones): redacting is
        # the decider's time, in proportion to the text, and every agent waits for it.
        provider=redact_text(shortened(action.provider, MAX_NAME)),
        action=redact_text(shortened(action.action, MAX_TARGET)),
        category=action.category,
        sensitivity=action.sensitivity,
        target=scrub(redact_text(shortened(action.target, MAX_TARGET)), secrets),
        mapping_id=action.mapping_id,
        operation=action.operation,
        params=_stored(action.params, secrets),
        context=_stored(action.context, secrets),
        # stored: no secret either
        undo=scrub(redact_value(action.undo), secrets) if action.undo else None,
        request=stored,
        decision=verdict.decision,
        reason=scrub(redact_text(verdict.reason), secrets),
        rules=list(verdict.rules),
        risk=evaluation.risk.score if evaluation.risk else None,
        risk_factors=_risk_factors(evaluation, secrets),
        shadow_decision=verdict.shadow.decision if verdict.shadow else None,
        shadow_rules=list(verdict.shadow.rules) if verdict.shadow else None,
        error=scrub(redact_text(evaluation.error), secrets) if evaluation.error else None,
        decision_ms=decision_ms,
        config_hash=config_hash,
    )
