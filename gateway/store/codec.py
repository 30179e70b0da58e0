"""How values go into Redis and come back: compact JSON, replies as text, times in ms."""

from __future__ import annotations

import json
import time
from typing import Any


def dumps(obj: Any) -> str:
    """Compact JSON, non-ASCII kept as it is (what every stored record is)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def text(value: Any) -> str:
    """A reply (bytes from a client without decode_responses) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def now_ms() -> int:
    return int(time.time() * 1000)
