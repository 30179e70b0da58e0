"""What `/metrics` and `/readyz` read, and what processes write for them: summed metrics,
workers' heartbeats, and the gauges a scrape reads (queue depth, dead letters, held targets)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.store.keys import Keys


class OpsKeys:
    """Commands queued on a caller's pipeline (a scrape is one round trip)."""

    def __init__(self, prefix: str) -> None:
        self.keys = Keys(prefix)
        self.metrics = self.keys.metrics
        self.heartbeats = self.keys.heartbeats

    def beat(self, pipe: Any, name: str, now: int) -> None:
        """Queue a worker's heartbeat (and forget workers silent for a day)."""
        pipe.zadd(self.heartbeats, {name: now})
        pipe.zremrangebyscore(self.heartbeats, "-inf", now - 86_400_000)

    def gone(self, pipe: Any, name: str) -> None:
        pipe.zrem(self.heartbeats, name)

    def read_alive(self, pipe: Any, now: int, window_ms: int) -> None:
        pipe.zcount(self.heartbeats, now - window_ms, "+inf")

    def read_gauges(self, pipe: Any, now: int, window_ms: int) -> None:
        """Queue, in order: metrics hash, due now, due later, dead letters, held targets, alive."""
        pipe.hgetall(self.metrics)
        pipe.zcount(self.keys.due, "-inf", now)
        pipe.zcount(self.keys.due, f"({now}", "+inf")
        pipe.zcard(self.keys.dead)
        pipe.smembers(self.keys.held)
        self.read_alive(pipe, now, window_ms)

    def read_held(self, pipe: Any, targets: Iterable[str]) -> None:
        """Queue, per target: its health state, its parked deliveries."""
        for target in targets:
            pipe.hget(self.keys.target(target), "state")
            pipe.zcard(self.keys.parked(target))
