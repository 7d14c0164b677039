"""What budgets, rates and the risk score need of the past: in memory, in step with the store.

No database query on the request path: the gate loads the recent past at start, adds each
decision it commits, and pulls what other proxy instances committed every few seconds. So
budgets survive restarts and are shared by every instance on one database (with that lag).

What counts: requests let through (ALLOW, or approved), per agent and action, with the params
budgets sum. Denials are kept too, for the risk score.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

HORIZON = 7 * 24 * 3600.0  # the longest window a budget or rate may use
RISK_WINDOW = 3600.0  # what the risk score looks back on (bursts, denials)


@dataclass
class _Series:
    """Times (sorted) and params of one agent's passed requests for one action."""

    times: list[float] = field(default_factory=list)
    params: list[dict[str, Any]] = field(default_factory=list)

    def add(self, at: float, params: dict[str, Any]) -> None:
        index = bisect.bisect_right(self.times, at)
        self.times.insert(index, at)
        self.params.insert(index, params)

    def since(self, start: float) -> range:
        return range(bisect.bisect_left(self.times, start), len(self.times))

    def prune(self, start: float) -> None:
        cut = bisect.bisect_left(self.times, start)
        if cut:
            del self.times[:cut], self.params[:cut]


class History:
    def __init__(self, clock: Any = time.time, horizon: float = RISK_WINDOW) -> None:
        self.clock = clock
        # Kept only as far back as some rule looks (or the risk score's hour): memory grows
        # with traffic times this horizon.
        self.horizon = horizon
        self._passed: dict[tuple[str, str], _Series] = defaultdict(_Series)
        self._denials: dict[str, list[float]] = defaultdict(list)
        self._done: set[tuple[str, str]] = set()
        self._targets: set[tuple[str, str]] = set()
        self._roles: dict[str, tuple[str, ...]] = {}
        self._seen_ids: set[str] = set()

    # --- keeping it in step ----------------------------------------------------------------------

    def record(
        self,
        run_id: str,
        agent: str,
        action: str,
        at: float,
        params: dict[str, Any],
        passed: bool,
        roles: tuple[str, ...] = (),
        target: str | None = None,
    ) -> None:
        """One decision: `passed` when the request was (or will be) let through."""
        if run_id in self._seen_ids:
            return  # synced back from the store after we recorded it ourselves
        self._seen_ids.add(run_id)
        self._roles[agent] = roles or self._roles.get(agent, ())
        if passed:
            self._passed[(agent, action)].add(at, _numbers(params))
            self._done.add((agent, action))
            if target:
                self._targets.add((agent, target))
        else:
            bisect.insort(self._denials[agent], at)

    def knows(self, agent: str, action: str) -> None:
        """Done at some time before the horizon: for 'first time' in the risk score."""
        self._done.add((agent, action))

    def prune(self) -> None:
        start = self.clock() - self.horizon
        for series in self._passed.values():
            series.prune(start)
        for times in self._denials.values():
            cut = bisect.bisect_left(times, start)
            del times[:cut]
        if len(self._seen_ids) > 1_000_000:
            self._seen_ids.clear()

    # --- what the score asks ------------------------------------------------------------------

    def has_done(self, agent: str, action: str) -> bool:
        return (agent, action) in self._done

    def has_touched(self, agent: str, target: str) -> bool:
        return (agent, target) in self._targets

    def recent_count(self, agent: str, action: str, seconds: float) -> int:
        series = self._passed.get((agent, action))
        return len(series.since(self.clock() - seconds)) if series else 0

    def recent_denials(self, agent: str, seconds: float) -> int:
        times = self._denials.get(agent, [])
        return len(times) - bisect.bisect_left(times, self.clock() - seconds)

    # --- what budgets and rates ask -----------------------------------------------------------

    def _series_for(
        self, per: str, agent: str, roles: tuple[str, ...], action: str
    ) -> list[_Series]:
        if per == "agent":
            series = self._passed.get((agent, action))
            return [series] if series else []
        if per == "role":
            return [
                s
                for (who, name), s in self._passed.items()
                if name == action and set(self._roles.get(who, ())) & set(roles)
            ]
        return [s for (_, name), s in self._passed.items() if name == action]

    def count(
        self, per: str, agent: str, roles: tuple[str, ...], action: str, seconds: float
    ) -> int:
        start = self.clock() - seconds
        return sum(len(s.since(start)) for s in self._series_for(per, agent, roles, action))

    def total(
        self,
        per: str,
        agent: str,
        roles: tuple[str, ...],
        action: str,
        seconds: float,
        param: str,
        currency: str | None,
    ) -> float:
        start = self.clock() - seconds
        total = 0.0
        for series in self._series_for(per, agent, roles, action):
            for i in series.since(start):
                params = series.params[i]
                if currency and str(params.get("currency", "")).lower() != currency:
                    continue
                value = params.get(param)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    total += value
        return total


def _numbers(params: dict[str, Any]) -> dict[str, Any]:
    """Keep what budgets sum and filter on: numbers and the currency, nothing else."""
    kept = {
        k: v for k, v in params.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    if isinstance(params.get("currency"), str):
        kept["currency"] = params["currency"]
    return kept
