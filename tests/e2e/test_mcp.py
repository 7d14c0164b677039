"""MCP tool calls through the proxy, as the official `mcp` SDK makes them over streamable HTTP:
an MCP server (the SDK's own, over TLS) reached by the SDK's client with HTTPS_PROXY and
Airlock's CA. Each tool call is judged on its arguments; what the model is handed says why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airlock.console.standins import Upstream
from tests.e2e.test_catalog_inference import SDK_PYTHON
from tests.e2e.test_gate import airlock, eventually, pending, runs
from tests.helpers.console import review_in_console
from tests.helpers.proxy import PROJECT_ROOT, Proxy, clean_env, free_port, wait_for_port

pytestmark = pytest.mark.e2e

SDK_CLIENTS = Path(__file__).parent / "sdk_clients"
SERVER = "https://mcp.example.com/mcp"
RULES = """
default: {decision: ALLOW, by_category: {tool: REQUIRE_APPROVAL}}
rules:
  - id: adding-is-fine
    when: {action: mcp.example.add}
    decision: ALLOW
    reason: Arithmetic changes nothing.
  - id: no-repository-deletion
    when: {action: "mcp.*.delete_repo"}
    decision: BLOCK
    reason: Agents never delete repositories.
  - id: refunds-need-approval
    when: {action: "mcp.*.refund", params: {amount: {gte: 100}}}
    decision: REQUIRE_APPROVAL
    reason: Refunds of 100 or more need a reviewer.
"""


class McpServer:
    def __init__(self, port: int, calls_log: Path) -> None:
        self.port, self.calls_log = port, calls_log

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        if not self.calls_log.exists():
            return []
        found = [json.loads(line) for line in self.calls_log.read_text().splitlines()]
        return [c for c in found if tool is None or c["tool"] == tool]


@pytest.fixture(scope="module")
def mcp_server(
    tmp_path_factory: pytest.TempPathFactory, session_upstream: Upstream
) -> Iterator[McpServer]:
    if not SDK_PYTHON.exists():
        message = f"the SDK virtualenv is missing ({SDK_PYTHON}); `make test` builds it"
        if os.environ.get("AIRLOCK_REQUIRE_SDKS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("mcp")
    certs, port, log = session_upstream.cert_dir, free_port(), work / "server.log"
    server = McpServer(port, work / "calls.jsonl")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(SDK_PYTHON), str(SDK_CLIENTS / "mcp_server.py"), str(port),
             str(certs / "server.pem"), str(certs / "server.key"), str(server.calls_log)],
            stdout=out, stderr=subprocess.STDOUT, env=clean_env(),
        )  # fmt: skip
    wait_for_port(port, process, log)
    yield server
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mcp-policies")
    (folder / "tools.yaml").write_text(RULES)
    return folder


@pytest.fixture(scope="module")
def mappings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped mappings, with the server declared: its session and notifications are MCP."""
    folder = tmp_path_factory.mktemp("mcp-mappings") / "mappings"
    shutil.copytree(PROJECT_ROOT / "mappings", folder)
    (folder / "example.yaml").write_text(
        "provider: mcp\nservers: {example: mcp.example.com/mcp}\nmappings: []\n"
    )
    return folder


@pytest.fixture(scope="module")
def proxy(
    start_proxy: Callable[..., Proxy], mcp_server: McpServer, policies: Path, mappings: Path
) -> Proxy:
    return start_proxy(
        "--policies", str(policies), "--mappings", str(mappings), "--hold-timeout", "20",
        routes={"mcp.example.com": mcp_server.port},
    )  # fmt: skip


def call_tools(proxy: Proxy, *calls: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The official client, in its own process, as an agent runs it; what the model is handed."""
    argv = [str(SDK_PYTHON), str(SDK_CLIENTS / "mcp_client.py"), SERVER]
    for tool, arguments in calls:
        argv += [tool, json.dumps(arguments)]
    env = clean_env() | {
        "HTTPS_PROXY": f"http://support-agent:x@127.0.0.1:{proxy.port}",
        "SSL_CERT_FILE": str(proxy.ca_cert),
    }
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_an_allowed_tool_runs_and_its_result_is_recorded(
    proxy: Proxy, mcp_server: McpServer
) -> None:
    [answer] = call_tools(proxy, ("add", {"a": 2, "b": 3}))
    assert (answer["is_error"], answer["text"]) == (False, "5")
    assert mcp_server.calls("add") == [{"tool": "add", "arguments": {"a": 2, "b": 3}}]

    def recorded() -> Any:
        found = [r for r in runs(proxy) if r.action == "mcp.example.add"]
        return found if found and found[-1].outcome_detail else None

    run = eventually(recorded)[-1]
    assert (run.decision, run.params, run.target) == (
        "ALLOW",
        {"a": 2, "b": 3},
        "mcp/example/add",
    )
    assert (run.outcome, run.outcome_detail) == ("forwarded", {"result": "succeeded", "text": "5"})
    actions = {r.action for r in runs(proxy)}
    assert "mcp.read" in actions  # initialize, notifications, the session's end
    assert "http.write" not in actions, "an MCP message was judged as an unknown write"


def test_a_blocked_tool_never_reaches_the_server_and_the_model_reads_why(
    proxy: Proxy, mcp_server: McpServer
) -> None:
    [answer] = call_tools(proxy, ("delete_repo", {"repo": "acme/payments"}))
    assert answer["is_error"] is True
    assert "Agents never delete repositories" in answer["text"]
    assert answer["meta"]["airlock"]["decision"] == "BLOCK"
    assert mcp_server.calls("delete_repo") == []


def test_a_held_tool_runs_exactly_once_after_approval_in_the_reviewer_console(
    proxy: Proxy, mcp_server: McpServer
) -> None:
    answers: list[list[dict[str, Any]]] = []
    agent = _Thread(
        lambda: answers.append(call_tools(proxy, ("refund", {"charge": "ch_1", "amount": 500})))
    )
    assert eventually(lambda: pending(proxy), timeout=30)
    review_in_console(proxy.db_url, ["a", "enter"], lambda: agent.finished)
    agent.join()
    [[answer]] = answers
    assert (answer["is_error"], answer["text"]) == (False, "refunded 500 of ch_1")
    assert len(mcp_server.calls("refund")) == 1


def test_past_the_hold_window_the_model_gets_the_approval_id_and_the_retry_runs_once(
    start_proxy: Callable[..., Proxy], mcp_server: McpServer, policies: Path, mappings: Path
) -> None:
    proxy = start_proxy(
        "--policies", str(policies), "--mappings", str(mappings), "--hold-timeout", "1",
        routes={"mcp.example.com": mcp_server.port},
    )  # fmt: skip
    refund = ("refund", {"charge": "ch_2", "amount": 700})
    [first] = call_tools(proxy, refund)
    assert first["is_error"] is True and "approval pending" in first["text"]
    approval = first["meta"]["airlock"]
    assert approval["approval_state"] == "PENDING" and approval["approval_id"] in first["text"]
    assert not [c for c in mcp_server.calls("refund") if c["arguments"]["charge"] == "ch_2"]

    done = airlock("approve", approval["approval_id"][:12], *proxy.store,
                   "--reviewer", "alice", "--reason", "customer asked")  # fmt: skip
    assert done.returncode == 0, done.stderr
    [retry, again] = call_tools(proxy, refund, refund)  # a new session, a new JSON-RPC id
    assert (retry["is_error"], retry["text"]) == (False, "refunded 700 of ch_2")
    assert again["is_error"] is True and "already been forwarded once" in again["text"]
    assert len([c for c in mcp_server.calls("refund") if c["arguments"]["charge"] == "ch_2"]) == 1


def tools_call(call_id: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": params}


def test_a_call_held_longer_than_a_stream_leg_is_kept_alive_until_approved(
    start_proxy: Callable[..., Proxy], mcp_server: McpServer, policies: Path, mappings: Path
) -> None:
    """Each keep-alive leg ends the stream with a progress notification; the client resumes it
    (GET, Last-Event-ID) and, once approved, the call as judged runs once on the resumed stream."""
    proxy = start_proxy(
        "--policies", str(policies), "--mappings", str(mappings), "--hold-timeout", "30",
        "--mcp-keepalive", "1",
        routes={"mcp.example.com": mcp_server.port},
    )  # fmt: skip
    answers: list[list[dict[str, Any]]] = []
    refund = ("refund", {"charge": "ch_3", "amount": 900})
    agent = _Thread(lambda: answers.append(call_tools(proxy, refund)))
    held = eventually(lambda: pending(proxy), timeout=30)
    eventually(lambda: resumed_legs(proxy) >= 2, timeout=30)  # two legs ended and came back
    assert not agent.finished
    done = airlock("approve", held[0]["id"][:12], *proxy.store, "--reviewer", "alice")
    assert done.returncode == 0, done.stderr
    agent.join()
    [[answer]] = answers
    assert (answer["is_error"], answer["text"]) == (False, "refunded 900 of ch_3")
    assert answer["progress"][0] == f"waiting for a reviewer: approval {held[0]['id'][:8]} " + (
        f"(airlock approve {held[0]['id'][:8]})"
    )
    assert len([c for c in mcp_server.calls("refund") if c["arguments"]["charge"] == "ch_3"]) == 1
    [run] = [r for r in runs(proxy) if r.action == "mcp.example.refund"]
    assert eventually(lambda: outcome_of(proxy, run.id)) == {
        "result": "succeeded",
        "text": "refunded 900 of ch_3",
    }


def resumed_legs(proxy: Proxy) -> int:
    return proxy.output().count("the MCP client resumed its stream")


def outcome_of(proxy: Proxy, run_id: str) -> Any:
    return next(r.outcome_detail for r in runs(proxy) if r.id == run_id)


def post_jsonrpc(proxy: Proxy, body: Any, headers: dict[str, str] | None = None) -> Any:
    response = proxy.session(agent="support-agent").post(
        SERVER,
        json=body,
        headers={"Accept": "application/json, text/event-stream", **(headers or {})},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Airlock-Decision"] == "BLOCK"
    return response.json()


def test_a_batch_with_one_blocked_call_is_refused_whole(
    proxy: Proxy, mcp_server: McpServer
) -> None:
    before = len(mcp_server.calls())
    answers = post_jsonrpc(
        proxy, [tools_call(1, "add", {"a": 1, "b": 1}), tools_call(2, "delete_repo", {"repo": "x"})]
    )
    assert [a["id"] for a in answers] == [1, 2]
    assert all(a["result"]["isError"] for a in answers)
    assert "call 2 of 2 in a JSON-RPC batch" in answers[0]["result"]["content"][0]["text"]
    assert len(mcp_server.calls()) == before


def test_headers_that_disagree_with_the_body_are_refused(
    proxy: Proxy, mcp_server: McpServer
) -> None:
    before = len(mcp_server.calls())
    answer = post_jsonrpc(
        proxy,
        tools_call(9, "add", {"a": 1, "b": 2}),
        headers={"Mcp-Method": "tools/call", "Mcp-Name": "create_issue"},
    )  # fmt: skip
    text = answer["result"]["content"][0]["text"]
    assert answer["id"] == 9 and answer["result"]["isError"] is True
    assert "the Mcp-Name header 'create_issue' does not match the body's 'add'" in text
    assert len(mcp_server.calls()) == before


class _Thread:
    def __init__(self, work: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> None:
        self._thread.join(60)
        assert not self._thread.is_alive(), "the agent is still waiting"
