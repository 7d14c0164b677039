"""Text from a request, shown to a person: its characters, never markup or terminal control."""

from __future__ import annotations

from rich.console import Console

from airlock.console.untrusted import escaped, shown, visible


def test_controls_and_reordering_are_written_as_escapes() -> None:
    assert visible("cus_1[/x]") == "cus_1[/x]"
    assert visible("a\x1b[2Jb\rc\x07\x9b") == "a\\x1b[2Jb\\rc\\x07\\x9b"
    assert visible("evil\u202egpj.exe") == "evil\\u202egpj.exe"  # read backwards otherwise
    assert visible("a\nb") == "a\\nb" and visible("a\nb\tc", lines=True) == "a\nb\tc"
    assert visible("café — 東京") == "café — 東京"


def test_escaped_and_shown_print_what_was_sent() -> None:
    console = Console(width=200, record=True, emoji=False, highlight=False)
    sent = "cus_1[/x] [red]a\\"
    console.print(f"[bold]target[/] {escaped(sent)}")
    console.print(shown("[/] :smiley:"))
    assert console.export_text() == "target cus_1[/x] [red]a\\\n[/] :smiley:\n"
