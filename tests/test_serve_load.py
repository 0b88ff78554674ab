"""Load and faults against a real uvicorn on 127.0.0.1: concurrent clients on mixed adapters among slow,
disconnecting and malformed ones. Every request gets its answer or a clear status; answers equal in-process
`predict_proba` to 1e-6. Bounded: at most 16 clients at once, every socket with a timeout."""

import concurrent.futures
import json
import random
import socket
import time

import numpy as np
import pytest
from conftest import sentiment_data
from serve_util import LiveServer, base_model, fit_adapter

from peft_dect.serving import AdapterRegistry, ServeSettings, create_app


KEY = "load-test-token-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS = sentiment_data(12, 21)["sentence"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, bpe_tokenizer):
    root = tmp_path_factory.mktemp("load")
    expected = {}
    registry = AdapterRegistry(base_model(bpe_tokenizer), bpe_tokenizer)
    for name, flip in (("a", False), ("b", True)):
        model = fit_adapter(bpe_tokenizer, root / name, flip=flip)
        expected[name] = (model.predict_proba(TEXTS, tokenizer=bpe_tokenizer), model.active_peft_config.classes)
        registry.add(str(root / name))
    settings = ServeSettings(api_key=KEY, max_wait=0.02, timeout=3.0, max_body_bytes=50_000)
    with LiveServer(create_app(registry, settings)) as server:
        yield server, expected


def raw(port: int, data: bytes, *, read: bool = True, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a fresh connection; the response bytes (b'' when the server closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if not read:
            return b""
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def http_request(path: str, body: bytes, headers: dict) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode() + body


def check_answer(body, probs, classes, index):
    got = np.array([[next(s["score"] for s in row if s["label"] == c) for c in classes] for row in body])
    np.testing.assert_allclose(got, probs[index], atol=1e-6)


def test_concurrent_clients_on_mixed_adapters_with_faults_all_get_answers(served):
    server, expected = served
    rng = random.Random(0)
    plan = []
    for i in range(48):
        kind = ["ok"] * 6 + ["unknown", "bad_token", "malformed", "not_texts"]
        plan.append((i, rng.choice(kind), rng.choice("ab"), sorted(rng.sample(range(len(TEXTS)), rng.randint(1, 4)))))

    def client(step):
        i, kind, adapter, rows = step
        texts = [TEXTS[r] for r in rows]
        if kind == "ok":
            return step, server.request("POST", f"/models/{adapter}", {"inputs": texts}, AUTH, timeout=30)
        if kind == "unknown":
            return step, server.request("POST", "/models/zzz", {"inputs": texts}, AUTH, timeout=30)
        if kind == "bad_token":
            return step, server.request(
                "POST", f"/models/{adapter}", {"inputs": texts}, {"Authorization": "Bearer no"}
            )
        if kind == "malformed":
            return step, server.request("POST", f"/models/{adapter}", b'{"inputs": [', AUTH, timeout=30)
        return step, server.request("POST", f"/models/{adapter}", {"inputs": [1, 2]}, AUTH, timeout=30)

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(client, plan, timeout=120))
    assert time.monotonic() - start < 120
    want = {"ok": 200, "unknown": 404, "bad_token": 401, "malformed": 422, "not_texts": 422}
    for (_, kind, adapter, rows), (status, _, body) in results:
        assert status == want[kind], (kind, status, body)
        if kind == "ok":
            check_answer(body, *expected[adapter], rows)
        else:
            assert "error" in body
    oks = sum(kind == "ok" for _, kind, _, _ in plan)
    status, _, text = server.request("GET", "/metrics", headers=AUTH)
    counted = sum(
        int(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("peft_dect_requests_total") and 'status="200"' in line
    )
    assert counted >= oks


def test_a_stalled_client_is_408_and_does_not_hold_up_the_others(served):
    server, expected = served
    body = json.dumps({"inputs": [TEXTS[0]]}).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **AUTH}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        stalled = pool.submit(raw, server.port, http_request("/models/a", body[:5], headers))  # never sends the rest
        time.sleep(0.2)
        start = time.monotonic()
        status, _, answer = server.request("POST", "/models/a", {"inputs": [TEXTS[1]]}, AUTH)
        assert status == 200 and time.monotonic() - start < 2.5
        check_answer(answer, *expected["a"], [1])
        response = stalled.result(timeout=20)
    assert response.startswith(b"HTTP/1.1 408") and b"not received within 3 s" in response


def test_clients_that_disconnect_mid_request_leave_the_server_answering(served):
    server, expected = served
    body = json.dumps({"inputs": TEXTS}).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **AUTH}
    for _ in range(5):
        raw(server.port, http_request("/models/b", body, headers), read=False)  # full request, gone at once
        raw(server.port, http_request("/models/b", body[: len(body) // 2], headers), read=False)  # half a body
    status, _, answer = server.request("POST", "/models/b", {"inputs": TEXTS}, AUTH)
    assert status == 200
    check_answer(answer, *expected["b"], list(range(len(TEXTS))))
    assert server.request("GET", "/health")[2]["status"] == "ok"


def test_oversized_bodies_with_and_without_a_length_are_413(served):
    server, _ = served
    big = json.dumps({"inputs": ["x" * 60_000]}).encode()
    response = raw(server.port, http_request("/models/a", big, {"Content-Length": str(len(big)), **AUTH}))
    assert response.startswith(b"HTTP/1.1 413")
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(big[i : i + 8192]), big[i : i + 8192]) for i in range(0, len(big), 8192))
    response = raw(
        server.port, http_request("/models/a", chunked + b"0\r\n\r\n", {"Transfer-Encoding": "chunked", **AUTH})
    )
    assert response.startswith(b"HTTP/1.1 413") and b"50000 bytes" in response
    assert server.request("GET", "/health")[0] == 200
