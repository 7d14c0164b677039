"""The official MCP client (streamable HTTP), as an agent runs it: through HTTPS_PROXY, trusting
SSL_CERT_FILE. Run by the SDK virtualenv: mcp_client.py URL TOOL JSON_ARGUMENTS [TOOL ARGS]...
Prints one JSON line per call: what the model would be handed.
"""

import asyncio
import json
import sys
from typing import Any

from mcp import Client


def recorder(messages: list[str | None]) -> Any:
    """A progress callback that keeps each notification's message."""

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    return on_progress


async def main(url: str, calls: list[tuple[str, dict]]) -> None:
    async with Client(url, read_timeout_seconds=120) as client:
        for tool, arguments in calls:
            progress: list[str | None] = []
            result = await client.call_tool(tool, arguments, progress_callback=recorder(progress))
            texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
            answer = {
                "tool": tool,
                "is_error": result.is_error,
                "text": "\n".join(texts),
                "meta": result.meta,
                "progress": progress,
            }
            print(json.dumps(answer, default=str), flush=True)


args = sys.argv[2:]
asyncio.run(main(sys.argv[1], [(args[i], json.loads(args[i + 1])) for i in range(0, len(args), 2)]))
