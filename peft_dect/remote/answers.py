"""What a served model's answers must look like before the client uses or caches them: JSON objects of the
expected shape, each input's index once, finite log-probabilities and embeddings, and quoted server errors."""

from __future__ import annotations

import json
import math


LOGPROBS, EMBEDDING, FORCED = "logprobs", "embedding", "forced"
FLOAT32_MAX = 3.4028234663852886e38  # features are float32: a larger value would become inf
LOGPROB_SLACK = 1e-3  # a top log-probability above this is a probability above 1, not rounding


def last_vector(embedding) -> list[float]:
    """The prompt's vector: a pooled embedding as it is, or the last token's row of a per-token embedding.

    llama.cpp returns one row per token for models without a pooling type (decoder LMs such as SmolLM2); the last
    token is the prediction position of a causal prompt, which is the hidden state DecT reads in-process. Values must
    be finite numbers within float32's range (the features' type), so that a broken answer is refused before it is
    cached.
    """
    if isinstance(embedding, list) and embedding and isinstance(embedding[0], list):
        embedding = embedding[-1]
    if not isinstance(embedding, list) or not embedding or not all(is_number(x) for x in embedding):
        raise ValueError("answered an empty or malformed embedding (not a list of numbers)")
    bad = next((x for x in embedding if not math.isfinite(x) or abs(x) > FLOAT32_MAX), None)
    if bad is not None:
        raise ValueError(f"answered a non-finite or out-of-range embedding value {bad!r}")
    return [float(x) for x in embedding]


def checked_key(key: str | None) -> str | None:
    """The API key without surrounding whitespace; one with control characters (a header injection, or a file read
    with its line breaks) is refused without quoting it."""
    if key is None:
        return None
    if not isinstance(key, str):
        raise TypeError(f"api_key must be a string, got {type(key).__name__}.")
    key = key.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ValueError(
            "The API key (api_key or OPENAI_API_KEY) holds a line break or another control character; give the key "
            "alone."
        )
    return key


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_logprob(value) -> bool:
    return is_number(value) and math.isfinite(value) and -FLOAT32_MAX <= value <= LOGPROB_SLACK


def valid_cached(kind: str, value) -> bool:
    """Whether a value read from a cache file is one the client would have accepted from the server."""
    if kind == LOGPROBS:
        return isinstance(value, dict) and bool(value) and all(is_logprob(v) for v in value.values())
    if kind == FORCED:
        return is_logprob(value) and value <= 0
    if kind == EMBEDDING:
        try:
            return last_vector(value) == value
        except ValueError:
            return False
    return False


def entries(response: dict, key: str, count: int, url: str, hint: str = "") -> list[dict]:
    """The `count` objects of list `key` in a JSON answer, in `index` order, or a ValueError naming the server.

    Indexes, where given, must name each input once (0 to count - 1): a duplicate or stray index would pair an
    answer with the wrong prompt. Without indexes the answers are taken in order.
    """
    entries = response.get(key)
    if not isinstance(entries, list):
        raise ValueError(f"{url} answered no {key!r} list for {count} inputs: {str(response)[:200]}.")
    if len(entries) != count:
        raise ValueError(f"{url} answered {len(entries)} {key} for {count} inputs{hint}.")
    if not all(isinstance(e, dict) for e in entries):
        bad = next(e for e in entries if not isinstance(e, dict))
        raise ValueError(f"{url} answered {key} that are not objects ({str(bad)[:80]!r}).")
    indexes = [e.get("index") for e in entries]
    if all(i is None for i in indexes):
        return entries
    if sorted(i if is_number(i) else -1 for i in indexes) != list(range(count)) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in indexes
    ):
        raise ValueError(
            f"{url} answered {key} with indexes {indexes[:10]} for {count} inputs; each of 0..{count - 1} must "
            "occur once."
        )
    return sorted(entries, key=lambda e: e["index"])


def api_base(url: str) -> str:
    """'http://host:port' or 'http://host:port/v1' -> 'http://host:port/v1'."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def top_logprobs(choice: dict, url: str, model: str) -> dict[str, float]:
    """The first generated token's {token text: log-probability} from an OpenAI completion choice; every value must
    be a finite log-probability (at most 0), checked before the answer is cached."""
    logprobs = choice.get("logprobs")
    top = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
    if not isinstance(top, list) or not top or not isinstance(top[0], dict) or not top[0]:
        raise ValueError(
            f"{url}/completions returned no log-probabilities for model {model!r}. DecT needs the server to "
            "support `logprobs` on completions (llama.cpp's Python server: logits_all=True; vLLM: default)."
        )
    out = {}
    for token, value in top[0].items():
        if not is_number(value):
            raise ValueError(f"{url}/completions answered log-probability {value!r} (no number) for token {token!r}.")
        if not math.isfinite(value):
            raise ValueError(f"{url}/completions answered a non-finite log-probability {value!r} for token {token!r}.")
        if value < -FLOAT32_MAX:
            raise ValueError(f"{url}/completions answered an out-of-range log-probability {value!r} for {token!r}.")
        if value > LOGPROB_SLACK:
            raise ValueError(
                f"{url}/completions answered an impossible log-probability {value!r} (a probability above 1) for "
                f"token {token!r}."
            )
        out[str(token)] = float(value)
    return out


def server_error(answer: dict) -> tuple[str, int | None] | None:
    """(message, HTTP-like status or None) of an `error` in a JSON answer (some servers send errors with HTTP 200)."""
    error = answer.get("error")
    if not error:
        return None
    if isinstance(error, dict):
        message = error.get("message") or json.dumps(error)[:300]
        code = error.get("code", error.get("status", answer.get("code")))
    else:
        message, code = error, answer.get("code", answer.get("status"))
    status = int(code) if isinstance(code, (int, str)) and str(code).strip().isdigit() else None
    return str(message)[:300], status


def error_detail(raw: bytes) -> str:
    """The server's message from an error body: the `error` object's message when it is JSON, else the text."""
    try:
        answer = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        answer = None
    error = server_error(answer) if isinstance(answer, dict) else None
    return error[0] if error else raw.decode("utf-8", "replace")
