"""Prometheus metrics for operators: an addon that owns the registry and the /metrics endpoint."""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import ctx, exceptions
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30)


MAX_SERIES = 2_000  # labelled decision counters kept apart; the rest count as "other"
MAX_LABEL_CHARS = 128  # an action or provider the request named is cut to this in a label
OTHER = "other"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "airlock_decisions_total",
            "Decisions made, by decision, action and provider.",
            ["decision", "action", "provider"],
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "airlock_decision_seconds",
            "Time from receiving a request to its decision being committed.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.shadow_decisions = Counter(
            "airlock_shadow_decisions_total",
            "What shadow-mode rules (or airlock_mode=shadow) would have decided.",
            ["decision", "action", "provider"],
            registry=self.registry,
        )
        self.held_flows = Gauge(
            "airlock_held_flows", "Requests held awaiting a reviewer.", registry=self.registry
        )
        self.approvals_pending = Gauge(
            "airlock_approvals_pending",
            "Approvals waiting for a reviewer in the store, from every instance sharing it (read "
            "every 2 s by the decider); airlock_held_flows counts this proxy's own.",
            registry=self.registry,
        )
        self.approvals_settled = Counter(
            "airlock_approvals_settled_total",
            "Approvals this proxy held a flow for, by how they ended (APPROVED, DENIED, EXPIRED: "
            "unattended until the window closed, ABANDONED: the agent left).",
            ["state"],
            registry=self.registry,
        )
        self.time_to_decision = Histogram(
            "airlock_approval_decision_seconds",
            "From a request being held to its approval being settled.",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "airlock_store_commit_seconds",
            "Time to make one group of records durable (the database's own commit).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_group_size = Histogram(
            "airlock_store_commit_group_size",
            "Records written per commit (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.fail_closed = Counter(
            "airlock_fail_closed_total",
            "Requests blocked because a stage failed (mapping, policy, store), by stage.",
            ["stage"],
            registry=self.registry,
        )
        self.webhook_failures = Counter(
            "airlock_webhook_failures_total",
            "Webhook messages given up on after all retries, by target URL.",
            ["target"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "airlock_reloads_total",
            "Configuration reloads (SIGHUP, airlock reload), applied or refused.",
            ["result"],
            registry=self.registry,
        )
        self._server: Any = None
        self._children: dict[tuple[str, ...], Any] = {}

    def load(self, loader: Any) -> None:
        loader.add_option(
            "airlock_metrics_port",
            int,
            9464,
            "Port of the Prometheus /metrics endpoint; 0 turns it off.",
        )
        loader.add_option(
            "airlock_metrics_host",
            str,
            "127.0.0.1",
            "Address the /metrics endpoint listens on (loopback by default).",
        )

    def configure(self, updated: set[str]) -> None:
        if not {"airlock_metrics_port", "airlock_metrics_host"} & updated:
            return
        self._stop_server()
        port, host = ctx.options.airlock_metrics_port, ctx.options.airlock_metrics_host
        if port:
            try:
                self._server, _ = start_http_server(port, host, registry=self.registry)
            except OSError as e:
                raise exceptions.OptionsError(
                    f"cannot serve metrics on {host}:{port}: {e.strerror} "
                    "(set airlock_metrics_port to a free port, or 0 to turn metrics off)"
                ) from e
            log.info("Prometheus metrics on http://%s:%d/metrics", host, port)

    def done(self) -> None:
        self._stop_server()

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def count_decision(self, decision: str, action: str, provider: str) -> None:
        self._child(self.decisions, decision, action, provider).inc()

    def count_shadow(self, decision: str, action: str, provider: str) -> None:
        self._child(self.shadow_decisions, decision, action, provider).inc()

    def _child(self, counter: Counter, *labels: str) -> Any:
        """labels() validates and locks: look each labelled child up once. An action or a
        provider can come from the request (an MCP tool's name, a Guard call's provider): past
        MAX_SERIES label sets, new ones are counted as "other", so a client making up names
        cannot grow the proxy's memory (prometheus_client keeps every series it was given); each
        value is cut to MAX_LABEL_CHARS, else one 900 KB tool name is a series of 900 KB, kept
        and written out at every scrape."""
        labels = tuple(_cut(label) for label in labels)
        key = (counter._name, *labels)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= MAX_SERIES:
                labels = (labels[0], *(OTHER for _ in labels[1:]))
                key = (counter._name, *labels)
                child = self._children.get(key)
            if child is None:
                child = self._children[key] = counter.labels(*labels)
        return child

    def on_commit(self, seconds: float, group_size: int) -> None:
        """Called by the store writer's thread after each group commit."""
        self.commit_seconds.observe(seconds)
        self.commit_group_size.observe(group_size)


def _cut(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"
