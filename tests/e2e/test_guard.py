"""The Guard API and its SDK against a running `airlock run --guard-port`: tool calls judged by
the same policies, approval queue and store as proxied requests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from airlock.store.approvals import pending_approvals
from airlock.store.audit import verify_audit
from airlock.store.schema import Run, open_engine
from airlock_guard import ApprovalPending, Blocked, Client, Denied, Unavailable, guard
from tests.helpers.proxy import PROJECT_ROOT, Proxy, clean_env, free_port, wait_for_port
from tests.test_agents import KEY, agents_dir

pytestmark = pytest.mark.e2e

RULES = """
rules:
  - id: no-prod-drops
    when: {source: guard, action: run_sql, params: {statement: {regex: "(?i)drop "}}}
    decision: BLOCK
    reason: Agents never drop tables.
  - id: reads-are-fine
    when: {source: guard, action: run_sql, params: {statement: {regex: "(?i)^select "}}}
    decision: ALLOW
    reason: Reads are fine.
  - id: listing-is-fine
    when: {source: guard, action: run_shell, params: {command: {regex: "^ls( |$)"}}}
    decision: ALLOW
    reason: Listing files is fine.
  - id: no-recursive-deletes
    when: {source: guard, action: run_shell, params: {command: {regex: "rm -[a-z]*r"}}}
    decision: BLOCK
    reason: Agents never delete recursively.
"""


@pytest.fixture(scope="module")
def airlock(tmp_path_factory: pytest.TempPathFactory, session_upstream: Any) -> Iterator[Proxy]:
    work = tmp_path_factory.mktemp("guard")
    policies = agents_dir(work)
    (policies / "tools.yaml").write_text(RULES)
    proxy = Proxy(
        work, f"sqlite:///{work / 'airlock.db'}", {}, session_upstream.ca_file, work / "certs",
        ["--policies", str(policies), "--guard-port", str(free_port())],
    )  # fmt: skip
    proxy.start()
    # The Guard API listens once Airlock's addons run, after mitmproxy's own port is open.
    assert proxy.process is not None
    wait_for_port(guard_port(proxy), proxy.process, proxy.log_file)
    yield proxy
    proxy.stop()


def guard_port(proxy: Proxy) -> int:
    return int(proxy.extra_args[-1])


def client(proxy: Proxy, agent: str = "ops-bot", key: str = KEY) -> Client:
    return Client(f"http://127.0.0.1:{guard_port(proxy)}", agent, key)


def runs(proxy: Proxy, **where: str) -> list[Any]:
    engine = open_engine(proxy.db_url)
    with engine.connect() as conn:
        query = select(Run).where(*(getattr(Run, k) == v for k, v in where.items()))
        found = conn.execute(query.order_by(Run.at)).all()
    engine.dispose()
    return found


def approve_from_another_process(proxy: Proxy, action: str, state: str = "approve") -> None:
    """A reviewer, with the CLI, as soon as the call is held."""
    engine = open_engine(proxy.db_url)
    deadline = time.monotonic() + 20
    held = []
    while not held and time.monotonic() < deadline:
        held = [a for a in pending_approvals(engine) if a.action == action]
        time.sleep(0.05)
    engine.dispose()
    assert held, f"no {action} was held"
    subprocess.run(
        [sys.executable, "-m", "airlock.console.cli", state, held[0].id[:12],
         *proxy.store, "--reviewer", "alice", "--reason", "checked", "--policies",
         str(proxy.extra_args[1])],
        check=True, cwd=PROJECT_ROOT, env=clean_env(), capture_output=True,
    )  # fmt: skip


def test_allowed_runs_and_its_outcome_is_recorded(airlock: Proxy) -> None:
    ran = []

    @guard("run_sql", target="db/prod", params=lambda sql: {"statement": sql},
           client=client(airlock))  # fmt: skip
    def query(sql: str) -> str:
        ran.append(sql)
        return "3 rows"

    assert query("SELECT * FROM users") == "3 rows"
    assert ran == ["SELECT * FROM users"]
    [run] = runs(airlock, action="run_sql", decision="ALLOW")
    assert (run.agent, run.method, run.context["source"]) == ("ops-bot", "GUARD", "guard")
    deadline = time.monotonic() + 5
    while runs(airlock, action="run_sql", decision="ALLOW")[0].outcome is None:
        assert time.monotonic() < deadline, "the outcome was never recorded"
        time.sleep(0.05)
    assert runs(airlock, action="run_sql", decision="ALLOW")[0].outcome == "succeeded"
    # Evidence only its own agent may write, once: another agent, or a second report, is 404.
    url = f"http://127.0.0.1:{guard_port(airlock)}/v1/runs/{run.id}/outcome"
    for agent in ("billing-bot", "ops-bot"):
        again = requests.post(url, json={"status": "failed"}, auth=(agent, KEY), timeout=10)
        assert again.status_code == 404
    assert runs(airlock, action="run_sql", decision="ALLOW")[0].outcome == "succeeded"


def test_a_tool_that_fails_leaves_its_error_as_the_runs_evidence(airlock: Proxy) -> None:
    failing = guard(
        "run_sql", "db/prod", {"statement": "SELECT count(*) FROM big"}, client=client(airlock)
    )
    with pytest.raises(RuntimeError), failing:
        raise RuntimeError("statement timeout after 30 s")

    def reported() -> Any:
        found = [
            r for r in runs(airlock, action="run_sql") if r.params["statement"].endswith("big")
        ]
        return found[0] if found and found[0].outcome else None

    deadline = time.monotonic() + 5
    while (run := reported()) is None:
        assert time.monotonic() < deadline, "the outcome was never recorded"
        time.sleep(0.05)
    assert run.outcome == "failed"
    assert run.outcome_detail == {"detail": "RuntimeError: statement timeout after 30 s"}


def test_an_outcome_keeps_no_secret_the_tool_printed(airlock: Proxy) -> None:
    """The error a tool raised is its run's evidence, redacted as a body is: the values of
    fields named like secrets go (as JSON, as `name: value`, or as XML elements: STS's answer),
    the rest stays readable."""
    failing = guard(
        "run_sql", "db/prod", {"statement": "SELECT * FROM creds"}, client=client(airlock)
    )
    with pytest.raises(RuntimeError), failing:
        raise RuntimeError(
            'login refused for {"user": "admin", "password": "hunter2Secret"}\n'
            "db_password: hunter2Secret\n"
            "<Credentials><SecretAccessKey>hunter2Secret</SecretAccessKey></Credentials>"
        )

    def reported() -> Any:
        found = [
            r for r in runs(airlock, action="run_sql") if r.params["statement"].endswith("creds")
        ]
        return found[0] if found and found[0].outcome else None

    deadline = time.monotonic() + 5
    while (run := reported()) is None:
        assert time.monotonic() < deadline, "the outcome was never recorded"
        time.sleep(0.05)
    detail = run.outcome_detail["detail"]
    assert "hunter2Secret" not in detail
    assert "login refused" in detail and '"user": "admin"' in detail
    assert "<Credentials><SecretAccessKey>[REDACTED]</SecretAccessKey>" in detail
    assert detail.count("[REDACTED]") == 3


def test_blocked_never_runs_and_says_why(airlock: Proxy) -> None:
    ran = []
    dropping = guard(
        "run_sql", "db/prod", {"statement": "DROP TABLE users"}, client=client(airlock)
    )
    with pytest.raises(Blocked) as refused, dropping:
        ran.append(1)
    assert ran == []
    assert refused.value.rules == ["no-prod-drops"]
    assert "never drop tables" in str(refused.value)


def test_approval_from_another_process_releases_exactly_one_execution(airlock: Proxy) -> None:
    ran = []
    call = guard("run_shell", "web-1", {"command": "systemctl restart app"}, wait=30,
                 idempotency_key="restart-web-1", client=client(airlock))  # fmt: skip
    reviewer = threading.Thread(target=approve_from_another_process, args=(airlock, "run_shell"))
    reviewer.start()
    with call:
        ran.append(1)
    reviewer.join()
    assert ran == [1] and call.answer is not None
    assert call.answer["reason"] == "approved by alice"
    again = guard("run_shell", "web-1", {"command": "systemctl restart app"},
                  idempotency_key="restart-web-1", client=client(airlock))  # fmt: skip
    with pytest.raises(Blocked, match="already been released once"), again:
        ran.append(2)
    assert ran == [1]


def test_an_approval_is_for_its_target_and_context_only(airlock: Proxy) -> None:
    """Approved for web-staging, the same command is not released on web-prod, nor with another
    context: with the same idempotency key it is a different call (409), without one it is a
    call of its own, held for a reviewer; the approved call is still released once."""
    url = f"http://127.0.0.1:{guard_port(airlock)}/v1/guard"

    def ask(action: str, target: str, environment: str, key: str | None) -> requests.Response:
        call = {"action": action, "target": target, "params": {"command": "systemctl restart app"},
                "context": {"environment": environment}}  # fmt: skip
        if key:
            call["idempotency_key"] = key
        return requests.post(url, json=call, auth=("ops-bot", KEY), timeout=10)

    for action, key in (("restart_service", "restart-staging"), ("reload_service", None)):
        held = ask(action, "web-staging", "staging", key).json()
        assert held["decision"] == "REQUIRE_APPROVAL"
        approve_from_another_process(airlock, action)
        for target, environment in (("web-prod", "staging"), ("web-staging", "production")):
            other = ask(action, target, environment, key)
            if key:
                assert other.status_code == 409
                assert other.json()["decision"] == "BLOCK"
                assert "used for a different call" in other.json()["reason"]
            else:
                assert other.json()["decision"] == "REQUIRE_APPROVAL"
                assert other.json()["approval_id"] != held["approval_id"]
        released = ask(action, "web-staging", "staging", key).json()
        assert (released["decision"], released["reason"]) == ("ALLOW", "approved by alice")
    deadline = time.monotonic() + 5  # outcomes are written after the answer
    while [r.outcome for r in runs(airlock, action="restart_service", target="web-prod")] != [
        "key_reused"
    ]:
        assert time.monotonic() < deadline, "the call on web-prod is not on record as refused"
        time.sleep(0.05)


def test_a_release_whose_answer_never_arrived_is_not_spent(airlock: Proxy) -> None:
    """The retry that wins an approved call's release loses its connection before the answer:
    the call never ran, so the agent's next ask is released (once), not told it already was."""
    url = f"http://127.0.0.1:{guard_port(airlock)}/v1/guard"
    call = {"action": "restart_queue", "target": "queue-1", "params": {"queue": "mail"},
            "idempotency_key": "restart-queue-1"}  # fmt: skip
    held = requests.post(url, json=call, auth=("ops-bot", KEY), timeout=10).json()
    assert held["decision"] == "REQUIRE_APPROVAL"
    approve_from_another_process(airlock, "restart_queue")
    body = json.dumps(call).encode()
    token = base64.b64encode(f"ops-bot:{KEY}".encode())
    with socket.create_connection(("127.0.0.1", guard_port(airlock))) as dropped:
        dropped.sendall(
            b"POST /v1/guard HTTP/1.1\r\nHost: airlock\r\nAuthorization: Basic " + token
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
    # closed before the answer; wait until the retry was decided and answered into the void
    deadline = time.monotonic() + 5
    while len(runs(airlock, action="restart_queue")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    again = requests.post(url, json=call, auth=("ops-bot", KEY), timeout=10)
    assert (again.json()["decision"], again.json()["reason"]) == ("ALLOW", "approved by alice")
    once_more = requests.post(url, json=call, auth=("ops-bot", KEY), timeout=10)
    assert once_more.status_code == 409
    assert "already been released once" in once_more.json()["reason"]
    deadline = time.monotonic() + 5  # on record: the dropped answer, then the one that ran
    while [r.outcome for r in runs(airlock, action="restart_queue")][1:3] != ["undelivered", None]:
        assert time.monotonic() < deadline, "the undelivered answer is not on record"
        time.sleep(0.05)
    assert verify_audit(open_engine(airlock.db_url)).ok


def test_denied_raises_and_the_async_decorator_never_runs(airlock: Proxy) -> None:
    ran = []

    @guard("rotate_keys", target="kms/prod", wait=30, client=client(airlock))
    async def rotate() -> None:
        ran.append(1)

    reviewer = threading.Thread(
        target=approve_from_another_process, args=(airlock, "rotate_keys", "deny")
    )
    reviewer.start()
    with pytest.raises(Denied, match="denied by alice: checked"):
        asyncio.run(rotate())
    reviewer.join()
    assert ran == []


def test_an_unanswered_approval_times_out_with_its_id(airlock: Proxy) -> None:
    unanswered = guard("wipe_cache", "cdn", wait=1, client=client(airlock))
    with pytest.raises(ApprovalPending) as pending, unanswered:
        raise AssertionError("ran without approval")
    assert len(pending.value.approval_id) == 32
    # Only the agent whose call it holds may wait on it; an unknown id is no long wait either
    # (a request that long-polled would outlast the client's 10 s timeout).
    base = f"http://127.0.0.1:{guard_port(airlock)}/v1/approvals"
    for agent, approval_id in (("billing-bot", pending.value.approval_id), ("ops-bot", "0" * 32)):
        answer = requests.get(f"{base}/{approval_id}?wait=30", auth=(agent, KEY), timeout=10)
        assert answer.status_code == 404
        assert "no call of yours was answered with this approval id" in answer.json()["error"]
    mine = requests.get(
        f"{base}/{pending.value.approval_id}?wait=0", auth=("ops-bot", KEY), timeout=10
    )
    assert mine.json()["state"] == "PENDING"


def test_bad_input_is_a_400_naming_the_field_and_nothing_is_recorded(airlock: Proxy) -> None:
    url = f"http://127.0.0.1:{guard_port(airlock)}/v1/guard"
    auth = ("ops-bot", KEY)
    before = len(runs(airlock))
    cases = [
        (b"{not json", "not JSON"),
        (json.dumps({"action": "run_sql"}).encode(), "'target' is required"),
        (json.dumps({"action": "run_sql", "target": 5}).encode(), "'target' has the wrong type"),
        (json.dumps({"action": "x", "target": "t", "approve": True}).encode(), "unknown field"),
        (json.dumps({"action": "Drop Table", "target": "t"}).encode(), "canonical action"),
        (json.dumps({"target": "t"}).encode(), "'action' is required (or 'tool' and 'server')"),
        (json.dumps({"tool": "Bash", "server": ""}).encode(), "'server' must be 1 to 256"),
        (json.dumps({"action": "x", "target": "t", "tool": "y"}).encode(), "'tool' cannot be"),
        (json.dumps({"tool": "a" * 257, "server": "s"}).encode(), "'tool' must be 1 to 256"),
        (
            json.dumps({"action": "a" * 900_000, "target": "t"}).encode(),
            "field 'action' has 900000 characters: at most 256",
        ),
        (
            json.dumps({"action": "x", "target": "t", "provider": "p" * 257}).encode(),
            "field 'provider' has 257 characters: at most 256",
        ),
        (
            json.dumps({"action": "x", "target": "t" * 2049}).encode(),
            "field 'target' has 2049 characters: at most 2048",
        ),
        (
            b'{"action": "x", "target": "t", "params": ' + b'{"a": ' * 600 + b"1" + b"}" * 601,
            "nests deeper than 64 levels",
        ),
        (
            b'{"action": "x", "target": "t", "params": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            "nests deeper than 64 levels",
        ),
    ]
    for body, says in cases:
        answer = requests.post(url, data=body, auth=auth, timeout=10)
        assert answer.status_code == 400, body
        assert says in answer.json()["error"]
    assert len(runs(airlock)) == before


def test_wrong_credentials_are_a_401_and_the_sdk_fails_closed(airlock: Proxy) -> None:
    url = f"http://127.0.0.1:{guard_port(airlock)}/v1/guard"
    call = {"action": "run_sql", "target": "db", "params": {"statement": "SELECT 1"}}
    assert requests.post(url, json=call, auth=("ops-bot", "wrong"), timeout=10).status_code == 401
    bearer = {"Authorization": f"Bearer ops-bot:{KEY}"}
    assert requests.post(url, json=call, headers=bearer, timeout=10).json()["decision"] == "ALLOW"
    wrong = guard("run_sql", "db", {"statement": "SELECT 1"}, client=client(airlock, key="x"))
    with pytest.raises(Unavailable), wrong:
        raise AssertionError("ran unauthenticated")
    unreachable = guard("run_sql", "db", client=Client(f"http://127.0.0.1:{free_port()}", "a"))
    with pytest.raises(Unavailable), unreachable:
        raise AssertionError("ran without Airlock")


def test_the_agent_has_no_way_to_approve_itself(airlock: Proxy) -> None:
    """No approve endpoint on the guard port; the guard port through the proxy is refused."""
    base = f"http://127.0.0.1:{guard_port(airlock)}"
    for path in ("/v1/approvals/0123456789abcdef/approve", "/v1/approve"):
        answer = requests.post(base + path, json={}, auth=("ops-bot", KEY), timeout=10)
        assert answer.status_code in (404, 405)
    through = airlock.session("ops-bot", KEY).post(base + "/v1/guard", json={}, timeout=10)
    assert through.status_code == 403
    assert "guard ports are refused" in through.json()["reason"]
    assert verify_audit(open_engine(airlock.db_url)).ok


def test_the_sdk_installs_and_imports_without_mitmproxy(tmp_path: Path) -> None:
    """A bare interpreter (no site-packages): the SDK needs the standard library only."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); import airlock_guard; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mitmproxy', 'airlock')))",
         str(PROJECT_ROOT / "sdk")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "[]"


# --- the Claude Code hook --------------------------------------------------------------------


def hook(proxy: Proxy, event: dict[str, Any], wait: float = 20) -> dict[str, Any] | None:
    """`airlock hook claude-code` as Claude Code runs it: the event on stdin, JSON on stdout."""
    done = hook_at(f"http://127.0.0.1:{guard_port(proxy)}", event, wait)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


def hook_at(url: str, event: Any, wait: float = 20) -> subprocess.CompletedProcess[str]:
    env = clean_env() | {"AIRLOCK_GUARD_URL": url, "AIRLOCK_AGENT": "ops-bot",
                         "AIRLOCK_AGENT_KEY": KEY}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "airlock.console.cli", "hook", "claude-code", "--wait", str(wait)],
        input=json.dumps(event), capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def bash(command: str) -> dict[str, Any]:
    """A PreToolUse event as Claude Code sends it."""
    return {
        "session_id": "s-1", "transcript_path": "/tmp/t.jsonl", "cwd": "/srv/app",
        "hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_use_id": "toolu_1",
        "tool_input": {"command": command, "description": "a command"},
    }  # fmt: skip


def decision(answer: dict[str, Any] | None) -> tuple[str, str] | None:
    if answer is None:
        return None
    out = answer["hookSpecificOutput"]
    assert out["hookEventName"] == "PreToolUse"
    return out["permissionDecision"], out["permissionDecisionReason"]


def test_the_claude_code_hook_denies_what_airlock_blocks(airlock: Proxy) -> None:
    verdict = decision(hook(airlock, bash("rm -rf /srv/data")))
    assert verdict is not None and verdict[0] == "deny"
    assert "Agents never delete recursively" in verdict[1]


def test_the_claude_code_hook_leaves_allowed_calls_and_reads_to_claude_code(
    airlock: Proxy,
) -> None:
    assert hook(airlock, bash("ls -la")) is None  # ALLOW: Claude Code's own permissions apply
    read = bash("") | {"tool_name": "Read", "tool_input": {"file_path": "/srv/app/x.py"}}
    assert hook(airlock, read) is None  # not guarded at all
    [run] = runs(airlock, action="run_shell", decision="ALLOW")
    assert run.params["command"] == "ls -la" and run.target == "/srv/app"
    assert run.mapping_id == "claude_code.bash"  # named by mappings/claude-code.yaml


def test_the_hook_maps_an_mcp_tool_as_the_proxy_does(airlock: Proxy) -> None:
    """GitHub's MCP create_issue, through Claude Code, is the create_issue of GitHub's REST API
    and of its MCP server over HTTP: mappings/mcp.yaml names it for all three."""
    mcp = bash("") | {
        "tool_name": "mcp__github__create_issue",
        "tool_input": {"owner": "acme", "repo": "app", "title": "Flaky test"},
    }
    hook(airlock, mcp)
    [run] = runs(airlock, action="create_issue")
    assert (run.mapping_id, run.target, run.category) == (
        "mcp.github.create_issue",
        "github/acme/app",
        "code",
    )
    assert run.params == {"owner": "acme", "repo": "app", "title": "Flaky test"}
    assert run.context["source"] == "guard"


def test_the_claude_code_hook_waits_for_a_reviewer_then_allows(airlock: Proxy) -> None:
    mcp = bash("") | {
        "tool_name": "mcp__linear__save_issue",
        "tool_input": {"team": "app", "title": "Flaky test"},
    }
    reviewer = threading.Thread(
        target=approve_from_another_process, args=(airlock, "mcp.linear.save_issue")
    )
    reviewer.start()
    verdict = decision(hook(airlock, mcp))
    reviewer.join()
    assert verdict == ("allow", "Airlock: approved by alice")


def test_the_hook_denies_whatever_keeps_airlock_from_answering() -> None:
    """Claude Code runs the tool when a hook exits 1: a Guard URL on a port that does not speak
    HTTP, a URL with a typo, an event the hook cannot read are each denied (exit 0, "deny"), and
    the SDK raises Unavailable for them rather than an error of http.client."""
    listener = socket.create_server(("127.0.0.1", 0))
    not_http = f"http://127.0.0.1:{listener.getsockname()[1]}"

    def banner() -> None:  # an SSH daemon, say: a banner line, then close
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    threading.Thread(target=banner, daemon=True).start()
    garbled = bash("rm -rf /srv/data") | {"tool_input": ["rm", "-rf", "/srv/data"]}
    try:
        for url, event in (
            (not_http, bash("rm -rf /srv/data")),
            ("http://127.0.0.1:8181x", bash("rm -rf /srv/data")),
            (not_http, garbled),
        ):
            done = hook_at(url, event)
            assert done.returncode == 0, done.stderr
            verdict = decision(json.loads(done.stdout))
            assert verdict is not None and verdict[0] == "deny", (url, event)
            assert "Airlock could not decide, so the call must not run" in verdict[1]
        for url in (not_http, "http://127.0.0.1:8181x"):
            call = guard("run_shell", "web-1", {"command": "ls"}, client=Client(url, "ops-bot"))
            with pytest.raises(Unavailable), call:
                raise AssertionError("ran without Airlock")
    finally:
        listener.close()


class _Mitmdump(Proxy):
    """The gate in someone's own mitmproxy: `mitmdump -s addons/gate.py`, with mitmproxy's own
    proxyauth instead of an agents file, and the Guard API beside it."""

    def command(self) -> list[str]:
        return [
            sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()",
            "--listen-host", "127.0.0.1", "--listen-port", str(self.port),
            "--set", f"confdir={self.confdir}", "-s", str(PROJECT_ROOT / "addons" / "gate.py"),
            "--set", f"airlock_db={self.db_url}", "--set", f"airlock_anchor_dir={self.workdir}",
            "--set", "proxyauth=ops-bot:only-ops-knows", *self.extra_args,
        ]  # fmt: skip


def test_beside_mitmproxys_own_proxyauth_the_guard_api_asks_for_the_same_credentials(
    tmp_path: Path, session_upstream: Any
) -> None:
    """With mitmproxy's proxyauth and no agents file, the proxy refused wrong credentials while
    the Guard API took any name as given: any caller could act as ops-bot there."""
    port = free_port()
    proxy = _Mitmdump(
        tmp_path, f"sqlite:///{tmp_path / 'airlock.db'}", {}, session_upstream.ca_file,
        tmp_path / "certs", ["--set", f"airlock_guard_port={port}"],
    )  # fmt: skip
    proxy.start()
    try:
        assert proxy.process is not None
        wait_for_port(port, proxy.process, proxy.log_file)
        url = f"http://127.0.0.1:{port}/v1/guard"
        call = {"action": "run_shell", "params": {"command": "ls"}, "target": "web-1"}

        def ask(auth: tuple[str, str] | None) -> requests.Response:
            return requests.post(url, json=call, auth=auth, timeout=10)

        assert ask(("ops-bot", "guess")).status_code == 401
        assert ask(None).status_code == 401
        answered = ask(("ops-bot", "only-ops-knows"))
        assert answered.status_code == 200, answered.text
        assert answered.json()["decision"] in ("ALLOW", "REQUIRE_APPROVAL")
        [run] = runs(proxy)
        assert run.agent == "ops-bot"
    finally:
        proxy.stop()


def outcome_of(airlock: Proxy, table: str) -> tuple[str, Any]:
    """The outcome recorded on the run_sql run of this statement, once there is one."""
    deadline = time.monotonic() + 5
    while True:
        found = [r for r in runs(airlock, action="run_sql") if r.params == {"statement": table}]
        if found and found[0].outcome:
            return found[0].outcome, found[0].outcome_detail
        assert time.monotonic() < deadline, f"no outcome was recorded for {table}"
        time.sleep(0.05)


def test_a_generators_outcome_is_what_its_body_did_once_iterated(airlock: Proxy) -> None:
    """A decorated generator runs as it is iterated: it is admitted before its first item and
    its outcome is recorded when it is exhausted or fails, not when the call returns it."""
    ran: list[str] = []

    def exporting(table: str) -> guard:
        return guard("run_sql", target="db/prod", params={"statement": table},
                     client=client(airlock))  # fmt: skip

    @exporting("SELECT * FROM export_users")
    def rows() -> Iterator[int]:
        ran.append("users")
        yield 1
        raise RuntimeError("export failed half way")

    @exporting("SELECT * FROM export_orders")
    async def async_rows() -> Any:
        ran.append("orders")
        yield 1
        raise RuntimeError("async export failed half way")

    @exporting("SELECT * FROM export_refunds")
    async def async_all_rows() -> Any:
        await asyncio.sleep(0)
        yield 1

    @exporting("DROP TABLE export_users")
    def dropping() -> Iterator[int]:
        ran.append("drop")
        yield 1

    async def consume(items: Any) -> list[Any]:
        return [item async for item in items]

    with pytest.raises(RuntimeError, match="export failed half way"):
        list(rows())
    with pytest.raises(RuntimeError, match="async export failed half way"):
        asyncio.run(consume(async_rows()))
    assert asyncio.run(consume(async_all_rows())) == [1]
    with pytest.raises(Blocked):
        next(dropping())
    assert ran == ["users", "orders"]
    assert outcome_of(airlock, "SELECT * FROM export_users") == (
        "failed", {"detail": "RuntimeError: export failed half way"}
    )  # fmt: skip
    assert outcome_of(airlock, "SELECT * FROM export_orders") == (
        "failed", {"detail": "RuntimeError: async export failed half way"}
    )  # fmt: skip
    assert outcome_of(airlock, "SELECT * FROM export_refunds") == ("succeeded", None)


def test_a_callable_that_returns_an_awaitable_is_recorded_once_awaited(airlock: Proxy) -> None:
    async def failing() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("the query was cancelled")

    statement = {"statement": "SELECT * FROM export_invoices"}
    query = guard("run_sql", "db/prod", statement, client=client(airlock))(lambda: failing())
    with pytest.raises(RuntimeError):
        asyncio.run(query())
    assert outcome_of(airlock, "SELECT * FROM export_invoices") == (
        "failed", {"detail": "RuntimeError: the query was cancelled"}
    )  # fmt: skip
