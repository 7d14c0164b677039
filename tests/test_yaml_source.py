"""Reading configuration YAML: what a value written in a file becomes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from airlock.pipeline.agents import load_agents
from airlock.pipeline.policies import load_policies
from airlock.pipeline.yaml_source import ConfigError
from tests.test_policies import action


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.mark.parametrize(
    ("written", "sent"),
    [("description: off", "off"), ("country: NO", "NO"), ("flag: yes", "yes"), ("x: On", "On")],
)
def test_yes_no_on_off_are_the_text_a_request_holds(
    tmp_path: Path, written: str, sent: str
) -> None:
    """YAML 1.1 read them as booleans, which never equal the text a request sends: the rule
    never fired."""
    name = written.split(":")[0]
    write(tmp_path / "policies", "p.yaml", f"""
        rules:
          - {{id: r, when: {{action: create_charge, params: {{{written}}}}}, decision: BLOCK}}
        """)  # fmt: skip
    policies = load_policies(tmp_path / "policies")
    assert policies.decide(action(**{name: sent}), "bot").decision == "BLOCK"
    assert policies.decide(action(**{name: "other"}), "bot").decision == "ALLOW"


def test_true_and_false_are_still_booleans(tmp_path: Path) -> None:
    write(tmp_path / "policies", "p.yaml", """
        rules:
          - {id: r, when: {action: create_charge, params: {livemode: true, refunded: False}},
             decision: BLOCK}
        """)  # fmt: skip
    policies = load_policies(tmp_path / "policies")
    assert policies.decide(action(livemode=True, refunded=False), "bot").decision == "BLOCK"
    assert policies.decide(action(livemode="true", refunded=False), "bot").decision == "ALLOW"


def test_enabled_no_is_refused_at_its_line_not_read_as_enabled(tmp_path: Path) -> None:
    agents = write(tmp_path / "policies", "agents.yaml", """
        agents:
          - {id: retired-bot, roles: [ops], key_hash: "sha256$00$00", enabled: no}
        roles:
          ops: {egress: any}
        """)  # fmt: skip
    with pytest.raises(ConfigError) as error:
        load_agents(tmp_path / "policies")
    assert str(error.value).startswith(f"{agents}:2:")
    assert "'enabled' must be true or false" in str(error.value)


def test_mode_off_turns_a_rule_off_and_mode_false_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "policies", "p.yaml", """
        rules:
          - {id: retired, when: {action: create_charge}, decision: BLOCK, mode: off}
        """)  # fmt: skip
    assert len(load_policies(tmp_path / "policies")) == 0
    write(tmp_path / "policies", "p.yaml", """
        rules:
          - {id: retired, when: {action: create_charge}, decision: BLOCK, mode: false}
        """)  # fmt: skip
    with pytest.raises(ConfigError, match="mode must be one of enforce, shadow, off"):
        load_policies(tmp_path / "policies")
