"""The RQ job functions (the only ones `queue.GatewayJob` will run)."""

from __future__ import annotations

from typing import Any


def drain() -> dict[str, Any]:
    """Deliver what is due: a batch at a time, until nothing is due or the job's budget ends."""
    from gateway.worker import current_runtime

    return current_runtime().drain()
