"""`gateway`: web | worker | standalone | check | targets | events | forget | deliveries | replay |
holds | suppressed | spool | tokens | keys | overview | callbacks | connect.

Every option also reads an environment variable, so the Procfile, the shell and a platform's
settings share one set of names. Each module adds its commands to the `main` group.
"""

from gateway.cli import (  # noqa: F401  (they register)
    callbacks,
    config,
    deliveries,
    events,
    holds,
    keys,
    serve,
    spool,
    tokens,
)
from gateway.cli.common import main

__all__ = ["main"]
