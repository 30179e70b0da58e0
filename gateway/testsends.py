"""Test sends, asked for by the CLI or the admin API and made by a worker.

`gateway targets test NAME` must test what deliveries use: the worker's environment, DNS,
network and address policy. So the asker stores a request in Redis and queues a `test_send`
job; a worker sends the sample event through its own Sender and writes the exchange under a key
that lives for ten minutes; the asker waits a bounded time for it. A request no worker took in
time lapses (the job is dropped unsent), so a worker started an hour later sends nothing.

    test_id = request_test(store, "crm")                 # raises UnknownTarget
    result = wait_test_result(store, test_id, timeout=30)  # None: no worker answered in time

`render_preview(config, name)` (from gateway.delivery.testsend) needs no worker.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from gateway.config.load import config_from_dict
from gateway.delivery.testsend import UnknownTarget, find_target, render_preview
from gateway.queue import enqueue_test_send, make_queue
from gateway.store.events import Store
from gateway.store.testsends import get_send_test_result, put_send_test

__all__ = ["UnknownTarget", "render_preview", "request_test", "wait_test_result"]

DEFAULT_WAIT = 30  # seconds: a drain job in progress (15 s and its requests) comes first


def request_test(
    store: Store,
    target_name: str,
    queue_name: str = "gateway-deliveries",
    wait: int = DEFAULT_WAIT,
    fields: Mapping[str, str] | None = None,
) -> str:
    """Ask a worker to send a sample event to `target_name` now; returns the test id.

    `fields` may set invitee, invitor, network_id and event of the sample. Raises UnknownTarget
    when the stored configuration has no such target.
    """
    _, data = store.load_config()
    find_target(config_from_dict(data or {}), target_name)
    test_id = secrets.token_hex(12)
    asked = {"target": target_name, "asked_at": int(time.time() * 1000), "fields": dict(fields or {})}
    put_send_test(store.redis, store.prefix, test_id, asked, wait)
    enqueue_test_send(make_queue(store.redis, queue_name), test_id, wait)
    return test_id


def wait_test_result(store: Store, test_id: str, timeout: float) -> dict[str, Any] | None:
    """The worker's result of test `test_id`, waiting up to `timeout` seconds (None: none came)."""
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        result = get_send_test_result(store.redis, store.prefix, test_id)
        if result is not None or time.monotonic() >= deadline:
            return result
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))
