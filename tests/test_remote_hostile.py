"""The black-box backend against hostile or broken servers and files: redirects, keys, torn caches, non-finite
answers, slow drips, wrong shapes, oversized answers. Every server is a local stub on 127.0.0.1."""

from __future__ import annotations

import json
import logging

import pytest
from openai_stub import OpenAIStub, logprobs_of

from peft_dect.remote import EndpointError, OpenAIEndpoint


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


def once(answer):
    """A hostile behaviour for the first request only: `answer(handler, body)`, then the stub's own answers."""
    calls = []

    def hostile(handler, body):
        calls.append(handler.path)
        if len(calls) > 1:
            return False
        answer(handler, body)
        return True

    return hostile


def raw_json(text: str, status: int = 200):
    return lambda handler, body: handler.send_raw(status, text.encode())


def choice(top: dict) -> dict:
    return {"index": 0, "text": "x", "logprobs": {"tokens": ["x"], "token_logprobs": [-1.0], "top_logprobs": [top]}}


@pytest.mark.parametrize(
    "answer",
    [
        json.dumps({"choices": [choice({" great": float("nan"), " the": -2.0})]}),
        json.dumps({"choices": [choice({" great": float("-inf"), " the": -2.0})]}),
        json.dumps({"choices": [choice({" great": 1e999})]}),
        json.dumps({"choices": [choice({" great": 3.0})]}),  # a probability above 1
    ],
)
def test_non_finite_log_probabilities_are_refused_before_caching(stub, tmp_path, answer):
    cache = tmp_path / "requests.jsonl"
    stub.state.hostile = once(raw_json(answer))
    with pytest.raises(ValueError, match=rf"{stub.url}/v1/completions answered .*log-probability .* for token"):
        endpoint(stub, cache_file=cache).next_token_logprobs(["a good film"])
    again = endpoint(stub, cache_file=cache)  # the server has recovered: nothing bad was kept
    assert again.next_token_logprobs(["a good film"])[0] == pytest.approx(logprobs_of("a good film"))
    assert again.stats.completion_requests == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e300])
def test_non_finite_embeddings_are_refused_before_caching(stub, tmp_path, bad):
    cache = tmp_path / "requests.jsonl"
    text = json.dumps({"data": [{"index": 0, "embedding": [0.5, bad, 1.0]}]})
    stub.state.hostile = once(raw_json(text))
    with pytest.raises(ValueError, match=rf"{stub.url}/v1/embeddings answered a non-finite"):
        endpoint(stub, cache_file=cache).embed(["a good film"])
    assert len(endpoint(stub, cache_file=cache).embed(["a good film"])[0]) == 32


def test_non_finite_forced_log_probability_is_refused(stub):
    stub.state.hostile = lambda handler, body: (
        bool(body.get("logit_bias"))
        and raw_json('{"choices": [{"index": 0, "logprobs": {"token_logprobs": [-Infinity]}}]}')(handler, body) is None
    )
    with pytest.raises(ValueError, match="gave no finite log-probability"):
        endpoint(stub).forced_logprobs([("a good film", 1)])


@pytest.mark.parametrize(
    "answer",
    ["[1, 2]", '"text"', "null", '{"choices": ["x"]}', '{"choices": [{"logprobs": ["x"]}]}', '{"choices": {"0": 1}}'],
)
def test_completions_of_the_wrong_shape_are_named(stub, answer):
    stub.state.hostile = raw_json(answer)
    with pytest.raises(ValueError, match=rf"{stub.url}/v1/completions"):
        endpoint(stub).next_token_logprobs(["a good film"])
    with pytest.raises(ValueError, match=rf"{stub.url}/v1/completions"):
        endpoint(stub).forced_logprobs([("a good film", 1)])


@pytest.mark.parametrize("answer", ["[1, 2]", '{"data": ["x"]}', '{"data": [{"embedding": "x"}]}', '{"data": 3}'])
def test_embeddings_of_the_wrong_shape_are_named(stub, answer):
    stub.state.hostile = raw_json(answer)
    with pytest.raises(ValueError, match=rf"{stub.url}/v1/embeddings"):
        endpoint(stub).embed(["a good film"])


def test_tokenize_answer_that_is_not_an_object(stub):
    stub.state.hostile = raw_json("[1, 2]")
    with pytest.raises(ValueError, match="Could not tokenize"):
        endpoint(stub).tokenize(" great")


def test_error_object_in_a_200_is_quoted_and_retried_when_transient(stub):
    stub.state.hostile = once(raw_json('{"error": {"message": "model is loading", "code": 503}}'))
    ep = endpoint(stub, max_retries=2)
    assert len(ep.next_token_logprobs(["a good film"])) == 1 and ep.stats.retries == 1
    stub.state.hostile = raw_json('{"error": {"message": "prompt is longer than the context", "type": "invalid"}}')
    with pytest.raises(ValueError, match="answered an error: prompt is longer than the context") as err:
        endpoint(stub, max_retries=2).next_token_logprobs(["a good film"])
    assert "batch_size" not in str(err.value)
    stub.state.hostile = raw_json('{"error": "overloaded", "code": "429"}')
    with pytest.raises(EndpointError, match="failed 2 times.*overloaded"):
        endpoint(stub, max_retries=1).next_token_logprobs(["a good film"])


def test_redirect_to_another_origin_is_refused_and_keeps_the_key(stub):
    with OpenAIStub() as other:  # another port: another origin
        stub.state.hostile = lambda handler, body: handler.redirect(other.url + handler.path) is None
        ep = endpoint(stub, api_key="secret-key")
        with pytest.raises(ValueError, match=rf"{stub.url}/v1/completions redirected .* to {other.url}/v1/compl"):
            ep.next_token_logprobs(["a good film"])
        assert other.state.authorizations == [] and stub.state.authorizations == ["Bearer secret-key"]


@pytest.mark.parametrize("status", [302, 307, 308])
def test_redirect_within_the_origin_resends_the_request(stub, status):
    stub.state.hostile = lambda handler, body: (
        handler.path.startswith("/old") and (handler.redirect(handler.path[len("/old") :], status) is None)
    )
    ep = OpenAIEndpoint(stub.url + "/old", "stub-model", api_key="k", show_progress=False)
    assert ep.next_token_logprobs(["a good film"])[0] == pytest.approx(logprobs_of("a good film"))
    assert stub.state.authorizations == ["Bearer k", "Bearer k"] and stub.state.requests["completions"] == 1


def test_timeout_bounds_the_whole_request_of_a_dripping_server(stub):
    import time

    stub.state.hostile = lambda handler, body: handler.drip({"choices": []}, pause=0.2) is None
    ep = endpoint(stub, timeout=1.0, max_retries=0)
    start = time.monotonic()
    with pytest.raises(EndpointError, match="no complete answer within timeout=1 s"):
        ep.next_token_logprobs(["a good film"])
    assert time.monotonic() - start < 2.0


def test_answers_larger_than_the_cap_are_refused(stub):
    big = json.dumps({"data": [{"index": 0, "embedding": [0.25] * 5000}]})
    stub.state.hostile = raw_json(big)
    with pytest.raises(ValueError, match="more than max_response_bytes=10000 bytes"):
        endpoint(stub, max_response_bytes=10_000).embed(["a good film"])
    assert len(endpoint(stub).embed(["a good film"])[0]) == 5000  # the default cap is far larger

    def chunked(handler, body):  # no Content-Length: the cap is checked while reading
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        data = big.encode()
        for i in range(0, len(data), 4096):
            part = data[i : i + 4096]
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        handler.wfile.write(b"0\r\n\r\n")
        return True

    stub.state.hostile = chunked
    with pytest.raises(ValueError, match="more than max_response_bytes=10000 bytes"):
        endpoint(stub, max_response_bytes=10_000).embed(["a good film"])
    assert len(endpoint(stub).embed(["a good film"])[0]) == 5000
    with pytest.raises(ValueError, match="max_response_bytes must be an integer >= 1"):
        endpoint(stub, max_response_bytes=0)


@pytest.fixture
def adapter(stub, tmp_path):
    from test_remote import config, sentiment_data

    from peft_dect.remote import BlackBoxDecT

    clf = BlackBoxDecT(config(), endpoint(stub, embeddings=False, api_key="", cache_file=tmp_path / "mine.jsonl"))
    clf.fit(sentiment_data(4, seed=0))
    clf.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_environment_key_is_not_sent_to_the_url_saved_in_an_adapter(stub, adapter, monkeypatch, caplog):
    from peft_dect.remote import BlackBoxDecT

    saved = json.loads((adapter / "remote_endpoint.json").read_text())["endpoint"]
    assert "cache_file" not in saved and "api_key" not in saved
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    stub.state.authorizations.clear()
    with caplog.at_level(logging.WARNING):
        BlackBoxDecT.from_pretrained(adapter, show_progress=False).predict(["a new text"])
        BlackBoxDecT.from_pretrained(adapter, api_key=None, show_progress=False).predict(["a 2nd text"])
    assert stub.state.authorizations == [None, None] and "OPENAI_API_KEY is not sent" in caplog.text
    BlackBoxDecT.from_pretrained(adapter, url=stub.url, show_progress=False).predict(["another text"])
    BlackBoxDecT.from_pretrained(adapter, api_key="given", show_progress=False).predict(["a third text"])
    assert stub.state.authorizations == [None, None, "Bearer env-key", "Bearer given"]


def test_cache_file_and_key_in_a_saved_adapter_are_ignored(stub, adapter, tmp_path, monkeypatch, caplog):
    from peft_dect.remote import BlackBoxDecT

    path = adapter / "remote_endpoint.json"
    saved = json.loads(path.read_text())
    planted = tmp_path / "elsewhere" / "planted.jsonl"
    saved["endpoint"] |= {"cache_file": str(planted), "api_key": "planted-key"}
    path.write_text(json.dumps(saved))
    stub.state.authorizations.clear()
    with caplog.at_level(logging.WARNING):
        loaded = BlackBoxDecT.from_pretrained(adapter, show_progress=False)
        loaded.predict(["a new text"])
    assert not planted.exists() and loaded.endpoint.cache.path is None and stub.state.authorizations == [None]
    assert "Ignoring api_key, cache_file" in caplog.text
    mine = tmp_path / "chosen.jsonl"
    BlackBoxDecT.from_pretrained(adapter, cache_file=mine, show_progress=False).predict(["a new text"])
    assert mine.exists()
    saved["endpoint"] = ["not", "settings"]
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="not a saved black-box"):
        BlackBoxDecT.from_pretrained(adapter)


# ---------------------------------------------------------------- hostile servers, more cases
def test_html_with_the_wrong_content_type_and_non_utf8_bodies_are_named(stub):
    stub.state.hostile = lambda handler, body: handler.send_raw(200, b"<html>proxy login</html>", "text/html") is None
    with pytest.raises(ValueError, match="did not answer JSON: b'<html>proxy login"):
        endpoint(stub).next_token_logprobs(["a good film"])
    stub.state.hostile = raw_json('{"choices": [1, 2')  # truncated JSON, whole as announced
    with pytest.raises(ValueError, match="did not answer JSON"):
        endpoint(stub).next_token_logprobs(["a good film"])
    stub.state.hostile = lambda handler, body: handler.send_raw(200, b'{"choices": "\xff\xfe"}') is None
    with pytest.raises(ValueError, match="did not answer JSON"):
        endpoint(stub).next_token_logprobs(["a good film"])


def test_deeply_nested_json_is_an_error_not_a_crash(stub):
    stub.state.hostile = raw_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="did not answer JSON"):
        endpoint(stub).next_token_logprobs(["a good film"])


def test_log_probabilities_beyond_float32_are_refused(stub):
    stub.state.hostile = raw_json(json.dumps({"choices": [choice({" great": -1e300, " the": -2.0})]}))
    with pytest.raises(ValueError, match="out-of-range log-probability -1e"):
        endpoint(stub).next_token_logprobs(["a good film"])


@pytest.mark.parametrize("indexes", [[0, 0], [-1, 0], [1, 2], [0, None], [0, True], [0.0, 1.0]])
def test_indexes_that_do_not_name_each_input_once_are_refused(stub, indexes):
    data = [{"index": i, "embedding": [1.0, 2.0]} for i in indexes]
    stub.state.hostile = raw_json(json.dumps({"data": data}))
    with pytest.raises(ValueError, match=r"with indexes .* each of 0\.\.1 must occur once"):
        endpoint(stub, embedding_batch_size=2).embed(["first", "second"])


def test_indexes_put_answers_in_input_order(stub):
    data = [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}]
    stub.state.hostile = raw_json(json.dumps({"data": data}))
    assert endpoint(stub, embedding_batch_size=2).embed(["first", "second"]) == [[1.0], [2.0]]


def test_embedding_width_that_changes_between_requests_is_refused_before_caching(stub, tmp_path):
    cache = tmp_path / "requests.jsonl"
    ep = endpoint(stub, cache_file=cache)
    ep.embed(["first text"])
    stub.state.hostile = raw_json(json.dumps({"data": [{"index": 0, "embedding": [1.0, 2.0]}]}))
    with pytest.raises(ValueError, match="embeddings of width 2, after width 32"):
        ep.embed(["second text"])
    stub.state.hostile = None
    assert len(endpoint(stub, cache_file=cache).embed(["second text"])[0]) == 32


def test_empty_200_and_a_connection_cut_mid_body_are_retried(stub):
    stub.state.hostile = once(lambda handler, body: handler.send_raw(200, b""))
    ep = endpoint(stub, max_retries=1)
    assert len(ep.next_token_logprobs(["a good film"])) == 1 and ep.stats.retries == 1
    stub.state.hostile = once(lambda handler, body: handler.send_raw(200, b'{"choices": [', length=5000))
    ep = endpoint(stub, max_retries=1)
    assert len(ep.next_token_logprobs(["a good film"])) == 1 and ep.stats.retries == 1

    def hang_up(handler, body):
        handler.close_connection = True
        handler.connection.shutdown(2)

    stub.state.hostile = once(hang_up)
    ep = endpoint(stub, max_retries=1)
    assert len(ep.next_token_logprobs(["a good film"])) == 1 and ep.stats.retries == 1
    stub.state.hostile = lambda handler, body: handler.send_raw(200, b"  \n")
    with pytest.raises(EndpointError, match="failed 2 times, last with an empty answer"):
        endpoint(stub, max_retries=1).next_token_logprobs(["a good film"])


def test_timeout_bounds_slow_headers_too(stub):
    import time

    def slow_headers(handler, body):
        handler.wfile.write(b"HTTP/1.0 200 OK\r\n")
        for _ in range(30):
            handler.wfile.write(b"X: y\r\n")
            handler.wfile.flush()
            time.sleep(0.1)
        return True

    stub.state.hostile = slow_headers
    start = time.monotonic()
    with pytest.raises(EndpointError, match="no complete answer within timeout=0.5 s"):
        endpoint(stub, timeout=0.5, max_retries=0).next_token_logprobs(["a good film"])
    assert time.monotonic() - start < 1.5


def test_redirect_loop_ends(stub):
    stub.state.hostile = lambda handler, body: handler.redirect(handler.path, 307) is None
    with pytest.raises(ValueError, match="redirect"):
        endpoint(stub).next_token_logprobs(["a good film"])


def test_tokenize_answers_that_are_not_token_ids(stub):
    for tokens in ([True], [-3], [1.5]):
        stub.state.hostile = raw_json(json.dumps({"tokens": tokens}))
        with pytest.raises(ValueError, match="Could not tokenize"):
            endpoint(stub).tokenize(" great")


def test_bad_values_in_a_cache_file_are_asked_again(stub, tmp_path, caplog):
    cache = tmp_path / "requests.jsonl"
    endpoint(stub, cache_file=cache).next_token_logprobs(["kept prompt"])
    with open(cache, "a", encoding="utf-8") as f:  # as an older version cached a broken server's answers
        f.write(json.dumps({"k": "logprobs", "p": "nan prompt", "v": {" great": float("nan")}}) + "\n")
        f.write(json.dumps({"k": "embedding", "p": "nan prompt", "v": [1.0, float("inf")]}) + "\n")
        f.write(json.dumps({"k": "logprobs", "p": "odd prompt", "v": ["not", "a", "dict"]}) + "\n")
        f.write(json.dumps({"k": ["x"], "p": "odd prompt", "v": 1}) + "\n")
    with caplog.at_level(logging.WARNING):
        fresh = endpoint(stub, cache_file=cache)
    assert "Skipping 4 unreadable line(s)" in caplog.text
    out = fresh.next_token_logprobs(["kept prompt", "nan prompt", "odd prompt"])
    assert fresh.stats.completion_requests == 2 and out[1] == pytest.approx(logprobs_of("nan prompt"))
    assert len(fresh.embed(["nan prompt"])[0]) == 32


def test_redirect_to_another_scheme_is_named(stub):
    stub.state.hostile = lambda handler, body: handler.redirect("file:///etc/passwd") is None
    with pytest.raises(ValueError, match="redirected"):
        endpoint(stub).next_token_logprobs(["a good film"])


def test_api_key_with_control_characters_is_refused_without_quoting_it(stub, monkeypatch):
    with pytest.raises(ValueError, match="control character") as err:
        endpoint(stub, api_key="sk-secret\r\nX-Injected: 1")
    assert "sk-secret" not in str(err.value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-a-file\n")  # surrounding whitespace is dropped
    ep = endpoint(stub)
    ep.next_token_logprobs(["a good film"])
    assert stub.state.authorizations == ["Bearer sk-from-a-file"]
    with pytest.raises(TypeError, match="api_key must be a string"):
        endpoint(stub, api_key=123)


def test_unauthorized_names_where_the_key_comes_from(stub):
    stub.state.fail_next, stub.state.fail_status = 1, 401
    with pytest.raises(ValueError, match="HTTP 401: injected failure Pass api_key=... or set OPENAI_API_KEY"):
        endpoint(stub).next_token_logprobs(["a good film"])


def test_lone_surrogates_in_prompts_and_answers_are_cached(stub, tmp_path):
    cache = tmp_path / "requests.jsonl"
    top = {" great": -1.0, "\udc80": -2.0}  # a token that is half a UTF-8 character, as some servers send it
    stub.state.hostile = once(raw_json(json.dumps({"choices": [choice(top)]})))
    prompt = "a lone \ud800 surrogate"
    assert endpoint(stub, cache_file=cache).next_token_logprobs([prompt]) == [top]
    fresh = endpoint(stub, cache_file=cache)
    assert fresh.next_token_logprobs([prompt]) == [top] and fresh.stats.requests == 0


def test_https_to_a_plain_http_server_is_a_named_connection_error(stub):
    ep = OpenAIEndpoint(stub.url.replace("http://", "https://"), "m", max_retries=0, timeout=2, show_progress=False)
    with pytest.raises(EndpointError, match="failed 1 times, last with .*SSL"):
        ep.next_token_logprobs(["a good film"])


@pytest.mark.parametrize(
    "change", [{"embedding_url": 123}, {"url": ["x"]}, {"embedding_url": "file:///etc"}, {"embeddings": "yes"}]
)
def test_saved_endpoint_settings_of_the_wrong_type_are_named(stub, adapter, change, monkeypatch):
    from peft_dect.remote import BlackBoxDecT

    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    path = adapter / "remote_endpoint.json"
    saved = json.loads(path.read_text())
    saved["endpoint"] |= change
    path.write_text(json.dumps(saved))
    with pytest.raises((ValueError, TypeError), match=f"{next(iter(change))} must be"):
        BlackBoxDecT.from_pretrained(adapter)
