"""Risk scores with their factors; budgets and rates from the in-memory history."""

from __future__ import annotations

import asyncio
import textwrap
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from airlock.addons.gatekeeper import Airlock
from airlock.pipeline.history import (
    BUCKET_SECONDS,
    EXACT_SECONDS,
    RISK_WINDOW,
    SEEN_SECONDS,
    History,
    WithEarlier,
)
from airlock.pipeline.mappings import Action
from airlock.pipeline.policies import load_policies
from airlock.pipeline.risk import score
from airlock.pipeline.yaml_source import ConfigError
from tests.test_gatekeeper import stored_runs, stripe_flow, with_gate


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def refund(amount: int, currency: str = "usd") -> Action:
    return Action(
        "create_refund", "stripe", "payment", "high", "charge/ch_1",
        {"amount": amount, "currency": currency}, "m", {"environment": "production"},
    )  # fmt: skip


def test_risk_factors_add_up_and_are_explained() -> None:
    risk = score(refund(2_000_000), "billing-bot")
    assert [(f.name, f.points) for f in risk.factors] == [
        ("sensitivity", 30),
        ("category", 10),
        ("amount", 20),
        ("environment", 10),
    ]
    assert risk.score == 70
    test_mode = Action(
        "create_refund", "stripe", "payment", "high", "t", {}, "m", {"environment": "test"}
    )
    assert score(test_mode, "a").score == 25  # 30 + 10 - 15


def test_history_factors_first_time_bursts_and_denials() -> None:
    clock = Clock()
    history = History(clock)
    fresh = score(refund(10), "bot", history)
    assert ("first_time", 10) in [(f.name, f.points) for f in fresh.factors]
    for i in range(12):
        history.record(
            f"r{i}", "bot", "create_refund", clock.now - 5 - i, {"amount": 10}, True,
            target="charge/ch_1",
        )  # fmt: skip
    history.record("d1", "bot", "delete_bucket", clock.now - 60, {}, False)
    names = {f.name: f.points for f in score(refund(10), "bot", history).factors}
    assert "first_time" not in names
    assert names["burst"] == 10
    assert names["recent_denials"] == 10
    assert score(Action("x", "p", "critical_stuff", "critical", "t", {}, None), "a").score <= 100
    elsewhere = Action("create_refund", "stripe", "payment", "high", "charge/ch_2", {}, "m")
    assert ("new_target", 5) in [
        (f.name, f.points) for f in score(elsewhere, "bot", history).factors
    ]


def policies_from(tmp_path: Path, text: str) -> Any:
    folder = tmp_path / "p"
    folder.mkdir(exist_ok=True)
    (folder / "p.yaml").write_text(textwrap.dedent(text))
    return load_policies(folder)


def test_budget_counts_what_was_let_through_in_the_window(tmp_path: Path) -> None:
    policy = policies_from(
        tmp_path,
        """
        rules:
          - id: refunds-daily
            when: {action: create_refund}
            budget: {param: amount, limit: 200000, window: 24h, per: agent, currency: usd}
            decision: REQUIRE_APPROVAL
        """,
    )
    clock = Clock()
    history = History(clock)
    history.record(
        "a", "bot", "create_refund", clock.now - 3600, {"amount": 150000, "currency": "usd"}, True
    )
    history.record(
        "b", "bot", "create_refund", clock.now - 90000, {"amount": 150000, "currency": "usd"}, True
    )
    history.record(
        "c", "bot", "create_refund", clock.now - 60, {"amount": 90000, "currency": "eur"}, True
    )
    history.record(
        "d", "other", "create_refund", clock.now - 60, {"amount": 190000, "currency": "usd"}, True
    )
    history.record(
        "e", "bot", "create_refund", clock.now - 60, {"amount": 100000, "currency": "usd"}, False
    )

    assert policy.decide(refund(50000), "bot", history=history).decision == "ALLOW"  # 200000
    assert policy.decide(refund(50001), "bot", history=history).rules == ("refunds-daily",)
    assert policy.decide(refund(150000, "eur"), "bot", history=history).decision == "ALLOW"
    assert policy.decide(refund(200000), "fresh-bot", history=history).decision == "ALLOW"


def test_rate_limits_per_agent_and_per_role(tmp_path: Path) -> None:
    policy = policies_from(
        tmp_path,
        """
        rules:
          - {id: agent-rate, when: {action: create_refund}, rate: {limit: 3, window: 1m},
             decision: REQUIRE_APPROVAL}
          - {id: role-rate, when: {action: create_refund}, rate: {limit: 5, window: 1m, per: role},
             decision: BLOCK}
        """,
    )
    clock = Clock()
    history = History(clock)
    for i in range(3):
        history.record(f"a{i}", "bot", "create_refund", clock.now - i, {}, True, ("payments",))
    history.record("old", "bot", "create_refund", clock.now - 120, {}, True, ("payments",))
    assert policy.decide(refund(1), "bot", ("payments",), history=history).rules == ("agent-rate",)
    for i in range(2):
        history.record(f"b{i}", "bot-2", "create_refund", clock.now - i, {}, True, ("payments",))
    verdict = policy.decide(refund(1), "bot-3", ("payments",), history=history)
    assert (verdict.decision, verdict.rules) == ("BLOCK", ("role-rate",))


def test_risk_rules_escalate_but_never_allow(tmp_path: Path) -> None:
    policy = policies_from(
        tmp_path,
        "rules:\n  - {id: risky, when: {risk: {gte: 70}}, decision: REQUIRE_APPROVAL}\n",
    )
    assert policy.decide(refund(1), "a", risk=70).rules == ("risky",)
    assert policy.decide(refund(1), "a", risk=69).rules == ()
    assert policy.decide(refund(1), "a").rules == ()  # no score: the condition does not hold
    with pytest.raises(ConfigError, match="cannot ALLOW: risk never grants access"):
        policies_from(tmp_path, "rules:\n  - {id: r, when: {risk: {lt: 10}}, decision: ALLOW}\n")
    with pytest.raises(ConfigError, match="window must be like"):
        policies_from(
            tmp_path,
            "rules:\n  - {id: r, rate: {limit: 1, window: forever}, decision: BLOCK}\n",
        )


def test_the_proxy_keeps_budgets_across_requests_and_restarts(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(
        textwrap.dedent(
            """
            rules:
              - id: charges-budget
                when: {action: create_charge}
                budget: {param: amount, limit: 1000, window: 1h}
                decision: BLOCK
            """
        )
    )
    flows = [stripe_flow(b"amount=400&currency=usd") for _ in range(4)]

    async def first_run(gate: Airlock, _: Any) -> None:
        for flow in flows[:3]:
            await asyncio.wait_for(gate.gate.request(flow), 5)

    with_gate(tmp_path, first_run, airlock_policies=str(policies))
    assert [f.response is None for f in flows[:3]] == [True, True, False]  # 400, 800, then 1200

    async def after_restart(gate: Airlock, _: Any) -> None:
        await asyncio.wait_for(gate.gate.request(flows[3]), 5)

    with_gate(tmp_path, after_restart, airlock_policies=str(policies))
    assert flows[3].response.status_code == 403  # 800 spent before the restart still counts
    runs = stored_runs(tmp_path)
    assert [r.rules for r in runs] == [[], [], ["charges-budget"], ["charges-budget"]]
    assert all(r.risk is not None and r.risk_factors for r in runs)


def test_time_of_day_and_week_conditions(tmp_path: Path) -> None:
    policy = policies_from(
        tmp_path,
        """
        rules:
          - id: after-hours
            when:
              action: create_refund
              time: {days: [mon, tue, wed, thu, fri], hours: "18:00-09:00", timezone: Europe/Paris}
            decision: REQUIRE_APPROVAL
          - id: weekend
            when: {action: create_refund, time: {days: [sat, sun]}}
            decision: BLOCK
        """,
    )
    # 2026-11-23 is a Monday; Paris is UTC+1 in November.
    monday_noon_paris = 1795431600.0  # 2026-11-23 11:00 UTC
    monday_night_paris = monday_noon_paris + 11 * 3600  # 22:00 UTC, 23:00 Paris
    tuesday_early_paris = monday_noon_paris + 18 * 3600  # Tuesday 06:00 Paris: Monday's window
    saturday = monday_noon_paris + 5 * 86400

    def fired(at: float) -> tuple[str, ...]:
        return policy.decide(refund(1), "a", history=History(Clock(at))).rules

    assert fired(monday_noon_paris) == ()
    assert fired(monday_night_paris) == ("after-hours",)
    assert fired(tuesday_early_paris) == ("after-hours",)
    assert fired(saturday) == ("weekend",)
    with pytest.raises(ConfigError, match="unknown timezone"):
        policies_from(
            tmp_path,
            "rules:\n  - {id: r, when: {time: {timezone: Mars/Olympus}}, decision: BLOCK}\n",
        )


def test_history_keeps_only_as_far_back_as_the_rules_look(tmp_path: Path) -> None:
    policy = policies_from(
        tmp_path,
        """
        rules:
          - {id: day, when: {action: create_refund}, decision: BLOCK,
             budget: {param: amount, limit: 10, window: 24h}}
          - {id: minute, when: {action: send_message}, decision: BLOCK,
             rate: {limit: 10, window: 1m}}
        """,
    )
    assert policy.longest_window == 86400
    clock = Clock()
    history = History(clock, horizon=policy.longest_window)
    history.record("old", "bot", "create_refund", clock.now - 90000, {"amount": 5}, True)
    history.record("new", "bot", "create_refund", clock.now - 100, {"amount": 5}, True)
    history.prune()
    assert history.count("agent", "bot", (), "create_refund", 7 * 86400) == 1
    assert history.has_done("bot", "create_refund")  # "done before" outlives the horizon


def test_a_long_window_is_kept_by_the_minute_and_counted_without_undercounting() -> None:
    """A day of traffic: the last five minutes are kept one by one, older ones summed by the
    minute. Budgets and rates over long windows never count less than what happened in them,
    at most one minute more; short windows stay exact."""
    clock = Clock()
    history = History(clock, horizon=86400)
    start = clock.now
    for i in range(20_000):  # one every 3.6 s for 20 h, alternating currencies
        currency = "usd" if i % 2 else "EUR"
        at = start + i * 3.6
        history.record(
            f"r{i}", "bot", "create_refund", at, {"amount": 10, "currency": currency}, True
        )
    clock.now = start + 20_000 * 3.6
    history.prune()

    series = history._passed[("bot", "create_refund")]
    kept = (EXACT_SECONDS + BUCKET_SECONDS) / 3.6  # folded up to a whole minute
    assert len(series.times) <= kept + 1, "older entries are not kept one by one"
    assert len(series.buckets) <= 20 * 60 + 1

    def happened(seconds: float) -> int:
        return sum(1 for i in range(20_000) if start + i * 3.6 >= clock.now - seconds)

    for seconds in (3600, 6 * 3600, 86400):
        counted = history.count("agent", "bot", (), "create_refund", seconds)
        assert happened(seconds) <= counted <= happened(seconds + 60)
        usd = history.total("agent", "bot", (), "create_refund", seconds, "amount", "usd")
        assert 10 * (happened(seconds) // 2) <= usd <= 10 * (happened(seconds + 60) // 2 + 1)
    for seconds in (10, 60, 299):
        assert history.count("agent", "bot", (), "create_refund", seconds) == happened(seconds)
    eur = history.total("agent", "bot", (), "create_refund", 120, "amount", "eur")
    assert eur == 10 * sum(1 for i in range(0, 20_000, 2) if start + i * 3.6 >= clock.now - 120)

    # A decision another instance made an hour ago, synced only now: it goes to its minute.
    before = history.count("agent", "bot", (), "create_refund", 7200)
    history.record("late", "bot", "create_refund", clock.now - 3600, {"amount": 10}, True)
    assert history.count("agent", "bot", (), "create_refund", 7200) == before + 1


def test_a_negative_amount_does_not_refill_a_budget() -> None:
    clock = Clock()
    history = History(clock, horizon=86400)
    history.record("neg", "bot", "create_refund", clock.now - 30, {"amount": -1e20}, True)
    for i in range(10):
        history.record(f"r{i}", "bot", "create_refund", clock.now - 20 + i, {"amount": 99.0}, True)
    history.record("r0", "bot", "create_refund", clock.now, {"amount": 99.0}, True)  # read again
    assert history.total("agent", "bot", (), "create_refund", 60, "amount", None) == 990.0
    assert history.count("agent", "bot", (), "create_refund", 60) == 11


def test_a_batch_counts_its_earlier_calls_by_action_role_and_currency() -> None:
    history = History(Clock(), horizon=86400)
    past = WithEarlier(history, roles=("payments",))
    past.add("create_refund", {"amount": 1500, "currency": "USD"}, "ch_1")
    past.add("create_refund", {"amount": 700, "currency": "eur"}, "ch_2")
    past.add("create_refund", {"amount": -1e20, "reason": "x"}, "ch_3")  # refills nothing
    past.add("send_message", {}, "C1")
    assert past.count("agent", "bot", (), "create_refund", 60) == 3
    assert past.count("role", "bot", ("payments",), "create_refund", 60) == 3
    assert past.count("role", "bot", ("support",), "create_refund", 60) == 0
    assert past.total("agent", "bot", (), "create_refund", 60, "amount", "usd") == 1500
    assert past.total("agent", "bot", (), "create_refund", 60, "amount", None) == 2200
    assert past.total("role", "bot", ("support",), "create_refund", 60, "amount", None) == 0
    assert past.has_done("bot", "send_message") and not past.has_done("bot", "delete_record")
    assert past.has_touched("bot", "ch_2") and not past.has_touched("bot", "ch_9")
    assert past.recent_count("bot", "create_refund", 60) == 3


def test_a_batch_of_many_calls_is_judged_in_time_linear_in_its_length() -> None:
    """Each call of a batch asks about the ones before it: answered from running counts, a
    batch of n calls costs n questions, not n² (30,000 pings once held the decider 92 s)."""

    def judged(n: int) -> float:
        past = WithEarlier(History(Clock(), horizon=86400), roles=())
        started = time.perf_counter()
        for i in range(n):
            past.count("agent", "bot", (), "ping", 60)
            past.total("agent", "bot", (), "ping", 60, "amount", "usd")
            past.recent_count("bot", "ping", 60)
            past.has_touched("bot", f"t{i}")
            past.add("ping", {"amount": 1, "currency": "usd"}, f"t{i}")
        return time.perf_counter() - started

    judged(500)  # warm
    small, large = min(judged(2_000) for _ in range(3)), min(judged(16_000) for _ in range(3))
    assert large / small <= 24, (small, large)  # 8 times the calls; the square: 64 times


def test_what_prune_leaves_of_unique_hosts_actions_and_agents_is_bounded() -> None:
    """An agent that names a new host, tool or agent name every request: what is past every
    window is forgotten, and what the risk score keeps of the first times is capped."""
    clock = Clock()
    history = History(clock, known=100)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            history.record(f"h{i}", "evil-bot", "http.read", clock.now, {}, True, (), f"10.{i}")
            history.record(f"a{i}", "evil-bot", f"mcp.github.t{i}", clock.now, {}, True, ("r",))
            history.record(f"g{i}", f"bot-{i}", "http.write", clock.now, {}, False, ("r",), "h")
        grown = tracemalloc.get_traced_memory()[0] - before
        clock.now += RISK_WINDOW + SEEN_SECONDS
        history.prune()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown > 10_000_000
    assert kept < 500_000, f"{kept} bytes kept of {grown}"
    assert (len(history._passed), len(history._denials), len(history._roles)) == (0, 0, 0)
    assert len(history._done) == len(history._targets) == 100


def test_a_first_time_forgotten_past_the_cap_counts_as_a_first_time_again() -> None:
    """Forgetting is the less trusting answer: an action or target the history no longer
    holds reads as never done, and the risk score adds its first-time points again."""
    clock = Clock()
    history = History(clock, known=2)

    def first_times(action: Action) -> list[str]:
        factors = score(action, "bot", history).factors
        return [f.name for f in factors if f.name in ("first_time", "new_target")]

    history.record("r1", "bot", "create_refund", clock.now, {}, True, target="charge/ch_1")
    assert first_times(refund(10)) == []
    for i in range(2):
        history.record(f"o{i}", "bot", f"other_{i}", clock.now, {}, True, target=f"t/{i}")
    assert first_times(refund(10)) == ["first_time"]
    history.record("r2", "bot", "create_refund", clock.now, {}, True)
    assert first_times(refund(10)) == ["new_target"]
