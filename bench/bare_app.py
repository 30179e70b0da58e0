"""The baseline of bench/ingest.py: bare Starlette answering 204 to the callback route.

GET and POST on /invitation_created: it reads the request body (as the gateway must) and
answers 204, nothing else. `main` serves it with the keyword arguments that `gateway web`
passes to `uvicorn.run` (gateway/cli/serve.py), so that the two servers differ only in the
application. `gateway web` leaves `loop` and `http` at uvicorn's "auto", which picks uvloop and
httptools when they are installed (they are dependencies); here they are named, so that the
baseline never silently falls back to asyncio and h11. bench/ingest.py checks in /proc that
both servers really loaded them.

Run: ``.venv/bin/python bench/bare_app.py --port 8001 [--workers 2]`` (127.0.0.1 by default).
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
    return Starlette(routes=[Route(PATH, accept, methods=["GET", "POST"])])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn processes (WEB_CONCURRENCY)")
    args = parser.parse_args(argv)
    # As `gateway web` at GATEWAY_LOG_LEVEL=INFO (gateway/cli/common.py `main`).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve("bare_app:create_app", args.host, args.port, args.workers)


def serve(app: str, host: str, port: int, workers: int = 1) -> None:
    """uvicorn.run with the keyword arguments of gateway/cli/serve.py `web`, `app` (a factory)
    instead of the gateway's, and uvicorn's "auto" loop and parser spelled out."""
    import uvicorn

    uvicorn.run(
        app,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        timeout_keep_alive=65,
        timeout_graceful_shutdown=20,
        access_log=False,
        proxy_headers=False,
        log_config=None,
    )


if __name__ == "__main__":
    main()
