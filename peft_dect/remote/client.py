"""An HTTP client for OpenAI-compatible servers (llama.cpp, vLLM, ...): next-token log-probabilities and embeddings.

What DecT needs from a served model, per prompt: the top log-probabilities of the next token (`/v1/completions`
with `max_tokens=1`, `logprobs=k`) and an embedding of the prompt (`/v1/embeddings`). Requests are batched,
run concurrently within `max_concurrency`, retried with exponential backoff on timeouts, connection errors, empty
answers, 429 and 5xx (also as the code of an error object in an HTTP 200), and counted. Answers are checked before
they are cached (JSON shape, each index once, finite values). Answers are cached by (endpoint, model, prompt), in
memory and optionally in a JSON-lines file, so that no prompt is ever sent twice.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm.auto import tqdm

from .answers import (
    EMBEDDING,
    FORCED,
    LOGPROBS,
    api_base,
    checked_key,
    entries,
    error_detail,
    is_logprob,
    last_vector,
    server_error,
    top_logprobs,
    valid_cached,
)
from .cache import ResponseCache
from .stats import RequestStats
from .transport import (
    Deadline,
    SameOriginRedirects,
    Transient,
    WatchedHTTPHandler,
    WatchedHTTPSHandler,
)


logger = logging.getLogger(__name__)

FORCE_BIAS = 100.0
# Next-token candidates asked for when label words are sought: on SmolLM2-135M after SST-2 prompts, " bad" and
# " great" rank beyond the top 20 in about two prompts of three (one more request each) and within the top 200 in
# the prompts checked; 1,000 leaves room (2 of 130 scores beyond it on SST-2 seed 13, none on seed 21), took
# llama-cpp-python's server 0.23 s a request against 0.26 s for 200 (it sorts the whole vocabulary either way) and
# is about 30 kB of JSON, trimmed to the top `top_logprobs` and the label words before it is cached.
LABEL_LOGPROBS = 1000
AUTO_BATCH = 8  # prompts per completion request tried by batch_size="auto"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# The largest answer read: per-token embeddings (llama.cpp without pooling, one row per prompt token) of a 4096-wide
# model over a 2,048-token prompt are about 130 MB of JSON; twice that leaves room and still bounds memory.
MAX_RESPONSE_BYTES = 256 * 2**20
READ_CHUNK = 2**16


class EndpointError(ConnectionError):
    """The server could not be reached or kept failing after the allowed retries."""


class OpenAIEndpoint:
    """A model served behind an OpenAI-compatible HTTP API, queried for next-token log-probabilities and embeddings.

    `url` is the server's base URL (`http://127.0.0.1:8080` or `.../v1`); `model` the served model name. Embeddings
    may come from another URL or model name (`embedding_url`, `embedding_model`: a llama.cpp server started with
    embeddings on, for instance); `embeddings=False` uses log-probabilities only. `top_logprobs` is the number of
    next-token candidates kept; when label words are sought (`keep=`), `label_logprobs` candidates are asked for in
    the same request, so that one request scores every class's words (None: `top_logprobs`; a server that refuses
    that many, such as vLLM with its default `--max-logprobs 20`, is detected once and asked `top_logprobs` from then
    on; label words outside the candidates are handled by the caller). `batch_size` prompts go in one completion
    request (llama.cpp's server and vLLM take lists, llama-cpp-python's takes 1); `batch_size="auto"` tries
    `AUTO_BATCH` prompts once and falls back to 1 for good when the server refuses a list, or answers it wrongly
    (the refused request counts as a completion request); `embedding_batch_size` in one embedding
    request (default 1: llama-cpp-python 0.3 returns wrong per-token embeddings for all but the first input of a
    batch; raise it for servers that batch correctly, such as vLLM). At most `max_concurrency` requests are in
    flight; a failed request is retried `max_retries` times with backoff `backoff * 2**attempt` seconds. `timeout`
    bounds each request as a whole (connecting, waiting, reading the answer), not each socket read, so a server that
    drips its answer cannot hold a request longer; an answer longer than `max_response_bytes` is refused. Answers are
    checked (shape, finite values) before they are cached. `cache_file` keeps answers across runs; it is the
    caller's path, never one from a saved adapter.

    Credentials: `api_key` is sent as a bearer token, to `url` and `embedding_url` only. With `api_key=None`
    (default) it is read from the environment variable `OPENAI_API_KEY`; `api_key=""` sends none. Redirects are
    followed within the same origin (scheme, host, port) only, re-sending the request as it was; a redirect to
    another origin is refused, so that the key never reaches a host the caller did not name. A loaded adapter
    (`BlackBoxDecT.from_pretrained`) does not send the environment's key to the URL saved in it.
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
        label_logprobs: int | None = LABEL_LOGPROBS,
        batch_size: int | str = 1,
        embedding_batch_size: int = 1,
        max_concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        api_key: str | None = None,
        cache_file: str | os.PathLike | None = None,
        show_progress: bool = True,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        wide = top_logprobs if label_logprobs is None else label_logprobs
        auto = batch_size == "auto"
        for name, value in (("top_logprobs", top_logprobs), ("batch_size", 1 if auto else batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"{name} must be an integer >= 1, got {value!r}" + (" (or 'auto')." * (name[0] == "b"))
                )
        if not isinstance(wide, int) or isinstance(wide, bool) or wide < 1:
            raise ValueError(f"label_logprobs must be an integer >= 1 or None, got {label_logprobs!r}.")
        if embedding_batch_size < 1 or max_concurrency < 1 or max_retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError(
                "embedding_batch_size and max_concurrency must be >= 1, max_retries >= 0, timeout > 0, backoff >= 0."
            )
        if not isinstance(max_response_bytes, int) or isinstance(max_response_bytes, bool) or max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be an integer >= 1, got {max_response_bytes!r}.")
        for name, value in (("url", url), ("embedding_url", embedding_url or url)):
            if not isinstance(value, str) or not value.startswith(("http://", "https://")):
                raise ValueError(f"{name} must be an http(s) URL such as 'http://127.0.0.1:8080', got {value!r}.")
        if not isinstance(embeddings, bool) or not isinstance(embedding_model, (str, type(None))):
            raise TypeError(
                f"embeddings must be True or False and embedding_model a string or None, got {embeddings!r} and "
                f"{embedding_model!r}."
            )
        if not isinstance(model, str) or not model:
            raise ValueError("model must name the served model (the 'model' field of the API), e.g. 'smollm2'.")
        self.url = api_base(url)
        self.model = model
        self.embeddings = embeddings
        self.embedding_url = api_base(embedding_url) if embedding_url else self.url
        self.embedding_model = embedding_model or model
        self.top_logprobs = top_logprobs
        self.label_logprobs = max(wide, top_logprobs)
        self.batch_size = AUTO_BATCH if auto else batch_size
        self.batching: bool | None = None if auto else batch_size > 1  # None: to be found out by the first list
        self.embedding_batch_size = embedding_batch_size
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.api_key = checked_key(api_key if api_key is not None else os.environ.get("OPENAI_API_KEY"))
        self.show_progress = show_progress
        self.max_response_bytes = max_response_bytes
        self.stats = RequestStats()
        self._tokenized: dict[str, list[int]] = {}
        self._embedding_width: int | None = None
        self._stats_lock = threading.Lock()
        self.cache = ResponseCache(cache_file, self.identity(), valid_cached)

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

    @contextlib.contextmanager
    def transient_cache(self):
        """For the duration, answers go to a fresh in-memory cache dropped afterwards (neither the shared one nor
        the cache file), and the per-request progress bars are off: for streamed batches, whose memory must not
        grow with their number."""
        shared, progress = self.cache, self.show_progress
        self.cache, self.show_progress = ResponseCache(None, self.identity(), valid_cached), False
        try:
            yield
        finally:
            self.cache, self.show_progress = shared, progress

    # ---------------------------------------------------------------- public queries
    def next_token_logprobs(
        self, prompts: Sequence[str], desc: str = "logprobs", keep: Sequence[str] = ()
    ) -> list[dict[str, float]]:
        """{token text: log-probability} of the `top_logprobs` likeliest next tokens after each prompt; with `keep`
        (label words as they follow the prompt), also those of them among the `label_logprobs` likeliest, and the
        last of those candidates (so that the lowest value is still a bound for a word not found)."""
        keep = frozenset(keep)
        send = functools.partial(self._complete, keep=keep)
        return self._answer(LOGPROBS, prompts, self.batch_size, send, desc)

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
            if isinstance(tokens, list) and all(type(t) is int and t >= 0 for t in tokens):
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
        if todo and kind == LOGPROBS and self.batching is None and len(todo) > 1:
            todo = todo[self._probe_batching(todo[:per_request], send) :]
            per_request = self.batch_size
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

    def _probe_batching(self, chunk: list[str], send: Callable) -> int:
        """batch_size="auto": send the first list of prompts once, without retries; on any refusal or wrong answer
        the server takes one prompt per request from now on. Returns how many prompts it answered (and cached)."""
        try:
            values = send(chunk, retries=0)
        except (ValueError, EndpointError) as err:
            with self._stats_lock:
                self.stats.completion_requests += 1  # it was sent, and refused
                self.batching, self.batch_size = False, 1
            logger.info("%s takes one prompt per completion request (a list was refused: %s).", self.url, err)
            return 0
        self.batching = True
        self.cache.put(LOGPROBS, chunk, values)
        return len(chunk)

    def _complete(self, chunk: list[str], keep: frozenset = frozenset(), retries: int | None = None):
        """Top candidates of each prompt of `chunk` (one request); with label words to `keep`, `label_logprobs`
        candidates are asked for, unless the server refused that many before."""
        wide = bool(keep) and self.label_logprobs > self.top_logprobs
        body = {
            "model": self.model,
            "prompt": chunk[0] if len(chunk) == 1 else chunk,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": self.label_logprobs if wide else self.top_logprobs,
            "echo": False,
        }
        url = self.url + "/completions"
        try:
            response = self._post(url, body, kind=LOGPROBS, prompts=len(chunk), retries=retries)
        except ValueError as err:
            if not wide or "logprob" not in str(err).lower():
                raise
            with self._stats_lock:
                first, self.label_logprobs = self.label_logprobs > self.top_logprobs, self.top_logprobs
            if first:  # once, also when requests in flight meanwhile are refused too
                logger.warning(
                    "%s refused %d next-token candidates (%s); asking %d from now on (label words outside them cost "
                    "one request each).",
                    self.url,
                    body["logprobs"],
                    str(err)[:200],
                    self.top_logprobs,
                )
            return self._complete(chunk, keep, retries)
        hint = "; this server may take one prompt per request: use batch_size=1" if len(chunk) > 1 else ""
        choices = entries(response, "choices", len(chunk), url, hint)
        tops = [top_logprobs(choice, self.url, self.model) for choice in choices]
        return [trimmed(top, self.top_logprobs, keep) for top in tops] if wide else tops

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
        url = self.url + "/completions"
        choice = entries(self._post(url, body, kind=FORCED, prompts=1), "choices", 1, url)[0]
        logprobs = choice.get("logprobs")
        values = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
        value = values[0] if isinstance(values, list) and values else None
        if not is_logprob(value) or value > 0:
            raise ValueError(
                f"{url} gave no finite log-probability (got {value!r}) for a token forced by logit_bias; use "
                "missing_label_words='floor' or raise top_logprobs if the server cannot score forced tokens."
            )
        return [float(value)]

    def _embed(self, chunk: list[str]) -> list[list[float]]:
        body = {"model": self.embedding_model, "input": chunk}
        url = self.embedding_url + "/embeddings"
        data = entries(self._post(url, body, kind=EMBEDDING, prompts=len(chunk)), "data", len(chunk), url)
        vectors = []
        for i, entry in enumerate(data):
            try:
                vectors.append(last_vector(entry.get("embedding")))
            except ValueError as err:
                raise ValueError(f"{url} {err} for input {i} of {len(chunk)}.") from None
        widths = sorted({len(v) for v in vectors})
        if len(widths) > 1:
            raise ValueError(f"{url} answered embeddings of different widths {widths} in one batch.")
        with self._stats_lock:  # one width per endpoint, checked before caching: a stray answer is not kept
            known = self._embedding_width = self._embedding_width or widths[0]
        if widths[0] != known:
            raise ValueError(
                f"{url} answered embeddings of width {widths[0]}, after width {known} earlier: the server may have "
                "changed models; restart with the model the adapter was fitted with."
            )
        return vectors

    # ---------------------------------------------------------------- HTTP with retries
    def _post(self, url: str, body: dict, *, kind: str, prompts: int, retries: int | None = None) -> dict:
        """POST `body` as JSON and return the answer (a JSON object), retrying transient failures with backoff
        (`max_retries` times, or `retries`)."""
        data = json.dumps(body).encode("utf-8", "surrogatepass")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = None
        for attempt in range((self.max_retries if retries is None else retries) + 1):
            if attempt:
                with self._stats_lock:
                    self.stats.retries += 1
                time.sleep(self.backoff * 2 ** (attempt - 1))
            start = time.perf_counter()
            try:
                answer = self._request(url, data, headers, kind)
            except Transient as err:
                last = str(err)
            else:
                self._count(kind, prompts, answer)
                return answer
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

    def _request(self, url: str, data: bytes, headers: dict, kind: str) -> dict:
        """One attempt: the answer as a JSON object, a `Transient` failure (retried), or a ValueError (not)."""
        deadline = Deadline(self.timeout)
        opener = urllib.request.build_opener(
            SameOriginRedirects(), WatchedHTTPHandler(deadline), WatchedHTTPSHandler(deadline)
        )
        try:
            with opener.open(urllib.request.Request(url, data=data, headers=headers), timeout=self.timeout) as reply:
                payload = self._read(reply, url, deadline)
        except urllib.error.HTTPError as err:
            if 300 <= err.code < 400:  # what urllib gives up on: a redirect loop, or too many redirects
                err.close()
                raise ValueError(
                    f"{url} redirected in a loop, too many times or to a scheme other than http(s) (HTTP {err.code}: "
                    f"{err.msg}); check the URL."
                ) from None
            try:
                detail = error_detail(err.read(300))
            except (OSError, http.client.HTTPException):
                detail = "(no readable body)"
            finally:
                err.close()
            if err.code not in RETRY_STATUS:
                hint = ""
                if kind == EMBEDDING and err.code in (404, 405, 501):
                    hint = " This server has no embeddings: pass embeddings=False (DecT's logit term alone)."
                if err.code in (401, 403):
                    hint = (
                        " Pass api_key=... or set OPENAI_API_KEY (a loaded adapter sends that only to a URL you "
                        "give: url=..., --endpoint)."
                    )
                raise ValueError(f"{url} refused the request with HTTP {err.code}: {detail}{hint}") from None
            raise Transient(f"HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as err:
            if deadline.expired:
                raise Transient(f"TimeoutError: no complete answer within timeout={self.timeout:g} s") from None
            raise Transient(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None
        finally:
            deadline.cancel()
        if deadline.expired:  # the watchdog may end slow headers in what looks like an empty answer
            raise Transient(f"TimeoutError: no complete answer within timeout={self.timeout:g} s")
        if not payload.strip():
            raise Transient("an empty answer (HTTP 200 without a body)")
        try:
            answer = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise ValueError(f"{url} did not answer JSON: {payload[:200]!r}") from None
        if not isinstance(answer, dict):
            raise ValueError(
                f"{url} answered JSON that is not an object ({type(answer).__name__}: {payload[:100]!r}); give the "
                "base URL of an OpenAI-compatible API."
            )
        error = server_error(answer)
        if error is not None:
            message, status = error
            if status in RETRY_STATUS:
                raise Transient(f"an error answer (code {status}): {message}")
            raise ValueError(f"{url} answered an error: {message}")
        return answer

    def _read(self, reply, url: str, deadline: Deadline) -> bytes:
        """The whole body, in chunks: at most `max_response_bytes`, complete, and within the request's deadline."""
        cap = self.max_response_bytes
        announced = reply.headers.get("Content-Length", "")
        expected = int(announced) if announced.strip().isdigit() else None
        too_big = (
            f"{url} answered more than max_response_bytes={cap} bytes. Raise max_response_bytes if the server's "
            "answers are this large (per-token embeddings of long prompts are), or lower the batch sizes."
        )
        if expected is not None and expected > cap:
            raise ValueError(f"{too_big} (it announced {expected})")
        chunks, size = [], 0
        while chunk := reply.read1(READ_CHUNK):
            size += len(chunk)
            if size > cap:
                raise ValueError(too_big)
            if deadline.expired:
                raise TimeoutError("the request's deadline passed")
            chunks.append(chunk)
        payload = b"".join(chunks)
        if expected is not None and size < expected:  # read1 does not raise on a connection closed early
            raise http.client.IncompleteRead(payload, expected - size)
        return payload

    def _count(self, kind: str, prompts: int, answer: dict) -> None:
        usage = answer.get("usage")
        try:
            tokens = max(0, int(usage.get("prompt_tokens") or 0)) if isinstance(usage, dict) else 0
        except (TypeError, ValueError, OverflowError):
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


def trimmed(top: dict[str, float], count: int, keep: frozenset) -> dict[str, float]:
    """The `count` likeliest candidates of `top`, those named in `keep`, and the least likely one (the bound a word
    not found stays below)."""
    ranked = sorted(top.items(), key=lambda kv: -kv[1])
    out = dict(ranked[:count])
    out |= {token: value for token, value in ranked[count:] if token in keep}
    out.setdefault(*ranked[-1])
    return out
