"""An HTTP client for OpenAI-compatible servers (llama.cpp, vLLM, ...): next-token log-probabilities and embeddings.

What DecT needs from a served model, per prompt: the top log-probabilities of the next token (`/v1/completions`
with `max_tokens=1`, `logprobs=k`) and an embedding of the prompt (`/v1/embeddings`). Requests are batched,
run concurrently within `max_concurrency`, retried with exponential backoff on timeouts, connection errors, 429 and
5xx, and counted. Answers are cached by (endpoint, model, prompt), in memory and optionally in a JSON-lines file,
so that no prompt is ever sent twice.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from .cache import ResponseCache


logger = logging.getLogger(__name__)

LOGPROBS, EMBEDDING, FORCED = "logprobs", "embedding", "forced"
FORCE_BIAS = 100.0
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class EndpointError(ConnectionError):
    """The server could not be reached or kept failing after the allowed retries."""


@dataclass
class RequestStats:
    """What a client has cost so far: HTTP requests (by kind), retries, tokens, and prompts sent for log-probabilities
    or answered from the cache (a prompt counts once, whether or not its embedding was also asked for)."""

    completion_requests: int = 0
    embedding_requests: int = 0
    forced_requests: int = 0
    tokenize_requests: int = 0
    retries: int = 0
    prompts_sent: int = 0
    cached_prompts: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return self.completion_requests + self.embedding_requests + self.tokenize_requests

    def report(self) -> dict[str, int]:
        """The counts a fit report gives: requests by kind, retries, cached prompts, prompt tokens."""
        return {
            "requests": self.requests,
            "completion_requests": self.completion_requests,
            "embedding_requests": self.embedding_requests,
            "label_word_requests": self.forced_requests,
            "retries": self.retries,
            "cached_prompts": self.cached_prompts,
            "prompt_tokens": self.prompt_tokens,
        }

    def since(self, before: RequestStats) -> RequestStats:
        """The cost between `before` (a copy taken earlier) and now."""
        now, then = asdict(self), asdict(before)
        return RequestStats(**{k: now[k] - then[k] for k in now})

    def copy(self) -> RequestStats:
        return RequestStats(**asdict(self))


def _last_vector(embedding) -> list[float]:
    """The prompt's vector: a pooled embedding as it is, or the last token's row of a per-token embedding.

    llama.cpp returns one row per token for models without a pooling type (decoder LMs such as SmolLM2); the last
    token is the prediction position of a causal prompt, which is the hidden state DecT reads in-process.
    """
    if embedding and isinstance(embedding[0], list):
        embedding = embedding[-1]
    if not embedding or not all(isinstance(x, (int, float)) for x in embedding):
        raise ValueError("The server returned an empty or malformed embedding.")
    return [float(x) for x in embedding]


class OpenAIEndpoint:
    """A model served behind an OpenAI-compatible HTTP API, queried for next-token log-probabilities and embeddings.

    `url` is the server's base URL (`http://127.0.0.1:8080` or `.../v1`); `model` the served model name. Embeddings
    may come from another URL or model name (`embedding_url`, `embedding_model`: a llama.cpp server started with
    embeddings on, for instance); `embeddings=False` uses log-probabilities only. `top_logprobs` is the number of
    next-token candidates asked for (label words outside them are handled by the caller). `batch_size` prompts go in
    one completion request (llama.cpp's server takes 1, vLLM takes lists); `embedding_batch_size` in one embedding
    request (default 1: llama-cpp-python 0.3 returns wrong per-token embeddings for all but the first input of a
    batch; raise it for servers that batch correctly, such as vLLM). At most `max_concurrency` requests are in
    flight; a failed request is retried `max_retries` times with backoff `backoff * 2**attempt` seconds.
    `cache_file` keeps answers across runs.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        embeddings: bool = True,
        embedding_url: str | None = None,
        embedding_model: str | None = None,
        top_logprobs: int = 20,
        batch_size: int = 1,
        embedding_batch_size: int = 1,
        max_concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        api_key: str | None = None,
        cache_file: str | os.PathLike | None = None,
        show_progress: bool = True,
    ) -> None:
        for name, value in (("top_logprobs", top_logprobs), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if embedding_batch_size < 1 or max_concurrency < 1 or max_retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError(
                "embedding_batch_size and max_concurrency must be >= 1, max_retries >= 0, timeout > 0, backoff >= 0."
            )
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http(s) URL such as 'http://127.0.0.1:8080', got {url!r}.")
        if not isinstance(model, str) or not model:
            raise ValueError("model must name the served model (the 'model' field of the API), e.g. 'smollm2'.")
        self.url = _api_base(url)
        self.model = model
        self.embeddings = embeddings
        self.embedding_url = _api_base(embedding_url) if embedding_url else self.url
        self.embedding_model = embedding_model or model
        self.top_logprobs = top_logprobs
        self.batch_size = batch_size
        self.embedding_batch_size = embedding_batch_size
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.show_progress = show_progress
        self.stats = RequestStats()
        self._tokenized: dict[str, list[int]] = {}
        self._stats_lock = threading.Lock()
        self.cache = ResponseCache(cache_file, self.identity())

    def identity(self) -> dict:
        """What the answers depend on: the cache key beyond the prompt."""
        out = {"endpoint": self.url, "model": self.model, "top_logprobs": self.top_logprobs}
        if self.embeddings:
            out |= {"embedding_endpoint": self.embedding_url, "embedding_model": self.embedding_model}
        return out

    def settings(self) -> dict:
        """JSON-able constructor arguments (no API key, no cache file): what a saved adapter needs to reconnect."""
        out = {"url": self.url, "model": self.model, "embeddings": self.embeddings, "top_logprobs": self.top_logprobs}
        if self.embedding_url != self.url:  # else they follow `url` and `model` when those are overridden on load
            out["embedding_url"] = self.embedding_url
        if self.embedding_model != self.model:
            out["embedding_model"] = self.embedding_model
        return out

    # ---------------------------------------------------------------- public queries
    def next_token_logprobs(self, prompts: Sequence[str], desc: str = "logprobs") -> list[dict[str, float]]:
        """{token text: log-probability} of the `top_logprobs` likeliest next tokens after each prompt."""
        return self._answer(LOGPROBS, prompts, self.batch_size, self._complete, desc)

    def forced_logprobs(self, pairs: Sequence[tuple[str, int]], desc: str = "label words") -> list[float]:
        """Exact log-probability of token `token_id` right after `prompt`, for (prompt, token_id) pairs.

        For label words outside the top candidates: one request per pair, with `logit_bias` forcing that token as the
        completion. This relies on the server reporting the chosen token's log-probability before the bias, as
        llama.cpp's and vLLM's servers do (the real-server test checks it against the top candidates).
        """
        keys = [f"{token_id}\x00{prompt}" for prompt, token_id in pairs]
        return self._answer(FORCED, keys, 1, self._forced, desc)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens) from the server: llama-cpp-python's `/extras/tokenize`, or the
        `/tokenize` route of llama.cpp's and vLLM's servers."""
        if text in self._tokenized:
            return self._tokenized[text]
        ids = self._tokenize(text)
        if text and "" not in self._tokenized:
            self._tokenized[""] = self._tokenize("")
        bos = self._tokenized.get("", []) if text else []  # what the route adds to every text (a BOS), dropped
        if bos and ids[: len(bos)] == bos:
            ids = ids[len(bos) :]
        self._tokenized[text] = ids
        return ids

    def _tokenize(self, text: str) -> list[int]:
        root = self.url[: -len("/v1")]
        body = {"model": self.model, "content": text, "prompt": text, "add_special": False}
        attempts = (
            (root + "/extras/tokenize", {"model": self.model, "input": text}),
            (root + "/tokenize", body | {"add_special_tokens": False}),
        )
        errors = []
        for url, body in attempts:
            try:
                tokens = self._post(url, body, kind="tokenize", prompts=0).get("tokens")
            except (ValueError, EndpointError) as err:
                errors.append(str(err)[:120])
                continue
            if isinstance(tokens, list) and all(isinstance(t, int) for t in tokens):
                return tokens
            errors.append(f"{url} answered no token list")
        raise ValueError(
            f"Could not tokenize {text!r} on the server ({'; '.join(errors)}). Pass label-word token ids "
            "(label_token_ids=...) or a tokenizer of the served model, or use missing_label_words='floor'."
        )

    def embed(self, prompts: Sequence[str], desc: str = "embeddings") -> list[list[float]]:
        """One vector per prompt (the last token's for per-token embeddings)."""
        if not self.embeddings:
            raise ValueError("This endpoint was created with embeddings=False.")
        return self._answer(EMBEDDING, prompts, self.embedding_batch_size, self._embed, desc)

    # ---------------------------------------------------------------- batching, concurrency, cache
    def _answer(self, kind: str, prompts: Sequence[str], per_request: int, send: Callable, desc: str) -> list:
        prompts = list(prompts)
        todo = list(dict.fromkeys(p for p in prompts if self.cache.get(kind, p) is None))
        if kind == LOGPROBS:  # prompts count once (their embedding request is counted as a request)
            with self._stats_lock:
                self.stats.cached_prompts += len(prompts) - len(todo)
        if todo:
            chunks = [todo[i : i + per_request] for i in range(0, len(todo), per_request)]
            bar = tqdm(total=len(todo), desc=desc, unit="prompt", disable=not self.show_progress)
            pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(chunks)))
            futures = {pool.submit(send, chunk): chunk for chunk in chunks}
            try:
                for future in as_completed(futures):
                    chunk = futures.pop(future)
                    self.cache.put(kind, chunk, future.result())  # answers are kept as they arrive
                    bar.update(len(chunk))
            except BaseException:
                # Stop at the first failure: queued requests are cancelled, the ones in flight are waited for and
                # their answers kept, so that a rerun sends only what is still missing.
                pool.shutdown(wait=True, cancel_futures=True)
                for future, chunk in futures.items():
                    if future.done() and not future.cancelled() and future.exception() is None:
                        self.cache.put(kind, chunk, future.result())
                raise
            finally:
                pool.shutdown(wait=True)
                bar.close()
        return [self.cache.get(kind, p) for p in prompts]

    def _complete(self, chunk: list[str]) -> list[dict[str, float]]:
        body = {
            "model": self.model,
            "prompt": chunk[0] if len(chunk) == 1 else chunk,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": self.top_logprobs,
            "echo": False,
        }
        url = self.url + "/completions"
        response = self._post(url, body, kind=LOGPROBS, prompts=len(chunk))
        hint = "; this server may take one prompt per request: use batch_size=1"
        choices = _entries(response, "choices", len(chunk), url, hint)
        return [_top_logprobs(choice, self.url, self.model) for choice in choices]

    def _forced(self, chunk: list[str]) -> list[float]:
        token_id, prompt = chunk[0].split("\x00", 1)
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": 1,
            "logit_bias": {token_id: FORCE_BIAS},
        }
        choices = self._post(self.url + "/completions", body, kind=FORCED, prompts=1).get("choices") or [{}]
        logprobs = choices[0].get("logprobs") or {}
        values = logprobs.get("token_logprobs") or [None]
        value = values[0]
        if not isinstance(value, (int, float)) or math.isnan(value) or value > 0:
            raise ValueError(f"{self.url}/completions gave no log-probability for a token forced by logit_bias.")
        return [float(value)]

    def _embed(self, chunk: list[str]) -> list[list[float]]:
        body = {"model": self.embedding_model, "input": chunk}
        url = self.embedding_url + "/embeddings"
        data = _entries(self._post(url, body, kind=EMBEDDING, prompts=len(chunk)), "data", len(chunk), url)
        try:
            return [_last_vector(d.get("embedding")) for d in data]
        except (ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"{self.embedding_url}/embeddings: {err}") from None

    # ---------------------------------------------------------------- HTTP with retries
    def _post(self, url: str, body: dict, *, kind: str, prompts: int) -> dict:
        data = json.dumps(body).encode("utf-8", "surrogatepass")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._stats_lock:
                    self.stats.retries += 1
                time.sleep(self.backoff * 2 ** (attempt - 1))
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(url, data=data, headers=headers), timeout=self.timeout
                ) as reply:
                    payload = reply.read()
            except urllib.error.HTTPError as err:
                detail = err.read()[:300].decode("utf-8", "replace")
                if err.code not in RETRY_STATUS:
                    hint = ""
                    if kind == EMBEDDING and err.code in (404, 405, 501):
                        hint = " This server has no embeddings: pass embeddings=False (DecT's logit term alone)."
                    raise ValueError(f"{url} refused the request with HTTP {err.code}: {detail}{hint}") from None
                last = f"HTTP {err.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            else:
                self._count(kind, prompts, payload)
                try:
                    return json.loads(payload)
                except json.JSONDecodeError:
                    raise ValueError(f"{url} did not answer JSON: {payload[:200]!r}") from None
            finally:
                with self._stats_lock:
                    self.stats.seconds += time.perf_counter() - start
            logger.info("Request to %s failed (%s), attempt %d of %d.", url, last, attempt + 1, self.max_retries + 1)
        hint = ""
        if kind == EMBEDDING:
            hint = " If the server has no embeddings (llama.cpp: started without --embedding), pass embeddings=False."
        raise EndpointError(
            f"{url} failed {self.max_retries + 1} times, last with {last}. Check that the server is running and "
            f"serves the model, or raise timeout / max_retries for a slow server.{hint}"
        )

    def _count(self, kind: str, prompts: int, payload: bytes) -> None:
        try:
            usage = json.loads(payload).get("usage") or {}
            tokens = int(usage.get("prompt_tokens") or 0)
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            tokens = 0
        with self._stats_lock:
            if kind in (LOGPROBS, FORCED):
                self.stats.completion_requests += 1
            elif kind == EMBEDDING:
                self.stats.embedding_requests += 1
            else:
                self.stats.tokenize_requests += 1
            if kind == FORCED:
                self.stats.forced_requests += 1
            self.stats.prompts_sent += prompts if kind == LOGPROBS else 0
            self.stats.prompt_tokens += tokens


def _entries(response, key: str, count: int, url: str, hint: str = "") -> list[dict]:
    """The `count` objects of list `key` in a JSON answer, in `index` order, or a ValueError naming the server."""
    entries = response.get(key) if isinstance(response, dict) else None
    if not isinstance(entries, list) or len(entries) != count or not all(isinstance(e, dict) for e in entries):
        got = f"{len(entries)} {key}" if isinstance(entries, list) else f"no {key!r} list"
        raise ValueError(f"{url} answered {got} for {count} inputs{hint}.")
    return sorted(entries, key=lambda e: e.get("index", 0) if isinstance(e.get("index", 0), int) else 0)


def _api_base(url: str) -> str:
    """'http://host:port' or 'http://host:port/v1' -> 'http://host:port/v1'."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _top_logprobs(choice: dict, url: str, model: str) -> dict[str, float]:
    """The first generated token's {token text: log-probability} from an OpenAI completion choice."""
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    top = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
    if not top or not isinstance(top[0], dict) or not top[0]:
        raise ValueError(
            f"{url}/completions returned no log-probabilities for model {model!r}. DecT needs the server to "
            "support `logprobs` on completions (llama.cpp's Python server: logits_all=True; vLLM: default)."
        )
    out = {}
    for token, value in top[0].items():
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"{url}/completions returned a NaN log-probability for token {token!r}.")
        out[str(token)] = value
    return out
