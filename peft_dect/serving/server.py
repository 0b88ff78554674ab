"""Run the app with uvicorn (what `peft-dect serve` does once the model and adapters are loaded)."""

from __future__ import annotations

import uvicorn

from .app import ServeSettings, create_app
from .logs import configure
from .registry import AdapterRegistry


def run_server(
    registry: AdapterRegistry,
    settings: ServeSettings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_connections: int | None = None,
    log_json: bool = True,
) -> None:
    """Serve `registry` on `host:port` until interrupted; `max_connections` bounds open connections (503 beyond)."""
    if log_json:
        configure()
    config = uvicorn.Config(
        create_app(registry, settings),
        host=host,
        port=port,
        limit_concurrency=max_connections,
        timeout_keep_alive=5,
        log_level="warning",
        access_log=False,  # each request is logged once, structured, by the app
    )
    uvicorn.Server(config).run()
