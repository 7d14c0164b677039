"""`airlock runs show ID` and `airlock undo ID`: one run as an auditor wants it (the request as
recorded, redacted; the decision and why; approvals and votes; what the upstream answered and
the identifiers it returned; how to undo it), and the compensating request, printed or sent
through the proxy with the operator's own credentials (read from the environment, never
stored), decided by policy and recorded as the undo of the run."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from airlock.console.redacted import hidden_warning
from airlock.console.untrusted import cut, escaped, query_text, visible
from airlock.pipeline.document import normalise_host
from airlock.pipeline.mappings import MappingIndex
from airlock.pipeline.undo import CannotUndo, UndoPlan, form_fields, plan_undo, undo_link
from airlock.store.runs import RunView

UNDO_OF = "X-Airlock-Undo-Of"  # read by the proxy: the new run records the run it undoes
CARRIED_OUT = ("forwarded", "ambiguous", "unknown")
BODY_SHOWN = 2000  # characters of the recorded body printed; `runs show --json` has all of it


def undo_plan(view: RunView, mappings: MappingIndex) -> UndoPlan:
    """The compensating request for a run, or CannotUndo saying why there is none."""
    run = view.run
    if run["outcome"] not in CARRIED_OUT or (run["status"] or 200) >= 300:
        raise CannotUndo(f"it was not carried out (outcome {run['outcome'] or 'none yet'}, "
                         f"status {run['status']})")  # fmt: skip
    mapping = mappings.by_id.get(run["mapping_id"] or "")
    if mapping is None:
        raise CannotUndo("no mapping in use describes it (its action was derived or generic)")
    detail = run.get("outcome_detail") or {}
    values = {**(run["context"] or {}), **(run["params"] or {}), **(detail.get("ids") or {})}
    for key in ("prior", "prior_unread", "prior_error"):  # what the write replaced
        if key in detail:
            values[key] = detail[key]
    return plan_undo(mapping.undo_spec, values)


# --- showing ---------------------------------------------------------------------------------


def show_run(console: Console, view: RunView, mappings: MappingIndex) -> None:
    run = view.run
    request = run["request"] or {}
    console.print(f"[bold]Run {run['id']}[/]  {_when(run['at'])}  agent {escaped(run['agent'])}")
    console.print(f"  {escaped(run['action'])} → {escaped(run['target'])}  "
                  f"({escaped(run['provider'])}, {run['category']}, "
                  f"{run['sensitivity']})")  # fmt: skip
    if run["operation"]:
        console.print(f"  operation {run['operation']}  mapping {run['mapping_id'] or '—'}")
    _section(console, "Request (as recorded, redacted)")
    if warning := hidden_warning(request, run["params"], run["target"], run["context"]):
        console.print(f"  {warning}", style="yellow", markup=False)
    console.print("  " + visible(f"{request.get('method')} {request.get('scheme')}://"
                                 f"{request.get('host')}{request.get('path')}")
                  + query_text(request.get("query")), markup=False)  # fmt: skip
    for name, value in (request.get("headers") or {}).items():
        console.print(f"  {visible(name)}: {visible(value)}", markup=False)
    if request.get("body") is not None:
        body = json.dumps(request["body"], default=str)
        console.print("  " + cut(body, BODY_SHOWN), markup=False)
    _section(console, "Decision")
    console.print(f"  {run['decision']}: {escaped(run['reason'])}")
    console.print(f"  rules: {', '.join(run['rules']) or 'none'}   risk {run['risk']}")
    for factor in run["risk_factors"] or []:  # as pipeline/risk.py records them
        points = int(factor.get("points") or 0)
        console.print(f"    {escaped(str(factor.get('factor')))} {points:+d}: "
                      f"{escaped(str(factor.get('detail') or ''))}")  # fmt: skip
    for approval in view.approvals:
        _section(console, f"Approval {approval['id'][:12]}")
        by = f" by {escaped(approval['reviewer'])}" if approval["reviewer"] else ""
        console.print(f"  {approval['state']}{by}: {escaped(approval['reason'] or '')}")
        for vote in approval["votes"]:
            console.print(f"    vote: {escaped(vote['reviewer'])} at {_when(vote['at'])}: "
                          f"{escaped(vote['reason'] or '')}")  # fmt: skip
    _section(console, "Outcome")
    took = f", upstream {run['upstream_ms']:.0f} ms" if run["upstream_ms"] is not None else ""
    console.print(f"  {run['outcome'] or 'none yet'} (status {run['status']}{took})")
    if run.get("outcome_detail"):
        console.print("  " + json.dumps(run["outcome_detail"], default=str), markup=False)
    _section(console, "Undo")
    try:
        print_plan(console, undo_plan(view, mappings), run["id"])
    except CannotUndo as e:
        console.print(f"  cannot be undone: {escaped(str(e))}")
    for other in view.undone_by:
        console.print(f"  undone by run {other['id']} ({escaped(other['action'])}: "
                      f"{other['decision']}, "
                      f"outcome {other['outcome'] or 'none yet'})")  # fmt: skip


def _section(console: Console, title: str) -> None:
    console.print(f"[bold]{title}[/]")


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def print_plan(console: Console, plan: UndoPlan, run_id: str) -> None:
    console.print(f"  {escaped(plan.action)}: {escaped(plan.description)}")
    if plan.aws is not None:
        region = f" (region {plan.aws['region']})" if plan.aws.get("region") else ""
        console.print(f"  AWS {plan.aws['service']} {plan.aws['operation']}{region} "
                      f"{json.dumps(plan.aws.get('params') or {})}", markup=False)  # fmt: skip
        console.print("  signed with your AWS credentials (botocore's: environment, profile)")
    else:
        console.print(f"  {plan.method} {visible(plan.url)}", markup=False)
        if plan.auth:
            header = plan.auth.get("header", "Authorization")
            console.print(f"  {header}: {plan.auth.get('scheme', 'Bearer')} ${plan.auth['env']}",
                          markup=False)  # fmt: skip
        if plan.form:
            console.print(f"  {urllib.parse.urlencode(form_fields(plan.form))}", markup=False)
        if plan.json:
            console.print(f"  {json.dumps(plan.json)}", markup=False)
    console.print(f"  airlock undo {run_id} --execute: sent through Airlock, decided and "
                  "recorded as its undo")  # fmt: skip


# --- sending ---------------------------------------------------------------------------------


class UndoFailed(Exception):
    """The compensating request could not be sent, or was refused (said as is)."""


def proxy_url(proxy: str, agent: str | None, key: str | None) -> str:
    if not agent:
        return proxy
    parts = urllib.parse.urlsplit(proxy)
    credentials = f"{urllib.parse.quote(agent, safe='')}:{urllib.parse.quote(key or '', safe='')}"
    return parts._replace(netloc=f"{credentials}@{parts.netloc}").geturl()


def execute(plan: UndoPlan, run_id: str, proxy: str, ca: Path, key: bytes) -> str:
    """Send the compensating request through Airlock; what Airlock and the upstream said. `key`:
    the proxy's request key, which signs the link to the run undone (pipeline/undo.py)."""
    if plan.aws is not None:
        return _execute_aws(plan.aws, run_id, proxy, ca, key)
    return _execute_http(plan, run_id, proxy, ca, key)


def _link(key: bytes, run_id: str, method: str, url: str, body: bytes) -> str:
    """The signed X-Airlock-Undo-Of for this request as it will be sent (pipeline/undo.py)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    with contextlib.suppress(UnicodeError):  # the proxy sees a name as sent: in IDNA
        host = host.encode("idna").decode("ascii")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return undo_link(key, run_id, method, normalise_host(host), target, body)


def _execute_http(plan: UndoPlan, run_id: str, proxy: str, ca: Path, key: bytes) -> str:
    headers: dict[str, str] = {}
    data = None
    if plan.form is not None:
        data = urllib.parse.urlencode(form_fields(plan.form)).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif plan.json is not None:
        data = json.dumps(plan.json).encode()
        headers["Content-Type"] = "application/json; charset=utf-8"
    method = plan.method or ("POST" if data is not None else "GET")  # as urllib chooses
    headers[UNDO_OF] = _link(key, run_id, method, str(plan.url), data or b"")
    if plan.auth:
        secret = os.environ.get(plan.auth["env"])
        if not secret:
            raise UndoFailed(f"set {plan.auth['env']} to your own credentials for this vendor "
                             "(read from the environment, never stored)")  # fmt: skip
        headers[plan.auth.get("header", "Authorization")] = (
            f"{plan.auth.get('scheme', 'Bearer')} {secret}"
        )
    parts = urllib.parse.urlsplit(proxy)
    if parts.username:  # urllib sends proxy credentials only with a non-empty password
        user = urllib.parse.unquote(parts.username)
        secret = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{secret}".encode()).decode()
        headers["Proxy-Authorization"] = f"Basic {token}"  # urllib moves it to the CONNECT
        proxy = _shown(proxy)
    request = urllib.request.Request(str(plan.url), data, headers, method=method)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": proxy, "http": proxy}),
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(ca))),
    )
    try:
        with opener.open(request, timeout=90) as answer:
            return _said(answer.status, answer.headers, answer.read())
    except urllib.error.HTTPError as e:
        raise UndoFailed(_said(e.code, e.headers, e.read())) from None
    except (urllib.error.URLError, OSError) as e:
        raise UndoFailed(f"could not reach Airlock at {_shown(proxy)}: {e}") from None


def _said(status: int, headers: Any, body: bytes) -> str:
    decision = headers.get("X-Airlock-Decision", "")
    recorded = headers.get("X-Airlock-Request-Id", "")
    text = body.decode("utf-8", "replace")[:500]
    return f"{status} {decision or 'ALLOW'} (recorded as run {recorded or '—'}): {text}"


def _shown(proxy: str) -> str:
    parts = urllib.parse.urlsplit(proxy)
    return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()


def _execute_aws(aws: dict[str, Any], run_id: str, proxy: str, ca: Path, key: bytes) -> str:
    try:
        import botocore.session
        from botocore import xform_name
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise UndoFailed("undoing an AWS operation needs botocore: pip install botocore") from None
    session = botocore.session.get_session()
    client = session.create_client(
        aws["service"],
        region_name=aws.get("region") or None,
        config=Config(proxies={"https": proxy, "http": proxy}, retries={"max_attempts": 1}),
        verify=str(ca),
    )

    def link(request: Any, **_: Any) -> None:  # after signing: the proxy removes it
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        if not isinstance(body, bytes):  # a stream: not what an undo plan sends
            raise UndoFailed("this undo's body is a stream, which Airlock cannot sign")
        request.headers[UNDO_OF] = _link(key, run_id, request.method, request.url, body)

    client.meta.events.register("before-send", link)
    try:
        answer = getattr(client, xform_name(aws["operation"]))(**(aws.get("params") or {}))
    except ClientError as e:
        error = e.response.get("Error", {})
        raise UndoFailed(f"{error.get('Code')}: {error.get('Message')}") from None
    except BotoCoreError as e:
        raise UndoFailed(str(e)) from None
    meta = answer.get("ResponseMetadata", {})
    recorded = (meta.get("HTTPHeaders") or {}).get("x-airlock-request-id", "—")
    return f"{meta.get('HTTPStatusCode')} ALLOW (recorded as run {recorded})"
