"""What a client of a served model has cost: requests by kind, retries, prompts sent or answered from the cache."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
