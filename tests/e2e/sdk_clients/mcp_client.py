"""The official MCP client (streamable HTTP), as an agent runs it: through HTTPS_PROXY, trusting
SSL_CERT_FILE. Run by the SDK virtualenv: mcp_client.py URL TOOL JSON_ARGUMENTS [TOOL ARGS]...
Prints one JSON line per call: what the model would be handed.
"""

import asyncio
import json
import sys

from mcp import Client


async def main(url: str, calls: list[tuple[str, dict]]) -> None:
    async with Client(url, read_timeout_seconds=120) as client:
        for tool, arguments in calls:
            result = await client.call_tool(tool, arguments)
            texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
            meta = result.meta if hasattr(result, "meta") else None
            print(
                json.dumps(
                    {
                        "tool": tool,
                        "is_error": result.is_error,
                        "text": "\n".join(texts),
                        "meta": meta,
                    },
                    default=str,
                ),
                flush=True,
            )


args = sys.argv[2:]
asyncio.run(main(sys.argv[1], [(args[i], json.loads(args[i + 1])) for i in range(0, len(args), 2)]))
