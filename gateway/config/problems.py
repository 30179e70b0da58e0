"""Collecting a configuration's problems, so that one run reports every one of them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway.exceptions import ConfigError, ConfigErrors, config_problems


class Problems:
    """The ConfigErrors of the checks run so far; the keys that failed, so later checks skip them.

    problems = Problems()
    with problems.check("url"):
        ...  # a ConfigError raised here is collected, and "url" marked as failed
    problems.raise_any()
    """

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []
        self.keys: set[str] = set()  # the (target, key)s that failed, so later checks skip them

    @contextmanager
    def check(self, *keys: str) -> Iterator[None]:
        try:
            yield
        except ConfigError as exc:
            found = config_problems(exc)
            self.errors.extend(found)
            self.keys.update(keys)
            self.keys.update(e.key or "" for e in found)

    def failed(self, *keys: str) -> bool:
        return any(k in self.keys for k in keys)

    def raise_any(self, source: str | None = None) -> None:
        if len(self.errors) == 1 and source is None:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors, source)
