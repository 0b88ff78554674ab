"""The HTTP app of `peft-dect serve`: classification in the Hugging Face Inference API's format, adapter listing,
hot-adding, health, metrics and the try-it page.

`create_app(registry, settings)` builds a FastAPI app around an `AdapterRegistry`; requests go through the
`MicroBatcher`, grouped by the registry's `group_of`, so concurrent ones for adapters of one group (one template on
the one base model) share backbone batches, which the registry's `run_group` runs.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from .batching import MicroBatcher, QueueFull
from .limits import BodyLimit
from .metrics import ServerMetrics
from .registry import AdapterRegistry, Answer, Query
from .schema import AddAdapterRequest, ClassifyRequest


logger = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    """How the server guards and batches.

    Args:
        api_key: bearer token required by every endpoint but `/health` and `/` (None: no token).
        max_body_bytes: the largest request body (413 beyond).
        max_inputs: texts per request at most (413 beyond).
        timeout: seconds a request may take, body and queue included (408 / 504 beyond).
        max_batch: texts per backbone batch.
        max_wait: seconds the first request of a batch waits for others (of its adapter's group).
        max_queue: texts waiting at most (503 with Retry-After beyond).
        batching: False runs every request on its own.
        retry_after: seconds a 503 asks the client to wait.
    """

    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_inputs: int = 256
    timeout: float = 30.0
    max_batch: int = 64
    max_wait: float = 0.01
    max_queue: int = 1024
    batching: bool = True
    retry_after: int = 1

    def __post_init__(self) -> None:
        if self.api_key is not None and (not isinstance(self.api_key, str) or len(self.api_key) < 8):
            raise ValueError("api_key must be a string of at least 8 characters (or None for no token).")
        for name in ("max_body_bytes", "max_inputs", "max_batch", "max_queue", "retry_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}.")


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(registry: AdapterRegistry, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving `registry`'s adapters (wrapped in the body limit)."""
    settings = settings or ServeSettings()
    metrics = ServerMetrics()
    batcher = MicroBatcher(
        registry.run_group,
        group_of=registry.group_of,
        max_batch=settings.max_batch,
        max_wait=settings.max_wait,
        max_queue=settings.max_queue,
        enabled=settings.batching,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        logger.info("serving", extra={"event": "start", "adapter": ",".join(registry.names)})
        yield
        await batcher.stop()

    app = FastAPI(title="peft-dect", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.registry, app.state.batcher, app.state.metrics = registry, batcher, metrics
    key = settings.api_key.encode() if settings.api_key else None

    def authorized(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
            raise Unauthorized()

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized):
        logger.warning("unauthorized", extra={"event": "unauthorized", "client": client_of(request)})
        message = "A valid bearer token is required (Authorization: Bearer ...)."
        return error(401, message, {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {e.get('msg')}")
        about_inputs = any(p.startswith("inputs") for p in problems)
        hint = " `inputs` must be a string or a list of strings." if about_inputs else ""
        return JSONResponse(
            {"error": "; ".join(problems) + "." + hint, "fields": [p.split(":")[0] for p in problems]},
            status_code=422,
        )

    @app.get("/health")
    async def health():
        return {"status": "ok", "adapters": len(registry.names), "queued_texts": batcher.waiting}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/models", dependencies=[Depends(authorized)])
    async def models():
        return {"adapters": [registry.describe(name) for name in registry.names]}

    @app.get("/metrics", dependencies=[Depends(authorized)])
    async def prometheus():
        metrics.batches(batcher.stats.drain_sizes())
        metrics.queued = batcher.waiting
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/models/{adapter}", dependencies=[Depends(authorized)])
    async def classify(adapter: str, body: ClassifyRequest, request: Request):
        start = time.monotonic()
        if adapter not in registry.adapters:
            metrics.request(adapter="(unknown)", status=404, seconds=time.monotonic() - start)
            known = ", ".join(registry.names) or "none"
            return error(404, f"No adapter named {adapter!r}; the known adapters are: {known}.")
        texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        if len(texts) > settings.max_inputs:
            return error(413, f"{len(texts)} inputs in one request; at most {settings.max_inputs}: split it.")
        p = body.parameters
        query = Query(texts, top_k=p.top_k, reject=p.reject, alpha=p.predict_set)
        status, rejected = 200, 0
        try:
            answer: Answer = await asyncio.wait_for(batcher.submit(adapter, query, len(texts)), settings.timeout)
            rejected = answer.rejected
            response = JSONResponse(answer.results)
        except QueueFull as err:
            status, response = 503, error(503, str(err), {"Retry-After": str(settings.retry_after)})
        except asyncio.TimeoutError:
            status, response = 504, error(504, f"The request took over {settings.timeout:g} s; retry or send fewer.")
        except (ValueError, TypeError) as err:
            status, response = 422, error(422, str(err))
        seconds = time.monotonic() - start
        metrics.request(adapter, status, seconds, len(texts) if status == 200 else 0, rejected)
        fields = {"event": "classify", "adapter": adapter, "status": status, "texts": len(texts)}
        logger.info("classify", extra=fields | {"seconds": round(seconds, 4), "client": client_of(request)})
        return response

    @app.post("/admin/adapters", status_code=201, dependencies=[Depends(authorized)])
    async def add_adapter(body: AddAdapterRequest):
        try:
            name = await batcher.call(registry.add, body.source, body.name)
        except KeyError as err:
            return error(409, str(err.args[0]))
        except (ValueError, TypeError, OSError) as err:
            fields = {"event": "adapter_refused", "source": body.source, "error": str(err)}
            logger.warning("adapter refused", extra=fields)
            return error(422, f"The adapter {body.source!r} was not loaded: {err}")
        return registry.describe(name)

    return BodyLimit(app, max_bytes=settings.max_body_bytes, read_timeout=settings.timeout)


class Unauthorized(Exception):
    """A request without the server's bearer token."""


def client_of(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "-"
