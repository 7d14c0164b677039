"""README is the front door: what it names must exist, and its examples must parse and load, so
it cannot drift silently (counts and the vocabulary are checked beside the code they describe:
test_policy_tests.py, test_mappings.py)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import yaml

from airlock.console.cli import build_parser
from airlock.pipeline.policies import load_policies
from tests.helpers.proxy import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()
FENCED = re.compile(r"```(\w+)\n(.*?)```", re.S)
# Flags README shows for other programs: mitmdump's --set, curl's, pytest's.
OTHER_PROGRAMS = {"--set", "--http2", "--json", "--cacert", "--resolve", "--proxy"}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    names = {option for action in parser._actions for option in action.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names |= flags_of(sub)
    return names


def test_every_flag_readme_names_exists() -> None:
    known = set().union(*(flags_of(p) for p in subcommands().values()))
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", README))
    assert named - known - OTHER_PROGRAMS == set()


def test_every_airlock_command_readme_names_exists() -> None:
    commands = set(subcommands())
    named = set(re.findall(r"`airlock ([a-z][a-z-]*)", README))
    for language, block in FENCED.findall(README):
        if language == "sh":
            named |= set(re.findall(r"^(?:\.venv/bin/)?airlock ([a-z][a-z-]*)", block, re.M))
    assert named - commands == set()


def test_every_make_target_readme_names_exists() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*)", README))
    for language, block in FENCED.findall(README):
        if language == "sh":
            named |= set(re.findall(r"^make ([a-z][a-z-]*)", block, re.M))
    assert named - targets == set()


@pytest.mark.parametrize(
    "language, block",
    [(lang, block) for lang, block in FENCED.findall(README) if lang in ("yaml", "json")],
)
def test_examples_parse(language: str, block: str, tmp_path: Path) -> None:
    if language == "json":
        json.loads(block)
        return
    document = yaml.safe_load(block)
    if isinstance(document, dict) and "rules" in document:
        (tmp_path / "example.yaml").write_text(block)
        assert load_policies(tmp_path).rules  # a policy example loads as policies do
