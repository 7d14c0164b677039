"""Airlock's runtime in mitmproxy: its options, the configuration it decides with, the decider it
asks, and reload. The other addons (identity, control surface, gate, holds, outcomes) share it.

The configuration is compiled here once per change (errors stop the proxy with file:line; agents
are named here) and handed to the decider as the texts it was compiled from, so a decider
(re)started later decides with what was validated, never with unvalidated edits on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from mitmproxy import addonmanager, ctx, exceptions, http
from sqlalchemy.exc import ArgumentError

from airlock.addons.decision_log import DecisionLog
from airlock.addons.metrics import Metrics
from airlock.addons.notify import Notifier
from airlock.decider.client import DECIDER_KINDS, WORKER, Decider, DeciderFault, decider_for
from airlock.decider.messages import (
    AnsweredOutcome,
    Configuration,
    RawRequest,
    Settled,
    Setup,
    StoreAddress,
)
from airlock.pipeline.document import fold_headers
from airlock.pipeline.evaluation import Config
from airlock.pipeline.policies import ENFORCE, MODES
from airlock.pipeline.redaction import redact_logs, redact_value
from airlock.pipeline.run_record import SIMULATE_MODE, RunSummary
from airlock.pipeline.yaml_source import ConfigError, Sources, recording_sources, sources_hash
from airlock.store.locations import shipped
from airlock.store.records import OutcomeRecord, Released
from airlock.store.schema import DEFAULT_DB_URL, DURABILITY_MODES, FULL, normalise_url

log = logging.getLogger("airlock.addons.gatekeeper")

HISTORY_SYNC_SECONDS = 2.0  # how often other instances' decisions are pulled into the history
STORE_TIMEOUT = 10.0  # seconds a flow waits for its commit before it is refused
# One agent's requests held at once: each keeps its connection, TLS state and body (about 100 KB,
# 19 MB for a 8 MB body, measured): past it, an approval is answered "pending" at once, not held.
MAX_HELD_PER_AGENT = 32
# mitmproxy options under which connections bypass the HTTP layer (relayed as raw streams).
_UNSEEN_HOSTS = ("ignore_hosts", "allow_hosts", "tcp_hosts", "udp_hosts")
# mitmproxy's addons that rewrite a request in their request hook, which runs after Airlock's
# (mitmdump loads scripts before them; `airlock run` leaves them out): the destination, the body,
# another client's credentials or cookies.
_REWRITE_AFTER = ("map_remote", "modify_body", "stickyauth", "stickycookie")
_CONFIG_OPTIONS = frozenset(
    {"airlock_mappings", "airlock_policies", "airlock_mode", "airlock_approval_timeout"}
)


class Runtime:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.config: Config | None = None
        self.sources: Sources = {"files": {}, "folders": {}}  # what self.config was compiled from
        self._hashed: tuple[Sources, str] | None = None  # self.sources and its hash
        self.decider: Decider | None = None
        # Unique per start, even for a restarted container's pid 1: other instances' records
        # (an earlier process's, committed late) are told apart from this one's.
        self.instance = f"{socket.gethostname()}-{os.getpid()}.{secrets.token_hex(3)}"
        self.log = DecisionLog()
        self.notifier = Notifier([], lambda url: None)
        self.mode = ENFORCE
        # Set by the holds addon: the approvals it holds flows for, and where settlements go.
        self.watched: Callable[[], list[str]] = list
        self.on_settled: Callable[[Settled], None] = lambda settled: None
        self._waiting: dict[str, list[asyncio.Future[Settled]]] = {}  # wait_settled's callers
        self._tasks: set[asyncio.Task[None]] = set()
        # One reload at a time, each reading the disk when its turn comes: two in quick
        # succession must not finish in the wrong order (a slow compile of the older files
        # applied after the newer ones).
        self._reloading = asyncio.Lock()

    # --- options -----------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        redact_logs()  # mitmdump -s addons/gate.py: its handlers are set up by now
        loader.add_option(
            "airlock_decider",
            str,
            WORKER,
            "Where requests are decided and recorded. worker: a process beside mitmproxy, on "
            "another core (throughput); in-process: a thread of mitmproxy's own process (one "
            "process, small setups). The same decisions either way.",
            choices=list(DECIDER_KINDS),
        )
        loader.add_option(
            "airlock_db", str, DEFAULT_DB_URL, "SQLAlchemy URL of the store (SQLite or PostgreSQL)."
        )
        loader.add_option(
            "airlock_durability",
            str,
            FULL,
            "What a committed decision survives before its request is released. full: a power "
            "loss (SQLite synchronous=FULL, PostgreSQL's commit); process: a crash of the proxy "
            "or its decider, not a power loss (SQLite synchronous=NORMAL), nor on PostgreSQL "
            "a crash of the server, which can lose its last ~0.6 s of commits "
            "(synchronous_commit=off); for less latency.",
            choices=list(DURABILITY_MODES),
        )
        loader.add_option(
            "airlock_anchor_dir",
            str,
            "",
            "Data directory whose keys/audit-ed25519.pem signs audit checkpoints written to its "
            "checkpoints/ folder (made on first use); empty: no checkpoints. Its "
            "keys/request-hash.key binds approvals to their requests (empty: the default data "
            "directory's, $AIRLOCK_DATA_DIR or ./airlock-data): set it once, as the store "
            "refuses a key other than the first it saw (airlock rekey).",
        )
        loader.add_option(
            "airlock_witness_url",
            str,
            "",
            "Also POST each signed audit checkpoint (text/plain) to this URL, a witness outside "
            "this machine; best effort, off the request path. Empty: none.",
        )
        loader.add_option(
            "airlock_retention_days",
            int,
            0,
            "Days records are kept: older runs, approvals and audit events are pruned in the "
            "background (hourly), the cut signed as a checkpoint (needs airlock_anchor_dir). "
            "0 keeps everything.",
        )
        loader.add_option(
            "airlock_mappings",
            str,
            str(shipped("mappings")),
            "Folder (or file) of YAML mappings: request → canonical action.",
        )
        loader.add_option(
            "airlock_policies",
            str,
            str(shipped("policies")),
            "Folder (or file) of YAML policies: action → ALLOW, BLOCK or REQUIRE_APPROVAL.",
        )
        loader.add_option(
            "airlock_webhook",
            Sequence[str],
            [],
            "POST to this URL when a request is held and when it is settled (repeatable); "
            "slack:URL sends a Slack incoming-webhook message, a plain URL generic JSON.",
        )
        loader.add_option(
            "airlock_mode",
            str,
            ENFORCE,
            "enforce: decisions are enforced; shadow: decided and recorded (what would have "
            "happened), everything forwarded; off: nothing decided, everything recorded and "
            "forwarded; simulate: writes decided, recorded and answered by Airlock, never "
            "forwarded. Rules can also be put in shadow mode one by one.",
            choices=[*MODES, SIMULATE_MODE],
        )
        loader.add_option(
            "airlock_hold_timeout",
            int,
            25,
            "Seconds one attempt of a request is held waiting for approval (below the 30 s after "
            "which slack_sdk gives up); then it is answered 503 'approval pending' and the SDK's "
            "retry joins the same approval.",
        )
        loader.add_option(
            "airlock_max_held_per_agent",
            int,
            MAX_HELD_PER_AGENT,
            "Requests of one agent held at once (each keeps its connection and body in memory); "
            "past it a request that needs approval still opens (or joins) its approval, and is "
            "answered 503 'approval pending' at once rather than held, so its retry joins it. "
            "0: no limit.",
        )
        loader.add_option(
            "airlock_mcp_keepalive",
            int,
            10,
            "Seconds each leg of a held MCP tool call's event stream lasts: the stream closes "
            "with a progress notification and the client resumes it (MCP 2025-11-25 and "
            "later), so no client timeout runs out while a reviewer decides.",
        )
        loader.add_option(
            "airlock_approval_timeout",
            int,
            600,
            "Seconds an approval stays open for reviewers (across the SDK's retries); then it "
            "expires and the request is refused.",
        )

    def configure(self, updated: set[str]) -> None:
        if {"airlock_mappings", "airlock_policies"} & updated:
            gc.unfreeze()  # the configuration being replaced may be collected
            self.config = self._load_config()
            settle_heap()
        if {"airlock_db", "airlock_durability", "airlock_decider"} & updated:
            self._open_store(ctx.options.airlock_db)
        if "airlock_mode" in updated:
            self.mode = ctx.options.airlock_mode
        if "airlock_webhook" in updated:
            failures = self.metrics.webhook_failures
            self.notifier = Notifier(
                ctx.options.airlock_webhook, lambda url: failures.labels(url).inc()
            )
        for name in ("airlock_hold_timeout", "airlock_mcp_keepalive"):
            if name in updated and getattr(ctx.options, name) <= 0:
                raise exceptions.OptionsError(f"{name} must be a positive number of seconds")
        if "airlock_max_held_per_agent" in updated and ctx.options.airlock_max_held_per_agent < 0:
            raise exceptions.OptionsError("airlock_max_held_per_agent must be 0 (no limit) or more")
        if _CONFIG_OPTIONS & updated and self.decider is not None and self.decider.running:
            # Sent now, ahead of any later request; a (re)started decider gets it in its setup.
            self.spawn(self._reconfigured(self.decider.configure(self._configuration())))

    async def _reconfigured(self, answer: asyncio.Future[None]) -> None:
        try:
            await answer
        except Exception as e:
            log.error("the decider did not take the configuration (%s): it refuses every "
                      "request until it does, or until it is restarted", e)  # fmt: skip

    def _load_config(self) -> Config:
        paths = Path(ctx.options.airlock_mappings), Path(ctx.options.airlock_policies)
        handed = _PRECOMPILED.pop(paths, None)
        if handed is not None:
            config, self.sources = handed
            log.info("took the %d mappings and %d policy rules airlock run loaded",
                     len(config.mappings), len(config.policies))  # fmt: skip
            return config
        try:
            config, self.sources = compile_config(*paths)
        except ConfigError as e:
            raise exceptions.OptionsError(str(e)) from e
        return config

    # --- reload ------------------------------------------------------------------------------

    def _listen_for_reload(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGHUP reloads. A plain handler, not loop.add_signal_handler: measured, a second
        loop-managed signal made mitmproxy's own SIGINT shutdown cancel held flows before
        done() could answer them."""

        def reload_soon(*_: Any) -> None:
            loop.call_soon_threadsafe(self._reload_from_disk)

        with contextlib.suppress(ValueError):  # not the main thread (mitmproxy in a test)
            signal.signal(signal.SIGHUP, reload_soon)

    def _reload_from_disk(self) -> None:
        """SIGHUP (`airlock reload`): read mappings, policies, agents and reviewers again."""
        self.spawn(self._reload())

    async def _reload(self) -> None:
        """A broken edit is refused with file:line and the last good configuration stays in
        force. A good one is taken here and sent to the decider in one step, on the event loop:
        the decider takes messages in order, so every request sent before was authenticated and
        decided with the previous configuration, every one after with the new one."""
        async with self._reloading:
            await self._reload_now()

    async def _reload_now(self) -> None:
        paths = Path(ctx.options.airlock_mappings), Path(ctx.options.airlock_policies)
        try:
            config, sources = await asyncio.to_thread(compile_config, *paths)  # off the loop
        except Exception as e:  # a ConfigError, or a fault in loading: said, not a traceback
            self.metrics.reloads.labels("refused").inc()
            log.error("reload refused, still deciding with configuration %s: %s",
                      sources_hash(self.sources)[:12], e)  # fmt: skip
            return
        previous = self.config, self.sources
        self._switch(config, sources)
        decider = self.ask()
        if not decider.running:  # the setup of the decider started next carries it
            self.metrics.reloads.labels("applied").inc()
            log.info("reloaded: deciding with configuration %s", sources_hash(sources)[:12])
            return
        try:
            await decider.configure(self._configuration())
        except DeciderFault as e:  # it refuses every request until configured: back to before
            self.metrics.reloads.labels("refused").inc()
            assert previous[0] is not None
            self._switch(*previous)
            log.error("reload refused: the decider could not load it (%s); deciding with "
                      "configuration %s again", e, sources_hash(self.sources)[:12])  # fmt: skip
            self.spawn(self._reconfigured(decider.configure(self._configuration())))
            return
        except Exception as e:  # no answer yet, or a decider gone: the new one is set up with it
            log.warning("the decider has not confirmed configuration %s yet (%s); it takes it "
                        "before any later request", sources_hash(sources)[:12], e)  # fmt: skip
        self.metrics.reloads.labels("applied").inc()
        log.info("reloaded: deciding with configuration %s", sources_hash(sources)[:12])

    def config_hash(self) -> str | None:
        """The hash of the configuration in force, as runs record it (for the refusals the
        proxy makes itself); computed once per configuration."""
        if not self.sources["files"]:
            return None
        if self._hashed is None or self._hashed[0] is not self.sources:
            self._hashed = self.sources, sources_hash(self.sources)
        return self._hashed[1]

    def _switch(self, config: Config, sources: Sources) -> None:
        gc.unfreeze()  # the configuration being replaced may be collected
        self.config, self.sources = config, sources
        settle_heap()

    # --- the store and the decider -----------------------------------------------------------

    def _open_store(self, url: str) -> None:
        """The proxy names the store; its decider opens it (creating the tables, settling what
        stopped processes left) before it decides anything. The proxy never opens it: a store
        that cannot be opened refuses every request, saying why (`airlock run` checks it before
        starting, for a clear error at once)."""
        self._close_store()
        try:
            store = StoreAddress(normalise_url(url), ctx.options.airlock_durability)
        except ArgumentError:  # its text would show the URL, password and all
            raise exceptions.OptionsError(
                "airlock_db is not a database URL (sqlite:///PATH or postgresql://USER@HOST/DB)"
            ) from None
        try:
            self.decider = decider_for(ctx.options.airlock_decider)(
                store,
                self._setup,
                self._settled,
                self.metrics.on_commit,
                self.metrics.approvals_pending.set,
            )
        except ValueError as e:  # an in-memory SQLite, which a worker cannot share
            raise exceptions.OptionsError(f"airlock_db cannot name a store: {e}") from e

    def _setup(self) -> Setup:
        """What a (re)started decider needs first: who this proxy is, what it decides with, and
        the approvals it holds flows (or Guard API calls) for, which the decider watches."""
        return Setup(
            self.instance,
            HISTORY_SYNC_SECONDS,
            ctx.options.airlock_anchor_dir,
            ctx.options.airlock_retention_days,
            self._configuration(),
            list(dict.fromkeys([*self.watched(), *self._waiting])),  # Guard API's waits too
            ctx.options.airlock_witness_url,
        )

    def _configuration(self, sources: Sources | None = None) -> Configuration:
        """The files the proxy loaded and validated, as it read them."""
        return Configuration(
            ctx.options.airlock_mappings,
            ctx.options.airlock_policies,
            self.sources if sources is None else sources,
            self.mode,
            ctx.options.airlock_approval_timeout,
        )

    def _settled(self, settled: Settled) -> None:
        self.on_settled(settled)
        for waiter in self._waiting.pop(settled.id, []):
            if not waiter.done():
                waiter.set_result(settled)

    async def wait_settled(self, approval_id: str, timeout: float) -> Settled | None:
        """The approval's settlement once pushed (store/settlements.py), or None after timeout
        seconds (or at once if it is already settled: the watch reads it on its first look)."""
        waiter: asyncio.Future[Settled] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(approval_id, []).append(waiter)
        self.ask().watch([approval_id])
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiting.get(approval_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiting.pop(approval_id, None)
                if self.decider is not None and approval_id not in self.watched():
                    self.decider.unwatch(approval_id)

    def _close_store(self) -> None:
        """Options changed while running: the decider for the old store finishes its writes."""
        decider, self.decider = self.decider, None
        if decider is not None:  # a dead one too: its restart for held flows is called off
            self.spawn(decider.stop())

    def ask(self) -> Decider:
        """The decider (configured at start: mitmproxy configures before any traffic)."""
        if self.decider is None:
            raise RuntimeError("Airlock has no store configured")
        return self.decider

    async def start_decider(self) -> None:
        """Start it, or start it again if it died (cheap when it runs)."""
        await self.ask().start()

    def record_outcome(
        self,
        run_id: str,
        outcome: str,
        status: int | None,
        upstream_ms: float | None = None,
        detail: dict[str, Any] | None = None,
        answer: tuple[str, http.Response] | None = None,
    ) -> None:
        """`detail`: what the call did (an MCP tool's result), redacted before it is sent.
        `answer`: the run's mapping id and the upstream's response, for the decider to read the
        identifiers it returned (the mapping's `outcome:`)."""
        if self.decider is None:
            return
        detail = redact_value(detail) if detail is not None else None
        record = OutcomeRecord(run_id, time.time(), outcome, status, upstream_ms, detail)
        if answer is None:
            self.decider.record_outcome(record)
            return
        mapping_id, response = answer
        self.decider.record_outcome(AnsweredOutcome(
            record, mapping_id, list(response.headers.fields), response.raw_content or b""
        ))  # fmt: skip

    async def release(self, approval_id: str, run_id: str) -> Released:
        """Ask to be the one attempt (run) that forwards an approved request. A release whose answer
        does not come (in time, or at all) forwards nothing, yet may still commit: it is
        withdrawn, after it, so that "released" never stands for a request that was not
        forwarded, and a retry can be."""
        decider, at = self.ask(), time.time()
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                return await decider.release(approval_id, at, run_id)
        except BaseException:  # a timeout, a failed write, or the flow cancelled
            decider.withdraw_release(approval_id, at)
            raise

    def remember(self, run: RunSummary, passed: bool) -> None:
        """A held request, once settled, counts in the decider's budgets."""
        self.ask().remember(run, passed)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run in the background, keeping a reference so the task is not collected midway."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- lifecycle ---------------------------------------------------------------------------

    async def running(self) -> None:
        quiet_cancelled_connections()
        self._enforce_gating_options()
        await self.start_decider()
        self._listen_for_reload(asyncio.get_running_loop())
        log.info("deciding with configuration %s", sources_hash(self.sources)[:12])
        settle_heap()

    def _enforce_gating_options(self) -> None:
        """mitmproxy settings under which some traffic would pass the gate unseen."""
        if "stream_large_bodies" in ctx.options and ctx.options.stream_large_bodies:
            # Streamed bodies reach the upstream before the request hook runs.
            raise exceptions.OptionsError(
                "Airlock cannot gate streamed requests: unset stream_large_bodies "
                "(cap bodies with body_size_limit instead)"
            )
        unseen = [n for n in _UNSEEN_HOSTS if n in ctx.options and getattr(ctx.options, n)]
        if unseen:
            raise exceptions.OptionsError(
                "Airlock cannot gate connections that mitmproxy relays as raw streams, below any "
                f"HTTP hook: unset {', '.join(unseen)}"
            )
        rewriting = [n for n in _REWRITE_AFTER if n in ctx.options and getattr(ctx.options, n)]
        if rewriting:
            raise exceptions.OptionsError(
                "Airlock cannot gate requests that mitmproxy changes after Airlock judged them "
                f"(destination, body, credentials): unset {', '.join(rewriting)}"
            )
        late = _scripts_after_the_gate()
        if late:
            raise exceptions.OptionsError(
                f"{', '.join(late)} could change requests after Airlock judged them: load "
                "addons/gate.py as the last -s script, with no other script that sends a request "
                "elsewhere (server_connect) or relays a connection unread (next_layer)"
            )
        safe = {"connection_strategy": "lazy", "rawtcp": False, "websocket": False}
        # lazy: a blocked or held request never opens an upstream connection.
        # rawtcp off: non-HTTP traffic inside a tunnel is refused, not relayed unseen.
        # websocket off: a 101 answer never turns the connection into a relay of messages no
        # policy judges (mitmproxy 11 relays them after websocket_start whatever it did).
        changes = {
            k: v for k, v in safe.items() if k in ctx.options and getattr(ctx.options, k) != v
        }
        if changes:
            ctx.options.update(**changes)

    async def done(self) -> None:
        """Last of Airlock's addons (held flows were answered first): webhooks are delivered,
        then the decider writes everything it was sent and stops."""
        await self.notifier.drain()
        decider, self.decider = self.decider, None
        if decider is not None:
            await decider.stop()
        self.log.flush()


def _scripts_after_the_gate() -> list[str]:
    """Other scripts' addons that could change what the gate judged: a request hook loaded
    after Airlock's (`-s` order: it runs after the gate's), and, wherever loaded, a
    server_connect hook (it runs when the judged request is about to go out: it can send it
    elsewhere) or a next_layer hook (it can relay a connection as raw TCP, below every HTTP
    hook). mitmproxy's own are checked by their options (_REWRITE_AFTER, _UNSEEN_HOSTS)."""
    master = getattr(ctx, "master", None)
    if master is None:
        return []
    chain = list(addonmanager.traverse(master.addons.chain))
    first = next((i for i, a in enumerate(chain) if _module_of(a).startswith("airlock.")), None)
    if first is None:
        return []
    return [
        f"{_module_of(addon)} ({', '.join(hooks)})"
        for i, addon in enumerate(chain)
        if not _module_of(addon).startswith(("airlock.", "mitmproxy."))
        and (hooks := _late_hooks(addon, after_the_gate=i > first))
    ]


def _late_hooks(addon: object, after_the_gate: bool) -> list[str]:
    names = ("request", "server_connect", "next_layer") if after_the_gate else (
        "server_connect", "next_layer"
    )  # fmt: skip
    return [name for name in names if callable(getattr(addon, name, None))]


def _module_of(addon: object) -> str:
    name = addon.__name__ if isinstance(addon, ModuleType) else type(addon).__module__
    return name.removeprefix("__mitmproxy_script__.")  # how mitmproxy names a script's module


class _CancelledConnections(logging.Filter):
    """At shutdown the connections still open (an HTTP/2 client keeps its connection after its
    held request was answered 503) are cancelled when mitmproxy's event loop ends. Python 3.11's
    asyncio streams then log a CancelledError traceback per connection from StreamReaderProtocol's
    callback, which calls task.exception() on the cancelled task (3.13 checks task.cancelled()
    first). The loop's own handler is mitmproxy's until then, so asyncio's logger is filtered:
    only that record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        from_streams = "StreamReaderProtocol.connection_made" in str(record.msg)
        return not (isinstance(error, asyncio.CancelledError) and from_streams)


def quiet_cancelled_connections() -> None:
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _CancelledConnections) for f in logger.filters):
        logger.addFilter(_CancelledConnections())


def settle_heap() -> None:
    """Exempt what lives as long as the proxy (the compiled mappings and policies: over 100,000
    objects with a large catalog) from garbage collection, which would otherwise scan it again
    and again under load (measured: ~75 µs per request at concurrency 16, ~20 µs after)."""
    gc.collect()
    gc.freeze()


# `airlock run` compiles the configuration before mitmproxy starts, to refuse a broken one in
# one line; the proxy it then runs in the same process takes that compilation, once, instead
# of compiling the same files again (~0.45 s a start).
_PRECOMPILED: dict[tuple[Path, Path], tuple[Config, Sources]] = {}


def precompiled(config: Config, sources: Sources, mappings: Path, policies: Path) -> None:
    """Hand what compile_config(mappings, policies) returned to this process's proxy."""
    _PRECOMPILED[mappings, policies] = config, sources


def compile_config(mappings: Path, policies: Path) -> tuple[Config, Sources]:
    """Load and validate the configuration, keeping the texts it was compiled from."""
    started = time.perf_counter()
    with recording_sources() as sources:
        config = Config.load(mappings, policies)
    log.info(
        "loaded %d mappings and %d policy rules in %.0f ms",
        len(config.mappings),
        len(config.policies),
        (time.perf_counter() - started) * 1000,
    )
    return config, sources


def header_dict(headers: http.Headers) -> dict[str, str]:
    """`dict(headers)` in one pass (pipeline/document.py fold_headers)."""
    return fold_headers(headers.fields)


def pop_header(headers: http.Headers, name: str, default: str = "") -> str:
    """`headers.pop(name, default)`, with one scan of the fields when the name is absent (on
    every request): mitmproxy's mapping view scans them for the lookup and again for the
    delete, and raises a KeyError inside to say it is not there."""
    wanted = name.lower().encode()
    if not any(field.lower() == wanted for field, _ in headers.fields):
        return default
    return str(headers.pop(name))


def add_header_unless_present(headers: http.Headers, name: str, value: str) -> None:
    """`headers.setdefault(name, value)` without the mapping view: ~0.7 µs instead of ~4.4 µs
    back to back, about 20 µs per request in the proxy at concurrency 16 (`make bench`)."""
    wanted = name.lower().encode()
    if not any(field.lower() == wanted for field, _ in headers.fields):
        headers.fields = (*headers.fields, (name.encode(), value.encode()))


def raw_request(request: http.Request, sni: str | None) -> RawRequest:
    """What the decider needs of a request: its bytes as mitmproxy holds them, the TLS server
    name its client asked for (`sni`), and the names of any trailer fields (HTTP/2): both go
    upstream as sent, so the decider refuses a request whose SNI or trailers it cannot judge."""
    data = request.data
    trailers = [name for name, _ in data.trailers.fields] if data.trailers else []
    return RawRequest(
        data.method, data.scheme, request.host, request.port, data.path, data.authority,
        list(data.headers.fields), request.raw_content or b"", sni or "", trailers,
    )  # fmt: skip
