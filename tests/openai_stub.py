"""A small OpenAI-compatible server for tests: deterministic log-probabilities and embeddings, injectable faults.

The "model" reads sentiment words: prompts with more positive than negative cue words make " great" likelier
than " terrible" (and the reverse), and the embedding is a hashed bag of words, so a DecT decoder can learn from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


POSITIVE = {"good", "great", "lovely", "moving", "fun", "superb", "charming", "best"}
NEGATIVE = {"bad", "awful", "dull", "boring", "worst", "ugly", "tedious", "mess"}
VOCAB = [" great", " terrible", " the", " a", " it", " good", " bad", "\n", ".", " not"]
DIM = 32


def _words(prompt: str) -> list[str]:
    return [w.strip(".,!?").lower() for w in prompt.split()]


def logprobs_of(prompt: str) -> dict[str, float]:
    words = _words(prompt)
    cue = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    logits = {tok: -2.0 - 0.1 * i for i, tok in enumerate(VOCAB)}
    logits[" great"] += 0.8 * cue + 0.3  # a prior towards " great", which calibration removes
    logits[" terrible"] -= 0.8 * cue
    norm = math.log(sum(math.exp(v) for v in logits.values()) + 50.0)  # mass of the rest of the vocabulary
    return {tok: v - norm for tok, v in logits.items()}


def embedding_of(prompt: str) -> list[float]:
    vec = [0.0] * DIM
    for w in _words(prompt):
        h = int(hashlib.md5(w.encode()).hexdigest(), 16)
        vec[h % DIM] += 1.0 if (h >> 8) % 2 else -1.0
        if w in POSITIVE:
            vec[0] += 1.0
        if w in NEGATIVE:
            vec[1] += 1.0
    return vec


class StubState:
    """Knobs and counters shared with the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fail_next = 0  # answer this many requests with `fail_status`
        self.fail_status = 500
        self.delay = 0.0  # seconds before answering
        self.no_logprobs = False
        self.per_token_embeddings = False
        self.no_embeddings = False
        self.no_embeddings_status = 404  # llama.cpp's Python server answers 500 when started without --embedding
        self.ignore_bias = False  # answer as if logit_bias were not supported
        self.biased_logprobs = False  # report log-probabilities after the bias
        self.tokenize_bos = False  # the tokenize route prepends a BOS token (id 0)
        self.top_cap: int | None = None
        self.drop_tokens: set[str] = set()  # left out of the top candidates (with every token below them)
        self.prompts_seen: list[str] = []
        self.requests = {"completions": 0, "embeddings": 0, "tokenize": 0}
        self.forced: list[tuple[str, str]] = []  # (prompt, token) pairs scored through logit_bias
        self.in_flight = 0
        self.max_in_flight = 0
        # hostile behaviours: `hostile(handler, body)` may answer a request itself (return True) with
        # `handler.send_raw`, `handler.drip`, a redirect, a reset...; `authorizations` records the Authorization
        # header of every request (GET too: urllib turns a redirected POST into a GET)
        self.hostile: Callable[[_Handler, dict | None], bool] | None = None
        self.authorizations: list[str | None] = []


class _Handler(BaseHTTPRequestHandler):
    state: StubState

    def log_message(self, *args) -> None:  # keep test output clean
        return None

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_raw(self, status: int, body: bytes, content_type: str = "application/json", length: int | None = None):
        """Answer `body` as it is, announcing `length` bytes (default: its length)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def drip(self, payload: dict, pause: float, max_seconds: float = 4.0) -> None:
        """Answer `payload` one byte every `pause` seconds (a slow-drip server), for at most `max_seconds`."""
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        end = time.monotonic() + max_seconds
        try:
            for i in range(len(body)):
                if time.monotonic() > end:
                    break
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                time.sleep(pause)
        except OSError:  # the client hung up
            pass

    def redirect(self, location: str, status: int = 302) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.state.authorizations.append(self.headers.get("Authorization"))
        if self.state.hostile is not None and self.state.hostile(self, None):
            return
        self._send(404, {"error": {"message": f"no GET route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        st = self.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with st.lock:
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
            st.authorizations.append(self.headers.get("Authorization"))
        try:
            if st.hostile is not None and st.hostile(self, body):
                return
            if st.delay:
                time.sleep(st.delay)
            with st.lock:
                failing = st.fail_next > 0
                st.fail_next -= failing
            if failing:
                self._send(st.fail_status, {"error": {"message": "injected failure"}})
                return
            if self.path == "/extras/tokenize":
                with st.lock:
                    st.requests["tokenize"] += 1
                text = body["input"]
                ids = [VOCAB.index(text)] if text in VOCAB else [100 + len(w) for w in text.split()]
                ids = [0] + ids if st.tokenize_bos else ids
                self._send(200, {"tokens": ids})
            elif self.path == "/v1/completions":
                self._complete(body)
            elif self.path == "/v1/embeddings" and not st.no_embeddings:
                self._embed(body)
            elif self.path == "/v1/embeddings":
                self._send(st.no_embeddings_status, {"error": {"message": "model created without embeddings"}})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})
        finally:
            with st.lock:
                st.in_flight -= 1

    def _complete(self, body: dict) -> None:
        st = self.state
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        with st.lock:
            st.requests["completions"] += 1
            st.prompts_seen.extend(prompts)
        choices = []
        bias = {VOCAB[int(i)]: b for i, b in (body.get("logit_bias") or {}).items()} if not st.ignore_bias else {}
        for i, prompt in enumerate(prompts):
            raw = logprobs_of(prompt)
            ranked = sorted(raw.items(), key=lambda kv: -kv[1])
            cut = next((i for i, (t, _) in enumerate(ranked) if t in st.drop_tokens), len(ranked))
            # the candidates end just above the first dropped token, as a real top-k that it misses would
            top = dict(ranked[: max(1, min(cut, body.get("logprobs") or 1, st.top_cap or 99))])
            best = max(raw, key=lambda t: raw[t] + bias.get(t, 0.0))  # sampled with the bias, reported without it
            if bias:
                with st.lock:
                    st.forced.append((prompt, best))
                top[best] = raw[best]
            else:
                best = next(iter(top))
            logprobs = (
                None if st.no_logprobs else {"tokens": [best], "token_logprobs": [top[best]], "top_logprobs": [top]}
            )
            reported = -1e-6 if (bias and st.biased_logprobs) else raw[best]
            logprobs = logprobs if logprobs is None else logprobs | {"token_logprobs": [reported]}
            choices.append({"index": i, "text": best, "logprobs": logprobs, "finish_reason": "length"})
        usage = {"prompt_tokens": sum(len(p.split()) for p in prompts), "completion_tokens": len(prompts)}
        self._send(200, {"object": "text_completion", "model": body["model"], "choices": choices, "usage": usage})

    def _embed(self, body: dict) -> None:
        st = self.state
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        with st.lock:
            st.requests["embeddings"] += 1
        data = []
        for i, text in enumerate(inputs):
            vec = embedding_of(text)
            emb = [[0.0] * DIM, [0.5] * DIM, vec] if st.per_token_embeddings else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        self._send(200, {"object": "list", "data": data, "usage": {"prompt_tokens": len(inputs)}})


class _QuietServer(ThreadingHTTPServer):
    """Keeps test output clean when a client hangs up on purpose (a timeout, a refused redirect)."""

    def handle_error(self, request, client_address) -> None:
        return None


class OpenAIStub:
    """Start with `with OpenAIStub() as stub:`; `stub.url` is the base URL, `stub.state` the knobs and counters."""

    def __init__(self) -> None:
        self.state = StubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = _QuietServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OpenAIStub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
