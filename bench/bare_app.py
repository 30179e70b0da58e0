"""The baseline for bench/ingest.py: a bare Starlette app with one POST route answering 204.

It reads the request body (as the gateway must) and does nothing else. `main` serves it with
the same `uvicorn.run` arguments as `gateway web` (gateway/cli.py), so that the two differ only
in the application.

Run: ``.venv/bin/python bench/bare_app.py --port 8001`` (127.0.0.1 by default).
"""

from __future__ import annotations

import argparse
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PATH = "/invitation_created"


async def accept(request: Request) -> Response:
    await request.body()
    return Response(status_code=204)


def create_app() -> Starlette:
    return Starlette(routes=[Route(PATH, accept, methods=["POST"])])


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The keyword arguments of gateway/cli.py `web`, with this app instead of the gateway's.
    uvicorn.run(
        "bare_app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=1,
        timeout_keep_alive=65,
        timeout_graceful_shutdown=20,
        access_log=False,
        log_config=None,
    )


if __name__ == "__main__":
    main()
