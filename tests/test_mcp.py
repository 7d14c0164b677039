"""MCP over streamable HTTP in the pipeline: recognised by shape, tool calls mapped by the
shipped mappings/mcp.yaml, batches decided call by call, headers held to the body, answers and
outcomes read as JSON-RPC."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import tutils

from airlock.console.check import check
from airlock.pipeline.document import build_document
from airlock.pipeline.evaluation import MAX_BATCH, Config, evaluate
from airlock.pipeline.mappings import MAX_NAME, load_mappings
from airlock.pipeline.mcp import keepalive_stream, refusal_answers, resumable_call, tool_outcome
from airlock.pipeline.policies import load_policies
from airlock.pipeline.run_record import request_hash, run_row
from airlock.pipeline.yaml_source import ConfigError
from tests.helpers.proxy import PROJECT_ROOT

KEY = bytes(range(32))  # a request key (store/keys.py)


SHIPPED = load_mappings(PROJECT_ROOT / "mappings")
BASELINE = Config(SHIPPED, load_policies(PROJECT_ROOT / "policies"))


def call(call_id: Any, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments or {}}
    return {"jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": params}


def request(
    body: Any, host: str = "mcp.internal.example.com", method: str = "POST",
    headers: dict[str, str] | None = None, path: str = "/mcp",
    content_type: str = "application/json",
) -> dict[str, Any]:  # fmt: skip
    fields = [(b"Content-Type", content_type.encode())]
    fields += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    flow_request = tutils.treq(
        method=method.encode(), host=host, port=443, scheme=b"https", authority=b"",
        path=path.encode(), headers=fields,
        content=json.dumps(body).encode() if body is not None else b"",
    )  # fmt: skip
    return build_document(flow_request, "support-agent")


def test_a_tool_call_on_any_host_is_mcp_server_tool_with_its_arguments() -> None:
    evaluation = evaluate(request(call(7, "lookup_customer", {"email": "a@b.c"})), BASELINE)
    action = evaluation.action
    assert action.action == "mcp.mcp.internal.example.com.lookup_customer"
    assert (action.category, action.params) == ("tool", {"email": "a@b.c"})
    assert action.target == "mcp/mcp.internal.example.com/lookup_customer"
    assert action.context["protocol"] == "mcp"
    # A tool nobody described waits for a reviewer under the baseline (category tool).
    assert evaluation.verdict.decision == "REQUIRE_APPROVAL"


def declaring(folder: Path, endpoint: str = "mcp.internal.example.com/mcp") -> Config:
    """The shipped mappings and baseline, with one more MCP server declared (`internal`)."""
    shutil.copytree(PROJECT_ROOT / "mappings", folder)
    (folder / "internal.yaml").write_text(f"provider: mcp\nservers: {{internal: {endpoint}}}\n"
                                          "mappings: []\n")  # fmt: skip
    return Config(load_mappings(folder), BASELINE.policies)


PROTOCOL_MESSAGES = (
    {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}},
    {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    {"jsonrpc": "2.0", "id": 3, "method": "ping"},
    {"jsonrpc": "2.0", "id": 5, "result": {}},  # the client's answer to the server
)


def test_at_a_declared_servers_endpoint_the_protocols_own_messages_are_reads(
    tmp_path: Path,
) -> None:
    config = declaring(tmp_path / "mappings")
    for body in PROTOCOL_MESSAGES:
        evaluation = evaluate(request(body), config)
        assert (evaluation.action.action, evaluation.verdict.decision) == ("mcp.read", "ALLOW")
        assert evaluation.action.params["path"] == "/mcp"
    for method in ("DELETE", "GET"):  # the session's end and its event stream
        session = request(None, method=method, headers={"Mcp-Session-Id": "s1"}, path="/mcp/")
        action = evaluate(session, config).action
        assert (action.action, action.params) == (
            "mcp.read", {"method": f"({method} session)", "path": "/mcp/"}
        )  # fmt: skip


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("mcp.internal.example.com", "/api/v1/customers/cus_42"),  # declared, another path
        ("api.example.com", "/mcp"),  # a host nothing describes
    ],
)
def test_elsewhere_mcps_own_messages_are_the_plain_requests_they_are(
    tmp_path: Path, host: str, path: str
) -> None:
    """A server that is not MCP may act on the path and ignore the body: a DELETE with an
    `Mcp-Session-Id`, or a POST whose body is a notification, a ping or an answer, passed as an
    MCP read where the same request without them was a write held for a reviewer."""
    config = declaring(tmp_path / "mappings")
    ended = request({"hard": True}, host=host, path=path, method="DELETE",
                    headers={"Mcp-Session-Id": "s1"})  # fmt: skip
    for document in [ended] + [request(body, host=host, path=path) for body in PROTOCOL_MESSAGES]:
        evaluation = evaluate(document, config)
        action = evaluation.action
        assert (action.action, evaluation.verdict.decision) == ("http.write", "REQUIRE_APPROVAL")
        assert action.params["path"] == path
    # A tool call is still MCP by its shape: judged as the tool, never as a read.
    tool = evaluate(request(call(1, "lookup"), host=host, path=path), config)
    assert (tool.action.category, tool.verdict.decision) == ("tool", "REQUIRE_APPROVAL")
    # So is the batch it is in; its other messages are judged as the plain request.
    batch = evaluate(request([call(1, "lookup"), PROTOCOL_MESSAGES[4]], host=host, path=path),
                     config)  # fmt: skip
    assert batch.action.context["batch"] == [tool.action.action, "http.write"]


def test_a_servers_endpoint_is_its_path_and_below(tmp_path: Path) -> None:
    config = declaring(tmp_path / "mappings", "mcp.internal.example.com/mcp/")
    ping = PROTOCOL_MESSAGES[4]
    for path, read in (("/mcp", True), ("/mcp/", True), ("/mcp/x/repos", True),
                       ("/mcpx", False), ("/", False), ("/api/mcp", False)):  # fmt: skip
        action = evaluate(request(ping, path=path), config).action.action
        assert action == ("mcp.read" if read else "http.write"), path


def test_a_method_mcp_does_not_define_is_a_tool_call_nobody_described() -> None:
    odd = {"jsonrpc": "2.0", "id": 3, "method": "tools/delete_all", "params": {}}
    evaluation = evaluate(request(odd), BASELINE)
    assert (evaluation.action.action, evaluation.action.category) == (
        "mcp.unknown_method",
        "tool",
    )
    assert evaluation.verdict.decision == "REQUIRE_APPROVAL"


def test_other_json_rpc_and_json_bodies_are_not_mcp() -> None:
    eth = {"jsonrpc": "2.0", "id": 1, "method": "eth_sendTransaction", "params": []}
    assert evaluate(request(eth), BASELINE).action.action == "http.write"
    assert evaluate(request({"method": "tools/call"}), BASELINE).action.action == "http.write"


def test_one_rule_governs_githubs_mcp_tool_and_its_rest_call(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        textwrap.dedent("""\
            rules:
              - id: no-issues-in-payments
                when: {action: create_issue, params: {repo: payments}}
                decision: BLOCK
                reason: The payments repository takes no agent-written issues.
            """)
    )
    config = Config(SHIPPED, load_policies(tmp_path))
    arguments = {"owner": "acme", "repo": "payments", "title": "Refunds fail"}
    via_mcp = request(call(1, "create_issue", arguments), host="api.githubcopilot.com")
    via_rest = request(
        {"title": "Refunds fail"}, host="api.github.com", path="/repos/acme/payments/issues"
    )
    for document in (via_mcp, via_rest):
        evaluation = evaluate(document, config)
        assert evaluation.action.action == "create_issue"
        assert evaluation.action.params["repo"] == "payments"
        assert evaluation.verdict.rules == ("no-issues-in-payments",)
    merge = evaluate(
        request(call(2, "merge_pull_request", {"owner": "acme", "repo": "api", "pullNumber": 12}),
                host="api.githubcopilot.com"),
        BASELINE,
    )  # fmt: skip
    assert (merge.action.action, merge.action.params["number"]) == ("merge_pull_request", 12)
    assert merge.verdict.rules == ("github-merge-needs-approval",)


def test_a_batchs_calls_count_toward_its_later_calls(tmp_path: Path) -> None:
    """Five calls in one JSON-RPC batch meet the rate five requests would: each call is judged
    with the ones before it in the batch counted (before, each against the past alone: five
    refunds passed a rate of two). That all of them count once it is let through:
    tests/test_decider.py."""
    from airlock.pipeline.history import History

    (tmp_path / "rules.yaml").write_text(
        textwrap.dedent("""\
            rules:
              - id: two-refunds-an-hour
                when: {action: "mcp.*.issue_refund"}
                rate: {limit: 2, window: 1h}
                decision: BLOCK
            """)
    )
    config = Config(SHIPPED, load_policies(tmp_path))
    refunds = [call(i, "issue_refund", {"amount": 1500}) for i in range(5)]
    blocked = evaluate(request(refunds), config, History())
    assert blocked.verdict.decision == "BLOCK"
    assert blocked.verdict.reason.startswith("call 3 of 5 in a JSON-RPC batch")


def test_a_batch_is_decided_call_by_call_and_one_block_blocks_it(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        textwrap.dedent("""\
            rules:
              - id: no-drops
                when: {action: "mcp.*.drop_table"}
                decision: BLOCK
                reason: Agents never drop tables.
            """)
    )
    config = Config(SHIPPED, load_policies(tmp_path))
    batch = [call(1, "lookup", {"id": 1}), call(2, "drop_table", {"table": "users"})]
    evaluation = evaluate(request(batch), config)
    assert evaluation.verdict.decision == "BLOCK"
    assert evaluation.verdict.reason.startswith("call 2 of 2 in a JSON-RPC batch")
    assert evaluation.action.context["batch"] == [
        "mcp.mcp.internal.example.com.lookup",
        "mcp.mcp.internal.example.com.drop_table",
    ]
    reads = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 2, "method": "ping"},
    ]
    assert evaluate(request(reads), config).verdict.decision == "ALLOW"


def test_a_batch_longer_than_the_decider_judges_is_refused_whole(tmp_path: Path) -> None:
    """Each call of a batch is decided like a request, by the one decider every agent shares:
    30,000 pings (1 MiB) would hold it for seconds, so past MAX_BATCH the batch is refused."""
    config = declaring(tmp_path / "mappings")
    pings = [{"jsonrpc": "2.0", "id": i, "method": "ping"} for i in range(MAX_BATCH + 1)]
    refused = evaluate(request(pings), config).verdict
    assert refused.decision == "BLOCK"
    assert f"a JSON-RPC batch of {MAX_BATCH + 1} calls: at most {MAX_BATCH}" in refused.reason
    assert evaluate(request(pings[:MAX_BATCH]), config).verdict.decision == "ALLOW"


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({"Mcp-Method": "tools/call", "Mcp-Name": "lookup"}, None),
        ({"Mcp-Method": "tools/list"}, "the Mcp-Method header 'tools/list'"),
        ({"Mcp-Method": "tools/call", "Mcp-Name": "delete"}, "the Mcp-Name header 'delete'"),
    ],
)
def test_headers_that_disagree_with_the_body_are_refused(
    headers: dict[str, str], refused: str | None
) -> None:
    evaluation = evaluate(request(call(1, "lookup"), headers=headers), BASELINE)
    if refused is None:
        assert "mcp-headers" not in evaluation.verdict.rules
    else:
        assert evaluation.verdict.decision == "BLOCK"
        assert evaluation.verdict.rules == ("mcp-headers",)
        assert evaluation.verdict.reason.startswith(refused)


def test_calling_the_same_tool_again_is_a_retry_of_the_same_call() -> None:
    first = call(1, "refund", {"charge": "ch_1", "amount": 500})
    again = call("b7", "refund", {"charge": "ch_1", "amount": 500})
    again["params"]["_meta"] = {"progressToken": 4}
    other = call(1, "refund", {"charge": "ch_1", "amount": 501})
    first, again, other = (request_hash(request(m), KEY, mcp=True) for m in (first, again, other))
    assert first == again != other  # judged as MCP (decider/core.py _judged_as_mcp)


def test_refusals_are_answers_the_model_reads() -> None:
    meta = {"airlock": {"decision": "BLOCK"}}
    answer = refusal_answers(call(4, "drop"), "Airlock refused: no", meta)
    assert answer == {
        "jsonrpc": "2.0",
        "id": 4,
        "result": {
            "content": [{"type": "text", "text": "Airlock refused: no"}],
            "isError": True,
            "resultType": "complete",
            "_meta": meta,
        },
    }
    listed = refusal_answers({"jsonrpc": "2.0", "id": "x", "method": "tools/list"}, "no", meta)
    assert listed["error"]["message"] == "no" and listed["id"] == "x"
    batch = [call(1, "a"), {"jsonrpc": "2.0", "method": "notifications/initialized"}]
    assert [a["id"] for a in refusal_answers(batch, "no", meta)] == [1]
    assert refusal_answers({"jsonrpc": "2.0", "method": "notifications/x"}, "no", meta) is None


def _sse(*messages: dict[str, Any]) -> bytes:
    return b"".join(b"event: message\ndata: " + json.dumps(m).encode() + b"\n\n" for m in messages)


def test_the_tools_result_is_read_from_json_and_event_streams() -> None:
    done = {"jsonrpc": "2.0", "id": 3, "result": {"content": [{"type": "text", "text": "5"}]}}
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
    failed = {"jsonrpc": "2.0", "id": 3, "result": {"content": [], "isError": True}}
    error = {"jsonrpc": "2.0", "id": 3, "error": {"code": -32602, "message": "bad arguments"}}
    json_type, sse_type = "application/json", "text/event-stream"
    assert tool_outcome(call(3, "add"), json.dumps(done).encode(), json_type) == {
        "result": "succeeded",
        "text": "5",
    }
    assert tool_outcome(call(3, "add"), _sse(progress, done), sse_type)["text"] == "5"
    assert tool_outcome(call(3, "add"), _sse(failed), sse_type) == {"result": "failed"}
    assert tool_outcome(call(3, "add"), json.dumps(error).encode(), json_type) == {
        "result": "failed",
        "error": {"code": -32602, "message": "bad arguments"},
    }
    assert tool_outcome(call(3, "add"), b"", sse_type) == {"result": "unknown"}
    # Nested past Python's stack: no answer read, and no exception out of the proxy's response
    # hook (which lost the run's outcome: it was later settled as unknown)
    deep = b"[" * 200_000 + b"]" * 200_000
    assert tool_outcome(call(3, "add"), deep, json_type) == {"result": "unknown"}
    both = [call(3, "add"), call(4, "sub")]
    mixed = tool_outcome(both, json.dumps([done]).encode(), json_type)
    assert mixed == {
        "result": "mixed",
        "calls": [{"result": "succeeded", "text": "5"}, {"result": "unknown"}],
    }
    assert tool_outcome({"jsonrpc": "2.0", "id": 1, "method": "ping"}, b"{}", json_type) is None


def _mappings(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "mappings"
    folder.mkdir(exist_ok=True)
    (folder / "tools.yaml").write_text(textwrap.dedent(text))
    return folder


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            """\
            provider: crm
            mappings:
              - {id: crm.lookup, server: crm, tool: lookup, action: crm_lookup}
            """,
            "names MCP server 'crm', which no 'servers:' entry defines",
        ),
        (
            """\
            provider: crm
            servers: {crm: mcp.crm.internal}
            mappings:
              - {id: crm.lookup, server: crm, tool: lookup, path: /mcp, action: crm_lookup}
            """,
            "'path' cannot be combined with 'tool'",
        ),
        (
            """\
            provider: crm
            hosts: [crm.internal]
            mappings:
              - {id: crm.any, path: /x, action: "crm.{tool}"}
            """,
            "only an MCP mapping ('tool:') can template its action name",
        ),
        (
            """\
            provider: crm
            servers: {CRM: mcp.crm.internal}
            mappings: []
            """,
            "MCP server name 'CRM' must be lower-case",
        ),
    ],
)
def test_mcp_mapping_mistakes_are_load_errors_with_their_place(
    tmp_path: Path, text: str, message: str
) -> None:
    folder = _mappings(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        load_mappings(folder)
    assert str(raised.value).startswith(str(folder / "tools.yaml") + ":")
    assert any(message in str(problem) for problem in check([folder]).problems)


def test_a_server_alias_names_the_server_in_actions(tmp_path: Path) -> None:
    folder = _mappings(
        tmp_path,
        """\
        provider: crm
        servers: {crm: ["mcp.crm.internal", "*.crm.example.com"]}
        mappings:
          - id: crm.lookups
            server: crm
            tool: "get_*"
            action: crm_lookup
            category: read
            sensitivity: low
            params:
              email: $.body.params.arguments.email
          - {id: crm.any, server: "*", tool: "*", action: "mcp.{server}.{tool}", category: tool}
        """,
    )
    config = Config(load_mappings(folder), load_policies(PROJECT_ROOT / "policies"))
    looked_up = evaluate(
        request(call(1, "get_customer", {"email": "a@b.c", "x": 1}), host="eu.crm.example.com"),
        config,
    ).action
    assert (looked_up.action, looked_up.params) == ("crm_lookup", {"email": "a@b.c"})
    other = evaluate(request(call(1, "close_account"), host="mcp.crm.internal"), config).action
    assert (other.action, other.target) == ("mcp.crm.close_account", "mcp.crm.internal")


def test_only_a_single_call_from_a_client_that_resumes_streams_is_kept_alive() -> None:
    modern = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}
    tokened = call(1, "refund")
    tokened["params"]["_meta"] = {"progressToken": "p1"}
    assert resumable_call(modern, tokened) == "p1"
    assert resumable_call(modern, call(1, "refund")) is True  # no token: no progress events
    in_meta = call(1, "refund")
    in_meta["params"]["_meta"] = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    assert resumable_call({"accept": "text/event-stream"}, in_meta) is True
    older = {**modern, "mcp-protocol-version": "2025-06-18"}  # would not resume: one piece
    assert resumable_call(older, tokened) is None
    assert resumable_call({**modern, "accept": "application/json"}, tokened) is None
    assert resumable_call(modern, [call(1, "a")]) is None


def test_a_leg_ends_with_progress_and_a_priming_event() -> None:
    leg = keepalive_stream("airlock-e1", "p1", 2, "waiting for a reviewer").decode()
    progress, priming = leg.split("\n\n")[:2]
    assert progress.startswith("event: message\ndata: ")
    assert json.loads(progress.split("data: ", 1)[1])["params"] == {
        "progressToken": "p1",
        "progress": 2,
        "message": "waiting for a reviewer",
    }
    assert priming == "id: airlock-e1\nretry: 100\ndata: "
    assert keepalive_stream("airlock-e2", True, 1, "w").decode().startswith("id: airlock-e2\n")


def test_a_guard_call_to_a_servers_tool_is_judged_by_what_its_arguments_say() -> None:
    """A Guard API call naming GitHub's merge tool on acme/prod, claiming another target: the
    mapping's reading of the arguments wins, as over MCP (before, the caller's target replaced
    it). The caller's context adds what the mapping does not derive."""
    from airlock.pipeline.tool_calls import ToolCall, tool_action

    config = Config.load(PROJECT_ROOT / "mappings", PROJECT_ROOT / "policies")
    arguments = {"owner": "acme", "repo": "prod", "pullNumber": 1}
    honest = tool_action(ToolCall("merge_pull_request", "", arguments, server="github"),
                         config.mappings)  # fmt: skip
    claimed = tool_action(
        ToolCall("merge_pull_request", "github/acme/sandbox", arguments,
                 context={"environment": "test"}, server="github"),
        config.mappings,
    )  # fmt: skip
    assert claimed.target == honest.target and "prod" in honest.target


def test_a_guard_call_whose_mapping_reads_an_overlong_target_is_refused() -> None:
    """A `tool:` mapping reads the target from the call's arguments: past the limits a request
    has, the call is refused and recorded under a target of the usual size (only cut, before,
    with the decider working on all of it)."""
    from airlock.pipeline.evaluation import evaluate_call
    from airlock.pipeline.mappings import MAX_TARGET
    from airlock.pipeline.tool_calls import ToolCall, tool_action

    config = Config.load(PROJECT_ROOT / "mappings", PROJECT_ROOT / "policies")
    arguments = {"owner": "a" * 5_000, "repo": "prod", "pullNumber": 1}
    action = tool_action(ToolCall("merge_pull_request", "", arguments, server="github"),
                         config.mappings)  # fmt: skip
    evaluation = evaluate_call(action, "agent", config, None)
    assert (evaluation.verdict.decision, evaluation.failed_stage) == ("BLOCK", "mapping")
    assert "target would be" in evaluation.verdict.reason
    assert len(evaluation.action.target) <= MAX_TARGET


# --- MCP's shape never overrides what a vendor's API makes of a request ------------------------

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
DELETE_TABLE = {"X-Amz-Target": "DynamoDB_20120810.DeleteTable"}


@pytest.mark.parametrize(
    ("host", "path", "action", "decision"),
    [
        ("api.github.com", "/repos/acme/prod", "delete_repository", "BLOCK"),
        ("prod-bucket.s3.us-east-1.amazonaws.com", "/", "delete_bucket", "BLOCK"),
        ("api.stripe.com", "/v1/accounts/acct_1", "delete_account", "BLOCK"),
        ("api.stripe.com", "/v1/customers/cus_1", "delete_record", "REQUIRE_APPROVAL"),
    ],
)
def test_a_session_header_does_not_make_a_vendors_delete_an_mcp_read(
    host: str, path: str, action: str, decision: str
) -> None:
    """Before, `Mcp-Session-Id` on any DELETE (or GET) made it mcp.read, allowed."""
    sent = request(None, host=host, method="DELETE", path=path, headers={"Mcp-Session-Id": "s1"})
    evaluation = evaluate(sent, BASELINE)
    assert (evaluation.action.action, evaluation.verdict.decision) == (action, decision)
    assert "protocol" not in evaluation.action.context  # refused in the vendor's own format


@pytest.mark.parametrize(
    ("host", "path", "headers", "body", "action", "decision"),
    [
        ("slack.com", "/api/conversations.archive", {}, {"channel": "C123"},
         "archive_channel", "REQUIRE_APPROVAL"),
        ("dynamodb.us-east-1.amazonaws.com", "/", DELETE_TABLE, {"TableName": "prod"},
         "delete_table", "REQUIRE_APPROVAL"),
        ("api.sendgrid.com", "/v3/mail/send", {},
         {"personalizations": [{"to": [{"email": f"a{i}@x.com"} for i in range(10_001)]}],
          "from": {"email": "a@b.c"}, "subject": "s",
          "content": [{"type": "text/plain", "value": "x"}]},
         "send_message", "BLOCK"),
        ("api.github.com", "/graphql", {},
         {"query": 'mutation{deleteRepository(input:{repositoryId:"R_1"}){clientMutationId}}'},
         "http.write", "REQUIRE_APPROVAL"),
    ],
)  # fmt: skip
def test_a_vendors_body_that_also_says_jsonrpc_ping_is_judged_as_the_vendors_operation(
    host: str, path: str, headers: dict[str, str], body: dict[str, Any], action: str,
    decision: str,
) -> None:  # fmt: skip
    """Before, `"jsonrpc": "2.0", "method": "ping"` added to any JSON body made it mcp.read."""
    smuggled = request({**body, "jsonrpc": "2.0", "method": "ping"}, host=host, path=path,
                       headers=headers)  # fmt: skip
    evaluation = evaluate(smuggled, BASELINE)
    assert (evaluation.action.action, evaluation.verdict.decision) == (action, decision)


@pytest.mark.parametrize(
    ("host", "path", "body"),
    [
        ("api.github.com", "/graphql", PING),  # a catalog's host
        ("tools.slack.com", "/mcp", call(1, "slack_send_message")),  # a mapping's glob
        ("api.github.com", "/graphql", [PING, call(2, "delete_repo")]),  # a batch
    ],
)
def test_jsonrpc_on_a_vendors_host_that_no_operation_fits_is_refused_and_says_what_to_declare(
    host: str, path: str, body: Any
) -> None:
    """An MCP server there, undeclared, or a vendor's endpoint the catalog does not know (GitHub's
    GraphQL): neither can be judged, so neither passes (before: mcp.read, allowed)."""
    evaluation = evaluate(request(body, host=host, path=path), BASELINE)
    assert evaluation.verdict.decision == "BLOCK"
    assert evaluation.failed_stage == "mapping"
    assert f"{host} is a vendor API" in evaluation.verdict.reason
    assert "name it under 'servers:'" in evaluation.verdict.reason


def test_slacks_mcp_server_is_declared_and_judged_as_mcp() -> None:
    """mcp.slack.com lies under slack.yaml's *.slack.com: shipped under `servers:`, its tool
    calls are MCP (mcp.slack.<tool>), held as undescribed tools, not refused as unknown."""
    evaluation = evaluate(request(call(1, "slack_send_message"), host="mcp.slack.com"), BASELINE)
    assert evaluation.action.action == "mcp.slack.slack_send_message"
    assert (evaluation.verdict.decision, evaluation.failed_stage) == ("REQUIRE_APPROVAL", None)


def test_a_jsonrpc_body_where_the_vendor_identifies_the_operation_is_that_operation() -> None:
    """DynamoDB knows the operation from X-Amz-Target, whatever the body says."""
    sent = request({**PING, "params": {}}, host="dynamodb.us-east-1.amazonaws.com", path="/",
                   headers=DELETE_TABLE, content_type="application/x-amz-json-1.0")  # fmt: skip
    evaluation = evaluate(sent, BASELINE)
    assert (evaluation.action.action, evaluation.verdict.decision) == (
        "delete_table",
        "REQUIRE_APPROVAL",
    )


def test_members_jsonrpc_does_not_define_are_refused_on_an_undescribed_host() -> None:
    """An internal API's own JSON with `jsonrpc` and `method` added: an MCP server there may run
    the method all the same, so it is judged as neither (it was a write, held, while a tool call
    with one extra member escaped the tool's rules the same way)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping", "user": "u1", "delete": True}
    evaluation = evaluate(request(body, host="admin.internal.example.com", path="/users"), BASELINE)
    assert evaluation.verdict.decision == "BLOCK"
    assert "'delete', 'user', which JSON-RPC does not define" in evaluation.verdict.reason
    del body["method"]  # not a JSON-RPC request: the plain write it is
    evaluation = evaluate(request(body, host="admin.internal.example.com", path="/users"), BASELINE)
    assert (evaluation.action.action, evaluation.verdict.decision) == (
        "http.write",
        "REQUIRE_APPROVAL",
    )


def test_an_mcp_server_on_a_vendors_host_is_mcp_once_declared_and_the_vendors_api_still_wins(
    tmp_path: Path,
) -> None:
    """A vendor's own MCP endpoint on its API host (`api.github.com/mcp`, declared under
    `servers:`): its session and tool calls are MCP; a request the vendor's API identifies is
    that operation, session header or not; a JSON-RPC body on such a request is ambiguous."""
    folder = tmp_path / "mappings"
    shutil.copytree(PROJECT_ROOT / "mappings", folder)
    (folder / "vendor-mcp.yaml").write_text("provider: mcp\nservers: {ghapi: api.github.com}\n"
                                            "mappings: []\n")  # fmt: skip
    config = Config(load_mappings(folder), BASELINE.policies)
    github = "api.github.com"

    tool = evaluate(request(call(1, "list_issues"), host=github), config).action
    assert (tool.action, tool.context["protocol"]) == ("mcp.ghapi.list_issues", "mcp")
    ended = request(None, host=github, method="DELETE", headers={"Mcp-Session-Id": "s1"})
    assert evaluate(ended, config).action.action == "mcp.read"

    deleted = request(None, host=github, method="DELETE", path="/repos/acme/prod",
                      headers={"Mcp-Session-Id": "s1"})  # fmt: skip
    evaluation = evaluate(deleted, config)
    assert (evaluation.action.action, evaluation.verdict.decision) == ("delete_repository", "BLOCK")

    both = evaluate(request(call(1, "x"), host=github, path="/repos/acme/prod/issues"), config)
    assert (both.action.action, both.verdict.decision) == ("create_issue", "BLOCK")
    assert "declared as the MCP server 'ghapi'" in both.verdict.reason
    assert "ambiguous" in both.verdict.reason


@pytest.mark.parametrize("host", ["api.githubcopilot.com", "mcp.internal.example.com"])
def test_a_json_rpc_request_with_a_member_json_rpc_does_not_define_is_refused(host: str) -> None:
    """Reclassified as http.write, the tool's BLOCK rules, budgets and rates and the Mcp-Name
    check no longer applied; a server may run the call all the same."""
    body = {**call(1, "merge_pull_request", {"owner": "a", "repo": "b", "pullNumber": 1}), "x": 1}
    headers = {"Mcp-Name": "merge_pull_request", "Mcp-Method": "tools/call"}
    evaluation = evaluate(request(body, host=host, headers=headers), BASELINE)
    assert evaluation.verdict.decision == "BLOCK"
    assert "'x', which JSON-RPC does not define" in evaluation.verdict.reason
    batch = [call(1, "delete_database"), {**call(2, "delete_database"), "extra": {}}]
    assert evaluate(request(batch, host=host), BASELINE).verdict.decision == "BLOCK"


def test_on_a_vendor_host_the_vendors_operation_still_wins_over_extra_members() -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "x": 1}
    document = request(
        body, host="lambda.us-east-1.amazonaws.com",
        path="/2015-03-31/functions/f/invocations",
        headers={"Authorization": "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20260101/us-east-1/"
                 "lambda/aws4_request, SignedHeaders=host, Signature=x"},
    )  # fmt: skip
    evaluation = evaluate(document, BASELINE)
    assert evaluation.action.operation == "aws.lambda.Invoke"
    assert "JSON-RPC does not define" not in str(evaluation.verdict.reason)


RULES_BY_TOOL = """
rules:
  - {id: adding-is-fine, when: {action: "mcp.*.add"}, decision: ALLOW, reason: Arithmetic.}
  - {id: small-refunds, when: {action: "mcp.*.refund", params: {amount: {lt: 100}}},
     decision: ALLOW, reason: Small.}
"""


@pytest.mark.parametrize(
    ("params", "said"),
    [
        # Go's encoding/json (mark3labs/mcp-go) runs delete_repo: the last key it folds to `name`
        ({"name": "add", "arguments": {}, "Name": "delete_repo", "Arguments": {"repo": "a/b"}},
         "'Name', which servers that match keys without regard to case read as 'name'"),
        ({"name": "add", "ARGUMENTS": {"a": 1}}, "'ARGUMENTS'"),
        ({"name": "refund", "arguments": {"amount": 5}, "argument\u017f": {"amount": 5000}},
         "'argument\u017f'"),  # long s folds to s
        ({"name": "refund", "arguments": {"amount": 5, "Amount": 5000}},
         "params.arguments has the keys 'amount' and 'Amount'"),
        ({"name": "refund", "arguments": {"amount": 5, "items": [{"k": 1, "\u212a": 2}]}},
         "params.arguments.items.0 has the keys 'k' and '\u212a'"),  # the Kelvin sign
        ({"name": "add", "arguments": {}, "_meta": {"progressToken": 1, "ProgressToken": 2}},
         "'ProgressToken'"),
    ],
)  # fmt: skip
def test_keys_a_case_insensitive_server_reads_as_one_are_refused(
    tmp_path: Path, params: dict[str, Any], said: str
) -> None:
    (tmp_path / "tools.yaml").write_text(RULES_BY_TOOL)
    config = Config(SHIPPED, load_policies(tmp_path))
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    evaluation = evaluate(request(body), config)
    assert evaluation.verdict.decision == "BLOCK"
    assert said in evaluation.verdict.reason
    assert evaluation.action.context["protocol"] == "mcp"  # the model reads why, as a tool error
    batch = evaluate(request([call(1, "add"), {**body, "id": 2}]), config)
    assert batch.verdict.decision == "BLOCK"


def test_keys_that_differ_beyond_case_still_pass(tmp_path: Path) -> None:
    (tmp_path / "tools.yaml").write_text(RULES_BY_TOOL)
    config = Config(SHIPPED, load_policies(tmp_path))
    body = call(1, "refund", {"amount": 5, "amounts": [1], "amount_2": {"Amount": 1}})
    assert evaluate(request(body), config).verdict.decision == "ALLOW"


def test_a_tool_name_longer_than_airlock_judges_is_refused_and_recorded_short() -> None:
    """A tool name becomes the action and target every later stage works on, in the decider
    every agent shares (redacting a 900 KB one took 417 ms): past MAX_NAME it is refused, and
    the refusal is recorded under a name of the usual size."""
    refused = evaluate(request(call(1, "lookup_" + "a" * 900_000)), BASELINE)
    assert refused.verdict.decision == "BLOCK"
    assert refused.verdict.reason.endswith(
        f"the tool name (params.name) is 900007 characters; Airlock judges tool names of at "
        f"most {MAX_NAME}"
    )
    assert refused.failed_stage == "mapping"
    assert refused.action.action == "mcp.unknown_method"
    assert refused.action.target == "mcp/mcp.internal.example.com"
    row = run_row("r1", "i", request(call(1, "a" * 900_000)), refused, 1.0)
    assert len(row.action) + len(row.target) + len(row.reason) < 1_000
    in_a_batch = evaluate(request([call(1, "lookup"), call(2, "a" * (MAX_NAME + 1))]), BASELINE)
    assert "tools/call: the tool name (params.name) is 257" in in_a_batch.verdict.reason
    assert in_a_batch.verdict.decision == "BLOCK"
    judged = evaluate(request(call(1, "a" * MAX_NAME)), BASELINE)
    assert judged.verdict.decision == "REQUIRE_APPROVAL"
    assert judged.action.action == f"mcp.mcp.internal.example.com.{'a' * MAX_NAME}"
