"""`make bench`: the runtime spine's size before the rebuild (issue 15) and now, in lines and in
code lines (no blank lines, comments or docstrings), read from git for the revision before."""

from __future__ import annotations

import ast
import io
import subprocess
import tokenize

from tests.helpers.proxy import PROJECT_ROOT

# The revision issue 15 described: gate, decider, writer, writer process, wire, commit log and
# prepared statements, ~2,600 lines.
BEFORE_REVISION = "3a0ceba"
BEFORE = {
    "transport and durability": ["store/wire.py", "store/commit_log.py", "store/writer.py",
                                 "store/writer_process.py", "store/prepared.py"],
    "gate and decider": ["addons/gatekeeper.py", "addons/decider.py"],
}  # fmt: skip
# The files that do those jobs now (holds, reload, settlement pushes, several instances, the
# Guard API's calls and approve-with-edit included; simulation, priors and the Guard API's
# server are addons of their own and not counted).
NOW = {
    "transport and durability": ["decider/wire.py", "decider/worker.py", "decider/serve.py",
                                 "store/writer.py", "store/prepared.py"],
    "gate and decider": ["addons/gatekeeper.py", "addons/runtime.py", "addons/identity.py",
                         "addons/streams.py", "addons/control_surface.py", "addons/holds.py",
                         "addons/refusals.py", "addons/outcomes.py", "decider/client.py",
                         "decider/core.py", "decider/messages.py", "store/settlements.py"],
}  # fmt: skip


def code_lines(source: str) -> int:
    """Lines holding code: not blank, not only a comment, not a docstring."""
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = body[0] if body else None
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstrings.update(range(value.lineno, (value.end_lineno or 0) + 1))
    code: set[int] = set()
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
               tokenize.ENDMARKER}  # fmt: skip
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skipped:
            code.update(range(token.start[0], token.end[0] + 1))
    return len(code - docstrings)


def _source(path: str, revision: str | None) -> str:
    if revision is None:
        return (PROJECT_ROOT / path).read_text()
    return subprocess.run(
        ["git", "show", f"{revision}:{path}"], cwd=PROJECT_ROOT, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip


def _sizes(groups: dict[str, list[str]], revision: str | None) -> dict[str, tuple[int, int]]:
    sizes = {}
    for group, paths in groups.items():
        sources = [_source(path, revision) for path in paths]
        sizes[group] = (sum(len(s.splitlines()) for s in sources),
                        sum(code_lines(s) for s in sources))  # fmt: skip
    return sizes


def spine_report() -> str:
    if not (PROJECT_ROOT / ".git").exists():
        return "Runtime spine: not measured (needs the git history)"
    try:
        before = _sizes(BEFORE, BEFORE_REVISION)
    except subprocess.CalledProcessError:
        return f"Runtime spine: not measured ({BEFORE_REVISION} is not in this clone's history)"
    now = _sizes(NOW, None)
    parts = []
    for group in BEFORE:
        (lines_before, code_before), (lines_now, code_now) = before[group], now[group]
        parts.append(
            f"{group} {lines_before:,} lines ({code_before:,} of code) → {lines_now:,} "
            f"({code_now:,}), {(code_now - code_before) / code_before:+.0%} code"
        )
    total_before = sum(code for _, code in before.values())
    total_now = sum(code for _, code in now.values())
    return (
        f"Runtime spine at {BEFORE_REVISION} (before issue 15) and now: "
        + "; ".join(parts)
        + f"; in all {total_before:,} → {total_now:,} code lines"
    )


if __name__ == "__main__":
    print(spine_report())
