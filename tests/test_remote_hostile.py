"""The black-box backend against hostile or broken servers and files: redirects, keys, torn caches, non-finite
answers, slow drips, wrong shapes, oversized answers. Every server is a local stub on 127.0.0.1."""

from __future__ import annotations

import json
import logging

import pytest
from openai_stub import OpenAIStub, logprobs_of

from peft_dect.remote import OpenAIEndpoint


@pytest.fixture
def stub():
    with OpenAIStub() as server:
        yield server


def endpoint(stub, **kwargs) -> OpenAIEndpoint:
    kwargs.setdefault("show_progress", False)
    kwargs.setdefault("backoff", 0.01)
    return OpenAIEndpoint(stub.url, "stub-model", **kwargs)


def test_cache_torn_inside_a_multibyte_character_keeps_the_other_lines(stub, tmp_path, caplog):
    cache = tmp_path / "requests.jsonl"
    endpoint(stub, cache_file=cache).next_token_logprobs(["un film très réussi", "a second prompt"])
    raw = cache.read_bytes()
    cut = raw.index("très".encode()) + 3  # inside the two bytes of "è"
    cache.write_bytes(raw[:cut] + b"\n" + raw[cut:])  # a torn write, then the rest of the file
    with caplog.at_level(logging.WARNING):
        fresh = endpoint(stub, cache_file=cache)
        fresh.next_token_logprobs(["a second prompt"])
    assert fresh.stats.requests == 0 and "unreadable line" in caplog.text
