"""The live configuration every process shares through Redis, cached per process."""

from __future__ import annotations

import logging
import threading
from typing import Any

from gateway.config.load import config_from_dict
from gateway.config.targets import Config
from gateway.exceptions import ConfigError
from gateway.store.events import Store

log = logging.getLogger("gateway.live")


class LiveConfig:
    """The configuration every process shares, cached per process and reloaded by version.

    Processes keep the compiled Config in memory and compare versions: the ingest path reads the
    version inside its accept pipeline (no extra round trip), a worker once per job. The
    (version, config) pair is one attribute, so a reader never sees one without the other.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._current: tuple[int, Config] = (-1, Config())
        self.aliases = Config().alias_table()  # of the current configuration

    @property
    def version(self) -> int:
        return self._current[0]

    def snapshot(self) -> tuple[int, Config]:
        if self._current[0] < 0:
            self.refresh()
        return self._current

    def get(self) -> Config:
        return self.snapshot()[1]

    def refresh(self, seen_version: int | None = None) -> Config:
        """Reload from Redis if `seen_version` (or Redis' current one) differs from ours.

        A stored configuration this process cannot read (say, a key from a newer release during
        a rolling deploy) is logged and the last good one kept, so callbacks are still accepted.
        """
        if seen_version is not None and seen_version == self._current[0]:
            return self._current[1]
        with self._lock:
            version, data = self._store.load_config()
            return self.install(version, data)

    def install(self, version: int, data: dict[str, Any] | None) -> Config:
        """Use the configuration `data` of `version` (loaded by the caller, say asynchronously)."""
        if version != self._current[0]:
            try:
                # Validated when applied; environment variables are the worker's to check.
                config = config_from_dict(data) if data else Config()
            except ConfigError as exc:
                log.error("configuration version %d unreadable, keeping the last: %s", version, exc)
                config = self._current[1]
            self.aliases = config.alias_table()
            self._current = (version, config)
        return self._current[1]

    @property
    def current(self) -> Config:
        """The configuration in hand, without asking Redis."""
        return self._current[1]

    @property
    def in_hand(self) -> tuple[int, Config]:
        """(version, configuration) in hand, as one pair, without asking Redis."""
        return self._current
