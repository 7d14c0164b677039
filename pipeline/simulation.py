"""Simulation: writes decided and recorded but never forwarded, answered by Airlock in the
vendor's own format, echoing the request's values, so the agent's SDK parses the answer and
the agent carries on as if the write had happened.

An agent or role with `simulate: true` (agents file), `airlock run --mode simulate`, or a rule
with `decision: SIMULATE` puts writes in simulation; reads still go to the real upstream, and
model calls (category inference) too unless a rule simulates them. A simulated write is still
judged: one the policies would block is refused as blocked; one that would need approval is
recorded "would need approval" and answered as a success. It is recorded as SIMULATED with the
decision it would have had (shadow_decision) and the synthetic answer as its outcome.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, replace
from email.utils import formatdate
from functools import cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from airlock.pipeline.evaluation import Evaluation
from airlock.pipeline.mcp import JSONRPC, TOOLS_CALL
from airlock.pipeline.operations import DEFAULT_CATALOG
from airlock.pipeline.policies import BLOCK, REQUIRE_APPROVAL, SIMULATE, Shadow, Verdict
from airlock.pipeline.run_record import SIMULATE_MODE, SIMULATED

__all__ = ["SIMULATE", "SIMULATED", "SIMULATE_MODE", "simulated", "synthetic_response"]
NOT_WRITES = ("read", "inference")  # forwarded even in simulation (unless a rule says SIMULATE)
NOTE = "simulated by Airlock: nothing was sent"


def simulated(evaluation: Evaluation, simulating: bool) -> Evaluation:
    """The evaluation of a write in simulation: SIMULATED, with what it would have been."""
    verdict = evaluation.verdict
    by_rule = bool(verdict.simulate)
    if evaluation.error or not (simulating or by_rule):
        return evaluation  # a failed stage blocks, simulation or not: nothing unjudged
    if evaluation.action.category in NOT_WRITES and not by_rule:
        return evaluation
    would = verdict.decision
    if would == REQUIRE_APPROVAL and verdict.hold_in_simulation:  # the rule says: ask anyway
        action = evaluation.action
        held = replace(verdict, reason=f"simulated, held as its rule asks: {verdict.reason}")
        context = {**action.context, "simulated": True}
        return replace(evaluation, verdict=held, action=replace(action, context=context))
    said = "would be blocked" if would == BLOCK else f"would be {would}"
    return replace(
        evaluation,
        verdict=Verdict(
            SIMULATED,
            f"simulated ({said}: {verdict.reason})",
            verdict.rules + verdict.simulate,
            shadow=Shadow(would, verdict.reason, verdict.rules),
        ),
    )


# --- answers in the vendor's own format --------------------------------------------------------


@dataclass(frozen=True)
class Synthetic:
    status: int
    headers: dict[str, str]
    body: bytes

    def shown(self) -> Any:
        """What the run keeps of it: the JSON, or the start of the text."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return self.body[:2000].decode("utf-8", "replace")


def synthetic_response(document: dict[str, Any], operation: str | None) -> Synthetic:
    """A success answer for this write, as its vendor would give it."""
    host, body = document["host"], document.get("body")
    if isinstance(body, dict) and body.get("jsonrpc") == JSONRPC:
        return _mcp(body)
    if operation and operation.startswith("aws."):
        service, name = operation.split(".", 2)[1:]
        return _aws(service, name, document)
    for suffix, build in _BY_HOST:
        if host == suffix or host.endswith("." + suffix):
            return build(document)
    return _json({"id": f"sim_{_hex(12)}", "simulated": True, "note": NOTE})


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Synthetic:
    return Synthetic(
        status,
        {"Content-Type": "application/json", "X-Airlock-Simulated": "true", **(headers or {})},
        json.dumps(payload).encode(),
    )


def _xml(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Synthetic:
    return Synthetic(
        status,
        {
            "Content-Type": "text/xml;charset=UTF-8",
            "X-Airlock-Simulated": "true",
            **(headers or {}),
        },
        text.encode(),
    )


def _empty(status: int, headers: dict[str, str] | None = None) -> Synthetic:
    return Synthetic(status, {"X-Airlock-Simulated": "true", **(headers or {})}, b"")


def _hex(length: int) -> str:
    return uuid.uuid4().hex[:length]


def _fields(document: dict[str, Any]) -> dict[str, Any]:
    body = document.get("body")
    return body if isinstance(body, dict) else {}


# --- Stripe --------------------------------------------------------------------------------

_STRIPE_PREFIX = {
    "charges": ("ch", "charge"), "refunds": ("re", "refund"), "customers": ("cus", "customer"),
    "payment_intents": ("pi", "payment_intent"), "transfers": ("tr", "transfer"),
    "payouts": ("po", "payout"), "products": ("prod", "product"), "prices": ("price", "price"),
    "subscriptions": ("sub", "subscription"), "invoices": ("in", "invoice"),
    "accounts": ("acct", "account"), "webhook_endpoints": ("we", "webhook_endpoint"),
}  # fmt: skip
_STRIPE_NUMBERS = ("amount", "quantity", "unit_amount", "application_fee_amount")


def _stripe(document: dict[str, Any]) -> Synthetic:
    parts = [p for p in document["path"].split("/") if p][1:]  # after /v1
    resource = parts[0] if parts else "object"
    prefix, kind = _STRIPE_PREFIX.get(resource, (resource[:4], resource.rstrip("s")))
    object_id = parts[1] if len(parts) > 1 else f"{prefix}_sim{_hex(20)}"
    if document["method"] == "DELETE":
        return _json({"id": object_id, "object": kind, "deleted": True})
    echo = {key: _stripe_value(key, value) for key, value in _fields(document).items()}
    payload: dict[str, Any] = {
        **echo, "id": object_id, "object": kind, "livemode": False, "created": int(time.time()),
        "metadata": echo.get("metadata", {}),
    }  # fmt: skip
    if kind == "charge":
        payload |= {"status": "succeeded", "paid": True, "captured": True, "refunded": False}
    if kind == "refund":
        payload |= {"status": "succeeded"}
    return _json(payload)


def _stripe_value(key: str, value: Any) -> Any:
    numeric = key in _STRIPE_NUMBERS or key.endswith("_amount")
    if numeric and isinstance(value, str) and value.isdigit():
        return int(value)  # forms carry text; Stripe answers numbers
    return value


# --- Slack, GitHub, Twilio, SendGrid, model APIs -----------------------------------------------


def _slack(document: dict[str, Any]) -> Synthetic:
    fields, ts = _fields(document), f"{time.time():.6f}"
    channel = fields.get("channel") or "C0SIMULATED"
    message = {"type": "message", "text": fields.get("text", ""), "ts": ts}
    return _json({"ok": True, "channel": channel, "ts": ts, "message": message})


def _github(document: dict[str, Any]) -> Synthetic:
    method, path = document["method"], document["path"]
    if method == "DELETE":
        return _empty(204)
    if path.endswith("/merge") and method == "PUT":
        return _json(
            {"sha": "0" * 40, "merged": True, "message": "Pull Request successfully merged"}
        )
    number = int(hashlib.sha256(uuid.uuid4().bytes).hexdigest()[:8], 16)
    url = f"https://api.github.com{path}"
    echo = {**_fields(document), "id": number, "node_id": f"SIM_{_hex(12)}", "url": url}
    return _json(echo, 201 if method == "POST" else 200)


def _twilio(document: dict[str, Any]) -> Synthetic:
    fields, path = _fields(document), document["path"]
    kind = "SM" if path.endswith("/Messages.json") else "CA" if "/Calls" in path else "XX"
    account = path.split("/Accounts/")[1].split("/")[0] if "/Accounts/" in path else ""
    return _json(
        {
            "sid": kind + _hex(32), "account_sid": account, "to": fields.get("To"),
            "from": fields.get("From"), "body": fields.get("Body"), "status": "queued",
            "direction": "outbound-api", "num_segments": "1",
            "date_created": formatdate(usegmt=True), "uri": path,
        },
        201,
    )  # fmt: skip


def _sendgrid(document: dict[str, Any]) -> Synthetic:
    return _empty(202, {"X-Message-Id": f"sim{_hex(22)}"})


def _openai(document: dict[str, Any]) -> Synthetic:
    fields = _fields(document)
    if document["path"].endswith("/chat/completions"):
        message = {"role": "assistant", "content": f"({NOTE})"}
        return _json({
            "id": f"chatcmpl-sim{_hex(12)}", "object": "chat.completion",
            "created": int(time.time()), "model": fields.get("model", "simulated"),
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        })  # fmt: skip
    return _json({"id": f"sim-{_hex(16)}", "object": "simulated", "created": int(time.time())})


def _anthropic(document: dict[str, Any]) -> Synthetic:
    fields = _fields(document)
    return _json({
        "id": f"msg_sim{_hex(16)}", "type": "message", "role": "assistant",
        "model": fields.get("model", "simulated"),
        "content": [{"type": "text", "text": f"({NOTE})"}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    })  # fmt: skip


_BY_HOST = (
    ("api.stripe.com", _stripe),
    ("slack.com", _slack),
    ("api.github.com", _github),
    ("api.twilio.com", _twilio),
    ("api.sendgrid.com", _sendgrid),
    ("api.openai.com", _openai),
    ("api.anthropic.com", _anthropic),
)


def _mcp(message: dict[str, Any]) -> Synthetic:
    if message.get("method") != TOOLS_CALL or "id" not in message:
        return _empty(202)
    result = {"content": [{"type": "text", "text": f"({NOTE})"}], "isError": False,
              "resultType": "complete"}  # fmt: skip
    return _json({"jsonrpc": JSONRPC, "id": message["id"], "result": result})


# --- AWS, by the protocol its service speaks ---------------------------------------------------


@dataclass(frozen=True)
class AwsService:
    protocol: str
    answers: dict[str, tuple[dict[str, Any] | None, str | None]]  # op → (skeleton, wrapper)


@cache
def aws_services(catalog: Path = DEFAULT_CATALOG) -> dict[str, AwsService]:
    """Each catalog service's protocol and its writes' answer skeletons (console/catalog_build.py
    cuts them from botocore's output shapes: required and identifying members)."""
    found = {}
    for path in sorted((catalog / "aws").glob("*.json")):
        service = json.loads(path.read_text())
        answers = {
            op["name"]: (op.get("answer"), op.get("result"))
            for op in service["operations"]
            if op.get("write")
        }
        found[service["service"]] = AwsService(service["protocol"], answers)
    return found


def _aws(service: str, operation: str, document: dict[str, Any]) -> Synthetic:
    known = aws_services().get(service)
    protocol = known.protocol if known else "json"
    if protocol == "ec2" and operation in _EC2_INSTANCES:
        return _ec2(operation, document)
    if protocol == "rest-xml" and operation in ("DeleteObject", "DeleteBucket", "DeleteObjects"):
        return _s3(operation, document)
    if service == "lambda" and operation == "Invoke":
        return _json({"simulated": True, "note": NOTE})
    skeleton, wrapper = known.answers.get(operation, (None, None)) if known else (None, None)
    return shaped_answer(service, protocol, operation, skeleton, wrapper, _fields(document))


# --- an answer from the operation's output shape (its skeleton in the catalog) -----------------

_XML_PROTOCOLS = ("query", "ec2", "rest-xml")


def shaped_answer(
    service: str, protocol: str, operation: str, skeleton: dict[str, Any] | None,
    wrapper: str | None, echo: dict[str, Any],
) -> Synthetic:  # fmt: skip
    """The output's required and identifying members, each echoing the request's value of the
    same name where it has one (UserName, FunctionName, TableName), else a made-up id, ARN or
    time; in the service's protocol."""
    members = (skeleton or {}).get("m", {})
    headers = {
        child["h"]: str(_scalar(name, child["k"], echo, service, protocol))
        for name, child in members.items()
        if "h" in child and child["k"] != "o"
    }
    body_members = {name: child for name, child in members.items() if "h" not in child}
    if protocol not in _XML_PROTOCOLS:
        payload = {name: _json_value(name, child, echo, service, protocol)
                   for name, child in body_members.items()}  # fmt: skip
        return _json(payload, headers=headers)
    inner = "".join(
        _xml_element(name, child, echo, service, protocol) for name, child in body_members.items()
    )
    request_id = f"<requestId>{_request_id()}</requestId>" if protocol == "ec2" else ""
    if protocol == "query":
        inner = f"<{wrapper or operation + 'Result'}>{inner}</{wrapper or operation + 'Result'}>"
        meta = f"<ResponseMetadata><RequestId>{_request_id()}</RequestId></ResponseMetadata>"
        return _xml(f"<{operation}Response>{inner}{meta}</{operation}Response>")
    if protocol == "rest-xml" and not inner:
        return _empty(200, headers | {"x-amz-request-id": _hex(16).upper()})
    return _xml(f"<{operation}Response>{request_id}{inner}</{operation}Response>", headers=headers)


def _json_value(
    name: str, node: dict[str, Any], echo: Any, service: str, protocol: str, parent: str = ""
) -> Any:
    own = echo.get(name) if isinstance(echo, dict) else None
    if node["k"] == "o":
        nested = own if isinstance(own, dict) else echo
        return {m: _json_value(m, child, nested, service, protocol, name)
                for m, child in node["m"].items() if "h" not in child}  # fmt: skip
    if node["k"] == "l":
        return [_json_value(name, node["i"], echo, service, protocol, parent)]
    return _scalar(name, node["k"], echo, service, protocol, parent)


def _xml_element(
    name: str, node: dict[str, Any], echo: Any, service: str, protocol: str, parent: str = ""
) -> str:
    tag = node.get("w", name)
    own = echo.get(name) if isinstance(echo, dict) else None
    if node["k"] == "o":
        nested = own if isinstance(own, dict) else echo
        children = [(m, child) for m, child in node["m"].items() if "h" not in child]
        inner = "".join(_xml_element(m, c, nested, service, protocol, name) for m, c in children)
        return f"<{tag}>{inner}</{tag}>"
    if node["k"] == "l":
        item = _xml_element(node.get("iw", "member"), node["i"], echo, service, protocol, parent)
        return (
            item.replace(f"<{node.get('iw', 'member')}>", f"<{tag}>", 1)
            if node.get("flat")
            else f"<{tag}>{item}</{tag}>"
        )
    value = _scalar(name, node["k"], echo, service, protocol, parent)
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return f"<{tag}>{escape(text)}</{tag}>"


def _scalar(name: str, kind: str, echo: Any, service: str, protocol: str, parent: str = "") -> Any:
    own = echo.get(name) if isinstance(echo, dict) else None
    if kind == "t":
        now = time.time()
        return now if protocol == "json" else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    if kind == "b":
        return str(own).lower() == "true" if own is not None else True
    if kind in ("i", "f"):
        try:
            return (int if kind == "i" else float)(own) if own is not None else 0
        except (TypeError, ValueError):
            return 0
    if isinstance(own, str | int | float) and not isinstance(own, bool):
        return str(own)
    if name == "ETag":
        return '"' + hashlib.md5(uuid.uuid4().bytes, usedforsecurity=False).hexdigest() + '"'
    label = _label(echo, parent)
    if name.endswith("Arn"):
        resource = f"{parent.lower()}/" if parent else ""
        return f"arn:aws:{service}:us-east-1:000000000000:{resource}{label}"
    if name.endswith("Url"):
        return f"https://{service}.us-east-1.amazonaws.com/000000000000/{label}"
    if name.endswith(("Id", "Key")):
        return f"sim-{_hex(17)}"
    return label


def _request_id() -> str:
    return str(uuid.uuid4())


def _label(echo: Any, parent: str) -> str:
    """What an ARN or URL ends with: the request's name for the thing (RoleName, Name)."""
    if not isinstance(echo, dict):
        return "simulated"
    for key in (f"{parent}Name", "Name"):
        if isinstance(echo.get(key), str):
            return echo[key]
    named = [v for k, v in echo.items() if k.endswith("Name") and isinstance(v, str)]
    return named[0] if named else "simulated"


_EC2_INSTANCES = ("RunInstances", "TerminateInstances", "StopInstances", "StartInstances")


def _ec2(operation: str, document: dict[str, Any]) -> Synthetic:
    fields, ns = _fields(document), "http://ec2.amazonaws.com/doc/2016-11-15/"
    head = f'<{operation}Response xmlns="{ns}"><requestId>{_request_id()}</requestId>'
    if operation == "RunInstances":
        count = int(str(fields.get("MaxCount", "1")) or 1)
        launched = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        image = escape(str(fields.get("ImageId", "")))
        kind = escape(str(fields.get("InstanceType", "m1.small")))
        items = "".join(
            f"<item><instanceId>i-{_hex(17)}</instanceId><imageId>{image}</imageId>"
            "<instanceState><code>0</code><name>pending</name></instanceState>"
            f"<instanceType>{kind}</instanceType><amiLaunchIndex>{i}</amiLaunchIndex>"
            f"<launchTime>{launched}</launchTime></item>"
            for i in range(max(1, count))
        )
        return _xml(
            f"{head}<reservationId>r-{_hex(17)}</reservationId><ownerId>000000000000</ownerId>"
            f"<groupSet/><instancesSet>{items}</instancesSet></{operation}Response>"
        )
    if operation in ("TerminateInstances", "StopInstances", "StartInstances"):
        state = {"TerminateInstances": (32, "shutting-down"), "StopInstances": (64, "stopping"),
                 "StartInstances": (0, "pending")}[operation]  # fmt: skip
        ids = fields.get("InstanceId") or []
        ids = ids if isinstance(ids, list) else [ids]
        items = "".join(
            f"<item><instanceId>{escape(str(i))}</instanceId><currentState><code>{state[0]}"
            f"</code><name>{state[1]}</name></currentState><previousState><code>16</code>"
            f"<name>running</name></previousState></item>"
            for i in ids
        )
        return _xml(f"{head}<instancesSet>{items}</instancesSet></{operation}Response>")
    return _xml(f"{head}<return>true</return></{operation}Response>")


def _s3(operation: str, document: dict[str, Any]) -> Synthetic:
    if operation in ("DeleteObject", "DeleteBucket"):
        return _empty(204)
    if operation == "DeleteObjects":
        keys = _keys(_fields(document))
        deleted = "".join(f"<Deleted><Key>{escape(str(k))}</Key></Deleted>" for k in keys)
        return _xml(
            '<?xml version="1.0" encoding="UTF-8"?><DeleteResult '
            f'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{deleted}</DeleteResult>'
        )
    etag = '"' + hashlib.md5(uuid.uuid4().bytes, usedforsecurity=False).hexdigest() + '"'
    return _empty(200, {"ETag": etag, "x-amz-request-id": _hex(16).upper()})


def _keys(fields: dict[str, Any]) -> list[Any]:
    objects = (
        (fields.get("Delete") or {}).get("Object")
        if isinstance(fields.get("Delete"), dict)
        else None
    )
    objects = objects if isinstance(objects, list) else [objects] if objects else []
    return [o.get("Key") for o in objects if isinstance(o, dict)]
