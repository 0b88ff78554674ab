"""Black-box DecT over HTTP against a local OpenAI-compatible stub: fitting, counting, caching, retries, bad input."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from openai_stub import NEGATIVE, POSITIVE, OpenAIStub

from peft_dect.dect import DecTConfig
from peft_dect.remote import BlackBoxDecT, EndpointError, OpenAIEndpoint, RemoteBackbone


TEMPLATE = "{text_a} It was {mask}."
WORDS = {"negative": ["terrible"], "positive": ["great"]}
FILLER = ["the", "plot", "cast", "film", "story", "music", "pace", "ending", "scenes", "actors"]


def sentiment_data(n_per_class: int, seed: int, cue_words: int = 1) -> dict[str, list]:
    """Short reviews with `cue_words` sentiment words among neutral ones (one cue is often not enough for the
    prior alone: the decoder has to read the embedding)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for label, cues in (("negative", sorted(NEGATIVE)), ("positive", sorted(POSITIVE))):
        for _ in range(n_per_class):
            words = rng.sample(FILLER, 5) + rng.sample(cues, cue_words)
            rng.shuffle(words)
            texts.append(" ".join(words))
            labels.append(label)
    return {"text": texts, "label": labels}


@pytest.fixture
def stub():
    with OpenAIStub() as server:
        yield server


def endpoint(stub, **kwargs) -> OpenAIEndpoint:
    kwargs.setdefault("show_progress", False)
    kwargs.setdefault("backoff", 0.01)
    return OpenAIEndpoint(stub.url, "stub-model", **kwargs)


def config(**kwargs) -> DecTConfig:
    return DecTConfig(template=TEMPLATE, label_words=WORDS, **kwargs)


def test_fit_counts_one_request_per_example_and_learns(stub):
    train, test = sentiment_data(8, seed=0), sentiment_data(20, seed=1)
    clf = BlackBoxDecT(config(), endpoint(stub))
    report = clf.fit(train)
    n = len(train["text"]) + 1  # the content-free prompt
    assert report["completion_requests"] == n == stub.state.requests["completions"]
    assert report["embedding_requests"] == n == stub.state.requests["embeddings"]
    assert report["requests"] == report["completion_requests"] + report["embedding_requests"]
    assert report["model_passes"] == n and report["retries"] == 0 and report["prompt_tokens"] > 0
    assert report["wall_seconds"] >= report["feature_seconds"] > 0
    assert clf.evaluate(test)["accuracy"] >= 0.9
    assert clf.predict(["a lovely, moving film"]) == ["positive"]
    probs = clf.predict_proba(test)
    assert probs.shape == (40, 2) and np.allclose(probs.sum(1), 1)


def test_no_prompt_is_sent_twice(stub, tmp_path):
    train = sentiment_data(6, seed=2)
    cache = tmp_path / "requests.jsonl"
    clf = BlackBoxDecT(config(), endpoint(stub, cache_file=cache))
    clf.fit(train)
    clf.predict(train)  # all answered from the cache
    again = clf.fit(train)
    assert again["requests"] == 0 and again["cached_prompts"] == len(train["text"]) + 1
    assert len(stub.state.prompts_seen) == len(set(stub.state.prompts_seen)) == len(train["text"]) + 1
    fresh = BlackBoxDecT(config(), endpoint(stub, cache_file=cache))  # a new process reads the file
    assert fresh.fit(train)["requests"] == 0
    assert torch.equal(fresh.predict_logits(train), clf.predict_logits(train))


def test_cache_file_of_another_model_is_ignored_with_a_warning(stub, tmp_path, caplog):
    train = sentiment_data(4, seed=3)
    cache = tmp_path / "requests.jsonl"
    BlackBoxDecT(config(), endpoint(stub, cache_file=cache)).fit(train)
    size = cache.stat().st_size
    other = OpenAIEndpoint(stub.url, "another-model", cache_file=cache, show_progress=False)
    with caplog.at_level(logging.WARNING):
        report = BlackBoxDecT(config(), other).fit(train)
    assert "Ignoring the request cache" in caplog.text and "another-model" in caplog.text
    assert report["completion_requests"] == len(train["text"]) + 1
    assert cache.stat().st_size == size  # not appended to


def test_torn_cache_line_is_skipped(stub, tmp_path, caplog):
    train = sentiment_data(4, seed=4)
    cache = tmp_path / "requests.jsonl"
    BlackBoxDecT(config(), endpoint(stub, cache_file=cache)).fit(train)
    with open(cache, "a", encoding="utf-8") as f:
        f.write('{"k": "logprobs", "p": "half a li')
    with caplog.at_level(logging.WARNING):
        report = BlackBoxDecT(config(), endpoint(stub, cache_file=cache)).fit(train)
    assert report["requests"] == 0 and "unreadable line" in caplog.text


def test_batches_and_concurrency_limit(stub):
    stub.state.delay = 0.05
    ep = endpoint(stub, max_concurrency=3, embedding_batch_size=4)
    prompts = [f"prompt number {i}" for i in range(12)]
    ep.next_token_logprobs(prompts)
    ep.embed(prompts)
    assert stub.state.max_in_flight == 3
    assert stub.state.requests == {"completions": 12, "embeddings": 3, "tokenize": 0}
    assert ep.stats.prompts_sent == 12


def test_batched_embeddings(stub):
    ep = endpoint(stub, embedding_batch_size=16)
    ep.embed([f"text {i}" for i in range(17)])
    assert stub.state.requests["embeddings"] == 2


def test_list_prompts_for_servers_that_take_them(stub):
    ep = endpoint(stub, batch_size=5)
    out = ep.next_token_logprobs([f"text {i} good" for i in range(7)])
    assert len(out) == 7 and stub.state.requests["completions"] == 2
    assert all(" great" in top for top in out)


def test_retries_on_5xx_then_succeeds(stub):
    stub.state.fail_next = 2
    ep = endpoint(stub, max_retries=3)
    assert len(ep.next_token_logprobs(["a good film"])) == 1
    assert ep.stats.retries == 2


def test_gives_up_after_bounded_retries(stub):
    stub.state.fail_next = 100
    ep = endpoint(stub, max_retries=2)
    with pytest.raises(EndpointError, match="failed 3 times.*HTTP 500"):
        ep.next_token_logprobs(["a good film"])
    assert ep.stats.retries == 2


def test_client_errors_are_not_retried(stub):
    stub.state.fail_next, stub.state.fail_status = 1, 400
    ep = endpoint(stub, max_retries=3)
    with pytest.raises(ValueError, match="HTTP 400"):
        ep.next_token_logprobs(["a good film"])
    assert ep.stats.retries == 0


def test_slow_server_times_out_then_recovers(stub):
    stub.state.delay = 0.5
    ep = endpoint(stub, timeout=0.1, max_retries=1)
    with pytest.raises(EndpointError, match="timed out|Timeout"):
        ep.next_token_logprobs(["a good film"])
    stub.state.delay = 0.0
    assert len(ep.next_token_logprobs(["a good film"])) == 1


def test_unreachable_server():
    ep = OpenAIEndpoint("http://127.0.0.1:9", "m", max_retries=1, backoff=0.0, timeout=1, show_progress=False)
    with pytest.raises(EndpointError, match="127.0.0.1:9.*failed 2 times"):
        ep.next_token_logprobs(["hello"])


def test_response_without_logprobs_is_an_error(stub):
    stub.state.no_logprobs = True
    with pytest.raises(ValueError, match="no log-probabilities.*logits_all"):
        BlackBoxDecT(config(), endpoint(stub)).fit(sentiment_data(2, seed=5))


def test_label_word_missing_from_top_k_is_scored_exactly(stub):
    from openai_stub import logprobs_of

    stub.state.drop_tokens = {" terrible"}
    texts = sentiment_data(4, seed=6)["text"]
    ep = endpoint(stub)
    feats = RemoteBackbone(ep, TEMPLATE, WORDS).extract(texts)
    prompts = [f"{t} It was" for t in texts]
    expected = [[logprobs_of(p)[" terrible"], logprobs_of(p)[" great"]] for p in prompts]
    assert torch.allclose(feats.label_logits, torch.tensor(expected))
    forced = ep.stats.forced_requests
    assert forced == len(stub.state.forced) > 0 and set(stub.state.forced) <= {
        (p, w) for p in prompts for w in (" terrible", " great")
    }
    assert stub.state.requests["tokenize"] == 3  # each word once, and "" once (what the route adds to every text)
    again = RemoteBackbone(ep, TEMPLATE, WORDS, label_token_ids={"terrible": 1, "great": 0}).extract(texts)
    assert torch.equal(again.label_logits, feats.label_logits) and ep.stats.forced_requests == forced  # cached


def test_label_word_missing_from_top_k_floor_and_error(stub, caplog):
    stub.state.drop_tokens = {" terrible"}
    with caplog.at_level(logging.WARNING):
        clf = BlackBoxDecT(config(), endpoint(stub), missing_label_words="floor")
        report = clf.fit(sentiment_data(4, seed=6))
    assert sum(report["missing_label_words"].values()) == 9 and report["label_word_requests"] == 0
    assert "missing from the top 20" in caplog.text
    bb = RemoteBackbone(endpoint(stub), TEMPLATE, WORDS, missing="error")
    with pytest.raises(ValueError, match="' terrible' is not among the server's top"):
        bb.extract(["a good film"])
    top = {" great": -1.0, " the": -3.0}
    floor = RemoteBackbone(endpoint(stub), TEMPLATE, WORDS, missing="floor")
    assert floor.label_scores([top]).tolist() == [[-3.0, -1.0]]


def test_logit_term_alone_without_embeddings(stub):
    train, test = sentiment_data(6, seed=7), sentiment_data(10, seed=8, cue_words=2)
    clf = BlackBoxDecT(config(), endpoint(stub, embeddings=False))
    report = clf.fit(train)
    assert report["mode"] == "logits" and report["embedding_requests"] == 0 and clf.state.weights is None
    logits = clf.predict_logits(test)
    feats = clf.backbone.extract(test["text"])
    expected = torch.log_softmax(feats.label_logits - clf.state.content_free, -1)
    assert torch.allclose(logits, expected, atol=1e-6)
    assert clf.evaluate(test)["accuracy"] >= 0.9  # two cue words: the calibrated prior alone is right


def test_server_without_embeddings_names_the_fallback(stub):
    stub.state.no_embeddings = True
    with pytest.raises(ValueError, match="HTTP 404.*embeddings=False"):
        BlackBoxDecT(config(), endpoint(stub)).fit(sentiment_data(2, seed=14))


def test_per_token_embeddings_use_the_last_token(stub):
    stub.state.per_token_embeddings = True
    from openai_stub import embedding_of

    assert endpoint(stub).embed(["a good film"]) == [embedding_of("a good film")]


def test_save_load_round_trip_and_card(stub, tmp_path):
    train, test = sentiment_data(8, seed=9), sentiment_data(10, seed=10)
    clf = BlackBoxDecT(config(), endpoint(stub))
    clf.fit(train)
    clf.evaluate(test, name="stub-sentiment")
    clf.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "remote_endpoint.json").read_text())
    assert saved["endpoint"]["model"] == "stub-model" and "api_key" not in json.dumps(saved)
    loaded = BlackBoxDecT.from_pretrained(tmp_path / "adapter", show_progress=False)
    assert torch.equal(loaded.predict_logits(test), clf.predict_logits(test))
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert "black-box" in card.data.tags
    assert card.data.eval_results[0].metric_value == clf.evaluations[0]["metrics"]["accuracy"]


def test_bad_input(stub, tmp_path):
    with pytest.raises(ValueError, match="http"):
        OpenAIEndpoint("127.0.0.1:8080", "m")
    with pytest.raises(ValueError, match="top_logprobs"):
        OpenAIEndpoint(stub.url, "m", top_logprobs=0)
    with pytest.raises(TypeError, match="DecTConfig"):
        BlackBoxDecT({"template": TEMPLATE}, endpoint(stub))
    with pytest.raises(ValueError, match="demonstrations"):
        BlackBoxDecT(config(demonstrations=1), endpoint(stub))
    with pytest.raises(ValueError, match="template candidates"):
        BlackBoxDecT(config(templates=["{text_a} All in all, it was {mask}."]), endpoint(stub))
    with pytest.raises(ValueError, match="causal LM"):
        BlackBoxDecT(DecTConfig(template="{mask}: {text_a}", label_words=WORDS), endpoint(stub))
    with pytest.raises(ValueError, match="label .neutral., which label_words does not name"):
        BlackBoxDecT(config(), endpoint(stub)).fit({"text": ["a", "b"], "label": ["negative", "neutral"]})
    with pytest.raises(ValueError, match="not a saved black-box"):
        BlackBoxDecT.from_pretrained(tmp_path)
    clf = BlackBoxDecT(config(), endpoint(stub))
    with pytest.raises(ValueError, match="fit"):
        clf.save_pretrained(tmp_path / "nothing")
    clf.fit(sentiment_data(4, seed=11))
    clf.save_pretrained(tmp_path / "a")
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="safetensors"):
        BlackBoxDecT.from_pretrained(tmp_path / "a")


def test_cli_fit_predict_evaluate_through_an_endpoint(stub, tmp_path):
    import csv
    import os
    import subprocess
    import sys

    for name, data in (("train", sentiment_data(8, seed=12)), ("test", sentiment_data(10, seed=13))):
        with open(tmp_path / f"{name}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["sentence", "label"])
            writer.writerows(zip(data["text"], data["label"]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "peft_dect.cli", *args], capture_output=True, text=True, env=env, timeout=300
        )

    common = ["--endpoint", stub.url, "--model", "stub-model", "--quiet", "--json"]
    fit = cli("fit", *common, "--train", str(tmp_path / "train.csv"), "--template", TEMPLATE,
              "--label-words", "negative=terrible,positive=great", "--out", str(tmp_path / "adapter"),
              "--request-cache", str(tmp_path / "cache.jsonl"))  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    report = json.loads(fit.stdout.strip().splitlines()[-1])
    assert report["completion_requests"] == 17 and report["mode"] == "auto"
    ev = cli("evaluate", str(tmp_path / "adapter"), "--test", str(tmp_path / "test.csv"), "--quiet", "--json")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["accuracy"] >= 0.9
    pr = subprocess.run(
        [sys.executable, "-m", "peft_dect.cli", "predict", str(tmp_path / "adapter"), "--quiet", "--json"],
        input="a lovely, moving film\n", capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert pr.returncode == 0, pr.stderr
    assert json.loads(pr.stdout)["label"] == "positive"
    misplaced = cli("fit", "--train", str(tmp_path / "train.csv"), "--template", TEMPLATE, "--label-words",
                    "negative=terrible,positive=great", "--top-logprobs", "5", "--out", "y")  # fmt: skip
    assert misplaced.returncode == 2 and "--top-logprobs applies to a model behind --endpoint" in misplaced.stderr
    down = cli("fit", "--endpoint", "http://127.0.0.1:9", "--model", "m", "--train", str(tmp_path / "train.csv"),
               "--template", TEMPLATE, "--label-words", "negative=terrible,positive=great", "--out",
               str(tmp_path / "x"), "--quiet")  # fmt: skip
    assert down.returncode == 2 and "failed" in down.stderr and "server is running" in down.stderr


def test_forced_label_word_scores_are_checked(stub):
    stub.state.drop_tokens = {" terrible"}
    stub.state.ignore_bias = True
    with pytest.raises(ValueError, match="ignores logit_bias or reports biased"):
        RemoteBackbone(endpoint(stub), TEMPLATE, WORDS).extract(["a good film"])
    stub.state.ignore_bias, stub.state.biased_logprobs = False, True
    with pytest.raises(ValueError, match="ignores logit_bias or reports biased"):
        RemoteBackbone(endpoint(stub), TEMPLATE, WORDS).extract(["a dull film"])


def test_tokenize_route_bos_is_dropped(stub):
    stub.state.tokenize_bos = True
    ep = endpoint(stub)
    assert ep.tokenize(" terrible") == [1]
    assert ep.tokenize(" terrible") == [1] and ep.stats.tokenize_requests == 2  # the text and "", then cached


def test_embeddings_500_names_the_fallback(stub):
    stub.state.no_embeddings, stub.state.no_embeddings_status = True, 500
    with pytest.raises(EndpointError, match="embeddings=False"):
        endpoint(stub, max_retries=1).embed(["a good film"])


def test_first_failure_cancels_queued_requests_and_keeps_answers(stub):
    ep = endpoint(stub, max_retries=0, max_concurrency=1)
    prompts = [f"prompt {i}" for i in range(6)]
    ep.next_token_logprobs(prompts[:2])
    stub.state.fail_next, stub.state.fail_status = 1, 400
    with pytest.raises(ValueError, match="HTTP 400"):
        ep.next_token_logprobs(prompts)
    # the failed request is not counted; of the 3 queued behind it at most the one the worker had taken is sent
    assert stub.state.requests["completions"] <= 3
    ep.next_token_logprobs(prompts)
    assert stub.state.requests["completions"] == 6  # an answer received before the failure is not asked again


def test_appending_after_a_torn_line_keeps_new_records(stub, tmp_path):
    cache = tmp_path / "requests.jsonl"
    endpoint(stub, cache_file=cache).next_token_logprobs(["first prompt"])
    with open(cache, "a", encoding="utf-8") as f:
        f.write('{"k": "logprobs", "p": "torn')
    endpoint(stub, cache_file=cache).next_token_logprobs(["second prompt \u2028 with a line separator"])
    fresh = endpoint(stub, cache_file=cache)
    fresh.next_token_logprobs(["first prompt", "second prompt \u2028 with a line separator"])
    assert fresh.stats.requests == 0 and stub.state.requests["completions"] == 2


def test_round_trip_keeps_the_label_word_rule_and_follows_a_new_url(stub, tmp_path):
    stub.state.drop_tokens = {" terrible"}
    train, test = sentiment_data(6, seed=15), sentiment_data(6, seed=16)
    clf = BlackBoxDecT(config(), endpoint(stub), missing_label_words="floor")
    clf.fit(train)
    clf.save_pretrained(tmp_path / "adapter")
    with OpenAIStub() as other:  # the same model served elsewhere
        other.state.drop_tokens = {" terrible"}
        loaded = BlackBoxDecT.from_pretrained(tmp_path / "adapter", url=other.url, show_progress=False)
        assert loaded.backbone.missing == "floor" and loaded.endpoint.embedding_url == other.url + "/v1"
        assert torch.equal(loaded.predict_logits(test), clf.predict_logits(test))
        assert other.state.requests["embeddings"] > 0 and not other.state.forced


def test_settings_that_need_the_model_in_process_are_refused(stub):
    with pytest.raises(ValueError, match="cannot truncate"):
        BlackBoxDecT(config(max_length=64), endpoint(stub))
    stub.state.drop_tokens = {" terrible"}
    clf = BlackBoxDecT(DecTConfig(template=TEMPLATE, label_words={"negative": ["dull mess"], "positive": ["great"]},
                                  multi_token="error"), endpoint(stub))  # fmt: skip
    with pytest.raises(ValueError, match="2 tokens on the served model"):
        clf.fit(sentiment_data(2, seed=17))


def test_exact_multi_token_rule_is_refused_by_name_over_the_black_box(stub):
    words = {"negative": ["dull mess"], "positive": ["great"]}
    clf = BlackBoxDecT(DecTConfig(template=TEMPLATE, label_words=words), endpoint(stub))  # multi_token="exact"
    with pytest.raises(ValueError, match=r"multi_token='exact' cannot score it whole.*multi_token='first'"):
        clf.fit(sentiment_data(2, seed=17))


def test_black_box_calibration_sets_rejection_and_suggest_save_and_load(stub, tmp_path):
    train, test = sentiment_data(8, seed=21), sentiment_data(10, seed=22)
    clf = BlackBoxDecT(config(reject_label="unknown"), endpoint(stub))
    report = clf.fit(train)
    assert report["temperature"] > 0 and clf.calibration.heldout == len(train["text"])
    logits = clf.predict_logits(test)
    np.testing.assert_allclose(clf.predict_proba(test), torch.softmax(logits / clf.temperature, -1).numpy(), atol=1e-6)
    sets = clf.predict_set(test, alpha=0.1)
    assert len(sets) == 20 and all(set(s) <= set(WORDS) for s in sets) and any(sets)
    assert set(clf.predict(test, reject=True)) <= {"negative", "positive", "unknown"}
    pool = test["text"][:6] + train["text"][:2]
    assert all(i < 6 for i in clf.suggest(pool, 3))  # training texts are not suggested
    clf.save_pretrained(tmp_path / "adapter")
    loaded = BlackBoxDecT.from_pretrained(tmp_path / "adapter", show_progress=False)
    assert loaded.calibration == clf.calibration and loaded.predict_set(test, alpha=0.1) == sets
    assert "temperature" in (tmp_path / "adapter" / "README.md").read_text()


def test_multi_label_black_box_fit_predicts_label_sets_and_saves(stub, tmp_path):
    rng = random.Random(3)

    def rows(n):
        texts, labels = [], []
        for _ in range(n):
            present = [c for c in ("negative", "positive") if rng.random() < 0.5]
            cues = [rng.choice(sorted(NEGATIVE if c == "negative" else POSITIVE)) for c in present]
            words = rng.sample(FILLER, 5) + cues
            rng.shuffle(words)
            texts.append(" ".join(words))
            labels.append(present)
        return {"text": texts, "labels": labels}

    train, test = rows(32), rows(40)
    clf = BlackBoxDecT(config(multi_label=True, label_column="labels"), endpoint(stub))
    report = clf.fit(train)
    assert report["multi_label"] and len(clf.config.thresholds) == 2
    predicted = clf.predict(test["text"])
    assert all(isinstance(p, list) for p in predicted)
    assert clf.evaluate(test)["micro_f1"] >= 0.8
    clf.save_pretrained(tmp_path / "bb")
    loaded = BlackBoxDecT.from_pretrained(tmp_path / "bb", url=stub.url, show_progress=False)
    assert loaded.config.multi_label and loaded.predict(test["text"]) == predicted
