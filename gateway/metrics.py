"""Metrics: counted in each process, summed in Redis, rendered for Prometheus at scrape time.

Several web processes share one port (WEB_CONCURRENCY) and workers may run on other machines,
so a scrape reaches one process that knows only its own counts. Prometheus' multiprocess mode
would cover the processes of one machine only. Instead each process keeps plain counters in a
dict (a dict increment per callback: no lock, no Redis call, no label lookup on the hot path)
and adds them to one Redis hash once a second (one pipelined call: web processes from a
background task, workers from their ticker thread). `/metrics` reads that hash and the gauges
(queue depth, dead letters, paused targets, live workers) from Redis when scraped, and renders
them with prometheus-client. Totals therefore lag by up to a second; counts made while Redis is
away are kept and added once it answers. The spool, which exists for exactly that case, is read
from the spool folder of the machine that answers the scrape.
"""

from __future__ import annotations

import os
import socket
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEARTBEAT_SECONDS = 10  # a worker whose ticker has not written for this long is not alive

# Histogram bounds, in seconds.
INGEST_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ATTEMPT_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# name -> (help, label names) of the counters, and of the histograms with their bounds.
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gateway_callbacks": (
        "Callbacks by event, body format and outcome (accepted, duplicate, suppressed, spooled, "
        "rejected with a reason)",
        ("event", "format", "outcome", "reason"),
    ),
    "gateway_suppressed": (
        "Invitations held back by an abuse limit, by event and by the rule that held them back "
        "(limit, prefix, cooldown, guard, allowlist)",
        ("event", "kind"),
    ),
    "gateway_deliveries": (
        "Delivery attempts by target and outcome (delivered, retrying, throttled, failed, expired, "
        "skipped, paused, disabled)",
        ("target", "outcome"),
    ),
    "gateway_delivery_retries": (
        "Retries scheduled (a failed attempt with retries left, or a 429), by target",
        ("target",),
    ),
    "gateway_dead_letters_added": (
        "Deliveries that failed for good or expired, by target",
        ("target",),
    ),
    "gateway_inspector_dropped": (
        "Callbacks the callbacks inspector did not keep: its writer's queue was full (a flood of "
        "rejected ones) or Redis did not take them",
        (),
    ),
}
HISTOGRAMS: dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]] = {
    "gateway_ingest_seconds": (
        "Time from a callback's arrival to its answer, in this web process",
        ("event",),
        INGEST_BOUNDS,
    ),
    "gateway_delivery_attempt_seconds": (
        "Time an attempt's HTTP request took, by target",
        ("target",),
        ATTEMPT_BOUNDS,
    ),
}
SEP = "\x1f"  # between a metric's name and its label values in a Redis hash field

# What a rejection's HTTP status says, as a `reason` label.
REASONS = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    413: "too_large",
    415: "unsupported_media_type",
    429: "limited",
    503: "store_unavailable",
}
# Outcomes of a delivery that schedule another attempt (see gateway.records.Outcome).
_RETRIES = frozenset({"retrying", "throttled"})
_DEAD = frozenset({"failed", "expired"})


class Tally:
    """This process' counts since the last flush: {(metric, *label values): amount}.

    `add` is a dict update: on the ingest path it runs on the event loop alone. The worker's
    engine and its ticker thread share one, so they hold `lock` (once per group of deliveries).
    """

    __slots__ = ("data", "lock")

    def __init__(self) -> None:
        self.data: dict[tuple[str, ...], float] = {}
        self.lock = threading.Lock()

    def add(self, key: tuple[str, ...], amount: float = 1) -> None:
        data = self.data
        data[key] = data.get(key, 0) + amount

    def observe(self, metric: str, label: str, bounds: tuple[float, ...], seconds: float) -> None:
        """One histogram observation: its bucket (not cumulative) and the sum."""
        data = self.data
        key = (metric, label, _BUCKET_NAMES[bisect_left(bounds, seconds)])
        data[key] = data.get(key, 0) + 1
        key = (metric, label, "sum")
        data[key] = data.get(key, 0) + seconds

    def take(self) -> dict[tuple[str, ...], float]:
        with self.lock:
            data, self.data = self.data, {}
        return data

    def put_back(self, data: Mapping[tuple[str, ...], float]) -> None:
        """Counts a flush could not write: kept for the next one."""
        with self.lock:
            for key, amount in data.items():
                self.add(key, amount)


_BUCKET_NAMES = tuple(str(i) for i in range(16))  # bucket index as stored (index len(bounds): +Inf)


class IngestMetrics:
    """What the ingest counts: one call per callback, a few dict updates."""

    __slots__ = ("_reasons", "tally")

    def __init__(self, tally: Tally | None = None) -> None:
        self.tally = tally or Tally()
        self._reasons = {status: reason for status, reason in REASONS.items()}

    def callback(self, event: str, fmt: str, outcome: str, seconds: float, reason: str = "") -> None:
        # Tally.add and Tally.observe inlined: this runs for every callback.
        data = self.tally.data
        key: tuple[str, ...] = ("gateway_callbacks", event, fmt, outcome, reason)
        data[key] = data.get(key, 0) + 1
        key = ("gateway_ingest_seconds", event, _BUCKET_NAMES[bisect_left(INGEST_BOUNDS, seconds)])
        data[key] = data.get(key, 0) + 1
        key = ("gateway_ingest_seconds", event, "sum")
        data[key] = data.get(key, 0) + seconds

    def suppressed(self, event: str, kind: str) -> None:
        """One more callback held back by `kind` (a SuppressionKind value: a bounded label)."""
        self.tally.add(("gateway_suppressed", event, kind))

    def rejected(self, event: str, fmt: str, status: int, seconds: float) -> None:
        self.callback(event, fmt, "rejected", seconds, self._reasons.get(status) or str(status))


def count_deliveries(tally: Tally, results: Iterable[tuple[str, str, float | None]]) -> None:
    """A group of finished deliveries, (target, outcome, request seconds or None): one lock.

    Tally.add and Tally.observe inlined: this runs for every delivery."""
    with tally.lock:
        data = tally.data
        for target, outcome, seconds in results:
            key: tuple[str, ...] = ("gateway_deliveries", target, outcome)
            data[key] = data.get(key, 0) + 1
            if outcome in _RETRIES:
                key = ("gateway_delivery_retries", target)
                data[key] = data.get(key, 0) + 1
            elif outcome in _DEAD:
                key = ("gateway_dead_letters_added", target)
                data[key] = data.get(key, 0) + 1
            if seconds is not None:
                key = (_ATTEMPT, target, _BUCKET_NAMES[bisect_left(ATTEMPT_BOUNDS, seconds)])
                data[key] = data.get(key, 0) + 1
                key = (_ATTEMPT, target, "sum")
                data[key] = data.get(key, 0) + seconds


_ATTEMPT = "gateway_delivery_attempt_seconds"


# -- Redis: the flush and the read --------------------------------------------------------------------


def flush_commands(pipe: Any, key: str, data: Mapping[tuple[str, ...], float]) -> None:
    """Queue the HINCRBY(FLOAT)s of `data` on a pipeline (sync or asyncio)."""
    for parts, amount in data.items():
        field = SEP.join(parts)
        if isinstance(amount, int):
            pipe.hincrby(key, field, amount)
        else:
            pipe.hincrbyfloat(key, field, amount)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def spool_depth(directory: str | Path) -> tuple[int, int]:
    """(files, bytes) of the spool files in `directory`: every web process of this machine."""
    files = size = 0
    folder = Path(directory)
    if not folder.is_dir():
        return 0, 0
    for path in folder.glob("*.jsonl"):
        try:
            st = path.stat()
        except OSError:
            continue
        if st.st_size:
            files += 1
            size += st.st_size
    return files, size


class Snapshot(Collector):
    """The families of one scrape, from what was read out of Redis and the spool folder."""

    def __init__(
        self,
        counts: Mapping[Any, Any] | None,
        gauges: Mapping[str, float],
        held: Mapping[str, tuple[str, int]],
        durability: tuple[str, bool] | None = None,
    ) -> None:
        self.counts = counts
        self.gauges = gauges
        self.held = held
        self.durability = durability  # (GATEWAY_DURABILITY, given now)

    def collect(self) -> Iterator[Metric]:
        counters: dict[str, CounterMetricFamily] = {
            name: CounterMetricFamily(name, doc, labels=labels) for name, (doc, labels) in COUNTERS.items()
        }
        hist: dict[tuple[str, str], dict[str, float]] = {}
        for raw_field, raw_value in (self.counts or {}).items():
            field = raw_field.decode() if isinstance(raw_field, bytes) else str(raw_field)
            value = float(raw_value)
            name, *labels = field.split(SEP)
            if name in counters and len(labels) == len(COUNTERS[name][1]):
                counters[name].add_metric(labels, value)
            elif name in HISTOGRAMS and len(labels) == 2:
                hist.setdefault((name, labels[0]), {})[labels[1]] = value
        yield from counters.values()
        for name, (doc, hist_labels, bounds) in HISTOGRAMS.items():
            family = HistogramMetricFamily(name, doc, labels=hist_labels)
            for (metric, label), cells in sorted(hist.items()):
                if metric != name:
                    continue
                buckets, total = [], 0.0
                for i, bound in enumerate((*bounds, float("inf"))):
                    total += cells.get(_BUCKET_NAMES[i], 0.0)
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
                family.add_metric([label], buckets, cells.get("sum", 0.0))
            yield family
        for name, (doc, value) in _gauge_docs(self.gauges).items():
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], value)
            yield gauge
        held = GaugeMetricFamily(
            "gateway_target_held",
            "1 for each target that is paused or disabled, with its state",
            labels=["target", "state"],
        )
        parked = GaugeMetricFamily(
            "gateway_target_parked_deliveries",
            "Deliveries held back for a paused or disabled target",
            labels=["target"],
        )
        for target, (state, count) in sorted(self.held.items()):
            held.add_metric([target, state], 1)
            parked.add_metric([target], count)
        yield held
        yield parked
        if self.durability is not None:
            level, ok = self.durability
            durable = GaugeMetricFamily(
                "gateway_durability_ok",
                "1 when Redis gives the durability a 204 promises (GATEWAY_DURABILITY, the label); "
                "0 while it cannot, and callbacks are spooled instead",
                labels=["level"],
            )
            durable.add_metric([level], 1 if ok else 0)
            yield durable


_GAUGE_DOCS = {
    "gateway_redis_up": "1 when Redis answered this scrape",
    "gateway_queue_due": "Deliveries due now, waiting for a worker",
    "gateway_queue_scheduled": "Deliveries waiting for a later time: scheduled retries, and leases of "
    "deliveries in flight",
    "gateway_dead_letters": "Dead letters kept (failed for good or expired)",
    "gateway_targets_paused": "Targets paused or disabled",
    "gateway_workers_alive": f"Workers whose ticker wrote within {HEARTBEAT_SECONDS} s",
    "gateway_spool_files": "Spool files holding invitations on the machine that answered",
    "gateway_spool_bytes": "Bytes in those spool files",
}


def _gauge_docs(gauges: Mapping[str, float]) -> dict[str, tuple[str, float]]:
    return {name: (doc, gauges[name]) for name, doc in _GAUGE_DOCS.items() if name in gauges}


def render(
    counts: Mapping[Any, Any] | None,
    gauges: Mapping[str, float],
    held: Mapping[str, tuple[str, int]],
    durability: tuple[str, bool] | None = None,
) -> bytes:
    """The Prometheus text exposition of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(counts, gauges, held, durability))
    return generate_latest(registry)
