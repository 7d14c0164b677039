"""`make bench`: bare mitmdump and Airlock side by side, same upstream, same load, one run.

Load: HTTPS keep-alive through CONNECT (as SDKs do), a small Stripe charge POST that the shipped
policies ALLOW, so every Airlock request is mapped, decided and durably committed before it is
forwarded. Airlock runs with 1,000 extra mapping rules loaded. Also measures, in-process, how long
mapping and deciding one request take.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tests.helpers.proxy import (
    PROJECT_ROOT,
    clean_env,
    free_port,
    prepared_confdir,
    share_request_key,
    wait_for_port,
)

HOST = "api.stripe.com"
PROCESS_DURABILITY = "Airlock --durability process"
IN_PROCESS = "Airlock --decider in-process"
LEAN_BARE = "bare, Airlock's mitmproxy addons"  # the proxy airlock run starts, without the gate
VARIANTS = (("Airlock", "full"), (PROCESS_DURABILITY, "process"), (IN_PROCESS, "full, in-process"))
METRICS_PORT = free_port()
GUARD_PORT = free_port()
BODY = b"amount=500&currency=usd&customer=cus_bench&metadata[order_id]=6735"
REQUEST = (
    b"POST /v1/charges HTTP/1.1\r\nHost: api.stripe.com\r\n"
    b"Authorization: Bearer sk_test_bench000000\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


# --- load generator --------------------------------------------------------------------------


async def _tunnel(
    proxy_port: int, ca: Path, agent: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    credentials = base64.b64encode(f"{agent}:".encode()).decode() if agent else ""
    auth = f"Proxy-Authorization: Basic {credentials}\r\n" if agent else ""
    writer.write(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n{auth}\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200" not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"CONNECT refused: {head!r}")
    context = ssl.create_default_context(cafile=str(ca))
    await writer.start_tls(context, server_hostname=HOST)
    return reader, writer


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    started = time.perf_counter()
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected response: {head[:80]!r}")
    return time.perf_counter() - started


async def _load(
    proxy_port: int, ca: Path, concurrency: int, total: int
) -> tuple[float, list[float]]:
    return await _load_spread([(proxy_port, ca)], concurrency, total)


async def _load_spread(
    proxies: list[tuple[int, Path]], concurrency: int, total: int
) -> tuple[float, list[float]]:
    """`concurrency` connections dealt round-robin over `proxies` (port, CA), as agents behind a
    load balancer would be."""
    connections = [await _tunnel(*proxies[i % len(proxies)]) for i in range(concurrency)]
    for reader, writer in connections:  # warm-up: TLS to the upstream, caches
        for _ in range(20):
            await _one(reader, writer)
    latencies: list[float] = []
    per_connection = total // concurrency

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(per_connection):
            latencies.append(await _one(reader, writer))

    started = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in connections))
    elapsed = time.perf_counter() - started
    for _, writer in connections:
        writer.close()
    return elapsed, latencies


# --- the Guard API ---------------------------------------------------------------------------

GUARD_CALL = json.dumps(
    {"action": "create_charge", "provider": "stripe", "target": "customer/cus_1",
     "params": {"amount": 500, "currency": "usd"}}
).encode()  # fmt: skip
GUARD_REQUEST = (
    b"POST /v1/guard HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic "
    + base64.b64encode(b"bench-agent:x")
    + b"\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(GUARD_CALL)).encode() + b"\r\n\r\n" + GUARD_CALL
)


async def _guard_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    started = time.perf_counter()
    writer.write(GUARD_REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))  # fmt: skip
    body = await reader.readexactly(length)
    if b'"ALLOW"' not in body:
        raise RuntimeError(f"unexpected guard answer: {head[:40]!r} {body[:200]!r}")
    return time.perf_counter() - started


async def _guard_load(port: int, concurrency: int, total: int) -> tuple[float, list[float]]:
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
    for reader, writer in connections:
        for _ in range(20):
            await _guard_one(reader, writer)
    latencies: list[float] = []

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(total // concurrency):
            latencies.append(await _guard_one(reader, writer))

    started = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in connections))
    elapsed = time.perf_counter() - started
    for _, writer in connections:
        writer.close()
    return elapsed, latencies


def measure_guard(port: int, concurrency: int, total: int) -> Result:
    elapsed, latencies = asyncio.run(_guard_load(port, concurrency, total))
    latencies.sort()
    return Result(
        "Guard API", concurrency, len(latencies) / elapsed, statistics.median(latencies) * 1000,
        latencies[int(len(latencies) * 0.99) - 1] * 1000,
    )  # fmt: skip


@dataclass
class Result:
    name: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    # CPU seconds per request (user + system) by process: "proxy", "decider" (its worker)
    cpu_us: dict[str, float] = field(default_factory=dict)


def measure(name: str, port: int, ca: Path, concurrency: int, total: int) -> Result:
    return measure_spread(name, [(port, ca)], concurrency, total)


def measure_cpu(name: str, started: Started, concurrency: int, total: int) -> Result:
    """measure(), with the CPU the proxy process and its decider worker spent per request
    (read from /proc: the bottleneck at concurrency 16 is the proxy's one thread)."""
    process, port, confdir = started
    before = _cpu_by_process(process.pid)
    result = measure(name, port, confdir / "mitmproxy-ca-cert.pem", concurrency, total)
    after = _cpu_by_process(process.pid)
    result.cpu_us = {k: (after[k] - before.get(k, 0.0)) / total * 1e6 for k in after}
    return result


def _cpu_by_process(pid: int) -> dict[str, float]:
    """CPU seconds so far of the proxy and of its child processes (the decider worker)."""
    try:
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]  # fmt: skip
        cpu = {"proxy": _cpu_seconds(pid)}
        if children:
            cpu["decider"] = sum(_cpu_seconds(child) for child in children)
    except OSError:  # not Linux, or a process gone: no figure rather than a wrong one
        return {}
    return cpu


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_spread(
    name: str, proxies: list[tuple[int, Path]], concurrency: int, total: int
) -> Result:
    elapsed, latencies = asyncio.run(_load_spread(proxies, concurrency, total))
    latencies.sort()
    return Result(
        name,
        concurrency,
        len(latencies) / elapsed,
        statistics.median(latencies) * 1000,
        latencies[int(len(latencies) * 0.99) - 1] * 1000,
    )


# --- processes -------------------------------------------------------------------------------


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=clean_env() | {"PYTHONUNBUFFERED": "1"})  # fmt: skip


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def start_upstream(work: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    process = subprocess.Popen(
        [sys.executable, "-m", "airlock.console.standins", "--cert-dir", str(work / "upstream")],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        env=clean_env(),
    )
    assert process.stdout is not None
    fields = dict(part.split("=", 1) for part in process.stdout.readline().decode().split())
    return process, int(fields["port"]), Path(fields["ca"])


def write_bulk_mappings(folder: Path, count: int, checkout: Path = PROJECT_ROOT) -> None:
    """The checkout's shipped mappings plus `count` more across 100 hosts (10 per host)."""
    folder.mkdir(parents=True)
    for shipped in (checkout / "mappings").glob("*.yaml"):
        shutil.copy(shipped, folder / f"00-{shipped.name}")
    lines = ["provider: bulk", "mappings:"]
    for i in range(count):
        lines += [
            f"  - id: bulk.{i}",
            f"    action: bulk_action_{i % 40}",
            f"    hosts: [api{i % 100}.bulk.example.com]",
            f"    method: {('POST', 'DELETE', 'PUT', 'GET')[i % 4]}",
            f'    path: "/v{i % 3}/things{i}/{{id}}"',
            "    params:",
            "      amount: {path: $.body.amount, type: int}",
            f"      name: $.body.items[{i % 5}].name",
        ]
    (folder / "10-bulk.yaml").write_text("\n".join(lines) + "\n")


Started = tuple[subprocess.Popen[bytes], int, Path]  # process, port, confdir (its CA inside)


def start_proxies(
    work: Path, upstream_port: int, upstream_ca: Path, mappings: Path
) -> tuple[Started, Started, Started, Started, Started]:
    bare = start_bare(work, upstream_port, upstream_ca)
    lean = start_bare(work, upstream_port, upstream_ca, lean=True)
    airlock = start_airlock(
        PROJECT_ROOT, work, "airlock", upstream_port, upstream_ca, mappings, METRICS_PORT,
        ["--guard-port", str(GUARD_PORT)],
    )  # fmt: skip
    process = start_airlock(
        PROJECT_ROOT, work, "airlock-process", upstream_port, upstream_ca, mappings, 0,
        ["--durability", "process"],
    )  # fmt: skip
    in_process = start_airlock(
        PROJECT_ROOT, work, "airlock-in-process", upstream_port, upstream_ca, mappings, 0,
        ["--decider", "in-process"],
    )  # fmt: skip
    return bare, airlock, process, in_process, lean


def start_bare(work: Path, upstream_port: int, upstream_ca: Path, lean: bool = False) -> Started:
    """Stock mitmdump, or (lean) the mitmproxy `airlock run` starts (console/proxy_master.py,
    mitmproxy's addons that Airlock uses) without the gate: what the gate itself costs."""
    port, confdir = free_port(), prepared_confdir(work)
    program = [sys.executable, "-c", LEAN_PROXY] if lean else [
        str(Path(sys.executable).parent / "mitmdump"), "--set", "flow_detail=0"
    ]  # fmt: skip
    log = work / ("bare-lean.log" if lean else "bare.log")
    bare = start(
        [*program, "-q", "--set", "listen_host=127.0.0.1", "--set", f"listen_port={port}",
         "--set", f"confdir={confdir}", "-s",
         str(PROJECT_ROOT / "tests" / "bench" / "route_only.py"),
         "--set", f"airlock_route={HOST}=127.0.0.1:{upstream_port}",
         "--set", "connection_strategy=lazy",
         "--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}"],
        log,
    )  # fmt: skip
    wait_for_port(port, bare, log)
    return bare, port, confdir


LEAN_PROXY = (
    "import sys; from airlock.console.proxy_master import run_proxy; run_proxy(sys.argv[1:])"
)


def start_airlock(
    checkout: Path,
    work: Path,
    name: str,
    upstream_port: int,
    upstream_ca: Path,
    mappings: Path,
    metrics_port: int,
    extra: list[str] | None = None,
    db: str | None = None,
    pythonpath: Path | None = None,
) -> Started:
    """Airlock running `checkout`'s own code (another revision's, for bench_ab, importing
    airlock.* from `pythonpath`); its own SQLite file unless `db` names a store."""
    port, confdir = free_port(), prepared_confdir(work)
    share_request_key(work / f"{name}-data")  # instances on one PostgreSQL store share it
    log = work / f"{name}.log"
    with log.open("wb") as out:
        airlock = subprocess.Popen(
            [sys.executable, "-m", "airlock.console.cli", "run", "--quiet", "--port", str(port),
             "--confdir", str(confdir), "--db", db or f"sqlite:///{work / name}.db",
             "--mappings", str(mappings), "--route", f"{HOST}=127.0.0.1:{upstream_port}",
             "--upstream-ca", str(upstream_ca), "--metrics-port", str(metrics_port),
             *(extra or [])],
            cwd=checkout, stdout=out, stderr=subprocess.STDOUT,
            # Its own data directory (audit key, checkpoints), not the checkout's.
            env=clean_env() | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(pythonpath or checkout),
                               "AIRLOCK_DATA_DIR": str(work / f"{name}-data")},
        )  # fmt: skip
    wait_for_port(port, airlock, log)
    return airlock, port, confdir


# --- in-process stages -----------------------------------------------------------------------


def write_bulk_policies(folder: Path, count: int) -> None:
    """The shipped policies plus `count` more rules spread over the 40 bulk mappings' actions."""
    folder.mkdir(parents=True)
    for shipped in (PROJECT_ROOT / "policies").glob("*.yaml"):
        shutil.copy(shipped, folder / shipped.name)
    lines = ["rules:"]
    for i in range(count):
        lines.append(
            f"  - {{id: bulk-{i}, when: {{action: bulk_action_{i % 40}, params: "
            f"{{amount: {{gte: {i * 10}}}}}}}, decision: REQUIRE_APPROVAL}}"
        )
    lines.append(
        "  - {id: bulk-charges, when: {action: create_charge,"
        " params: {currency: {in: [xyz]}}}, decision: BLOCK}"
    )
    (folder / "bulk.yaml").write_text("\n".join(lines) + "\n")


def stage_timings(mappings: Path, policies: Path) -> tuple[float, float, float]:
    """Median µs to build the document, to map it (1,000+ mappings), and to decide it (500+
    rules, risk score and history included)."""
    from mitmproxy.test import tutils

    from airlock.pipeline.document import build_document
    from airlock.pipeline.evaluation import Config
    from airlock.pipeline.history import History
    from airlock.pipeline.risk import score

    config = Config.load(mappings, policies)
    history = History()
    request = tutils.treq(
        method=b"POST", scheme=b"https", host=HOST, port=443, authority=b"", path=b"/v1/charges",
        headers=[(b"content-type", b"application/x-www-form-urlencoded")], content=BODY,
    )  # fmt: skip
    documents, maps, decides = [], [], []
    for _ in range(5000):
        t0 = time.perf_counter()
        document = build_document(request, "agent")
        t1 = time.perf_counter()
        action = config.mappings.map(document)
        t2 = time.perf_counter()
        risk = score(action, "agent", history)
        config.policies.decide(action, "agent", (), risk.score, history)
        t3 = time.perf_counter()
        documents.append(t1 - t0)
        maps.append(t2 - t1)
        decides.append(t3 - t2)
    return tuple(statistics.median(x) * 1e6 for x in (documents, maps, decides))  # type: ignore[return-value]


def decider_timings(
    mappings: Path, policies: Path, durability: str, count: int = 2000, idle: float = 0.0015
) -> tuple[float, float]:
    """Median µs for the decider's core (decider/core.py, in this process, its own SQLite file)
    to take the bench's Decide and answer it once its record is committed: `idle` seconds apart
    (as at concurrency 1, where every process idles between requests), then back to back.
    With the process hop, it is the floor of the worker's added time before any proxy work."""
    from mitmproxy.test import tutils

    from airlock.addons.runtime import raw_request
    from airlock.decider.core import DeciderCore
    from airlock.decider.messages import Configuration, Decide, Envelope, Setup, StoreAddress
    from airlock.pipeline.evaluation import Config
    from airlock.pipeline.yaml_source import recording_sources
    from airlock.store.schema import create_schema, new_id, open_engine

    folder = Path(tempfile.mkdtemp(prefix="airlock-bench-core-"))
    url = f"sqlite:///{folder / 'core.db'}"
    create_schema(open_engine(url))
    core = DeciderCore(StoreAddress(url, durability))
    with recording_sources() as sources:
        Config.load(mappings, policies)
    configuration = Configuration(str(mappings), str(policies), sources, "enforce", 600.0)
    core.handle([Envelope(0, Setup("bench-1", 60.0, str(folder), 0, configuration, []))])
    request = raw_request(tutils.treq(
        method=b"POST", scheme=b"https", host=HOST, port=443, authority=b"", path=b"/v1/charges",
        headers=[(b"host", HOST.encode()), (b"authorization", b"Bearer sk_test_bench000000"),
                 (b"content-type", b"application/x-www-form-urlencoded")], content=BODY,
    ), HOST)  # fmt: skip
    medians = []
    try:
        for pause in (idle, 0.0):
            timings = []
            for i in range(count):
                time.sleep(pause)
                started = time.perf_counter()
                core.handle([Envelope(i + 1, Decide(new_id(), "agent", None, request))])
                timings.append(time.perf_counter() - started)
            medians.append(statistics.median(timings[count // 10 :]) * 1e6)
    finally:
        core.finish()
        shutil.rmtree(folder, ignore_errors=True)
    return medians[0], medians[1]


def worker_floor(mappings: Path, policies: Path, hop_us: float) -> str:
    """What the worker decider adds at concurrency 1 before the proxy's own work: the goal's
    0.4 ms margin (beyond fdatasync) against the hop and the decider's own time, measured."""
    process = decider_timings(mappings, policies, "process")
    full = decider_timings(mappings, policies, "full")
    return (
        f"The worker decider's floor at concurrency 1, in this run: the process hop {hop_us:.0f} "
        f"µs + its core taking the bench's request and answering once it is recorded "
        f"{process[0]:.0f} µs with durability process, 1.5 ms apart as at concurrency 1 "
        f"({process[1]:.0f} back to back; full: {full[0]:.0f} and {full[1]:.0f}) = "
        f"{hop_us + process[0]:.0f} µs before any work in the proxy (goal: added p50 ≤ 400 µs "
        "with process, ≤ fdatasync + 400 µs with full)"
    )


def redaction_timing(count: int = 5000) -> float:
    """Median µs to redact the document of a typical stripe-python charge (its headers, a form
    body that changes every time, so no string is remembered as clean)."""
    from airlock.pipeline.document import WireRequest, build_document
    from airlock.pipeline.redaction import redact_document

    timings = []
    for i in range(count):
        body = (f"amount={500 + i}&currency=usd&customer=cus_{i:014d}&description=Order {i} "
                f"for the spring catalogue&metadata[order_id]={6735 + i}").encode()  # fmt: skip
        headers = [
            ("authorization", "Bearer sk_test_51Bench000000000000000000"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("user-agent", "Stripe/v1 PythonBindings/16.0.0"),
            ("x-stripe-client-user-agent", f'{{"bindings_version": "16.0.0", "n": {i}}}'),
            ("idempotency-key", f"{i:032x}"),
            ("stripe-version", "2024-06-20"),
        ]
        request = WireRequest("POST", "https", HOST, 443, "/v1/charges", headers, body)
        document = build_document(request, "agent")
        started = time.perf_counter()
        redact_document(document)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1e6


_STARTUP = """
import sys, time
started = time.perf_counter()
from pathlib import Path
from airlock.pipeline.evaluation import Config
config = Config.load(Path("mappings"), Path("policies"))
# VmHWM, not ru_maxrss: the latter keeps the forking parent's size from before exec.
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(time.perf_counter() - started, peak / 1024, len(config.mappings.operations))
"""


def catalog_timings() -> tuple[float, float, int, float, float, int]:
    """Start-up with the whole catalog (a fresh process: import, load, compile) and its peak
    resident MB; then the median and p99 µs to identify one request, over one request per AWS
    write operation in the catalog, built by botocore as boto3 sends it."""
    from airlock.console.catalog_coverage import aws_requests
    from airlock.pipeline.document import build_document
    from airlock.pipeline.operations import load_catalog

    done = subprocess.run(
        [sys.executable, "-c", _STARTUP], cwd=PROJECT_ROOT, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    seconds, megabytes, operations = done.stdout.split()
    index = load_catalog()
    documents = []
    for service, catalog in index.services.items():
        if catalog.provider != "aws":
            continue
        for name, request in aws_requests(service):
            if catalog.operations[name].write and not isinstance(request, Exception):
                documents.append(build_document(request, "agent"))
    timings = []
    for _ in range(5):
        for document in documents:
            t0 = time.perf_counter()
            index.identify(document)
            timings.append(time.perf_counter() - t0)
    timings.sort()
    return (
        float(seconds), float(megabytes), int(operations),
        statistics.median(timings) * 1e6, timings[int(len(timings) * 0.99)] * 1e6, len(documents),
    )  # fmt: skip


# --- report ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per measurement")
    parser.add_argument("--mappings", type=int, default=1000, help="extra mapping rules loaded")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; best kept")
    parser.add_argument("--rules", type=int, default=500, help="extra policy rules, in-process")
    parser.add_argument("--held", type=int, default=1000, help="requests held at once")
    parser.add_argument(
        "--no-postgres", action="store_true", help="skip PostgreSQL as the store (1-3 instances)"
    )
    args = parser.parse_args()
    console = Console(width=120)
    work = Path(tempfile.mkdtemp(prefix="airlock-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upstream, upstream_port, upstream_ca = start_upstream(work)
        processes.append(upstream)
        write_bulk_mappings(work / "mappings", args.mappings)
        started = start_proxies(work, upstream_port, upstream_ca, work / "mappings")
        airlock, airlock_port, airlock_conf = started[1]
        processes += [proxy for proxy, _, _ in started]
        best: dict[tuple[str, int], Result] = {}
        for _ in range(args.rounds):
            for concurrency in (1, 16):
                for name, proxy in (
                    ("bare mitmdump", started[0]),
                    (LEAN_BARE, started[4]),
                    ("Airlock", started[1]),
                    (PROCESS_DURABILITY, started[2]),
                    (IN_PROCESS, started[3]),
                ):
                    result = measure_cpu(name, proxy, concurrency, args.requests)
                    key = (name, concurrency)
                    if key not in best or result.rps > best[key].rps:
                        best[key] = result
        floor_us = fdatasync_floor(work)
        hop_us = process_hop_floor()
        guard = [measure_guard(GUARD_PORT, c, args.requests) for c in (1, 16)]
        write_bulk_policies(work / "policies", args.rules)
        document_us, map_us, decide_us = stage_timings(work / "mappings", work / "policies")
        report(console, best, args, document_us, map_us, decide_us, work, (floor_us, hop_us))
        console.print(worker_floor(work / "mappings", work / "policies", hop_us))
        console.print(
            "Guard API (POST /v1/guard, an allowed create_charge, durability full, keep-alive): "
            + "; ".join(f"concurrency {g.concurrency}: {g.rps:.0f} decisions/s, p50 "
                        f"{g.p50_ms:.2f} ms, p99 {g.p99_ms:.2f} ms" for g in guard)
            + f" (goals: p50 ≤ 1 ms + fdatasync {floor_us / 1000:.2f} ms; ≥ 1,000/s at 16)"
        )  # fmt: skip
        # Before the held rounds leave thousands of approvals open in the SQLite store.
        if not args.no_postgres:
            from tests.bench.instances import postgres_report

            # Four rounds at least: best of two swung 0.86x-1.01x between two runs of the same
            # code on this machine (2026-12-06), about the goal.
            console.print(postgres_report(
                work, (upstream_port, upstream_ca), work / "mappings",
                (airlock_port, airlock_conf), args.requests, max(args.rounds, 4),
            ))  # fmt: skip
        held_report = while_held(
            airlock, airlock_port, airlock_conf, args.held, args.requests, max(args.rounds, 3)
        )
        console.print(held_report)
        settle = settlement_latencies(airlock_port, airlock_conf, work / "airlock.db")
        console.print(
            f"Settlement → release ({len(settle)} held requests, each approved in the store as "
            f"`airlock approve` does, timed to the agent's answer): p50 "
            f"{statistics.median(settle):.1f} ms, p99 {settle[int(len(settle) * 0.99) - 1]:.1f} "
            "ms, max {:.1f} ms (goal ≤ 100 ms p99; pushed by the decider, no proxy polling)".format(
                max(settle)
            )
        )
        console.print(
            f"Redaction (names, known token shapes, detect-secrets' detectors, cards): "
            f"{redaction_timing():.1f} µs median per typical stripe-python charge (goal ≤ 30 µs)"
        )
        from tests.bench.spine import spine_report

        console.print(spine_report())
        startup_s, resident_mb, operations, identify_us, identify_p99, writes = catalog_timings()
        console.print(
            f"Catalog: {operations} operations; start-up with it {startup_s:.2f} s, "
            f"{resident_mb:.0f} MB resident (goal ≤ 1.5 s, ≤ 120 MB); identifying one request "
            f"{identify_us:.1f} µs median, {identify_p99:.1f} µs p99 over {writes} AWS write "
            "operations (goal ≤ 20 µs median)"
        )
        return 0
    finally:
        stop_all(processes)
        if not os.environ.get("AIRLOCK_BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def report(
    console: Console,
    best: dict[tuple[str, int], Result],
    args: argparse.Namespace,
    document_us: float,
    map_us: float,
    decide_us: float,
    work: Path,
    floors: tuple[float, float],
) -> None:
    table = Table(title=f"{args.requests} keep-alive HTTPS POSTs per cell, best of {args.rounds}")
    for column in ("durability", "concurrency", "bare req/s", "Airlock req/s", "ratio",
                   "bare p50 / p99 ms", "Airlock p50 / p99 ms", "added p50 ms",
                   "ratio, same addons", "added p50, same addons"):  # fmt: skip
        table.add_column(column, justify="right")
    for name, durability in VARIANTS:
        for concurrency in (1, 16):
            bare, airlock = best[("bare mitmdump", concurrency)], best[(name, concurrency)]
            lean = best[(LEAN_BARE, concurrency)]
            table.add_row(
                durability,
                str(concurrency),
                f"{bare.rps:.0f}",
                f"{airlock.rps:.0f}",
                f"{airlock.rps / bare.rps:.2f}x",
                f"{bare.p50_ms:.2f} / {bare.p99_ms:.2f}",
                f"{airlock.p50_ms:.2f} / {airlock.p99_ms:.2f}",
                f"{airlock.p50_ms - bare.p50_ms:+.2f}",
                f"{airlock.rps / lean.rps:.2f}x",
                f"{airlock.p50_ms - lean.p50_ms:+.2f}",
            )
    console.print(table)
    lean = best[(LEAN_BARE, 16)], best[(LEAN_BARE, 1)]
    console.print(
        "Bare and Airlock: stock mitmdump (its 35 addons), and Airlock as `airlock run` starts "
        "it (console/proxy_master.py: the 9 mitmproxy addons it uses, then the gate). Same "
        f"addons: against that mitmproxy without the gate ({lean[1].rps:.0f} req/s at "
        f"concurrency 1, {lean[0].rps:.0f} at 16), what the gate alone costs."
    )
    floor_us, hop_us = floors
    console.print(
        f"This disk's floor, in the same run: fdatasync of a small write {floor_us:.0f} µs p50 "
        "(goals: added p50 at concurrency 1 ≤ this + 0.4 ms with durability full, ≤ 0.4 ms "
        "with process; ≥ 0.92x at concurrency 16). A process hop (1.5 KB from the proxy's kind "
        f"of event loop to a worker process and back, idle between): {hop_us:.0f} µs p50, "
        "before anything is decided or written"
    )
    console.print(
        f"In-process, median per request with {args.mappings} extra mappings and {args.rules} "
        f"extra rules loaded: document {document_us:.1f} µs, map {map_us:.1f} µs, "
        f"decide (risk score included) {decide_us:.1f} µs"
    )
    from sqlalchemy import func, select

    from airlock.store.schema import Run, open_engine

    engine = open_engine(f"sqlite:///{work / 'airlock.db'}")
    with engine.connect() as conn:
        recorded = conn.execute(select(func.count()).select_from(Run)).scalar_one()
    console.print(f"Decisions durably committed by Airlock during the run: {recorded}")
    console.print(internal_averages())
    console.print(cpu_report(best))


def cpu_report(best: dict[tuple[str, int], Result]) -> str:
    """Where concurrency 16's throughput goes: the proxy's CPU per request against bare
    mitmdump's (its one event loop is the bottleneck), and the decider worker's beside it."""
    bare = best[("bare mitmdump", 16)].cpu_us.get("proxy")
    if bare is None:
        return "CPU per request: not measured (needs Linux's /proc)"
    parts = [
        f"bare mitmdump {bare:.0f} µs",
        f"bare with Airlock's mitmproxy addons {best[(LEAN_BARE, 16)].cpu_us['proxy']:.0f} µs",
    ]
    for name, durability in VARIANTS:
        cpu = best[(name, 16)].cpu_us
        worker = f" + decider {cpu['decider']:.0f} µs" if "decider" in cpu else ""
        parts.append(f"Airlock ({durability}) proxy {cpu['proxy']:.0f} µs "
                     f"({cpu['proxy'] - bare:+.0f}){worker}")  # fmt: skip
    return ("CPU per request at concurrency 16 (user + system, best round, connection set-up "
            "included): " + "; ".join(parts))  # fmt: skip


def fdatasync_floor(work: Path, count: int = 200) -> float:
    """Median µs of appending 200 bytes and fdatasync-ing them, with a 2 ms pause between (as a
    commit at concurrency 1 sees the disk)."""
    path = work / "fdatasync.probe"
    timings = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(count):
            time.sleep(0.002)
            started = time.perf_counter()
            os.write(fd, b"x" * 200)
            os.fdatasync(fd)
            timings.append((time.perf_counter() - started) * 1e6)
    finally:
        os.close(fd)
    return statistics.median(timings)


# The worker's side of a process hop: a blocking socket woken by poll, as decider/worker.py.
_ECHO = """
import select, socket, sys
link = socket.socket(fileno=int(sys.argv[1]))
link.setblocking(True)
ready = select.poll()
ready.register(link, select.POLLIN)
while ready.poll(None):
    data = link.recv(1 << 20)
    if not data:
        break
    link.sendall(data)
"""


def process_hop_floor(count: int = 500, size: int = 1500) -> float:
    """Median µs for `size` bytes to go from an asyncio event loop (the proxy's side) to a
    worker process and back, 1.5 ms apart (as at concurrency 1: both sides idle between): what
    the worker decider's round trip costs before any deciding or writing."""

    class Echoed(asyncio.Protocol):
        def __init__(self) -> None:
            self.waiting: asyncio.Future[None] | None = None
            self.received = 0

        def data_received(self, data: bytes) -> None:
            self.received += len(data)
            if self.waiting is not None and self.received >= size:
                self.waiting.set_result(None)

    async def rounds() -> list[float]:
        ours, theirs = socket.socketpair()
        worker = subprocess.Popen([sys.executable, "-c", _ECHO, str(theirs.fileno())],
                                  pass_fds=[theirs.fileno()])  # fmt: skip
        theirs.close()
        loop = asyncio.get_running_loop()
        transport, echoed = await loop.create_connection(Echoed, sock=ours)
        timings = []
        try:
            for _ in range(count):
                await asyncio.sleep(0.0015)
                echoed.waiting, echoed.received = loop.create_future(), 0
                started = time.perf_counter()
                transport.write(b"x" * size)
                await echoed.waiting
                timings.append((time.perf_counter() - started) * 1e6)
        finally:
            transport.close()  # the worker reads the end of input, and exits
            await asyncio.to_thread(worker.wait, 10)
        return timings

    return statistics.median(asyncio.run(rounds()))


def while_held(
    process: subprocess.Popen[bytes], port: int, confdir: Path, count: int, total: int,
    rounds: int,
) -> str:  # fmt: skip
    """Allowed requests' latency with none held, then with `count` requests held at once (each
    on its own connection, from an agent of its own), round after round (this
    machine drifts by more than the goal's 10% between two measurements minutes apart), and the
    memory they take."""
    ca = confdir / "mitmproxy-ca-cert.pem"
    ratios, shown, per_held = [], [], 0.0
    for round_number in range(rounds):
        before = measure("none held", port, ca, 16, total)
        rss_before = _resident_kb(process.pid)
        during, rss_during = asyncio.run(
            _held_load(port, ca, count, total, f"{round_number}_", process.pid)
        )
        _await_metric("airlock_held_flows", 0)  # the held connections closed and let go
        if round_number == 0:
            per_held = (rss_during - rss_before) / count
        ratios.append(during.p50_ms / before.p50_ms)
        shown.append(f"{during.p50_ms:.2f} against {before.p50_ms:.2f} ms ({ratios[-1]:.2f}x)")
    median = statistics.median(ratios)
    return (
        f"{count} requests held at once: allowed requests at concurrency 16, p50 with them held "
        f"against none held, {rounds} rounds: {'; '.join(shown)}; median {median:.2f}x "
        f"(goal ≤ 1.1x); the proxy's memory grew {per_held:.1f} KB per held request "
        f"(connection, TLS and flow included)"
    )


async def _held_load(
    port: int, ca: Path, count: int, total: int, prefix: str, pid: int
) -> tuple[Result, int]:
    """Hold `count` calls (each a new customer), then measure allowed requests; the proxy's
    resident memory while they are held."""
    # Each its own agent: one agent holds at most airlock_max_held_per_agent at once.
    held = [await _tunnel(port, ca, f"held-agent-{i}") for i in range(count)]
    for i, (_, writer) in enumerate(held):
        writer.write(f"DELETE /v1/customers/cus_held_{prefix}{i} HTTP/1.1\r\nHost: {HOST}\r\n"
                     "Content-Length: 0\r\n\r\n".encode())  # fmt: skip
    await asyncio.gather(*(w.drain() for _, w in held))
    await asyncio.to_thread(_await_metric, "airlock_held_flows", count)  # decided and held
    rss = _resident_kb(pid)
    elapsed, latencies = await _load(port, ca, 16, total)
    for _, writer in held:
        writer.close()
    latencies.sort()
    result = Result("held", 16, len(latencies) / elapsed, statistics.median(latencies) * 1000,
                    latencies[int(len(latencies) * 0.99) - 1] * 1000)  # fmt: skip
    return result, rss


def _resident_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def settlement_latencies(port: int, confdir: Path, db: Path, count: int = 40) -> list[float]:
    """ms from a reviewer's approval committing to the held request's answer reaching the
    agent, for `count` requests held one after another (sorted)."""
    import requests

    from airlock.store.schema import open_engine

    engine = open_engine(f"sqlite:///{db}")
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"https": f"http://127.0.0.1:{port}"}
    session.verify = str(confdir / "mitmproxy-ca-cert.pem")
    try:
        return sorted(_one_settlement(session, engine, f"cus_settle_{i}") for i in range(count))
    finally:
        engine.dispose()


def _one_settlement(session: Any, engine: Any, customer: str) -> float:
    import threading

    from airlock.store.approvals import APPROVED, pending_approvals, resolve_approval

    answered: list[float] = []

    def send() -> None:
        session.delete(f"https://{HOST}/v1/customers/{customer}", timeout=60)
        answered.append(time.perf_counter())

    sender = threading.Thread(target=send)
    sender.start()
    target = f"customer/{customer}"  # not one left by the held phase, being abandoned
    while not (waiting := [p for p in pending_approvals(engine) if p.target == target]):
        time.sleep(0.01)
    resolve_approval(engine, waiting[0].id, APPROVED, "bench", "bench")
    committed = time.perf_counter()
    sender.join(60)
    return (answered[0] - committed) * 1000


def _metrics() -> dict[str, float]:
    """The bench's main Airlock's Prometheus samples without labels."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
        samples = {}
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
    return samples


def _await_metric(name: str, value: float, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while (found := _metrics().get(name)) != value:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} stayed at {found}, not {value}, for {timeout:.0f} s")
        time.sleep(0.05)


def internal_averages() -> str:
    """Airlock's own view, from its Prometheus endpoint: where the added time goes."""
    samples = _metrics()

    def mean(metric: str) -> float:
        return samples[f"{metric}_sum"] / max(samples[f"{metric}_count"], 1)

    return (
        f"Airlock internals (means over the run): request → decision committed "
        f"{mean('airlock_decision_seconds') * 1e3:.3f} ms, store commit "
        f"{mean('airlock_store_commit_seconds') * 1e3:.3f} ms per group, "
        f"{mean('airlock_store_commit_group_size'):.1f} records per group"
    )


if __name__ == "__main__":
    sys.exit(main())
