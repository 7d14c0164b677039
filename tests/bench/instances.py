"""`make bench`, PostgreSQL as the store: one Airlock instance against the SQLite one, then the
same load spread over two and three instances sharing one PostgreSQL database (as operators run
several proxies behind a load balancer)."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import create_engine, func, select

from tests.bench.bench_proxy import (
    PROJECT_ROOT,
    Result,
    Started,
    measure_spread,
    start_airlock,
    stop_all,
)
from tests.helpers.postgres import throwaway_database

ADMIN_URL = os.environ.get(
    "AIRLOCK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
CONCURRENCY = 16


def postgres_report(
    work: Path,
    upstream: tuple[int, Path],
    mappings: Path,
    sqlite: tuple[int, Path],
    requests: int,
    rounds: int,
) -> str:
    """Throughput at concurrency 16: the SQLite instance, one PostgreSQL instance, and the load
    dealt over two and three PostgreSQL instances; best of `rounds` interleaved rounds."""
    try:
        with throwaway_database(ADMIN_URL, "airlock_bench") as url:
            return _measured(work, upstream, mappings, sqlite, url, requests, rounds)
    except Exception as e:  # an unreachable server is reported, not a failed bench
        return f"PostgreSQL as the store: not measured ({ADMIN_URL} unusable: {e})"


def _measured(
    work: Path,
    upstream: tuple[int, Path],
    mappings: Path,
    sqlite: tuple[int, Path],
    url: str,
    requests: int,
    rounds: int,
) -> str:
    instances: list[Started] = []
    try:
        for i in range(3):  # one after another: the first creates the tables
            name = f"airlock-pg-{i}"
            instances.append(
                start_airlock(PROJECT_ROOT, work, name, *upstream, mappings, 0, db=url)
            )
        proxies = [(port, confdir / "mitmproxy-ca-cert.pem") for _, port, confdir in instances]
        cells = {"SQLite, one instance": [(sqlite[0], sqlite[1] / "mitmproxy-ca-cert.pem")]}
        cells |= {f"PostgreSQL, {n} instance{'s' if n > 1 else ''}": proxies[:n] for n in (1, 2, 3)}
        best: dict[str, Result] = {}
        for _ in range(rounds):
            for name, targets in cells.items():
                result = measure_spread(name, targets, CONCURRENCY, requests)
                if name not in best or result.rps > best[name].rps:
                    best[name] = result
        recorded = _runs(url)
    finally:
        stop_all([process for process, _, _ in instances])
    sqlite_rps = best["SQLite, one instance"].rps
    one = best["PostgreSQL, 1 instance"].rps
    cells_text = "; ".join(
        f"{name}: {r.rps:.0f} req/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms"
        for name, r in best.items()
    )
    return (
        f"PostgreSQL as the store (durability full, concurrency {CONCURRENCY}, the load dealt "
        f"over the instances, best of {rounds}): one instance {one / sqlite_rps:.2f}x SQLite's "
        f"throughput (goal ≥ 0.9x). {cells_text}. Decisions committed to PostgreSQL: "
        f"{recorded}."
    )


def _runs(url: str) -> int:
    from airlock.store.schema import Run

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Run)).scalar_one())
    finally:
        engine.dispose()
