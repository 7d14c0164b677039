"""One line per decision on the console, with every field an operator greps for.

Styles come from rich, rendered to terminal codes once at start-up: a line is then plain string
formatting (~3 µs) instead of a rich render (~55 µs), which matters at hundreds of lines a second.
Lines are written in batches at most FLUSH_SECONDS apart, one write for many lines.
Only redacted values reach this module; the agent chose many of them (its name, an MCP tool's
name in the action, a target, params), so each is written with its controls escaped and cut to a
length: an escape sequence would redraw the operator's terminal, a 900 KB tool name would be a
900 KB line.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.style import Style

from airlock.console.untrusted import visible
from airlock.pipeline.run_record import RunSummary

_STYLES = {
    "ALLOW": "bold green",
    "BLOCK": "bold red",
    "REQUIRE_APPROVAL": "bold yellow",
    "APPROVED": "bold green",
    "DENIED": "bold red",
    "EXPIRED": "bold red",
    "ABANDONED": "bold red",
    "dim": "dim",
    "agent": "cyan",
    "action": "bold",
    "rules": "magenta",
    "note": "yellow",
}
_MAX_PARAM_CHARS = 60
_MAX_FIELD_CHARS = 160  # agent, action, operation, provider, target
FLUSH_SECONDS = 0.2


class DecisionLog:
    def __init__(self, file: TextIO | None = None) -> None:
        self.file = file or sys.stdout
        self._lines: list[str] = []
        self._stamp_second, self._stamp_text = -1, ""
        console = Console(file=self.file)
        # (prefix, suffix) terminal codes per style; empty when the output is not a terminal.
        self._codes: dict[str, tuple[str, str]] = {}
        for name, style in _STYLES.items():
            rendered = Style.parse(style).render("\0", color_system=console.color_system)
            prefix, _, suffix = rendered.partition("\0")
            self._codes[name] = (prefix, suffix)

    def _stamp(self, at: float) -> str:
        second = int(at)
        if second != self._stamp_second:
            self._stamp_second, self._stamp_text = (
                second,
                time.strftime("%H:%M:%S", time.localtime(at)),
            )
        return self._stamp_text

    def _paint(self, style: str, text: str) -> str:
        prefix, suffix = self._codes.get(style, ("", ""))
        return f"{prefix}{text}{suffix}" if text else ""

    def decision(self, decision: str, run: RunSummary, milliseconds: float, note: str = "") -> None:
        stamp = self._stamp(run.at)
        parts = [
            self._paint("dim", stamp),
            self._paint(decision, f"{decision:<16}"),
            self._paint("agent", _field(run.agent)),
            self._paint("action", _field(run.action)),
            self._paint("dim", f"({_field(run.operation)})") if run.operation else "",
            f"{_field(run.provider)} → {_field(run.target)}",
            self._paint("dim", _key_params(run.params)),
            f"risk={run.risk}" if run.risk is not None else "",
            f"{milliseconds:.2f}ms",
            self._paint("rules", f"rules={','.join(run.rules)}" if run.rules else ""),
            f"req={run.id}",
            self._paint("note", note),
        ]
        self._lines.append(" ".join(p for p in parts if p) + "\n")
        if len(self._lines) == 1:
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no event loop (scripts, tests): write now
                self.flush()

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            self.file.write("".join(lines))
            self.file.flush()


def _field(value: object, limit: int = _MAX_FIELD_CHARS) -> str:
    text = visible(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _key_params(params: dict[str, Any]) -> str:
    parts = []
    for name, value in params.items():
        if isinstance(value, (dict, list)):
            continue
        parts.append(f"{_field(name)}={_field(value, _MAX_PARAM_CHARS)}")
    return " ".join(parts)
