"""The RQ job functions (the only ones `queue.GatewayJob` will run)."""

from __future__ import annotations

from typing import Any


def drain() -> dict[str, Any]:
    """Deliver what is due: a batch at a time, until nothing is due or the job's budget ends."""
    from gateway.worker import current_runtime

    return current_runtime().drain()


def test_send(test_id: str) -> dict[str, Any]:
    """Send a sample event to one target now (`gateway targets test`); the result goes to Redis."""
    import os

    from gateway.delivery.testsend import send_test
    from gateway.store.testsends import put_send_test_result, take_send_test
    from gateway.worker import current_runtime

    rt = current_runtime()
    redis, prefix = rt.queue.connection, rt.settings.prefix
    asked = take_send_test(redis, prefix, test_id)
    if asked is None:
        return {"lapsed": True}  # the asker stopped waiting: nothing is sent
    config = rt.live.refresh()
    # As the engine sets it for each batch: the same address policy as a delivery's.
    rt.sender.allow_private = rt.settings.allow_private_targets or config.allow_private_targets
    result = rt.loop.run_until_complete(
        send_test(
            config,
            asked["target"],
            rt.sender.send,
            os.environ,
            lookups=rt.engine.lookups,
            tokens=getattr(rt.engine, "tokens", None),
            fields=asked.get("fields"),
        )
    )
    result["test_id"] = test_id
    put_send_test_result(redis, prefix, test_id, result)
    return {"outcome": result["outcome"]}
