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


def test_invisible_format_characters_are_written_as_escapes() -> None:
    """Review: `dry_run\u200b` (a zero-width space) looked like `dry_run`, the key the tool
    reads; every format character (Cf), line and paragraph separator is made visible."""
    assert visible("dry_run\u200b") == "dry_run\\u200b" != visible("dry_run")
    for hidden in ("\u2060", "\ufeff", "\u00ad", "\u2028", "\u2029", "\U000e0041", "\U000e007f"):
        shown_as = visible(f"a{hidden}b")
        assert hidden not in shown_as and shown_as.startswith("a\\") and shown_as.endswith("b")
    assert visible("\U000e0041") == "\\U000e0041"
    assert escaped("key\u200b[/x]") == "key\\u200b\\[/x]"
