"""The daemon's Prometheus metrics (served as ``GET /metrics`` by ``fploopd run --http``).

Counts that the journal holds (jobs by state, queue depth, waiting drops, the last delivery) are
read from it at each scrape, with a read-only connection of the scraping thread, so they always
match ``fploopd status``. What only the supervisor sees (how long jobs and sections took, worker
restarts, GPU memory from the workers' heartbeats) it records here as it happens; prometheus-client's
metrics are thread-safe, so the web thread reads them while the loop writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fploopd.daemon.journal import STATES, JobState
from fploopd.daemon.layout import Layout
from fploopd.daemon.stores import open_store

JOB_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, float("inf"))
SECTION_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))


class JournalCollector(Collector):
    """Job counts as the journal has them, at the moment of the scrape."""

    def __init__(self, layout: Layout, journal_url: str = "") -> None:
        self.layout = layout
        self.journal_url = journal_url  # "" = the root's SQLite journal; else the hosts' PostgreSQL

    def collect(self) -> Iterator[Metric]:
        journal = open_store(self.layout, self.journal_url, "metrics", readonly=True)
        try:
            jobs = journal.jobs()
            waiting = journal.waiting()
        finally:
            journal.close()
        by_state = GaugeMetricFamily("fploopd_jobs", "Jobs in the journal by state", labels=["state"])
        for state in STATES:
            by_state.add_metric([state.value], sum(1 for j in jobs if j.state is state))
        yield by_state
        yield GaugeMetricFamily(
            "fploopd_queue_depth", "Jobs queued and not running yet", value=sum(1 for j in jobs if j.state is JobState.QUEUED)
        )
        yield GaugeMetricFamily("fploopd_waiting_drops", "Drops in the inbox not taken yet (settling, missing media, ...)", value=len(waiting))
        delivered = [j.delivered_at for j in jobs if j.state is JobState.DONE and j.delivered_at is not None]
        yield GaugeMetricFamily(
            "fploopd_last_delivery_timestamp_seconds",
            "Unix time of the last job delivered to outbox/ (0: none yet)",
            value=max(delivered, default=0.0),
        )


class DaemonMetrics:
    def __init__(self, layout: Layout, journal_url: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.job_seconds = Histogram(
            "fploopd_job_seconds", "Seconds a job's run took on its worker, by pipeline", ["pipeline"],
            buckets=JOB_BUCKETS, registry=self.registry,
        )
        self.section_seconds = Histogram(
            "fploopd_section_seconds", "Seconds one section's sampling took, by pipeline", ["pipeline"],
            buckets=SECTION_BUCKETS, registry=self.registry,
        )
        self.worker_restarts = Counter(
            "fploopd_worker_restarts", "Worker processes restarted after they died or stopped responding", ["device"],
            registry=self.registry,
        )
        self.gpu_memory = Gauge(
            "fploopd_gpu_memory_bytes", "GPU memory of a worker: allocated or reserved by PyTorch", ["device", "kind"],
            registry=self.registry,
        )
        self.gpu_peak = Gauge(
            "fploopd_gpu_memory_peak_bytes", "Peak GPU memory allocated by a worker since it started", ["device"],
            registry=self.registry,
        )
        self.registry.register(JournalCollector(layout, journal_url))

    def job_done(self, pipeline: str, seconds: float) -> None:
        self.job_seconds.labels(pipeline=pipeline).observe(seconds)

    def section_done(self, pipeline: str, seconds: float) -> None:
        self.section_seconds.labels(pipeline=pipeline).observe(seconds)

    def worker_restarted(self, device: str) -> None:
        self.worker_restarts.labels(device=device).inc()

    def gpu(self, device: str, memory: dict[str, Any] | None) -> None:
        """A heartbeat's GPU memory (None on the CPU: nothing is reported)."""
        if not memory:
            return
        for kind in ("allocated", "reserved"):
            if kind in memory:
                self.gpu_memory.labels(device=device, kind=kind).set(memory[kind])
        if "peak" in memory:
            self.gpu_peak.labels(device=device).set(memory["peak"])
