"""`peft-dect serve`: many peft-dect adapters on one base model behind an HTTP API (FastAPI + uvicorn, the `serve`
extra).

`AdapterRegistry` holds the model and its adapters, `MicroBatcher` batches concurrent requests per group of adapters
that share a backbone pass (one template), `create_app` is the ASGI app and `run_server` runs it with uvicorn.
"""

from .app import ServeSettings, create_app
from .batching import MicroBatcher, QueueFull
from .registry import AdapterRegistry, Query
from .server import run_server


__all__ = ["AdapterRegistry", "MicroBatcher", "Query", "QueueFull", "ServeSettings", "create_app", "run_server"]
