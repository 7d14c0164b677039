"""One line per decision on the console, with every field an operator greps for.

Only redacted values reach this module.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.text import Text

_STYLE = {
    "ALLOW": "bold green",
    "BLOCK": "bold red",
    "REQUIRE_APPROVAL": "bold yellow",
    "APPROVED": "bold green",
    "DENIED": "bold red",
    "EXPIRED": "bold red",
    "ABANDONED": "bold red",
}
_MAX_PARAM_CHARS = 60


class DecisionLog:
    def __init__(self, file: Any = None) -> None:
        self.console = Console(file=file or sys.stdout, highlight=False, soft_wrap=True)

    def decision(
        self,
        decision: str,
        run: dict[str, Any],
        milliseconds: float,
        note: str = "",
    ) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(run["at"]))
        line = Text.assemble(
            (f"{stamp} ", "dim"),
            (f"{decision:<16} ", _STYLE.get(decision, "bold")),
            (f"{run['agent']} ", "cyan"),
            (f"{run['action']} ", "bold"),
            f"{run['provider']} → {run['target']} ",
            (_key_params(run["params"]), "dim"),
            f" {milliseconds:.2f}ms",
            (f" rules={','.join(run['rules'])}" if run["rules"] else "", "magenta"),
            f" req={run['id'][:12]}",
            (f" {note}" if note else "", "yellow"),
        )
        self.console.print(line)


def _key_params(params: dict[str, Any]) -> str:
    parts = []
    for name, value in params.items():
        if isinstance(value, (dict, list)):
            continue
        text = str(value)
        if len(text) > _MAX_PARAM_CHARS:
            text = text[: _MAX_PARAM_CHARS - 1] + "…"
        parts.append(f"{name}={text}")
    return " ".join(parts)
