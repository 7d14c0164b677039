"""Ask Airlock before a tool runs: the Guard API's client, standard library only.

    @guard("run_shell", target="prod-db", params=lambda cmd: {"command": cmd})
    def run(cmd): ...

    with guard("delete_record", target="customer/cus_1", params={"resource": "customer"}):
        delete_customer("cus_1")

ALLOW runs the code; BLOCK raises Blocked (its reason and rules); REQUIRE_APPROVAL waits for a
reviewer, up to `wait` seconds, then runs the code once (approved), raises Denied, or raises
ApprovalPending with the approval's id. SIMULATED (the agent is on trial) never runs the code: a
decorated function returns `simulated` instead (a value, or a callable given the function's
arguments; default None), and a `with` block raises Simulated before its body. What the code did
(returned, or raised) is recorded on Airlock's record of the call. Fails closed: if Airlock
cannot be reached or cannot decide, the code does not run (Unavailable).

Settings: AIRLOCK_GUARD_URL (default http://127.0.0.1:8181), AIRLOCK_AGENT and AIRLOCK_AGENT_KEY
(the agent's name and key from Airlock's agents file; without one, the name alone).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import http.client
import inspect
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = [
    "AirlockError", "ApprovalPending", "Blocked", "Client", "Denied", "Simulated", "Unavailable",
    "guard",
]  # fmt: skip

ALLOW, BLOCK, REQUIRE_APPROVAL = "ALLOW", "BLOCK", "REQUIRE_APPROVAL"
SIMULATED = "SIMULATED"
LONG_POLL = 30.0  # seconds one wait for a reviewer asks Airlock to hold the answer


class AirlockError(Exception):
    """The call was not allowed to run."""


class Unavailable(AirlockError):
    """Airlock could not be reached or could not decide: the call did not run."""


class Blocked(AirlockError):
    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.reason: str = answer.get("reason", "")
        self.rules: list[str] = answer.get("rules", [])
        self.request_id: str | None = answer.get("request_id")
        self.approval_id: str | None = answer.get("approval_id")
        super().__init__(f"Airlock refused {answer.get('action')}: {self.reason}")


class Denied(Blocked):
    """A reviewer denied the call (or its approval expired)."""


class Simulated(AirlockError):
    """The agent is on trial: Airlock recorded the call and what it would have decided; the code
    must not run."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.would: str | None = answer.get("would")
        self.request_id: str | None = answer.get("request_id")
        super().__init__(f"{answer.get('action')} was not run: {answer.get('reason', '')}")


class ApprovalPending(AirlockError):
    def __init__(self, approval_id: str, waited: float) -> None:
        self.approval_id = approval_id
        super().__init__(
            f"approval {approval_id} still pending after {waited:.0f} s: a reviewer must "
            f"approve it (airlock approve {approval_id[:8]}); call again to keep waiting"
        )


@dataclass
class Client:
    url: str = field(default_factory=lambda: os.environ.get(
        "AIRLOCK_GUARD_URL", "http://127.0.0.1:8181"))  # fmt: skip
    agent: str | None = field(default_factory=lambda: os.environ.get("AIRLOCK_AGENT"))
    key: str | None = field(default_factory=lambda: os.environ.get("AIRLOCK_AGENT_KEY"))
    timeout: float = 10.0  # seconds for Airlock to answer (a long-poll adds its wait)

    def decide(self, call: dict[str, Any]) -> dict[str, Any]:
        return self._send("POST", "/v1/guard", call)

    def approval(self, approval_id: str, wait: float) -> dict[str, Any]:
        return self._send("GET", f"/v1/approvals/{approval_id}?wait={wait:.0f}", None, wait)

    def outcome(self, request_id: str, status: str, detail: str | None = None) -> None:
        body = {"status": status} | ({"detail": detail[:500]} if detail else {})
        self._send("POST", f"/v1/runs/{request_id}/outcome", body)

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None, wait: float = 0.0
    ) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url.rstrip("/") + path, data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.agent:
            token = base64.b64encode(f"{self.agent}:{self.key or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with _opener.open(request, timeout=self.timeout + wait) as answer:
                found = json.loads(answer.read())
        except urllib.error.HTTPError as e:
            return _refusal_or_raise(e)
        # Whatever stands between the agent and an answer (no listener, a port that does not
        # speak HTTP, a URL that does not parse) leaves Airlock unavailable: the call must not run.
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise Unavailable(
                f"Airlock at {self.url} could not be asked: {type(e).__name__}: {e}"
            ) from e
        if not isinstance(found, dict):
            raise Unavailable(
                f"Airlock at {self.url} answered {type(found).__name__}, not an object"
            )
        return found


# Straight to Airlock: never through HTTPS_PROXY or HTTP_PROXY, which may point at Airlock's
# proxy port (and the proxy refuses requests to Airlock itself).
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _refusal_or_raise(error: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        answer = json.loads(error.read())
    except (OSError, ValueError, http.client.HTTPException):  # the body unreadable or not JSON
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    if error.code == 409 and "decision" in answer:
        return dict(answer)  # a refusal: an idempotency key reused, a call released already
    message = answer.get("error") or error.reason
    raise Unavailable(f"Airlock answered {error.code}: {message}") from None


class guard:
    """One guarded call: a decorator (sync or async functions) or a context manager (sync or
    async). `target` and `params` may be callables given the decorated function's arguments.
    With `server`, `action` is the name of one of that server's tools (an MCP tool, a Claude
    Code tool) and Airlock's mappings name the action, as they do for MCP over HTTP."""

    def __init__(
        self,
        action: str,
        target: str | Callable[..., str] = "",
        params: dict[str, Any] | Callable[..., dict[str, Any]] | None = None,
        *,
        provider: str | None = None,
        context: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        wait: float = 60.0,
        client: Client | None = None,
        server: str | None = None,
        simulated: Any = None,
    ) -> None:
        self.action, self.target, self.params = action, target, params
        self.simulated = simulated  # what a decorated function returns on trial
        self.server = server
        self.provider, self.context = provider, context
        self.idempotency_key = idempotency_key
        self.wait = wait
        self.client = client or Client()
        self.answer: dict[str, Any] | None = None  # the decision that let the call run

    # --- deciding ----------------------------------------------------------------------------

    def admit(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Ask, and wait for a reviewer when one is needed; the ALLOW answer, or raises."""
        call = self._call(args, kwargs)
        answer = self.client.decide(call)
        started = time.monotonic()
        while answer.get("decision") == REQUIRE_APPROVAL:
            approval_id = answer["approval_id"]
            left = self.wait - (time.monotonic() - started)
            if left <= 0:
                raise ApprovalPending(approval_id, self.wait)
            state = self.client.approval(approval_id, min(left, LONG_POLL)).get("state")
            if state in ("EXPIRED", "ABANDONED"):
                raise Denied({**answer, "reason": f"the approval {state.lower()}"})
            if state != "PENDING":
                answer = self.client.decide(call)  # the same key: joins, released once
        if answer.get("decision") == SIMULATED:
            raise Simulated(answer)
        if answer.get("decision") != ALLOW:
            raise (Denied if answer.get("approval_id") else Blocked)(answer)
        self.answer = answer
        return answer

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        target = self.target(*args, **kwargs) if callable(self.target) else self.target
        params = self.params(*args, **kwargs) if callable(self.params) else self.params
        call: dict[str, Any] = {
            "action": self.action, "target": target, "params": params or {},
            # One key per call: its retries (after a reviewer's answer) join its approval.
            "idempotency_key": self.idempotency_key or uuid.uuid4().hex,
        }  # fmt: skip
        if self.server:
            call["tool"], call["server"] = call.pop("action"), self.server
        if self.provider:
            call["provider"] = self.provider
        if self.context:
            call["context"] = self.context
        return call

    def record(self, error: BaseException | None) -> None:
        """What the call did, on Airlock's record (best effort: the call has already run)."""
        if self.answer is None:
            return
        status = "succeeded" if error is None else "failed"
        detail = None if error is None else f"{type(error).__name__}: {error}"
        if isinstance(error, GeneratorExit):
            detail = "GeneratorExit: closed by its caller before it finished"
        with contextlib.suppress(AirlockError):
            self.client.outcome(self.answer["request_id"], status, detail)

    # --- context manager ---------------------------------------------------------------------

    def __enter__(self) -> guard:
        self.admit()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None
    ) -> None:
        self.record(error)

    async def __aenter__(self) -> guard:
        await asyncio.to_thread(self.admit)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.record, error)

    # --- decorator ---------------------------------------------------------------------------

    def __call__(self, function: Callable[..., Any]) -> Callable[..., Any]:
        # A generator's body runs as it is iterated, after the call returns: its outcome is
        # known once it is exhausted or fails, and it is admitted when first iterated.
        if inspect.isasyncgenfunction(function):
            return self._async_generator(function)
        if inspect.isgeneratorfunction(function):
            return self._generator(function)
        if _is_async(function):
            return self._coroutine(function)
        return self._function(function)

    def _function(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            once = self._fresh()
            try:
                once.admit(*args, **kwargs)
            except Simulated:
                return once.stand_in(args, kwargs)
            try:
                result = function(*args, **kwargs)
            except BaseException as e:
                once.record(e)
                raise
            # What runs later (an awaitable, a generator) is recorded when it has run.
            if inspect.isawaitable(result):
                return once._recorded_awaitable(lambda: result)
            if inspect.isgenerator(result):
                return once._recorded_items(lambda: result)
            if inspect.isasyncgen(result):
                return once._recorded_async_items(lambda: result)
            once.record(None)
            return result

        return guarded

    def _coroutine(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            once = self._fresh()
            try:
                await asyncio.to_thread(once.admit, *args, **kwargs)
            except Simulated:
                return once.stand_in(args, kwargs)
            return await once._recorded_awaitable(lambda: function(*args, **kwargs))

        return guarded_async

    def _generator(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def guarded_generator(*args: Any, **kwargs: Any) -> Any:
            once = self._fresh()
            try:
                once.admit(*args, **kwargs)
            except Simulated:
                yield from once.stand_in(args, kwargs) or ()
                return None
            return (yield from once._recorded_items(lambda: function(*args, **kwargs)))

        return guarded_generator

    def _async_generator(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        async def guarded_async_generator(*args: Any, **kwargs: Any) -> Any:
            once = self._fresh()
            try:
                await asyncio.to_thread(once.admit, *args, **kwargs)
            except Simulated:
                for item in once.stand_in(args, kwargs) or ():
                    yield item
                return
            recorded = once._recorded_async_items(lambda: function(*args, **kwargs))
            async with contextlib.aclosing(recorded):  # closed early: the body is closed too
                async for item in recorded:
                    yield item

        return guarded_async_generator

    # Each takes what starts the code: a call that raises at once is recorded as failed too.
    async def _recorded_awaitable(self, start: Callable[[], Any]) -> Any:
        try:
            value = await start()
        except BaseException as e:
            await asyncio.to_thread(self.record, e)
            raise
        await asyncio.to_thread(self.record, None)
        return value

    def _recorded_items(
        self, start: Callable[[], Generator[Any, Any, Any]]
    ) -> Generator[Any, Any, Any]:
        try:
            result = yield from start()  # send, throw and close reach the body as they would
        except BaseException as e:  # GeneratorExit: closed by its caller before it finished
            self.record(e)
            raise
        self.record(None)
        return result

    async def _recorded_async_items(self, start: Callable[[], AsyncGenerator[Any, Any]]) -> Any:
        try:
            items = start()
            async with contextlib.aclosing(items):
                async for item in items:
                    yield item
        except BaseException as e:
            await asyncio.to_thread(self.record, e)
            raise
        await asyncio.to_thread(self.record, None)

    def stand_in(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """What a decorated function returns when it is on trial and not run."""
        return self.simulated(*args, **kwargs) if callable(self.simulated) else self.simulated

    def _fresh(self) -> guard:
        """Each call of a decorated function is its own guarded call (its own key)."""
        return guard(
            self.action, self.target, self.params, provider=self.provider,
            context=self.context, idempotency_key=self.idempotency_key, wait=self.wait,
            client=self.client, server=self.server, simulated=self.simulated,
        )  # fmt: skip


def _is_async(function: Callable[..., Any]) -> bool:
    """A coroutine function, or an object whose __call__ is one (a partial of one is too)."""
    call = type(function).__call__
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call)
