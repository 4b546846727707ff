"""Prometheus metrics of one model server: the "Model servers" table of docs/metrics.md (names, types and
labels are a contract with the dashboards and alert rules; change them there first).

Each server owns its registry, so that several servers in one process (the tests) never share counters.
What the engine and its lineage cache already count (engine.EngineStats, TrajectoryCache) is read at scrape
time rather than counted twice; what happens on the event loop (calls, batches, queueing) is counted here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .backend import VerifierTiming
from .engine import EngineStats, TrajectoryCache

PREFIX = "noisesearch_server_"
# Seconds: a 2 ms batch window at the bottom, a FLUX batch queued behind others (minutes) at the top.
QUEUE_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FILL_RATIO_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def batch_buckets(max_batch: int) -> tuple[float, ...]:
    """Powers of two up to max_batch, and max_batch itself: a full batch lands in its own bucket."""
    buckets, size = [], 1
    while size < max_batch:
        buckets.append(float(size))
        size *= 2
    return (*buckets, float(max_batch))


class _EngineCollector(Collector):
    """The engine's and the cache's own counters, as they are at scrape time."""

    def __init__(self, model: str, stats: EngineStats | None, cache: TrajectoryCache | None) -> None:
        self.model = model
        self.stats = stats
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        if self.stats is not None:
            compute = CounterMetricFamily(PREFIX + "compute_seconds", "engine time by kind of work", labels=["op"])
            # Fixed keys (EngineStats), so reading them while the engine thread adds to them is safe.
            for op, seconds in self.stats.compute_seconds.items():
                compute.add_metric([op], seconds)
            yield compute
            nfe = CounterMetricFamily(PREFIX + "nfe_executed", "denoiser evaluations run", labels=["model"])
            nfe.add_metric([self.model], self.stats.nfe_executed)
            yield nfe
        if self.cache is not None:
            yield CounterMetricFamily(PREFIX + "cache_hits", "candidates resumed from the lineage cache", value=self.cache.hits)
            yield CounterMetricFamily(PREFIX + "cache_misses", "candidates started from their noise", value=self.cache.misses)
            yield CounterMetricFamily(
                PREFIX + "cache_evictions", "states dropped to keep the lineage cache within --cache-mb",
                value=self.cache.evictions,
            )
            yield GaugeMetricFamily(PREFIX + "cache_bytes", "bytes the lineage cache holds", value=self.cache.bytes)


class _DeviceCollector(Collector):
    """GPU memory and utilisation, only in a process that already uses CUDA through torch: the gmm and Triton
    servers never import torch (seconds of start-up, a GPU context they do not need), and asking a CPU-only
    torch process would create a CUDA context just to report it."""

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return
        memory = GaugeMetricFamily(PREFIX + "device_memory_bytes", "GPU memory", labels=["device", "kind"])
        utilization = GaugeMetricFamily(PREFIX + "device_utilization_ratio", "GPU utilisation", labels=["device"])
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            memory.add_metric([device, "allocated"], torch.cuda.memory_allocated(index))
            memory.add_metric([device, "reserved"], torch.cuda.memory_reserved(index))
            try:
                utilization.add_metric([device], torch.cuda.utilization(index) / 100)
            except Exception:
                # No NVML (pynvml) or no permission for it: the memory gauges still tell something, so no error.
                pass
        yield memory
        if utilization.samples:
            yield utilization


class ServerMetrics:
    def __init__(
        self, model: str, max_batch: int, stats: EngineStats | None = None, cache: TrajectoryCache | None = None
    ) -> None:
        self.max_batch = max_batch
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(PREFIX + "requests", "calls answered", ["method", "code"], registry=registry)
        self.candidates = Counter(PREFIX + "candidates", "candidates answered", ["status"], registry=registry)
        self.batch_candidates = Histogram(
            PREFIX + "batch_candidates", "candidates per engine batch", buckets=batch_buckets(max_batch), registry=registry
        )
        self.batch_fill_ratio = Histogram(
            PREFIX + "batch_fill_ratio", "candidates per batch / --max-batch", buckets=FILL_RATIO_BUCKETS, registry=registry
        )
        # Engine runs happen one at a time, so the rate of this counter is the fraction of time the engine (a
        # GPU) was busy: what says whether a fleet is kept full.
        self.busy_seconds = Counter(
            PREFIX + "busy_seconds", "engine time running Evaluate batches, a simulated server's sleep included",
            registry=registry,
        )
        self.queue_wait = Histogram(
            PREFIX + "queue_wait_seconds", "time a request waited in the batcher before its batch ran",
            buckets=QUEUE_WAIT_BUCKETS, registry=registry,
        )
        self.verifier_seconds = Counter(PREFIX + "verifier_seconds", "verifier time", ["verifier"], registry=registry)
        self.verifier_samples = Counter(PREFIX + "verifier_samples", "samples scored", ["verifier"], registry=registry)
        registry.register(_EngineCollector(model, stats, cache))
        registry.register(_DeviceCollector())
        self._http: WSGIServer | None = None

    def batch(self, candidates: int, waits: list[float]) -> None:
        self.batch_candidates.observe(candidates)
        self.batch_fill_ratio.observe(candidates / self.max_batch)
        for wait in waits:
            self.queue_wait.observe(wait)

    def verified(self, timings: tuple[VerifierTiming, ...]) -> None:
        for timing in timings:
            self.verifier_seconds.labels(timing.verifier).inc(timing.seconds)
            self.verifier_samples.labels(timing.verifier).inc(timing.calls)

    def serve(self, host: str, port: int) -> None:
        """/metrics on host:port, from a daemon thread, so a scrape never waits for the event loop."""
        try:
            self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise OSError(f"--metrics-port {port}: cannot serve /metrics on {host}: {error.strerror or error}") from None

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
