"""Fewer requests to a served model: every class's label words from one completion request, and lists of prompts
per request where the server takes them (found out once, with a fallback for servers that do not)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from openai_stub import OpenAIStub, logprobs_of

from peft_dect.dect import DecTConfig
from peft_dect.remote import BlackBoxDecT, OpenAIEndpoint, RemoteBackbone


TEMPLATE = "{text_a} It was {mask}."
WORDS = {"negative": ["terrible"], "positive": ["great"]}
TEXTS = [f"the {w} film number {i}" for i, w in enumerate(["lovely", "dull", "moving", "boring", "fine", "awful"] * 2)]


@pytest.fixture
def stub():
    with OpenAIStub() as server:
        yield server


def endpoint(stub, **kwargs) -> OpenAIEndpoint:
    kwargs.setdefault("show_progress", False)
    kwargs.setdefault("backoff", 0.01)
    return OpenAIEndpoint(stub.url, "stub-model", **kwargs)


def refuse(*, lists: bool = False, logprobs_above: int | None = None):
    """A server that refuses lists of prompts (as llama-cpp-python's: HTTP 500) or more than `logprobs_above`
    candidates (as vLLM's --max-logprobs: HTTP 400)."""

    def hostile(handler, body):
        if body is None or handler.path != "/v1/completions":
            return False
        if lists and isinstance(body.get("prompt"), list):
            with handler.state.lock:
                handler.state.requests["completions"] += 1
            handler.send_raw(500, b'{"error": {"message": "", "type": "internal_server_error"}}')
            return True
        if logprobs_above is not None and (body.get("logprobs") or 0) > logprobs_above:
            with handler.state.lock:
                handler.state.requests["completions"] += 1
            message = f"Requested sample logprobs of {body['logprobs']}, which is greater than max allowed: 20"
            handler.send_raw(400, json.dumps({"error": {"message": message}}).encode())
            return True
        return False

    return hostile


def expected_scores(texts):
    return torch.tensor([[logprobs_of(f"{t} It was")[w] for w in (" terrible", " great")] for t in texts])


def test_one_completion_request_scores_every_class(stub):
    """Label words outside the top candidates kept are found among the wider ones asked for: no forced request."""
    ep = endpoint(stub, top_logprobs=2)
    feats = RemoteBackbone(ep, TEMPLATE, WORDS).extract(TEXTS)
    assert torch.allclose(feats.label_logits, expected_scores(TEXTS))
    assert ep.stats.forced_requests == 0 and stub.state.requests["completions"] == len(TEXTS)
    cached = ep.cache.get("logprobs", f"{TEXTS[0]} It was")
    assert len(cached) <= 2 + 2 + 1  # the top 2, the label words and the lowest candidate are kept
    assert min(cached.values()) == min(logprobs_of(f"{TEXTS[0]} It was").values())


def test_the_old_behaviour_asks_one_request_per_missing_word(stub):
    ep = endpoint(stub, top_logprobs=2, label_logprobs=None)
    feats = RemoteBackbone(ep, TEMPLATE, WORDS).extract(TEXTS)
    assert torch.allclose(feats.label_logits, expected_scores(TEXTS))
    assert ep.stats.forced_requests > 0


def test_a_server_refusing_many_candidates_is_asked_fewer_from_then_on(stub, caplog):
    stub.state.hostile = refuse(logprobs_above=20)
    ep = endpoint(stub, top_logprobs=2)
    with caplog.at_level(logging.WARNING):
        feats = RemoteBackbone(ep, TEMPLATE, WORDS).extract(TEXTS)
    assert torch.allclose(feats.label_logits, expected_scores(TEXTS))
    assert caplog.text.count("refused 1000 next-token candidates") == 1 and ep.label_logprobs == 2
    refused = stub.state.requests["completions"] - len(TEXTS) - ep.stats.forced_requests
    assert 1 <= refused <= ep.max_concurrency  # only those in flight before it was known
    assert ep.stats.forced_requests > 0


def test_auto_batching_sends_lists_to_a_server_that_takes_them(stub):
    ep = endpoint(stub, batch_size="auto")
    RemoteBackbone(ep, TEMPLATE, WORDS).extract(TEXTS)
    assert ep.batching is True and stub.state.requests["completions"] == 2  # 12 prompts, 8 per request
    plain = RemoteBackbone(endpoint(stub), TEMPLATE, WORDS).extract(TEXTS)
    again = RemoteBackbone(ep, TEMPLATE, WORDS).extract(TEXTS)  # cached
    assert torch.equal(plain.label_logits, again.label_logits)


def test_auto_batching_falls_back_once_for_a_server_that_takes_one_prompt(stub):
    stub.state.hostile = refuse(lists=True)
    ep = endpoint(stub, batch_size="auto", max_retries=3)
    feats = RemoteBackbone(ep, TEMPLATE, WORDS).extract(TEXTS)
    assert torch.allclose(feats.label_logits, expected_scores(TEXTS))
    assert ep.batching is False and ep.batch_size == 1
    assert stub.state.requests["completions"] == len(TEXTS) + 1  # one refused list, no retries of it
    assert ep.stats.completion_requests == len(TEXTS) + 1 and ep.stats.retries == 0
    RemoteBackbone(ep, TEMPLATE, WORDS).extract([t + " again" for t in TEXTS])
    assert stub.state.requests["completions"] == 2 * len(TEXTS) + 1  # known now: no list is tried again


def test_fit_costs_two_requests_per_input(stub):
    """A completion and an embedding per input, also when the label words are not among the top candidates."""
    train = {"text": TEXTS, "label": ["positive" if i % 2 == 0 else "negative" for i in range(len(TEXTS))]}
    clf = BlackBoxDecT(DecTConfig(template=TEMPLATE, label_words=WORDS), endpoint(stub, top_logprobs=2))
    report = clf.fit(train)
    n = len(TEXTS) + 1
    assert report["requests"] == 2 * n and report["label_word_requests"] == 0


def test_bad_request_options_are_refused(stub):
    for bad in (0, "many", True):
        with pytest.raises(ValueError, match="batch_size"):
            endpoint(stub, batch_size=bad)
    with pytest.raises(ValueError, match="label_logprobs"):
        endpoint(stub, label_logprobs=0)
