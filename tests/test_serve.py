"""`peft-dect serve`'s app on a real uvicorn (127.0.0.1, an ephemeral port): the Inference API format, the extras,
adapter listing and hot-adding, limits, the token and the counters."""

import asyncio
import concurrent.futures
import logging
import time

import numpy as np
import pytest
from conftest import sentiment_data
from serve_util import LiveServer, base_model, fit_adapter

from peft_dect.serving import AdapterRegistry, MicroBatcher, QueueFull, ServeSettings, create_app


TEXTS = sentiment_data(5, 9)["sentence"]
KEY = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, bpe_tokenizer):
    """Two adapters of the tiny Llama saved to folders, and their in-process probabilities on TEXTS."""
    root = tmp_path_factory.mktemp("adapters")
    expected = {}
    for name, flip in (("sst", False), ("flipped", True)):
        model = fit_adapter(bpe_tokenizer, root / name, flip=flip)
        expected[name] = model.predict_proba(TEXTS, tokenizer=bpe_tokenizer)
        expected[name + ".classes"] = model.active_peft_config.classes
        expected[name + ".model"] = model
    return root, expected


def make_registry(tokenizer, root, names=("sst", "flipped")):
    registry = AdapterRegistry(base_model(tokenizer), tokenizer)
    for name in names:
        registry.add(str(root / name))
    return registry


@pytest.fixture(scope="module")
def live(adapters, bpe_tokenizer):
    root, _ = adapters
    app = create_app(make_registry(bpe_tokenizer, root), ServeSettings(max_wait=0.05, max_body_bytes=20_000))
    with LiveServer(app) as server:
        yield server


def matrix(rows, classes):
    return np.array([[next(s["score"] for s in row if s["label"] == c) for c in classes] for row in rows])


def test_classify_answers_the_inference_api_format_equal_to_predict_proba(live, adapters):
    _, expected = adapters
    for name in ("sst", "flipped"):
        status, _, body = live.request("POST", f"/models/{name}", {"inputs": TEXTS})
        assert status == 200
        assert all(set(s) == {"label", "score"} for row in body for s in row)
        np.testing.assert_allclose(matrix(body, expected[name + ".classes"]), expected[name], atol=1e-6)
    status, _, body = live.request("POST", "/models/sst", {"inputs": TEXTS[0], "parameters": {"top_k": 1}})
    best = int(expected["sst"][0].argmax())
    assert status == 200 and len(body) == 1 and body[0][0]["label"] == expected["sst.classes"][best]


def test_reject_and_prediction_sets_are_extras_on_request(live, adapters, bpe_tokenizer):
    _, expected = adapters
    model = expected["sst.model"]
    params = {"reject": True, "predict_set": 0.1}
    status, _, body = live.request("POST", "/models/sst", {"inputs": TEXTS + ["zzzz"], "parameters": params})
    assert status == 200
    assert [row["label"] for row in body] == model.predict(TEXTS + ["zzzz"], tokenizer=bpe_tokenizer, reject=True)
    assert [row["set"] for row in body] == model.predict_set(TEXTS + ["zzzz"], tokenizer=bpe_tokenizer, alpha=0.1)
    scores = model.unknown_score(TEXTS, tokenizer=bpe_tokenizer)
    np.testing.assert_allclose([row["unknown_score"] for row in body[:-1]], scores, atol=1e-5)
    status, _, body = live.request("POST", "/models/sst", {"inputs": TEXTS, "parameters": {"reject": -1e9}})
    assert status == 200 and {row["label"] for row in body} == {"unknown"}


def test_models_lists_classes_templates_and_health_answers(live):
    status, _, body = live.request("GET", "/models")
    assert status == 200
    names = {a["name"]: a for a in body["adapters"]}
    assert set(names) == {"sst", "flipped"}
    assert names["sst"]["classes"] == ["negative", "positive"] and "{mask}" in names["sst"]["template"]
    assert names["sst"]["calibrated"] is True
    (metric,) = [m for m in names["sst"]["metrics"] if m["metric"] == "accuracy"]
    assert metric["dataset"] == "synthetic-sentiment" and metric["split"] == "test" and 0 <= metric["value"] <= 1
    status, _, body = live.request("GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["adapters"] == 2


def test_extras_an_adapter_cannot_give_are_422_naming_the_fix(adapters, bpe_tokenizer, tmp_path):
    root, _ = adapters
    fit_adapter(bpe_tokenizer, tmp_path / "faithful", mode="faithful")  # no held-out predictions: no calibration
    registry = make_registry(bpe_tokenizer, root, names=("sst",))
    registry.add(str(tmp_path / "faithful"))
    with (
        LiveServer(create_app(registry, ServeSettings(max_wait=0.05))) as live,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        bad = pool.submit(live.request, "POST", "/models/faithful", {"inputs": TEXTS, "parameters": {"reject": True}})
        good = pool.submit(live.request, "POST", "/models/faithful", {"inputs": TEXTS})
        status, _, body = bad.result(timeout=30)
        assert status == 422 and "needs held-out predictions" in body["error"]
        assert good.result(timeout=30)[0] == 200  # a query's own bad option never fails the batch it shares


def test_unknown_adapter_is_404_naming_the_known_ones(live):
    status, _, body = live.request("POST", "/models/nope", {"inputs": "x"})
    assert status == 404 and "nope" in body["error"] and "sst" in body["error"] and "flipped" in body["error"]


@pytest.mark.parametrize(
    "payload",
    [{"inputs": 3}, {"inputs": [1, 2]}, {"inputs": ["ok", None]}, {}, {"inputs": []}, {"inputs": {"text": "x"}}],
)
def test_inputs_that_are_not_texts_are_422_naming_the_field(live, payload):
    status, _, body = live.request("POST", "/models/sst", payload)
    assert status == 422 and "inputs" in body["error"] and "inputs" in body["fields"][0]


def test_bad_parameters_and_malformed_json_are_422(live):
    status, _, body = live.request("POST", "/models/sst", {"inputs": "x", "parameters": {"top_k": 0}})
    assert status == 422 and "parameters.top_k" in body["error"]
    status, _, body = live.request("POST", "/models/sst", {"inputs": "x", "parameters": {"temperature": 2}})
    assert status == 422 and "parameters.temperature" in body["error"]
    status, _, body = live.request("POST", "/models/sst", b'{"inputs": ["unterminated')
    assert status == 422 and "JSON" in body["error"]


def test_bodies_over_the_limit_are_413(live):
    status, _, body = live.request("POST", "/models/sst", {"inputs": ["word " * 5000]})
    assert status == 413 and "20000 bytes" in body["error"]
    status, _, body = live.request("POST", "/models/sst", {"inputs": ["a"] * 300})
    assert status == 413 and "at most 256" in body["error"]


def test_concurrent_requests_share_batches_and_metrics_count_them(live, adapters):
    _, expected = adapters
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(live.request, "POST", "/models/sst", {"inputs": [t]}) for t in TEXTS for _ in range(2)]
        answers = [j.result(timeout=60) for j in jobs]
    for (status, _, body), i in zip(answers, [i for i in range(len(TEXTS)) for _ in range(2)]):
        assert status == 200
        np.testing.assert_allclose(matrix(body, expected["sst.classes"])[0], expected["sst"][i], atol=1e-6)
    status, _, text = live.request("GET", "/metrics")
    assert status == 200
    assert 'peft_dect_requests_total{adapter="sst",status="200"}' in text
    assert "peft_dect_batch_size_count" in text and "peft_dect_request_seconds_bucket" in text
    assert (
        live.server.config.app.app.state.batcher.stats.batches < live.server.config.app.app.state.batcher.stats.texts
    )


OTHER_TEMPLATE = "{text_a} All in all, it was {mask}."


def test_adapters_of_one_template_share_one_backbone_batch(adapters, bpe_tokenizer, tmp_path):
    """'sst' and 'flipped' (one template) and 'other' (another) requested at once: the model's body runs one batch
    over the texts of the pair and one over those of 'other', even with a feature cache that keeps nothing."""
    root, expected = adapters
    models = {"sst": expected["sst.model"], "flipped": expected["flipped.model"]}
    models["other"] = fit_adapter(bpe_tokenizer, tmp_path / "other", template=OTHER_TEMPLATE)
    registry = AdapterRegistry(base_model(bpe_tokenizer), bpe_tokenizer, cache_max_bytes=1)
    for source in (root / "sst", root / "flipped", tmp_path / "other"):
        registry.add(str(source))
    assert registry.group_of("sst") == registry.group_of("flipped") != registry.group_of("other")
    texts = {name: sentiment_data(1, seed)["sentence"] for name, seed in (("sst", 31), ("flipped", 32), ("other", 33))}
    assert len({t for ts in texts.values() for t in ts}) == 6  # no text is asked twice
    rows = []  # inputs per forward of the model's body

    def count(module, args, kwargs):
        given = kwargs.get("input_ids", kwargs.get("inputs_embeds", args[0] if args else None))
        rows.append(given.shape[0])

    body = registry.peft_model.base_model.backbone(bpe_tokenizer, adapter_name="sst").head_split[0]
    hook = body.register_forward_pre_hook(count, with_kwargs=True)
    app = create_app(registry, ServeSettings(max_wait=2.0))  # room for a busy machine's request parsing
    try:
        with LiveServer(app) as live, concurrent.futures.ThreadPoolExecutor(3) as pool:
            jobs = {n: pool.submit(live.request, "POST", f"/models/{n}", {"inputs": ts}) for n, ts in texts.items()}
            answers = {n: job.result(timeout=60) for n, job in jobs.items()}
            stats = live.server.config.app.app.state.batcher.stats
    finally:
        hook.remove()
    assert sorted(rows) == [2, 4]  # one body pass over the pair's 4 texts, one over the other's 2
    assert (stats.batches, sorted(stats.sizes), stats.adapters) == (2, [2, 4], 3)
    for name, (status, _, body) in answers.items():
        assert status == 200
        model = models[name]
        want = model.predict_proba(texts[name], tokenizer=bpe_tokenizer)
        np.testing.assert_allclose(matrix(body, model.active_peft_config.classes), want, atol=1e-6)


def test_hot_add_loads_an_adapter_and_refuses_one_for_another_base_model(adapters, bpe_tokenizer, tmp_path):
    from peft import get_peft_model
    from test_hub import wider_llama

    from peft_dect import DecTConfig

    root, expected = adapters
    other = get_peft_model(
        wider_llama(bpe_tokenizer),
        DecTConfig(template="{text_a} It was {mask}.", label_words={"a": ["bad"], "b": ["great"]}),
    )
    other.save_pretrained(tmp_path / "wide")
    app = create_app(make_registry(bpe_tokenizer, root, names=("sst",)), ServeSettings(api_key=KEY))
    auth = {"Authorization": f"Bearer {KEY}"}
    with LiveServer(app) as live:
        status, _, body = live.request("POST", "/admin/adapters", {"source": str(root / "flipped")})
        assert status == 401
        status, _, body = live.request("POST", "/admin/adapters", {"source": str(root / "flipped")}, auth)
        assert status == 201 and body["name"] == "flipped"
        status, _, body = live.request("POST", "/models/flipped", {"inputs": TEXTS}, auth)
        np.testing.assert_allclose(matrix(body, expected["flipped.classes"]), expected["flipped"], atol=1e-6)
        status, _, body = live.request("POST", "/admin/adapters", {"source": str(tmp_path / "wide")}, auth)
        assert status == 422 and "hidden size 48" in body["error"]
        status, _, body = live.request("POST", "/admin/adapters", {"source": str(root / "sst")}, auth)
        assert status == 409 and "already served" in body["error"]
        status, _, body = live.request("POST", "/admin/adapters", {"source": str(tmp_path / "missing")}, auth)
        assert status == 422
        status, _, body = live.request("POST", "/models/sst", {"inputs": TEXTS}, auth)  # still serving
        assert status == 200
        np.testing.assert_allclose(matrix(body, expected["sst.classes"]), expected["sst"], atol=1e-6)
        status, _, body = live.request("GET", "/models", headers=auth)
        assert [a["name"] for a in body["adapters"]] == ["sst", "flipped"]


def test_a_token_guards_every_endpoint_but_health_and_is_never_logged(adapters, bpe_tokenizer, caplog):
    root, _ = adapters
    app = create_app(make_registry(bpe_tokenizer, root, names=("sst",)), ServeSettings(api_key=KEY))
    caplog.set_level(logging.DEBUG)
    with LiveServer(app) as live:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": KEY}):
            status, head, body = live.request("POST", "/models/sst", {"inputs": "x"}, headers)
            assert status == 401 and head.get("www-authenticate") == "Bearer" and "bearer token" in body["error"]
            assert live.request("GET", "/models", headers=headers)[0] == 401
            assert live.request("GET", "/metrics", headers=headers)[0] == 401
        assert live.request("GET", "/health")[0] == 200
        assert live.request("POST", "/models/sst", {"inputs": "x"}, {"Authorization": f"Bearer {KEY}"})[0] == 200
    assert KEY not in caplog.text and "wrong-token" not in caplog.text
    assert "unauthorized" in caplog.text


def test_a_full_queue_is_503_with_retry_after(adapters, bpe_tokenizer):
    root, _ = adapters
    app = create_app(make_registry(bpe_tokenizer, root, names=("sst",)), ServeSettings(max_queue=2, max_wait=1.0))
    with LiveServer(app) as live, concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(live.request, "POST", "/models/sst", {"inputs": ["a", "b"]})
        deadline = time.monotonic() + 10
        while live.request("GET", "/health")[2]["queued_texts"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status, head, body = live.request("POST", "/models/sst", {"inputs": "c"})
        assert status == 503 and head["retry-after"] == "1" and "queued" in body["error"]
        assert first.result(timeout=30)[0] == 200


def test_a_request_over_the_timeout_is_504_and_the_server_goes_on(adapters, bpe_tokenizer):
    root, _ = adapters
    registry = make_registry(bpe_tokenizer, root, names=("sst",))
    slow = registry.run_group

    def run_group(queries):
        if any(q.texts == ["slow"] for qs in queries.values() for q in qs):
            time.sleep(1.5)
        return slow(queries)

    registry.run_group = run_group
    app = create_app(registry, ServeSettings(timeout=0.5))
    with LiveServer(app) as live:
        status, _, body = live.request("POST", "/models/sst", {"inputs": "slow"})
        assert status == 504 and "0.5 s" in body["error"]
        time.sleep(1.2)
        assert live.request("POST", "/models/sst", {"inputs": "fine"})[0] == 200


def record_calls(calls):
    """A batch function that records its calls and answers 'adapter:query'."""

    def run(queries):
        calls.append({adapter: list(qs) for adapter, qs in queries.items()})
        time.sleep(0.05)
        return {adapter: [f"{adapter}:{q}" for q in qs] for adapter, qs in queries.items()}

    return run


def test_the_batcher_groups_per_adapter_bounds_its_queue_and_drops_abandoned_requests():
    calls = []
    run = record_calls(calls)

    async def main():
        batcher = MicroBatcher(run, max_batch=4, max_wait=0.05, max_queue=6)
        batcher.start()
        jobs = [asyncio.create_task(batcher.submit(a, q, 1)) for a, q in [("a", 1), ("b", 2), ("a", 3), ("a", 4)]]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit("a", 5, 3)
        gone = asyncio.create_task(batcher.submit("b", 6, 1))
        await asyncio.sleep(0)
        gone.cancel()
        results = await asyncio.gather(*jobs)
        await batcher.stop()
        return results

    assert asyncio.run(main()) == ["a:1", "b:2", "a:3", "a:4"]
    assert calls == [{"a": [1, 3, 4]}, {"b": [2]}]


def test_the_batcher_batches_the_adapters_of_one_group_together():
    calls = []
    groups = {"a": "t1", "b": "t1", "c": "t2"}

    async def main(enabled):
        batcher = MicroBatcher(record_calls(calls), group_of=groups.get, max_batch=3, max_wait=0.05, enabled=enabled)
        batcher.start()
        plan = [("a", 1), ("c", 2), ("b", 3), ("a", 4), ("b", 5)]
        results = await asyncio.gather(*[batcher.submit(a, q, 1) for a, q in plan])
        await batcher.stop()
        return results, batcher.stats

    results, stats = asyncio.run(main(True))
    assert results == ["a:1", "c:2", "b:3", "a:4", "b:5"]
    assert calls == [{"a": [1, 4], "b": [3]}, {"c": [2]}, {"b": [5]}]  # oldest first, at most max_batch texts
    assert (stats.batches, stats.texts, stats.adapters) == (3, 5, 4)
    calls.clear()
    results, stats = asyncio.run(main(False))  # the baseline: one query per batch
    assert results == ["a:1", "c:2", "b:3", "a:4", "b:5"] and stats.batches == 5
    assert all(len(call) == 1 and len(next(iter(call.values()))) == 1 for call in calls)


def test_the_batcher_answers_every_query_when_the_batch_function_fails_or_answers_short():
    async def main(run):
        batcher = MicroBatcher(run, group_of=lambda adapter: 0, max_wait=0.05)
        batcher.start()
        results = await asyncio.gather(
            *[batcher.submit(a, q, 1) for a, q in [("a", 1), ("b", 2)]], return_exceptions=True
        )
        await batcher.stop()
        return results

    def broken(queries):
        raise OSError("disk")

    assert [type(r) for r in asyncio.run(main(broken))] == [OSError, OSError]
    results = asyncio.run(main(lambda queries: {"a": ["a:1"]}))
    assert results[0] == "a:1" and isinstance(results[1], RuntimeError) and "0 answers for 1" in str(results[1])


def test_settings_refuse_bad_values_naming_them():
    with pytest.raises(ValueError, match="max_queue must be a positive integer"):
        ServeSettings(max_queue=0)
    with pytest.raises(ValueError, match="api_key must be a string of at least 8"):
        ServeSettings(api_key="short")
    with pytest.raises(ValueError, match="max_wait must be a number of seconds"):
        MicroBatcher(lambda queries: queries, max_wait=-1)
    with pytest.raises(TypeError, match="must be callables"):
        MicroBatcher(lambda queries: queries, group_of="template")
    with pytest.raises(TypeError, match="base model"):
        AdapterRegistry(type("P", (__import__("peft").PeftModel,), {"__init__": lambda self: None})(), None)
