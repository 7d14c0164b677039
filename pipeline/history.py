"""What budgets, rates and the risk score need of the past: in memory, in step with the store.

No database query on the request path: the gate loads the recent past at start, adds each
decision it commits, and pulls what other proxy instances committed every few seconds. So
budgets survive restarts and are shared by every instance on one database (with that lag).

What counts: requests let through (ALLOW, or approved), per agent and action, with the params
budgets sum. Denials are kept too, for the risk score.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import time
from collections import Counter, OrderedDict, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, TypeVar

HORIZON = 7 * 24 * 3600.0  # the longest window a budget or rate may use
RISK_WINDOW = 3600.0  # what the risk score looks back on (bursts, denials)


EXACT_SECONDS = 300.0  # the recent past is kept entry by entry: short windows stay exact
BUCKET_SECONDS = 60  # older entries are summed by the minute: memory and time stay bounded
_COUNT = ("", None)  # the bucket key under which entries are counted
SEEN_SECONDS = 3600.0  # a run read again later than this (its outcome) could count twice
# (agent, action) pairs done and (agent, target) pairs touched that are kept for the risk
# score's "first time", each (~230 bytes a pair whatever its length: ~23 MB each at the cap)
MAX_KNOWN = 100_000
D = TypeVar("D", bound=dict[Any, Any])


@dataclass
class _Bucket:
    """One minute of let-through requests: how many, and their params summed (per currency)."""

    sums: dict[tuple[str, str | None], float] = field(default_factory=dict)

    def add(self, params: dict[str, Any]) -> None:
        sums = self.sums
        sums[_COUNT] = sums.get(_COUNT, 0) + 1
        currency = params.get("currency")
        currency = currency.lower() if isinstance(currency, str) else None
        for name, value in params.items():
            if name == "currency":
                continue
            sums[(name, None)] = sums.get((name, None), 0) + value
            if currency:
                sums[(name, currency)] = sums.get((name, currency), 0) + value


@dataclass
class _Series:
    """One agent's passed requests for one action: the last EXACT_SECONDS one by one (times
    sorted, with their params), everything older summed by the minute."""

    times: list[float] = field(default_factory=list)
    params: list[dict[str, Any]] = field(default_factory=list)
    minutes: list[int] = field(default_factory=list)  # bucket keys (time // 60), sorted
    buckets: dict[int, _Bucket] = field(default_factory=dict)
    folded_until: float = float("-inf")  # buckets hold what is older, the entries the rest
    # (first minute, param, currency) → the buckets' total from that minute on
    _totals: dict[tuple[int, str, str | None], float] = field(default_factory=dict)
    # (param, currency) → running sums over the entries (item i: the sum before entry i),
    # extended as entries come: a budget over the recent past is two lookups, not a walk
    _running: dict[tuple[str, str | None], list[float]] = field(default_factory=dict)

    def add(self, at: float, params: dict[str, Any]) -> None:
        if at < self.folded_until:  # late (another instance's, replayed): straight to its minute
            self._bucket(at).add(params)
            self._totals.clear()
            return
        index = bisect.bisect_right(self.times, at)
        self.times.insert(index, at)
        self.params.insert(index, params)
        if index < len(self.times) - 1:  # not the newest: running sums from here are stale
            for sums in self._running.values():
                del sums[index + 1 :]

    def entries_since(self, start: float) -> range:
        """The entries kept one by one that are at or after start."""
        return range(bisect.bisect_left(self.times, start), len(self.times))

    def bucket_total(self, start: float, param: str, currency: str | None = None) -> float:
        """What the minute buckets add from start on: the minute start falls in counts whole
        (a window is never undercounted; at most one minute more of it is counted)."""
        if start >= self.folded_until or not self.minutes:
            return 0
        first = int(start // BUCKET_SECONDS)
        key = (first, param, currency)
        if key not in self._totals:
            at = bisect.bisect_left(self.minutes, first)
            self._totals[key] = sum(
                self.buckets[m].sums.get((param, currency), 0) for m in self.minutes[at:]
            )
        return self._totals[key]

    def entries_total(self, start: float, param: str, currency: str | None = None) -> float:
        """The sum of param over the entries kept one by one from start on."""
        sums = self._running.setdefault((param, currency), [0])
        for params in self.params[len(sums) - 1 :]:
            value = params.get(param, 0)
            if currency and str(params.get("currency", "")).lower() != currency:
                value = 0
            sums.append(sums[-1] + value if isinstance(value, int | float) else sums[-1])
        return sums[-1] - sums[bisect.bisect_left(self.times, start)]

    def count_since(self, start: float) -> int:
        return len(self.entries_since(start)) + int(self.bucket_total(start, *_COUNT))

    def fold(self, before: float) -> None:
        """Sum the entries older than `before` (rounded down to a minute) into their minutes."""
        before = (before // BUCKET_SECONDS) * BUCKET_SECONDS
        if before <= self.folded_until:
            return
        cut = bisect.bisect_left(self.times, before)
        for at, params in zip(self.times[:cut], self.params[:cut], strict=True):
            self._bucket(at).add(params)
        del self.times[:cut], self.params[:cut]
        self.folded_until = before
        self._totals.clear()
        self._running.clear()

    def prune(self, start: float) -> None:
        cut = bisect.bisect_left(self.times, start)
        if cut:
            del self.times[:cut], self.params[:cut]
            self._running.clear()
        gone = bisect.bisect_left(self.minutes, int(start // BUCKET_SECONDS))
        if gone:
            for minute in self.minutes[:gone]:
                del self.buckets[minute]
            del self.minutes[:gone]
            self._totals.clear()

    def _bucket(self, at: float) -> _Bucket:
        minute = int(at // BUCKET_SECONDS)
        bucket = self.buckets.get(minute)
        if bucket is None:
            bucket = self.buckets[minute] = _Bucket()
            bisect.insort(self.minutes, minute)
        return bucket


class _Recent:
    """(agent, name) pairs, the cap most recently added: the least recently added are forgotten
    first. Forgetting is the less trusting answer: a pair no longer held reads as never seen (a
    first time, which the risk score counts against the request). Pairs are kept as 16-byte
    digests: a long target costs what a short one does."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    def add(self, agent: str, name: str) -> None:
        key = _digest(agent, name)
        if key in self._keys:
            self._keys.move_to_end(key)
            return
        self._keys[key] = None
        if len(self._keys) > self.cap:
            self._keys.popitem(last=False)

    def has(self, agent: str, name: str) -> bool:
        return _digest(agent, name) in self._keys

    def __len__(self) -> int:
        return len(self._keys)


def _digest(agent: str, name: str) -> bytes:
    pair = f"{len(agent)}:{agent}{name}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(pair, digest_size=16).digest()


class History:
    def __init__(
        self, clock: Any = time.time, horizon: float = RISK_WINDOW, known: int = MAX_KNOWN
    ) -> None:
        self.clock = clock
        # Kept only as far back as some rule looks (or the risk score's hour); one by one for
        # EXACT_SECONDS, then by the minute: memory grows with traffic times EXACT_SECONDS plus
        # the horizon's minutes, not with traffic times the horizon.
        self.horizon = horizon
        self._passed: dict[tuple[str, str], _Series] = defaultdict(_Series)
        self._denials: dict[str, list[float]] = defaultdict(list)
        # For the risk score's "first time" (risk.py): bounded, a forgotten pair reads as new
        self._done = _Recent(known)
        self._targets = _Recent(known)
        self._roles: dict[str, tuple[str, ...]] = {}
        # Runs already counted (an instance's own, synced back; another's, read again with its
        # outcome), forgotten after SEEN_SECONDS in the order they came.
        self._seen_ids: set[str] = set()
        self._seen_order: deque[tuple[float, str]] = deque()

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
        self._seen_order.append((self.clock(), run_id))
        self._roles[agent] = roles or self._roles.get(agent, ())
        if passed:
            self._passed[(agent, action)].add(at, _numbers(params))
            self._done.add(agent, action)
            if target:
                self._targets.add(agent, target)
        else:
            bisect.insort(self._denials[agent], at)

    def knows(self, agent: str, action: str) -> None:
        """Done at some time before the horizon: for 'first time' in the risk score."""
        self._done.add(agent, action)

    def prune(self) -> None:
        """Drop what is past the horizon; sum what is past EXACT_SECONDS by the minute. An
        agent, action or host seen once costs nothing once it is past the horizon: its empty
        series, denials and roles go (roles come again from the agents file with its next
        decision; budgets only ask roles of the agents that have a series)."""
        now = self.clock()
        start = now - self.horizon
        for series in self._passed.values():
            series.prune(start)
            series.fold(now - EXACT_SECONDS)
        for times in self._denials.values():
            del times[: bisect.bisect_left(times, start)]
        passed = self._passed
        self._passed = _without(passed, [k for k, s in passed.items() if not s.times + s.minutes])
        self._denials = _without(self._denials, [a for a, t in self._denials.items() if not t])
        agents = {agent for agent, _ in self._passed}
        self._roles = _without(self._roles, [a for a in self._roles if a not in agents])
        forget = now - SEEN_SECONDS
        forgotten = 0
        while self._seen_order and self._seen_order[0][0] < forget:
            self._seen_ids.discard(self._seen_order.popleft()[1])
            forgotten += 1
        if forgotten > len(self._seen_ids):
            self._seen_ids = set(self._seen_ids)

    # --- what the score asks ------------------------------------------------------------------

    def has_done(self, agent: str, action: str) -> bool:
        return self._done.has(agent, action)

    def has_touched(self, agent: str, target: str) -> bool:
        return self._targets.has(agent, target)

    def recent_count(self, agent: str, action: str, seconds: float) -> int:
        series = self._passed.get((agent, action))
        return series.count_since(self.clock() - seconds) if series else 0

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
        return sum(s.count_since(start) for s in self._series_for(per, agent, roles, action))

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
            total += series.bucket_total(start, param, currency)
            total += series.entries_total(start, param, currency)
        return total


class WithEarlier:
    """The past as the next element of a JSON-RPC batch sees it: the elements before it in the
    same request count as let through (they go out with it, or nothing does), so that five
    refunds in one batch meet the budget five do. The batch's agent asks every question."""

    def __init__(self, history: History, roles: tuple[str, ...]) -> None:
        self.history = history
        self.clock = history.clock
        self.roles = roles
        # Kept as counts and running sums, not a list scanned per question: a batch of n calls
        # asks n times, and a list made that n² (30,000 pings: 92 s of one worker's time).
        self.counts: Counter[str] = Counter()  # calls by action
        self.sums: dict[tuple[str, str], Counter[str]] = {}  # (action, param) → by currency
        self.targets: set[str] = set()

    def add(self, action: str, params: dict[str, Any], target: str) -> None:
        self.counts[action] += 1
        self.targets.add(target)
        numbers = _numbers(params)
        currency = str(numbers.pop("currency", "")).lower()
        for param, value in numbers.items():
            self.sums.setdefault((action, param), Counter())[currency] += value

    def _counts_for(self, per: str, roles: tuple[str, ...]) -> bool:
        """A per-role question counts the batch only when its agent has one of the roles."""
        return per != "role" or bool(set(self.roles) & set(roles))

    def count(
        self, per: str, agent: str, roles: tuple[str, ...], action: str, seconds: float
    ) -> int:
        earlier = self.counts[action] if self._counts_for(per, roles) else 0
        return self.history.count(per, agent, roles, action, seconds) + earlier

    def total(
        self, per: str, agent: str, roles: tuple[str, ...], action: str, seconds: float,
        param: str, currency: str | None,
    ) -> float:  # fmt: skip
        total = self.history.total(per, agent, roles, action, seconds, param, currency)
        sums = self.sums.get((action, param))
        if sums and self._counts_for(per, roles):
            total += sums[currency] if currency else sum(sums.values())
        return total

    def has_done(self, agent: str, action: str) -> bool:
        return self.history.has_done(agent, action) or self.counts[action] > 0

    def has_touched(self, agent: str, target: str) -> bool:
        return self.history.has_touched(agent, target) or target in self.targets

    def recent_count(self, agent: str, action: str, seconds: float) -> int:
        return self.history.recent_count(agent, action, seconds) + self.counts[action]

    def recent_denials(self, agent: str, seconds: float) -> int:
        return self.history.recent_denials(agent, seconds)


def _without(values: D, gone: list[Any]) -> D:
    """values without the keys gone; copied when most of it went (a dict keeps the room of its
    largest size, and a copy has the room of what it holds)."""
    for key in gone:
        del values[key]
    return values.copy() if len(gone) > len(values) else values


def _numbers(params: dict[str, Any]) -> dict[str, Any]:
    """Keep what budgets sum and filter on: numbers and the currency, nothing else. Negative
    and non-finite numbers are left out: a request with amount -1e20 must not refill a budget
    (nor leave a running sum that rounds every later amount away)."""
    kept = {
        k: v
        for k, v in params.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < math.inf
    }
    if isinstance(params.get("currency"), str):
        kept["currency"] = params["currency"]
    return kept
