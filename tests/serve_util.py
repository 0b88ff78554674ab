"""A real uvicorn server on 127.0.0.1 (an ephemeral port, in a thread) and a small stdlib HTTP client for tests."""

from __future__ import annotations

import http.client
import json
import threading
import time

import uvicorn
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama
from peft import get_peft_model

from peft_dect import DecTConfig


def base_model(tokenizer):
    """The tiny Llama (seed 0) in float64: in float32 a random tiny model's probabilities move by up to 1e-6 with the
    other texts of a batch (padding changes the kernels' rounding), which would blur tests to 1e-6."""
    return tiny_llama(tokenizer).double()


class LiveServer:
    """Run an ASGI app with uvicorn in a daemon thread; `port` is the ephemeral port it got."""

    def __init__(self, app, **options) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 30 s")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 30.0):
        return request(self.port, method, path, body, headers, timeout)


def request(port: int, method: str, path: str, body=None, headers=None, timeout: float = 30.0):
    """(status, headers, parsed JSON or text) of one request; `body` is JSON-encoded unless it is bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        head = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=head)
        response = conn.getresponse()
        raw = response.read().decode()
        kind = response.getheader("content-type") or ""
        return response.status, dict(response.getheaders()), json.loads(raw) if "json" in kind else raw
    finally:
        conn.close()


def fit_adapter(
    tokenizer, folder, *, flip: bool = False, reject_label: str | None = "unknown", template: str = TEMPLATE, **config
):
    """A DecT adapter on `base_model`, fitted, evaluated (for its card's metrics) and saved to `folder`; returns the
    fitted model."""
    data = dict(sentiment_data(16, 1))
    if flip:
        data["label"] = [1 - y for y in data["label"]]
    config = DecTConfig(template=template, label_words=LABEL_WORDS, reject_label=reject_label, **config)
    model = get_peft_model(base_model(tokenizer), config)
    model.fit(data, tokenizer=tokenizer, show_progress=False)
    model.evaluate(sentiment_data(10, 2), name="synthetic-sentiment", split="test", show_progress=False)
    model.save_pretrained(folder)
    return model
