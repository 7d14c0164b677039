"""A Claude Code PreToolUse hook: each tool call that changes something is guarded by Airlock.

Claude Code runs `airlock hook claude-code` (or `python -m airlock_guard.claude_code`) before a
tool and passes the event on stdin. Each call goes to the Guard API as a server's tool, and
Airlock's mappings name its action (mappings/claude-code.yaml, mappings/mcp.yaml):
  Bash                                  tool Bash of server claude-code   target: the working dir
  Edit, MultiEdit, Write, NotebookEdit  that tool of server claude-code   target: the file
  mcp__<server>__<tool>                 tool <tool> of server <server>, as the MCP server's tool
Other tools (reads, searches, the to-do list) are left to Claude Code's own permissions.
BLOCK is answered "deny" with Airlock's reason (Claude sees it); REQUIRE_APPROVAL waits for a
reviewer up to --wait seconds (below the hook's own timeout), then "allow" once approved, or
"deny" with why; ALLOW leaves the call to Claude Code's own permission rules; SIMULATED (the
agent is on trial) is "deny", saying that the call was recorded and not run. If Airlock cannot
be reached, or anything else goes wrong, the call is denied (fail closed): Claude Code takes any
exit but 0 and 2 as a non-blocking error and would run the tool.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from typing import Any

from airlock_guard import AirlockError, ApprovalPending, Blocked, Client, Simulated, guard

EDITS = frozenset({"Edit", "MultiEdit", "Write", "NotebookEdit"})
_MCP = re.compile(r"mcp__(?P<server>[^_]+(?:_[^_]+)*)__(?P<tool>.+)\Z")


CLAUDE_CODE = "claude-code"  # the server Claude Code's own tools belong to


def tool_of(event: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]] | None:
    """(server, tool, target, arguments) of a tool call Airlock guards; None for the others."""
    tool, given = event.get("tool_name", ""), event.get("tool_input") or {}
    if tool == "Bash":
        return CLAUDE_CODE, tool, str(event.get("cwd", "")), dict(given)
    if tool in EDITS:
        path = str(given.get("file_path") or given.get("notebook_path") or "")
        return CLAUDE_CODE, tool, path, dict(given)
    found = _MCP.match(tool)
    if found:
        return found["server"], found["tool"], "", dict(given)
    return None


def decide(event: dict[str, Any], client: Client, wait: float) -> dict[str, Any] | None:
    """The hook's answer (None: no opinion, Claude Code's own permissions apply)."""
    named = tool_of(event)
    if named is None:
        return None
    server, tool, target, arguments = named
    # The same call in the same session joins its approval, whichever tool_use_id it has.
    key_material = json.dumps(
        [event.get("session_id"), server, tool, target, arguments], sort_keys=True
    )
    key = "claude-code:" + hashlib.sha256(key_material.encode()).hexdigest()[:40]
    call = guard(tool, target, arguments, provider=CLAUDE_CODE, idempotency_key=key,
                 wait=wait, client=client, server=server)  # fmt: skip
    try:
        answer = call.admit()
    except Blocked as e:
        return _answer("deny", f"Airlock: {e.reason} (request {e.request_id})")
    except Simulated as e:  # on trial: recorded, not run; Claude is told so
        return _answer("deny", f"Airlock: simulated, not run ({e}; request {e.request_id})")
    except ApprovalPending as e:
        return _answer("deny", f"Airlock: {e}. Try the same call again once it is approved.")
    except AirlockError as e:
        return _answer("deny", f"Airlock could not decide, so the call must not run: {e}")
    if answer.get("approval_id"):  # a reviewer approved this very call
        return _answer("allow", f"Airlock: {answer.get('reason')}")
    return None


def _answer(decision: str, reason: str) -> dict[str, Any]:
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": decision,
            "permissionDecisionReason": reason,
        }
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="airlock hook claude-code",
        description="Claude Code PreToolUse hook: guard shell commands, file edits and MCP "
        "tools with Airlock's Guard API (AIRLOCK_GUARD_URL, AIRLOCK_AGENT, AIRLOCK_AGENT_KEY).",
    )
    parser.add_argument(
        "--wait", type=float, default=50.0,
        help="seconds to wait for a reviewer (keep below the hook's timeout)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        event = json.load(sys.stdin)
    except ValueError as e:
        print(f"airlock hook: the event on stdin is not JSON: {e}", file=sys.stderr)
        return 2  # Claude Code blocks the call and shows this
    try:
        answer = decide(event, Client(), args.wait)
    except Exception as e:  # an exit 1 would let the tool run: deny instead
        print(f"airlock hook: {type(e).__name__}: {e}", file=sys.stderr)
        answer = _answer(
            "deny", f"Airlock could not decide, so the call must not run: {type(e).__name__}: {e}"
        )
    if answer is not None:
        json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
