"""The audit trail at scale: a store of N decisions (default 1,000,000) written by the decider's
own group writer, sealed, then verified, exported and the export verified offline, each timed.

    python -m tests.bench.bench_audit [--events N] [--db URL] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from airlock.pipeline.run_record import RunRecord
from airlock.store.anchor import load_or_create_key
from airlock.store.audit import verify_audit
from airlock.store.export import events, verify_export, write_export
from airlock.store.records import DecisionRecord
from airlock.store.schema import create_schema, open_engine
from airlock.store.seals import Sealer, seal_message, seal_with
from airlock.store.writer import GroupWriter, Pending

GROUP = 500  # decisions per committed group, as a busy decider writes them


def decision(i: int) -> RunRecord:
    return RunRecord(
        id=uuid.uuid4().hex, at=time.time(), instance="bench-1", agent=f"agent-{i % 7}",
        method="POST", host="api.stripe.com", path="/v1/charges", provider="stripe",
        action="create_charge", category="payment", sensitivity="high",
        target=f"customer/cus_{i:08d}", mapping_id="stripe.create_charge",
        operation="stripe.PostCharges", params={"amount": 500 + i, "currency": "usd"},
        context={"environment": "test"}, shadow_decision=None, shadow_rules=None, risk=40,
        risk_factors=[{"factor": "sensitivity", "points": 30, "detail": "high"}], undo=None,
        request={"method": "POST", "body": {"amount": str(500 + i)}}, decision="ALLOW",
        reason="within budget", rules=[], error=None, decision_ms=0.2, outcome=None,
        status=None, upstream_ms=None,
    )  # fmt: skip


def seal_cost(sealer: Sealer, count: int = 5000) -> float:
    """Median µs to sign one group's seal (what each group commit adds)."""
    timings = []
    for i in range(count):
        started = time.perf_counter()
        sealer.seal(i * GROUP + 1, (i + 1) * GROUP, "ab" * 32)
        timings.append(time.perf_counter() - started)
    assert seal_message(1, 2, "x")  # the message signed is the module's own
    return statistics.median(timings) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--db", help="store URL (default: SQLite in a temporary directory)")
    parser.add_argument("--keep", help="keep the store and export in this directory")
    args = parser.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="airlock-audit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    engine = open_engine(args.db or f"sqlite:///{work / 'audit.db'}")
    create_schema(engine)
    key = load_or_create_key(work)
    sealer = Sealer(key)
    seal_with(engine, sealer)
    print(f"Seal: {seal_cost(sealer):.1f} µs median per group (Ed25519, one per group commit)")

    writer = GroupWriter(engine)
    started = time.perf_counter()
    for first in range(0, args.events, GROUP):
        group = [Pending(i, DecisionRecord(decision(first + i)))
                 for i in range(min(GROUP, args.events - first))]  # fmt: skip
        for _, ok, said in writer.write_group(group):
            if not ok:
                print(f"write failed: {said}", file=sys.stderr)
                return 1
    writer.close()
    wrote = time.perf_counter() - started
    print(f"Wrote {args.events:,} decisions in groups of {GROUP}: {args.events / wrote:,.0f}/s")

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    report = verify_audit(engine, [key.public_key()])
    took = time.perf_counter() - started
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    if not report.ok:
        print(f"verify failed: {report.problem}", file=sys.stderr)
        return 1
    print(f"audit verify (chain, seals, records): {report.events:,} events in {took:.1f} s, "
          f"{report.events / took:,.0f} events/s, peak memory +{grew:,.0f} MB")  # fmt: skip

    out = work / "trail.jsonl"
    started = time.perf_counter()
    with out.open("w", encoding="utf-8") as file:
        exported = write_export(events(engine), file, "jsonl")
    took = time.perf_counter() - started
    print(f"audit export (jsonl): {exported:,} records in {took:.1f} s, "
          f"{exported / took:,.0f} records/s, {out.stat().st_size / 1e6:,.0f} MB")  # fmt: skip

    started = time.perf_counter()
    with out.open(encoding="utf-8") as lines:
        check = verify_export(lines)
    took = time.perf_counter() - started
    if not check.ok:
        print(f"export verify failed: {check.problem}", file=sys.stderr)
        return 1
    print(f"audit verify --export (offline): {check.events:,} events in {took:.1f} s, "
          f"{check.events / took:,.0f} events/s")  # fmt: skip
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
