"""Every command answers --help, and the commands that decide approvals know the reviewers."""

from __future__ import annotations

import pytest

from airlock.console.cli import build_parser


@pytest.mark.parametrize(
    "command",
    [["run"], ["pending"], ["approve"], ["deny"], ["review"], ["check"], ["explain"], ["test"],
     ["vocabulary"], ["agents", "key"], ["audit", "verify"]],
)  # fmt: skip
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*command, "--help"])
    assert done.value.code == 0
    assert "usage: airlock" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["approve", "deny", "review"])
def test_deciding_commands_read_the_reviewers_file(command: str) -> None:
    extra = {"approve": ["x"], "deny": ["x", "--reason", "r"], "review": []}[command]
    assert build_parser().parse_args([command, *extra]).policies.endswith("policies")
