"""Test sends (`gateway targets test`): the request a worker takes, and what it saw.

The asker stores the request and queues the job (gateway/testsends.py); the worker takes the
request, sends it and stores the result (gateway/jobs.py, gateway/delivery/testsend.py).
"""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

from gateway.store.codec import dumps, now_ms
from gateway.store.keys import Keys

TEST_RESULT_TTL = 600  # seconds a result is kept for the asker


def put_send_test(client: Redis, prefix: str, test_id: str, asked: dict[str, Any], ttl: int) -> None:
    """Store a test send request; it lapses after `ttl` seconds if no worker takes it.

    Its id is listed in `{p}:tests` until its result may have lapsed too (a sample may hold a
    phone number: an erasure looks there, gateway/store/erasure.py).
    """
    keys = Keys(prefix)
    until = now_ms() + (max(ttl, 1) + TEST_RESULT_TTL + 60) * 1000
    with client.pipeline(transaction=True) as pipe:
        pipe.set(keys.send_test(test_id), dumps(asked), ex=max(ttl, 1))
        pipe.zadd(keys.tests, {test_id: until})
        pipe.zremrangebyscore(keys.tests, "-inf", now_ms())
        pipe.execute()


def take_send_test(client: Redis, prefix: str, test_id: str) -> dict[str, Any] | None:
    """The test send request, removed (None: lapsed, or taken by another worker)."""
    key = Keys(prefix).send_test(test_id)
    with client.pipeline(transaction=True) as pipe:
        pipe.get(key)
        pipe.delete(key)
        raw, _ = pipe.execute()
    return json.loads(raw) if raw else None


def put_send_test_result(client: Redis, prefix: str, test_id: str, result: dict[str, Any]) -> None:
    client.set(Keys(prefix).send_test_result(test_id), dumps(result), ex=TEST_RESULT_TTL)


def get_send_test_result(client: Redis, prefix: str, test_id: str) -> dict[str, Any] | None:
    raw = client.get(Keys(prefix).send_test_result(test_id))
    return json.loads(raw) if raw else None
