"""Prometheus metrics, in a registry of their own so several bridges can share a process."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.transactions = Counter(
            "letta_appservice_transactions",
            "Transactions pushed by the homeserver",
            ["result"],
            registry=r,
        )
        self.events = Counter(
            "letta_appservice_events",
            "Events received (new = not seen before)",
            ["result"],
            registry=r,
        )
        self.inbox_depth = Gauge(
            "letta_appservice_inbox_events", "Inbox events by state", ["state"], registry=r
        )
        self.letta_latency = Histogram(
            "letta_appservice_letta_request_seconds",
            "Letta request latency",
            ["operation"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180),
            registry=r,
        )
        self.letta_errors = Counter(
            "letta_appservice_letta_errors", "Failed Letta requests by kind", ["kind"], registry=r
        )
        self.matrix_requests = Counter(
            "letta_appservice_matrix_requests",
            "Requests made to the homeserver",
            ["method"],
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "letta_appservice_reconcile_seconds",
            "Reconcile pass duration",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.reconcile_changes = Counter(
            "letta_appservice_reconcile_changes",
            "Changes made by reconciles",
            ["kind"],
            registry=r,
        )
        self.reconcile_failures = Counter(
            "letta_appservice_reconcile_failures", "Reconcile passes that failed", registry=r
        )
        self.agents = Gauge(
            "letta_appservice_agents", "Bridged agents by state", ["state"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_letta(self, operation: str, seconds: float | None, error: str | None) -> None:
        """LettaClient's request observer (no seconds: an error in the middle of a stream)."""
        if seconds is not None:
            self.letta_latency.labels(operation).observe(seconds)
        if error:
            self.letta_errors.labels(error).inc()

    def observe_reconcile(self, summary: Any) -> None:
        """A finished reconcile pass (reconciler.PassSummary)."""
        self.reconcile_duration.observe(summary.duration)
        for kind, n in summary.changes.items():
            self.reconcile_changes.labels(kind).inc(n)
        if summary.result != "ok":
            self.reconcile_failures.inc()
