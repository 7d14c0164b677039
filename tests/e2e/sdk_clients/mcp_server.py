"""An MCP server (the official SDK's MCPServer, streamable HTTP over TLS) standing in for a
system of record: each tool appends what it did to a log, so a test counts what really ran.

Run by the SDK virtualenv: mcp_server.py PORT CERT KEY CALLS_LOG
"""

import json
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

port, cert, key, calls_log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
server = MCPServer("stand-in")


def ran(tool: str, arguments: dict) -> None:
    with open(calls_log, "a") as log:
        log.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")


@server.tool()
def add(a: int, b: int) -> str:
    """Add two numbers."""
    ran("add", {"a": a, "b": b})
    return str(a + b)


@server.tool()
def create_issue(owner: str, repo: str, title: str) -> str:
    """Open an issue."""
    ran("create_issue", {"owner": owner, "repo": repo, "title": title})
    return f"opened {owner}/{repo}#7: {title}"


@server.tool()
def delete_repo(repo: str) -> str:
    """Delete a repository."""
    ran("delete_repo", {"repo": repo})
    return f"deleted {repo}"


@server.tool()
def refund(charge: str, amount: int) -> str:
    """Refund a charge."""
    ran("refund", {"charge": charge, "amount": amount})
    return f"refunded {amount} of {charge}"


app = server.streamable_http_app(
    host="0.0.0.0",  # reached as mcp.example.com through the proxy: no rebinding check
    transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
)
uvicorn.run(
    app, host="127.0.0.1", port=port, ssl_certfile=cert, ssl_keyfile=key, log_level="warning"
)
